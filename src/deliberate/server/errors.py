"""Errors as OpenAI-style JSON: ``{"error": {"message", "type", "code"}}``, scrubbed of secrets,
never a traceback. Every route and middleware answers its failures through :func:`api_error`."""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse as _JSONResponse

from ..config import scrub
from ..errors import BudgetExceeded, DeliberateError, InputError, RecordError
from ..safetext import clean

log = logging.getLogger("deliberate.server")

#: Longest message a response carries (a provider's error page must not fill the response).
MAX_MESSAGE = 2000


def json_text(obj: Any, **options: Any) -> str:
    """``obj`` as JSON text that always encodes as UTF-8: a lone surrogate (a model's reply can
    carry one, e.g. from a ``"\\ud800"`` escape upstream) goes out as a ``\\u`` escape instead of
    failing the response half-way."""
    text = json.dumps(obj, ensure_ascii=False, **options)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(obj, ensure_ascii=True, **options)
    return text


class JSONResponse(_JSONResponse):
    """Every JSON answer of the server (FastAPI's default response class too): as Starlette's,
    but a lone surrogate is escaped rather than a 500."""

    def render(self, content: Any) -> bytes:
        text = json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":"))
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:
            return json.dumps(content, allow_nan=False, indent=None, separators=(",", ":")).encode("ascii")


class APIError(Exception):
    """An error a route answers with: HTTP status, OpenAI ``type`` and ``code``, a message."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code = status, message, type_, code
        self.headers = headers or {}


def safe_message(text: object) -> str:
    """Text fit for a response or a log: secrets scrubbed, control characters gone, cut short."""
    s = clean(scrub(str(text)))
    return s if len(s) <= MAX_MESSAGE else s[: MAX_MESSAGE - 1] + "…"


def error_body(message: str, type_: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": safe_message(message), "type": type_, "code": code}}


def api_error(status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
              headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, type_, code), status_code=status, headers=headers)


def from_deliberate(exc: DeliberateError) -> APIError:
    """A deliberate error as the HTTP error it is: bad input 400, over budget 402, else 502 (a
    model or provider failed)."""
    if isinstance(exc, RecordError):
        return APIError(404 if "no run" in exc.message else 400, exc.line(), code="bad_run")
    if isinstance(exc, InputError):
        return APIError(400, exc.line(), code="bad_input")
    if isinstance(exc, BudgetExceeded):
        return APIError(402, exc.line(), "budget_exceeded", "budget_exceeded")
    return APIError(502, exc.line(), "upstream_error", type(exc).__name__)


async def on_api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    return api_error(exc.status, exc.message, exc.type, exc.code, exc.headers)


async def on_deliberate_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DeliberateError)
    return await on_api_error(request, from_deliberate(exc))


async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    """A body that does not fit its schema: where and why, never the input itself (it may be
    large, or hold what the client should not see echoed in logs)."""
    errors: list[dict[str, Any]] = getattr(exc, "errors", lambda: [])()
    parts = []
    for e in errors[:5]:
        where = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
        parts.append(f"{where or 'body'}: {e.get('msg', 'invalid')}")
    return api_error(400, "; ".join(parts) or "invalid request", code="invalid_body")


async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
    status = int(getattr(exc, "status_code", 500))
    detail = getattr(exc, "detail", "") or "error"
    code = {404: "not_found", 405: "method_not_allowed"}.get(status)
    return api_error(status, str(detail), "invalid_request_error", code, getattr(exc, "headers", None))


async def on_internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("internal error: %s", safe_message(f"{type(exc).__name__}: {exc}"))
    return api_error(500, "internal error (see the server log)", "server_error", "internal_error")


def install(app: Any) -> None:
    """Register the handlers on a FastAPI app."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(DeliberateError, on_deliberate_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(Exception, on_internal_error)
