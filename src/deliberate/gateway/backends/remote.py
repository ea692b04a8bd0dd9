"""The remote backend: every model litellm reaches (OpenAI, Anthropic, Ollama, vLLM, TGI, ...).

One ``litellm.acompletion`` call per attempt, streamed when the caller listens for tokens and a
plain request when nobody does, with litellm's own retries off: retries, backoff, the circuit
breaker, rate limits and fallbacks are the gateway's layers. This backend only turns one call
into one :class:`Reply` and every failure into a typed :class:`ProviderError`. Its parts:

- :mod:`.remote_litellm`: importing litellm on first use (offline, quiet), ``provider_of``
- :mod:`.remote_request`: the key, the request's arguments, the plain and streamed requests,
  usage and price
- :mod:`.remote_errors`: litellm and transport exceptions mapped to ``ProviderError``
  (transient or not, trips the breaker or not, ``Retry-After``)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from ...config import Settings
from ..contracts import Backend, BackendCall, Reply, TokenCallback
from . import remote_litellm
from .remote_litellm import load_litellm, provider_of
from .remote_request import api_key, price, request_of, streamed, usage_of, whole

log = logging.getLogger("deliberate.gateway.remote")


class RemoteBackend(Backend):
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
        key = api_key(spec)  # a missing key fails here, before litellm loads or anything is sent
        lit = remote_litellm.loaded()
        if lit is None:
            lit = await self._load()
        provider = provider_of(spec)
        kwargs = request_of(call, provider, key, stream=on_token is not None)
        secrets = [key] if key and len(key) >= 6 else []
        log.debug("litellm call: model=%s api_base=%s stream=%s", spec.litellm_model, spec.api_base,
                  kwargs["stream"])

        started = time.perf_counter()
        if on_token is None:
            text, usage, finish, model_name = await whole(lit, kwargs, spec, secrets)
        else:
            text, usage, finish, model_name = await streamed(lit, kwargs, spec, secrets, on_token)
        prompt_tokens, completion_tokens = usage_of(lit, spec, call, text, usage)
        return Reply(
            text=text,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost_usd=None if spec.cost_profile is not None else price(lit, spec, provider, prompt_tokens,
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
        if remote_litellm.loaded() is not None:
            return
        try:
            api_key(spec)
            await self._load()
        except Exception:  # generate tries again and reports it as the call's failure
            return

    async def _load(self) -> Any:
        # Concurrent first calls (a fan-out) share one load and one pair of progress messages.
        loading = self._loading
        if loading is None or loading.get_loop() is not asyncio.get_running_loop():
            loading = self._loading = asyncio.ensure_future(remote_litellm.load_litellm_async(self.progress))
            loading.add_done_callback(self._forget_failed_load)
        return await asyncio.shield(loading)

    def _forget_failed_load(self, loading: asyncio.Future[Any]) -> None:
        if self._loading is loading and (loading.cancelled() or loading.exception() is not None):
            self._loading = None  # the next call tries the import again

    async def estimate_cost(self, spec: Any, prompt_tokens: int, max_tokens: int) -> float:
        """Upper bound of one call's cost for the gateway's budget check (0.0 when unpriced).

        Only asked for models without a ``cost_profile``; pricing those needs litellm's map, so
        this loads litellm (seconds, in a thread) when it is not loaded yet.
        """
        if spec.cost_profile is not None:
            return float(spec.cost_profile.cost(prompt_tokens, max_tokens))
        if not spec.litellm_model:
            return 0.0
        return await asyncio.to_thread(self._price_now, spec, prompt_tokens, max_tokens)

    @staticmethod
    def _price_now(spec: Any, prompt_tokens: int, max_tokens: int) -> float:
        return price(remote_litellm.load_litellm(), spec, provider_of(spec), prompt_tokens, max_tokens)


__all__ = ["RemoteBackend", "load_litellm", "provider_of"]
