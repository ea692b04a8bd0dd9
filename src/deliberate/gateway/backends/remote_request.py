"""One remote call: its key, its litellm arguments, the request (plain or streamed), and the
usage and price of its answer."""

from __future__ import annotations

import os
from typing import Any

from ...errors import ProviderError
from ...trust import PLACEHOLDER_KEY_PROVIDERS
from ..contracts import BackendCall, TokenCallback
from .remote_errors import error_of
from .remote_litellm import provider_of

#: Providers that authenticate with a bearer-style API key. When a model sets ``api_base`` but no
#: ``api_key_env``, these get a placeholder key, so litellm never falls back to a provider key from
#: the environment (``OPENAI_API_KEY``...) and sends it to a third-party server. (The trust check
#: of project-local config relies on this list.)
_KEYED_PROVIDERS = PLACEHOLDER_KEY_PROVIDERS
_NO_KEY = "no-key-required"

#: Providers whose APIs take ``top_k``; OpenAI's rejects it.
_TOP_K_PROVIDERS = frozenset({"anthropic", "hosted_vllm", "ollama", "ollama_chat", "gemini", "vertex_ai"})


_Answer = tuple[str, Any, str, str]  # text, usage (or None), finish reason, model name


async def whole(lit: Any, kwargs: dict[str, Any], spec: Any, secrets: list[str]) -> _Answer:
    """One plain (not streamed) request."""
    try:
        response = await lit.acompletion(**kwargs)
    except Exception as exc:
        raise error_of(lit, exc, spec, secrets) from None
    choices = getattr(response, "choices", None) or []
    if not choices:
        raise ProviderError(f"the answer from {spec.litellm_model} holds no choices", transient=True)
    message = getattr(choices[0], "message", None)
    text = getattr(message, "content", None) or ""
    finish = str(getattr(choices[0], "finish_reason", None) or "stop")
    return text, getattr(response, "usage", None), finish, getattr(response, "model", None) or ""


async def streamed(lit: Any, kwargs: dict[str, Any], spec: Any, secrets: list[str],
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
            raise error_of(lit, exc, spec, secrets) from None
        chunks = stream.__aiter__()
        while True:
            try:
                chunk = await chunks.__anext__()
            except StopAsyncIteration:
                break
            except Exception as exc:
                raise error_of(lit, exc, spec, secrets, streaming=bool(parts)) from None
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


def api_key(spec: Any) -> str | None:
    """The key to send for ``spec``; a named variable that is unset fails here, before anything is sent."""
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


def request_of(call: BackendCall, provider: str, key: str | None, stream: bool = True) -> dict[str, Any]:
    """litellm's ``acompletion`` arguments for ``call``."""
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


def usage_of(lit: Any, spec: Any, call: BackendCall, text: str, usage: Any) -> tuple[int, int]:
    """(prompt, completion) tokens: the server's count, else litellm's local one, else an estimate."""
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


def price(lit: Any, spec: Any, provider: str, prompt_tokens: int, completion_tokens: int) -> float:
    """litellm's price map; 0.0 for a model it does not know (a self-hosted one, say)."""
    try:
        p, c = lit.cost_per_token(model=spec.litellm_model, prompt_tokens=prompt_tokens,
                                  completion_tokens=completion_tokens, custom_llm_provider=provider)
        return float(p) + float(c)
    except Exception:
        return 0.0
