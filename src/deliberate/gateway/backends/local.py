"""The local backend: transformers, in this process.

- **Sources** (``models.yaml`` ``source``): ``package:<module>/<file.gguf>`` (a GGUF inside an
  installed Python package, found without importing it), a local directory or ``.gguf`` file, or
  a Hugging Face hub id that is already in the local HF cache. Nothing is downloaded at run time.
  GGUF files are dequantised once into ``Settings.model_cache()/<name>`` as a plain safetensors
  folder (written to a temp folder, then renamed, so a crash never leaves half a folder); later
  loads read that folder, which is many times faster. See :mod:`.local_sources`.
- **Loaded models** are kept for the life of the process and evicted least-recently-used when a
  new one needs room; see :mod:`.local_models` and, for where a model loads,
  :func:`~deliberate.gateway.backends.resources.plan_load`.
- **Batching**: calls to one model that arrive within ``batch_window_s`` of each other, or while
  a ``generate`` for that model is running, share one left-padded ``generate``. Each row keeps
  its own sampling (temperature, top-p, top-k, seed) and ``max_tokens``, so a seeded call gives
  the same text alone or in a batch. See :mod:`.local_batching`.
- **Streaming**: ``on_token`` receives each row's new text after every decoding step, through
  ``loop.call_soon_threadsafe`` on the caller's event loop (this module); the pieces join to
  ``Reply.text``.
- **Engines**: a GGUF source runs through llama.cpp when a llama.cpp binding is installed (and the
  model asks for no quantization, dtype or GPU of its own); everything else through transformers.
  See :mod:`.llamacpp` (``choose_engine``).

torch and transformers are imported only when a model is first loaded.
"""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from ...config import Settings, get_settings
from ...errors import CapacityError
from ..contracts import Backend, BackendCall, Message, Reply, Sampling, TokenCallback
from .llamacpp import Engine, LlamaCppBackend, choose_engine, llamacpp_installed, wanted_engine
from .local_batching import _Loaded, call_safely
from .local_models import LoadedModels
from .local_sources import (
    LoadedModel,
    ModelSource,
    Progress,
    convert_gguf,
    count_params,
    is_converted,
    resolve_source,
)

logger = logging.getLogger("deliberate.local")


class LocalBackend(Backend):
    """transformers in-process: loads each model once, batches concurrent calls, streams tokens.

    ``progress`` receives human-readable loading messages (conversion, load); it is called on the
    caller's event loop. ``batch_window_s`` is how long a lone call waits for company;
    ``max_batch_size`` caps one ``generate``. ``engine`` (``auto``, ``transformers``,
    ``llamacpp``) is the default for models that do not name one (else ``DELIBERATE_LOCAL_ENGINE``).
    """

    name = "local"

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        progress: Progress | None = None,
        batch_window_s: float = 0.03,
        max_batch_size: int = 8,
        engine: str | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        self.progress = progress
        self.batch_window_s = batch_window_s
        self.max_batch_size = max_batch_size
        self._models = LoadedModels(self.settings, batch_window_s, max_batch_size)
        self.engine_default = engine
        self._llama = LlamaCppBackend(batch_window_s, max_batch_size)
        self._engines: dict[tuple[Any, ...], Engine] = {}

    # -- introspection -------------------------------------------------------------------------
    @property
    def batch_sizes(self) -> list[int]:
        """The size of every ``model.generate`` call so far, in order."""
        return self._models.batch_sizes() + self._llama.batch_sizes()

    @property
    def load_count(self) -> int:
        """How many times a model was loaded from disk by this backend."""
        return self._models.loads + self._llama.loads

    def loaded(self) -> list[LoadedModel]:
        """The models in memory, least recently used first."""
        return self._models.infos() + self._llama.loaded()

    def unload(self, model_key: str | None = None) -> int:
        """Unload idle models (all of them, or those loaded for ``model_key``); returns how many."""
        return self._models.unload(model_key) + self._llama.unload(model_key)

    close = unload

    async def aclose(self) -> None:
        """Unload every idle model (off the event loop: freeing memory can take a while)."""
        await asyncio.to_thread(self.unload)

    # -- the seam ------------------------------------------------------------------------------
    async def generate(self, call: BackendCall, on_token: TokenCallback | None = None) -> Reply:
        """Answer one call.

        ``Reply.model_cache_hit`` is True when this call did not load the model itself (it was in
        memory, or another call was loading it); ``load_time`` is how long this call waited for
        the model (0 when it was in memory). ``inference_time`` is the duration of the batched
        ``generate`` that served it; ``completion_tokens`` excludes the end-of-sequence token.
        """
        loop = asyncio.get_running_loop()
        notify = self._notifier(loop)
        if await self.engine(call.spec) == "llamacpp":
            return await self._llama.generate(call, on_token, notify)
        prepare = asyncio.ensure_future(asyncio.to_thread(self._prepare, call, notify))
        try:
            lm, ids, waited, hit = await asyncio.shield(prepare)
        except asyncio.CancelledError:
            # the worker thread still finishes loading; give its hold on the model back then
            prepare.add_done_callback(self._release_prepared)
            raise
        try:
            assert lm.batcher is not None
            out = await lm.batcher.run(ids, call, on_token)
        finally:
            self._models.release(lm)
        return Reply(
            text=out.text,
            prompt_tokens=len(ids),
            completion_tokens=out.completion_tokens,
            cost_usd=0.0,
            load_time=waited,
            inference_time=out.inference_time,
            model_cache_hit=hit,
            source="local",
            model_name=lm.name,
            finish_reason=out.finish_reason,
        )

    async def check(
        self, spec: Any, *, prompt: str = "Say hello in one short sentence.", max_tokens: int = 16
    ) -> dict[str, Any]:
        """Load ``spec`` (a ModelSpec) and run a short greedy probe: for ``deliberate models check``."""
        call = BackendCall(
            model_key=spec.key or "check",
            spec=spec,
            messages=[Message(role="user", content=prompt)],
            sampling=Sampling(temperature=0, top_p=1.0, top_k=None),
            max_tokens=max_tokens,
        )
        reply = await self.generate(call)
        found = self._models.find(spec) or self._llama.find(spec)
        info = found.info().model_dump() if found else {}
        return {
            **info,
            "model_key": call.model_key,
            "load_time": round(reply.load_time, 3),
            "model_cache_hit": reply.model_cache_hit,
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens,
            "inference_time": round(reply.inference_time, 3),
            "tokens_per_s": round(reply.completion_tokens / reply.inference_time, 2)
            if reply.inference_time
            else 0.0,
            "text": reply.text,
        }

    async def engine(self, spec: Any) -> Engine:
        """``transformers`` or ``llamacpp``: which engine serves ``spec`` (decided once per model)."""
        wanted = wanted_engine(spec, self.engine_default)
        if wanted == "transformers" or (wanted == "auto" and not llamacpp_installed()):
            return "transformers"  # no need to look at the files
        ident = (spec.source, spec.quantization, spec.device, spec.dtype, wanted)
        if ident not in self._engines:
            source = await asyncio.to_thread(resolve_source, spec)
            self._engines[ident] = choose_engine(spec, source, wanted)
        return self._engines[ident]

    # -- on the worker threads ------------------------------------------------------------------
    def _notifier(self, loop: asyncio.AbstractEventLoop) -> Progress:
        def notify(message: str) -> None:
            logger.info(message)
            if self.progress is not None:
                try:
                    loop.call_soon_threadsafe(call_safely, self.progress, message)
                except RuntimeError:
                    pass

        return notify

    def _prepare(self, call: BackendCall, notify: Progress) -> tuple[_Loaded, list[int], float, bool]:
        lm, waited, hit = self._models.acquire(call.spec, call.model_key, notify)
        try:
            ids = lm.encode(call.messages)
            if len(ids) >= call.spec.context_window:
                raise CapacityError(
                    f"the prompt has {len(ids)} tokens; model {call.model_key!r} has a context window of "
                    f"{call.spec.context_window}",
                    hint="shorten the inputs or pick a model with a larger context_window",
                )
        except BaseException:
            self._models.release(lm)
            raise
        return lm, ids, waited, hit

    def _release_prepared(self, prepared: asyncio.Future[tuple[_Loaded, list[int], float, bool]]) -> None:
        if not prepared.cancelled() and prepared.exception() is None:
            self._models.release(prepared.result()[0])

    def _convert(self, source: ModelSource, dest: Path, notify: Progress) -> tuple[Any, Any]:
        """Dequantise a GGUF into ``dest`` (see :func:`.local_sources.convert_gguf`)."""
        return convert_gguf(source, dest, notify)



__all__ = ["LoadedModel", "LocalBackend", "ModelSource", "count_params", "is_converted", "resolve_source"]
