"""The local backend: transformers, in this process.

- **Sources** (``models.yaml`` ``source``): ``package:<module>/<file.gguf>`` (a GGUF inside an
  installed Python package, found without importing it), a local directory or ``.gguf`` file, or
  a Hugging Face hub id that is already in the local HF cache. Nothing is downloaded at run time.
- **GGUF** files are dequantised once into ``Settings.model_cache()/<name>`` as a plain
  safetensors folder (written to a temp folder, then renamed, so a crash never leaves half a
  folder); later loads read that folder, which is many times faster.
- **Loaded models** are kept for the life of the process and evicted least-recently-used when a
  new one needs room (free VRAM/RAM, capped by ``MAX_VRAM_USAGE_GB`` / ``DELIBERATE_MAX_RAM_GB``).
  Where and how a model loads is :func:`~deliberate.gateway.backends.resources.plan_load`.
- **Batching**: calls to one model that arrive within ``batch_window_s`` of each other, or while
  a ``generate`` for that model is running, share one left-padded ``generate``. Each row keeps
  its own sampling (temperature, top-p, top-k, seed) and ``max_tokens``, so a seeded call gives
  the same text alone or in a batch.
- **Streaming**: ``on_token`` receives each row's new text after every decoding step, through
  ``loop.call_soon_threadsafe`` on the caller's event loop; the pieces join to ``Reply.text``.

torch and transformers are imported only when a model is first loaded.
"""
from __future__ import annotations

import asyncio
import gc
import json
import logging
import math
import os
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from ...config import Settings, get_settings
from ...errors import CapacityError, ProviderError
from ..contracts import BackendCall, Message, Reply, Sampling, TokenCallback
from .local_batching import (
    _Batcher,
    _eos_ids,
    _Job,
    _Loaded,
    _Output,
    _RowSampler,
    _RowStop,
    _RowStreamer,
)
from .local_kernels import pack_linears
from .local_sources import (
    MARKER,
    SAFE_LOAD,
    LoadedModel,
    ModelSource,
    Progress,
    _config_error,
    _dtype_kw,
    _load_folder,
    _quick_gguf,
    _quiet_transformers,
    converted_name,
    count_params,
    is_converted,
    resolve_source,
)
from .resources import GB, LoadPlan, Resources, choose_evictions, plan_load, snapshot

logger = logging.getLogger("deliberate.local")


class LocalBackend:
    """transformers in-process: loads each model once, batches concurrent calls, streams tokens.

    ``progress`` receives human-readable loading messages (conversion, load); it is called on the
    caller's event loop. ``batch_window_s`` is how long a lone call waits for company;
    ``max_batch_size`` caps one ``generate``.
    """

    name = "local"

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        progress: Progress | None = None,
        batch_window_s: float = 0.03,
        max_batch_size: int = 8,
    ) -> None:
        self.settings = settings or get_settings()
        self.progress = progress
        self.batch_window_s = batch_window_s
        self.max_batch_size = max_batch_size
        self._models: OrderedDict[tuple[Any, ...], _Loaded] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()  # guards _models and counters
        self._load_lock = threading.Lock()  # one load at a time: a second caller finds it loaded
        self._batch_sizes: list[int] = []
        self._loads = 0

    # -- introspection -------------------------------------------------------------------------
    @property
    def batch_sizes(self) -> list[int]:
        """The size of every ``model.generate`` call so far, in order."""
        with self._lock:
            return list(self._batch_sizes)

    @property
    def load_count(self) -> int:
        """How many times a model was loaded from disk by this backend."""
        return self._loads

    def loaded(self) -> list[LoadedModel]:
        """The models in memory, least recently used first."""
        with self._lock:
            return [lm.info() for lm in self._models.values()]

    def unload(self, model_key: str | None = None) -> int:
        """Unload idle models (all of them, or those loaded for ``model_key``); returns how many."""
        with self._lock:
            idents = [
                i for i, lm in self._models.items() if lm.in_use == 0 and model_key in (None, lm.model_key)
            ]
        for ident in idents:
            self._unload(ident)
        return len(idents)

    close = unload

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
        prepare = asyncio.ensure_future(asyncio.to_thread(self._prepare, call, notify))
        try:
            lm, ids, waited, hit = await asyncio.shield(prepare)
        except asyncio.CancelledError:
            # the worker thread still finishes loading; give its hold on the model back then
            prepare.add_done_callback(self._release_prepared)
            raise
        try:
            emit = None
            if on_token is not None:

                def emit(piece: str, _cb: TokenCallback = on_token) -> None:
                    try:
                        loop.call_soon_threadsafe(_call_safely, _cb, piece)
                    except RuntimeError:  # the caller's loop is closed: nobody is listening
                        pass

            room = call.spec.context_window - len(ids)
            deadline = time.monotonic() + call.timeout_s if call.timeout_s else None
            job = _Job(ids, call.sampling, min(call.max_tokens, room), emit, deadline)
            assert lm.batcher is not None
            future = lm.batcher.submit(job)
            try:
                out = await asyncio.wrap_future(future)
            except asyncio.CancelledError:
                job.abandoned = True
                raise
        finally:
            self._release(lm)
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
        with self._lock:
            lm = self._models.get(_ident(spec))
        info = lm.info().model_dump() if lm else {}
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

    # -- loading (worker threads) ----------------------------------------------------------------
    def _notifier(self, loop: asyncio.AbstractEventLoop) -> Progress:
        def notify(message: str) -> None:
            logger.info(message)
            if self.progress is not None:
                try:
                    loop.call_soon_threadsafe(_call_safely, self.progress, message)
                except RuntimeError:
                    pass

        return notify

    def _prepare(self, call: BackendCall, notify: Progress) -> tuple[_Loaded, list[int], float, bool]:
        lm, waited, hit = self._acquire(call.spec, call.model_key, notify)
        try:
            ids = lm.encode(call.messages)
            if len(ids) >= call.spec.context_window:
                raise CapacityError(
                    f"the prompt has {len(ids)} tokens; model {call.model_key!r} has a context window of "
                    f"{call.spec.context_window}",
                    hint="shorten the inputs or pick a model with a larger context_window",
                )
        except BaseException:
            self._release(lm)
            raise
        return lm, ids, waited, hit

    def _acquire(self, spec: Any, model_key: str, notify: Progress) -> tuple[_Loaded, float, bool]:
        ident = _ident(spec)
        start = time.monotonic()
        with self._lock:
            lm = self._models.get(ident)
            if lm is not None:
                self._models.move_to_end(ident)
                lm.in_use += 1
                return lm, 0.0, True
        with self._load_lock:
            with self._lock:
                lm = self._models.get(ident)
                if lm is not None:  # another call loaded it while we waited
                    self._models.move_to_end(ident)
                    lm.in_use += 1
                    return lm, time.monotonic() - start, True
            lm = self._load(spec, model_key, ident, notify)
            with self._lock:
                self._models[ident] = lm
                lm.in_use += 1
                self._loads += 1
            return lm, time.monotonic() - start, False

    def _release_prepared(self, prepared: asyncio.Future[tuple[_Loaded, list[int], float, bool]]) -> None:
        if not prepared.cancelled() and prepared.exception() is None:
            self._release(prepared.result()[0])

    def _release(self, lm: _Loaded) -> None:
        with self._lock:
            lm.in_use -= 1

    def _probe(self) -> tuple[Resources, bool]:
        res = snapshot()
        gpu_bf16 = False
        if res.gpus:
            try:
                import torch

                usable = bool(torch.cuda.is_available())
            except ImportError:
                usable = False
            if not usable:
                res = res.model_copy(
                    update={
                        "gpus": [],
                        "gpu_note": "torch cannot use the GPU (not installed or built without CUDA)",
                    }
                )
            else:
                gpu_bf16 = bool(torch.cuda.is_bf16_supported())
        return res, gpu_bf16

    def _pools(self, device: str) -> tuple[list[tuple[tuple[Any, ...], float]], float]:
        """(idle models on ``device`` in LRU order with their GB, GB held by busy ones)."""
        with self._lock:
            idle = [
                (i, lm.memory_gb)
                for i, lm in self._models.items()
                if lm.plan.device == device and not lm.in_use
            ]
            busy = sum(lm.memory_gb for lm in self._models.values() if lm.plan.device == device and lm.in_use)
        return idle, busy

    def _plan(self, spec: Any, res: Resources, gpu_bf16: bool, n_params: int | None) -> LoadPlan:
        s = self.settings
        caps: dict[str, float | None] = {}
        notes = []
        for device, free, budget, env in (
            ("cuda", res.gpu.free_gb if res.gpu else None, s.max_vram_usage_gb, "MAX_VRAM_USAGE_GB"),
            ("cpu", res.ram_free_gb, s.max_ram_usage_gb, "DELIBERATE_MAX_RAM_GB"),
        ):
            idle, busy = self._pools(device)
            cap = None if free is None else free + sum(gb for _, gb in idle)
            if budget is not None and (device == "cpu" or free is not None):
                cap = min(cap if cap is not None else math.inf, budget - busy)
                notes.append(f"{env}={budget:g}")
            caps[device] = cap
        return plan_load(
            spec,
            n_params=n_params,
            gpu_free_gb=caps["cuda"],
            ram_free_gb=caps["cpu"],
            cpu_bf16=res.cpu_bf16,
            gpu_bf16=gpu_bf16,
            gpu_note=res.gpu_note,
            budget_note=(", ".join(notes) + " applies") if notes else "",
        )

    def _make_room(self, plan: LoadPlan, res: Resources) -> None:
        cuda = plan.device == "cuda"
        idle, busy = self._pools(plan.device)
        free = (res.gpu.free_gb if res.gpu else None) if cuda else res.ram_free_gb
        budget = self.settings.max_vram_usage_gb if cuda else self.settings.max_ram_usage_gb
        evict = choose_evictions(idle, need_gb=plan.need_gb, free_gb=free, in_use_gb=busy, budget_gb=budget)
        if evict is None:
            raise CapacityError(
                f"no room for {plan.need_gb:.2f} GB on {plan.device}: {busy:.2f} GB held by models in use"
                + (f", {free:.2f} GB free" if free is not None else "")
                + (f", budget {budget:g} GB" if budget is not None else "")
            )
        for ident in evict:
            self._unload(ident)

    def _unload(self, ident: tuple[Any, ...]) -> None:
        with self._lock:
            lm = self._models.pop(ident, None)
        if lm is None:
            return
        logger.info("unloading %s (%s, %.2f GB)", lm.name, lm.device, lm.memory_gb)
        if lm.batcher is not None:
            lm.batcher.close()
        cuda = lm.plan.device == "cuda"
        lm.model = lm.tokenizer = None
        del lm
        gc.collect()
        if cuda:
            import torch

            torch.cuda.empty_cache()

    def _load(self, spec: Any, model_key: str, ident: tuple[Any, ...], notify: Progress) -> _Loaded:
        start = time.monotonic()
        res, gpu_bf16 = self._probe()
        self._plan(spec, res, gpu_bf16, None)  # refuse early (device: cuda, min_vram_gb) before heavy work
        source = resolve_source(spec)
        _quiet_transformers()
        fresh = None
        if source.kind == "gguf":
            folder = self.settings.model_cache() / converted_name(source)
            if is_converted(folder):
                load_path: Literal["gguf", "converted", "directory", "hub"] = "converted"
            else:
                fresh = self._convert(source, folder, notify)
                load_path = "gguf"
        else:
            folder, load_path = source.path, source.kind
        plan = self._plan(spec, res, gpu_bf16, count_params(folder))
        self._make_room(plan, res)
        device = f"cuda:{res.gpu.index}" if plan.device == "cuda" and res.gpu else "cpu"
        if fresh is not None and (plan.device, plan.dtype, plan.quantization) == ("cpu", "float32", "none"):
            model, tokenizer = fresh
        else:
            fresh = None
            notify(f"loading {source.name} on {device} ({plan.dtype}, quantization {plan.quantization}) ...")
            model, tokenizer = _load_folder(folder, plan, device)
        memory = model.get_memory_footprint()
        kernels = "torch"
        if device == "cpu" and plan.dtype == "float32" and self.settings.onednn:
            packed, extra = pack_linears(model)
            if packed:
                kernels, memory = "onednn-packed", memory + extra
        eos = _eos_ids(model, tokenizer)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos)
        lm = _Loaded(
            ident=ident,
            model_key=model_key,
            source=spec.source,
            model=model,
            tokenizer=tokenizer,
            plan=plan,
            device=device,
            folder=folder,
            load_path=load_path,
            load_time=time.monotonic() - start,
            memory_gb=memory / GB,
            name=source.name,
            eos=eos,
            pad_id=int(pad),
            kernels=kernels,
        )
        lm.batcher = _Batcher(
            lambda jobs: self._run_batch(lm, jobs), self.batch_window_s, self.max_batch_size, lm.name
        )
        notify(f"{source.name} ready on {device} in {lm.load_time:.1f}s ({plan.reason})")
        return lm

    def _convert(self, source: ModelSource, dest: Path, notify: Progress) -> tuple[Any, Any]:
        """Dequantise a GGUF and save it as a safetensors folder; returns (model, tokenizer)."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        notify(f"converting {source.path.name} from GGUF (first use only; later loads are fast) ...")
        start = time.monotonic()
        folder, name = source.path.parent, source.path.name
        try:
            with _quick_gguf():
                tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, **SAFE_LOAD)
                model = AutoModelForCausalLM.from_pretrained(
                    folder, gguf_file=name, **_dtype_kw(torch.float32), **SAFE_LOAD
                )
                model.eval()
        except Exception as exc:
            raise _config_error(
                f"cannot read {source.path}: {type(exc).__name__}: {exc}", "is it a GGUF file?"
            ) from exc
        # A GGUF-loaded model carries a "gguf" quantizer that refuses save_pretrained; the weights
        # are already dequantised, so drop it (and the config entry that would reload it as GGUF).
        quantizer = getattr(model, "hf_quantizer", None)
        if quantizer is not None and hasattr(quantizer, "remove_quantization_config"):
            quantizer.remove_quantization_config(model)
        else:
            setattr(model, "hf_quantizer", None)  # noqa: B010 (older transformers)
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
        dest.parent.mkdir(parents=True, exist_ok=True)
        for stale in dest.parent.glob(f".{dest.name}.tmp-*"):
            if time.time() - stale.stat().st_mtime > 3600:  # left by a crash
                shutil.rmtree(stale, ignore_errors=True)
        if dest.exists() and not is_converted(dest):
            shutil.rmtree(dest)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
        try:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            marker = {
                "source": str(source.path),
                "size": source.path.stat().st_size,
                "converted_at": time.time(),
            }
            (tmp / MARKER).write_text(json.dumps(marker, indent=2))
            try:
                os.rename(tmp, dest)
            except OSError:
                if not is_converted(dest):  # not another process winning the race
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        notify(f"converted {source.path.name} in {time.monotonic() - start:.1f}s into {dest}")
        return model, tokenizer

    # -- generation (the batcher's thread) -------------------------------------------------------
    def _run_batch(self, lm: _Loaded, jobs: list[_Job]) -> None:
        import torch
        from transformers import GenerationConfig

        start = time.monotonic()
        width = max(len(job.ids) for job in jobs)
        ids = torch.full((len(jobs), width), lm.pad_id, dtype=torch.long)
        mask = torch.zeros((len(jobs), width), dtype=torch.long)
        for i, job in enumerate(jobs):  # left padding: every row's last token is at the same place
            ids[i, width - len(job.ids) :] = torch.tensor(job.ids, dtype=torch.long)
            mask[i, width - len(job.ids) :] = 1
        device = lm.model.device
        config = GenerationConfig(
            max_new_tokens=max(job.max_tokens for job in jobs),
            do_sample=False,  # sampling, when any row wants it, is _RowSampler's job
            # transformers' neutral defaults, so a model's own sampling defaults do not leak in
            temperature=1.0,
            top_p=1.0,
            top_k=50,
            eos_token_id=sorted(lm.eos),
            pad_token_id=lm.pad_id,
        )
        sampled = any(job.sampling.temperature > 0 for job in jobs)
        streamer = _RowStreamer(jobs, lm.decode, lm.eos) if any(job.emit for job in jobs) else None
        with self._lock:
            self._batch_sizes.append(len(jobs))
        with torch.inference_mode():
            out = lm.model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                generation_config=config,
                logits_processor=[_RowSampler(jobs, device)] if sampled else None,
                stopping_criteria=[_RowStop(jobs, width, lm.eos)],
                streamer=streamer,
            )
        rows = out[:, width:].tolist()
        elapsed = time.monotonic() - start
        for i, job in enumerate(jobs):
            if job.timed_out:
                job.future.set_exception(
                    ProviderError("local generation timed out (call timeout_s)", transient=True)
                )
                continue
            tokens, finish = rows[i][: job.max_tokens], "length"
            for k, token in enumerate(tokens):
                if token in lm.eos:
                    tokens, finish = tokens[:k], "stop"
                    break
            text = lm.decode(tokens)
            if streamer is not None:
                streamer.finish(i, text)
            job.future.set_result(_Output(text, len(tokens), finish, elapsed))


def _ident(spec: Any) -> tuple[Any, ...]:
    return (spec.source, spec.quantization, spec.device, spec.dtype)


def _call_safely(callback: Callable[[str], None], value: str) -> None:
    try:
        callback(value)
    except Exception:
        logger.exception("a local backend callback raised")


__all__ = ["LoadedModel", "LocalBackend", "ModelSource", "count_params", "is_converted", "resolve_source"]
