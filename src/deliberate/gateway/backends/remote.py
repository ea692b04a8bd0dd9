"""The remote backend: every model litellm reaches (OpenAI, Anthropic, Ollama, vLLM, TGI, ...).

One ``litellm.acompletion`` call per attempt, streamed when the caller listens for tokens and a
plain request when nobody does, with litellm's own retries off:
retries, backoff, the circuit breaker, rate limits and fallbacks are the gateway's layers. This
module only turns one call into one :class:`Reply` and every failure into a typed
:class:`ProviderError` the gateway knows how to treat:

- bad key / bad request / unknown model: ``transient=False, trips_breaker=False`` (not an outage)
- 429: transient, with ``retry_after`` from the server's ``Retry-After`` header
- 5xx, connection errors, timeouts, malformed JSON, a stream cut off mid-way: transient

litellm takes seconds to import and reads its price map from the network unless told not to, so
it is imported on first use only, told to stay offline (``LITELLM_LOCAL_MODEL_COST_MAP``, no
tokenizer downloads) and to keep quiet.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from ...config import Settings, scrub
from ...errors import ProviderError
from ...trust import PLACEHOLDER_KEY_PROVIDERS
from ..contracts import BackendCall, Reply, TokenCallback

log = logging.getLogger("deliberate.gateway.remote")

_import_lock = threading.Lock()
_litellm: Any = None

#: Providers that authenticate with a bearer-style API key. When a model sets ``api_base`` but no
#: ``api_key_env``, these get a placeholder key, so litellm never falls back to a provider key from
#: the environment (``OPENAI_API_KEY``...) and sends it to a third-party server. (The trust check
#: of project-local config relies on this list.)
_KEYED_PROVIDERS = PLACEHOLDER_KEY_PROVIDERS
_NO_KEY = "no-key-required"

#: Providers whose APIs take ``top_k``; OpenAI's rejects it.
_TOP_K_PROVIDERS = frozenset({"anthropic", "hosted_vllm", "ollama", "ollama_chat", "gemini", "vertex_ai"})

#: litellm's loggers; they would print request details (never keys, but noise) to stderr.
_LITELLM_LOGGERS = ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "litellm")


def load_litellm() -> Any:
    """Import litellm once, offline and quiet. Safe to call from any thread."""
    global _litellm
    if _litellm is not None:
        return _litellm
    with _import_lock:
        if _litellm is None:
            # Must be set before the import: otherwise litellm fetches its price map from GitHub.
            os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
            import litellm

            litellm.suppress_debug_info = True
            # token_counter would download tokenizers from the HF hub for some model names.
            litellm.disable_hf_tokenizer_download = True
            # deliberate registers no litellm callbacks and prices calls itself; litellm's success
            # logging would otherwise hand every streamed chunk to a thread pool.
            litellm.disable_streaming_logging = True
            for name in _LITELLM_LOGGERS:
                logging.getLogger(name).setLevel(logging.CRITICAL)
            _litellm = litellm
    return _litellm


async def _load_litellm_async(progress: Callable[[str], None] | None = None) -> Any:
    if _litellm is not None:
        return _litellm
    _tell(progress, "loading litellm (first remote call in this process: a few seconds)")
    started = time.perf_counter()
    # The import takes seconds: keep the event loop (other calls, the live view) running.
    lit = await asyncio.to_thread(load_litellm)
    _tell(progress, f"litellm ready in {time.perf_counter() - started:.1f}s")
    return lit


def _tell(progress: Callable[[str], None] | None, message: str) -> None:
    if progress is None:
        return
    try:
        progress(message)
    except Exception:  # a broken progress display must not fail a model call
        log.debug("progress callback failed", exc_info=True)


def provider_of(spec: Any) -> str:
    """The provider litellm routes ``spec.litellm_model`` to (``openai``, ``anthropic``, ...)."""
    model = spec.litellm_model or ""
    lit = _litellm if _litellm is not None else sys.modules.get("litellm")
    if lit is not None:
        try:
            return str(lit.get_llm_provider(model, api_base=spec.api_base)[1])
        except Exception:  # an unknown bare name: fall through to the prefix
            pass
    return model.split("/", 1)[0] if "/" in model else "openai"


class RemoteBackend:
    """The ``litellm`` provider of models.yaml. Cheap to construct; litellm loads on first call.

    ``progress`` receives human-readable messages about that load (it takes seconds)."""

    name = "litellm"

    def __init__(self, settings: Settings | None = None, progress: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.progress = progress
        self._loading: asyncio.Future[Any] | None = None

    # -- the seam -----------------------------------------------------------------------------
    async def generate(self, call: BackendCall, on_token: TokenCallback | None = None) -> Reply:
        """One completion from the model's server; see the module docstring for errors.

        Streamed when the caller listens (``on_token``); otherwise one plain request, which gives
        the same answer and usage for about 40% less of litellm's CPU per call (its stream wrapper
        converts every chunk, then rebuilds the whole response to count it).
        """
        spec = call.spec
        key = _api_key(spec)  # a missing key fails here, before litellm loads or anything is sent
        lit = _litellm if _litellm is not None else await self._load()
        provider = provider_of(spec)
        kwargs = _request(call, provider, key, stream=on_token is not None)
        secrets = [key] if key and len(key) >= 6 else []
        log.debug("litellm call: model=%s api_base=%s stream=%s", spec.litellm_model, spec.api_base,
                  kwargs["stream"])

        started = time.perf_counter()
        if on_token is None:
            text, usage, finish, model_name = await _whole(lit, kwargs, spec, secrets)
        else:
            text, usage, finish, model_name = await _streamed(lit, kwargs, spec, secrets, on_token)
        prompt_tokens, completion_tokens = _usage(lit, spec, call, text, usage)
        return Reply(
            text=text,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost_usd=None if spec.cost_profile is not None else _price(lit, spec, provider, prompt_tokens,
                                                                        completion_tokens),
            inference_time=time.perf_counter() - started,
            source=provider,
            model_name=model_name or spec.litellm_model or "",
            finish_reason=finish,
        )

    async def prepare(self, spec: Any) -> None:
        """Import litellm before the first call's timeout starts (seconds, once per process).

        Skipped when the model's key is missing: ``generate`` reports that at once, without the
        import."""
        if _litellm is not None:
            return
        try:
            _api_key(spec)
            await self._load()
        except Exception:  # generate tries again and reports it as the call's failure
            return

    async def _load(self) -> Any:
        # Concurrent first calls (a fan-out) share one load and one pair of progress messages.
        loading = self._loading
        if loading is None or loading.get_loop() is not asyncio.get_running_loop():
            loading = self._loading = asyncio.ensure_future(_load_litellm_async(self.progress))
            loading.add_done_callback(self._forget_failed_load)
        return await asyncio.shield(loading)

    def _forget_failed_load(self, loading: asyncio.Future[Any]) -> None:
        if self._loading is loading and (loading.cancelled() or loading.exception() is not None):
            self._loading = None  # the next call tries the import again

    def estimate_cost(self, spec: Any, prompt_tokens: int, max_tokens: int) -> float:
        """Upper bound of one call's cost for the gateway's budget check (0.0 when unpriced).

        Only called for models without a ``cost_profile``; pricing those needs litellm's map, so
        this loads litellm when it is not loaded yet.
        """
        if spec.cost_profile is not None:
            return float(spec.cost_profile.cost(prompt_tokens, max_tokens))
        if not spec.litellm_model:
            return 0.0
        lit = load_litellm()
        return _price(lit, spec, provider_of(spec), prompt_tokens, max_tokens)


# ---------------------------------------------------------------------------------------------
# Pieces of a call


_Answer = tuple[str, Any, str, str]  # text, usage (or None), finish reason, model name


async def _whole(lit: Any, kwargs: dict[str, Any], spec: Any, secrets: list[str]) -> _Answer:
    """One plain (not streamed) request."""
    try:
        response = await lit.acompletion(**kwargs)
    except Exception as exc:
        raise _error(lit, exc, spec, secrets) from None
    choices = getattr(response, "choices", None) or []
    if not choices:
        raise ProviderError(f"the answer from {spec.litellm_model} holds no choices", transient=True)
    message = getattr(choices[0], "message", None)
    text = getattr(message, "content", None) or ""
    finish = str(getattr(choices[0], "finish_reason", None) or "stop")
    return text, getattr(response, "usage", None), finish, getattr(response, "model", None) or ""


async def _streamed(lit: Any, kwargs: dict[str, Any], spec: Any, secrets: list[str],
                    on_token: TokenCallback) -> _Answer:
    """A streamed request, every text piece to ``on_token`` as it comes."""
    parts: list[str] = []
    usage: Any = None
    finish: str | None = None
    model_name = ""
    stream: Any = None
    try:
        try:
            stream = await lit.acompletion(**kwargs)
        except Exception as exc:
            raise _error(lit, exc, spec, secrets) from None
        chunks = stream.__aiter__()
        while True:
            try:
                chunk = await chunks.__anext__()
            except StopAsyncIteration:
                break
            except Exception as exc:
                raise _error(lit, exc, spec, secrets, streaming=bool(parts)) from None
            model_name = getattr(chunk, "model", None) or model_name
            if getattr(chunk, "usage", None) is not None:
                usage = chunk.usage
            choices = getattr(chunk, "choices", None) or []
            if choices:
                piece = getattr(choices[0].delta, "content", None)
                if choices[0].finish_reason:
                    finish = str(choices[0].finish_reason)
                if piece:
                    parts.append(piece)
                    on_token(piece)  # a callback's own error is the caller's, not the provider's
            if finish is not None and usage is not None:
                # The answer is whole: litellm sends the finish reason only once the server's
                # stream is read, and the usage after it. Reading on would only run litellm's
                # bookkeeping (a second rebuild of the stream, its cost, a success-logging
                # task on the event loop), about a third of its CPU time per call.
                break
    finally:
        if stream is not None and hasattr(stream, "aclose"):
            try:
                await stream.aclose()  # release the connection, also on cancel (a timeout)
            except Exception:  # closing a broken stream can fail again; nothing to keep
                pass
    if finish is None:
        # litellm checks this too; a partial answer must never pass for a whole one.
        raise ProviderError(f"the stream from {spec.litellm_model} ended before the model finished",
                            transient=True)
    return "".join(parts), usage, finish, model_name


def _api_key(spec: Any) -> str | None:
    name = spec.api_key_env
    if name:
        value = os.environ.get(name, "").strip() or _from_dotenv(name)
        if not value:
            raise ProviderError(
                f"the environment variable {name} is not set (the API key of {spec.key or spec.litellm_model})",
                hint=f"export {name}=..., put it in ./.env, or fix api_key_env in models.yaml",
                transient=False,
                trips_breaker=False,
            )
        return value
    if spec.api_base and provider_of(spec) in _KEYED_PROVIDERS:
        return _NO_KEY
    return None  # the provider's own convention (OPENAI_API_KEY, ...), read by litellm


def _from_dotenv(name: str) -> str:
    """The variable from ``./.env``, the file the settings read too (it is not exported)."""
    from ...config import dotenv_values

    return (dotenv_values().get(name) or "").strip()


def _request(call: BackendCall, provider: str, key: str | None, stream: bool = True) -> dict[str, Any]:
    spec, sampling = call.spec, call.sampling
    kwargs: dict[str, Any] = {
        "model": spec.litellm_model,
        "messages": [m.model_dump() for m in call.messages],
        "stream": stream,
        "max_tokens": call.max_tokens,
        "temperature": sampling.temperature,
        # The gateway retries; litellm's and the OpenAI SDK's own retries would multiply its attempts.
        "num_retries": 0,
        "max_retries": 0,
        # A parameter a provider lacks (seed on Anthropic) is dropped instead of failing the call.
        "drop_params": True,
    }
    if stream:
        kwargs["stream_options"] = {"include_usage": True}  # a plain answer always carries its usage
    if sampling.top_p < 1.0:  # some APIs refuse temperature and top_p together; 1.0 is the default
        kwargs["top_p"] = sampling.top_p
    if sampling.seed is not None:
        kwargs["seed"] = sampling.seed
    if sampling.top_k is not None and provider in _TOP_K_PROVIDERS:
        kwargs["top_k"] = sampling.top_k
    if spec.cost_profile is not None:
        # litellm prices every call for its own logging; a per-call price spares it a search of
        # its price map (dozens of fallback lookups for a model it does not know). Not sent.
        kwargs["input_cost_per_token"] = spec.cost_profile.input_per_million / 1e6
        kwargs["output_cost_per_token"] = spec.cost_profile.output_per_million / 1e6
    if spec.api_base:
        kwargs["api_base"] = spec.api_base
    if key is not None:
        kwargs["api_key"] = key
    if call.timeout_s is not None:
        kwargs["timeout"] = call.timeout_s
    return kwargs


def _usage(lit: Any, spec: Any, call: BackendCall, text: str, usage: Any) -> tuple[int, int]:
    prompt = int(getattr(usage, "prompt_tokens", 0) or 0) if usage is not None else 0
    completion = int(getattr(usage, "completion_tokens", 0) or 0) if usage is not None else 0
    if prompt and (completion or not text):
        return prompt, completion
    # The server sent no usage: count locally (tiktoken; never a tokenizer download).
    messages = [m.model_dump() for m in call.messages]
    try:
        prompt = prompt or int(lit.token_counter(model=spec.litellm_model, messages=messages))
        completion = completion or (int(lit.token_counter(model=spec.litellm_model, text=text)) if text else 0)
    except Exception:
        prompt = prompt or max(1, sum(len(m["content"]) for m in messages) // 4)
        completion = completion or (max(1, len(text) // 4) if text else 0)
    return prompt, completion


def _price(lit: Any, spec: Any, provider: str, prompt_tokens: int, completion_tokens: int) -> float:
    """litellm's price map; 0.0 for a model it does not know (a self-hosted one, say)."""
    try:
        p, c = lit.cost_per_token(model=spec.litellm_model, prompt_tokens=prompt_tokens,
                                  completion_tokens=completion_tokens, custom_llm_provider=provider)
        return float(p) + float(c)
    except Exception:
        return 0.0


# ---------------------------------------------------------------------------------------------
# Errors


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


def _error(lit: Any, exc: BaseException, spec: Any, secrets: list[str], streaming: bool = False) -> ProviderError:
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


__all__ = ["RemoteBackend", "load_litellm", "provider_of"]
