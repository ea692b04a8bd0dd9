"""How the remote backend names a failure: every litellm or transport exception becomes a typed
:class:`ProviderError` the gateway's layers know how to treat.

- bad key / bad request / unknown model: ``transient=False, trips_breaker=False`` (not an outage)
- 429: transient, with ``retry_after`` from the server's ``Retry-After`` header
- 5xx, connection errors, timeouts, malformed JSON, a stream cut off mid-way: transient

The message keeps the server's own words, scrubbed of the call's key.
"""

from __future__ import annotations

import email.utils
import json
import re
import sys
import time
from typing import Any

from ...config import scrub
from ...errors import ProviderError


def _classes(lit: Any, *names: str) -> tuple[type, ...]:
    # getattr: older litellm releases lack some of these classes
    return tuple(c for c in (getattr(lit, n, None) for n in names) if isinstance(c, type))


def _classify(lit: Any, exc: BaseException) -> tuple[str, bool, bool] | None:
    """``(what, transient, trips_breaker)`` for a known failure, None for anything else."""
    status = getattr(exc, "status_code", None)
    status = status if isinstance(status, int) else None
    if isinstance(exc, _classes(lit, "Timeout")):
        return "timed out", True, True
    if isinstance(exc, _classes(lit, "RateLimitError")):
        return "rate limited", True, True
    if isinstance(exc, _classes(lit, "AuthenticationError", "PermissionDeniedError")):
        return "authentication failed", False, False
    if isinstance(exc, _classes(lit, "NotFoundError")):
        return "not found", False, False
    if isinstance(exc, _classes(lit, "BadRequestError", "UnprocessableEntityError")):
        return "request refused", False, False
    if isinstance(exc, _classes(lit, "APIConnectionError", "ServiceUnavailableError", "InternalServerError",
                                "BadGatewayError", "APIResponseValidationError")):
        return "server or connection error", True, True
    if status is not None and (status >= 500 or status in (408, 409, 425, 429)):
        return "server error", True, True
    if status is not None and 400 <= status < 500:
        return "request refused", False, False
    if isinstance(exc, (OSError, TimeoutError, json.JSONDecodeError, UnicodeDecodeError)) \
            or _is_transport_error(exc):
        # connection resets, JSON that does not parse, an HTTP client's own transport errors
        return "transport error", True, True
    return None


def error_of(lit: Any, exc: BaseException, spec: Any, secrets: list[str], streaming: bool = False) -> ProviderError:
    """Map a litellm / transport exception to the gateway's :class:`ProviderError`."""
    # litellm wraps failures met mid-stream (MidStreamFallbackError); the wrapped one says more.
    original = getattr(exc, "original_exception", None)
    if isinstance(original, BaseException) and original is not exc and _classify(lit, original) is not None:
        exc = original
    what, transient, trips = _classify(lit, exc) or (f"unexpected {type(exc).__name__}", False, True)
    status = getattr(exc, "status_code", None)
    # litellm gives connection errors and timeouts a status too (500, 408); no server said it
    answered = not isinstance(exc, _classes(lit, "APIConnectionError", "Timeout"))
    code = f" (HTTP {status})" if answered and isinstance(status, int) and status >= 400 else ""
    where = " mid-stream" if streaming else ""
    message = scrub(f"{what}{code}{where} from {spec.litellm_model}: {_detail(exc)}", extra=secrets)
    hint = None
    if what == "authentication failed":
        hint = f"check {spec.api_key_env}" if spec.api_key_env else "set api_key_env for this model in models.yaml"
    elif what == "not found":
        hint = "check litellm_model and api_base"
    retry_after = _retry_after(exc) if transient else None
    return ProviderError(message, hint=hint, transient=transient, retry_after=retry_after, trips_breaker=trips)


def _detail(exc: BaseException) -> str:
    """The server's own words, without litellm's repeated class-name prefixes."""
    text = " ".join(str(getattr(exc, "message", "") or exc).split()) or type(exc).__name__
    text = re.sub(r"\.?\s*Handle with `litellm\.\w+`\.?", "", text)
    text = re.sub(r"^(?:(?:litellm\.)?\w*(?:Error|Exception|Timeout)\s*[:-]\s*)+", "", text)
    said = _said(getattr(exc, "body", None))
    if said is None:  # a JSON error body quoted inside litellm's message
        quoted = re.search(r'"(?:message|detail)":\s*"((?:[^"\\]|\\.)*)"', text)
        said = quoted.group(1) if quoted else None
    text = " ".join(said.split()) if said else text
    return text if len(text) <= 300 else text[:297] + "..."


def _said(body: Any) -> str | None:
    """The message in an error body: OpenAI's ``error.message``, FastAPI's ``detail``, ..."""
    if isinstance(body, dict):
        for key in ("error", "message", "detail"):
            value = body.get(key)
            found = _said(value) if isinstance(value, dict) else value
            if isinstance(found, str) and found.strip():
                return found
    return None


def _is_transport_error(exc: BaseException) -> bool:
    for module_name, cls_name in (("httpx", "HTTPError"), ("httpx", "StreamError"), ("aiohttp", "ClientError"),
                                  ("openai", "APIError")):
        module = sys.modules.get(module_name)
        cls = getattr(module, cls_name, None) if module else None
        if isinstance(cls, type) and isinstance(exc, cls):
            return True
    return False


def _retry_after(exc: BaseException) -> float | None:
    """Seconds from ``Retry-After`` / ``retry-after-ms``, wherever litellm kept the headers."""
    sources = (getattr(getattr(exc, "response", None), "headers", None),
               getattr(exc, "litellm_response_headers", None), getattr(exc, "headers", None))
    for headers in sources:
        if not headers:
            continue
        try:
            lower = {str(k).lower(): str(v) for k, v in dict(headers).items()}
        except (TypeError, ValueError):
            continue
        if "retry-after-ms" in lower:
            try:
                return max(0.0, float(lower["retry-after-ms"]) / 1000)
            except ValueError:
                pass
        value = lower.get("retry-after")
        if value is None:
            continue
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
        try:  # an HTTP date
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, when.timestamp() - time.time())
        except (TypeError, ValueError):
            continue
    return None


__all__ = ["error_of"]
