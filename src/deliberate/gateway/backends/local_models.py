"""The models the local backend holds in memory: loading each once (converting a GGUF on first
use), keeping them least-recently-used first, and evicting idle ones when a new one needs room
(free VRAM/RAM, capped by ``MAX_VRAM_USAGE_GB`` / ``DELIBERATE_MAX_RAM_GB``). Where and how a
model loads is :func:`~deliberate.gateway.backends.resources.plan_load`. Runs on worker threads.
"""

from __future__ import annotations

import gc
import logging
import math
import threading
import time
from collections import OrderedDict
from typing import Any, Literal

from ...config import Settings
from ...errors import CapacityError
from .local_batching import _Batcher, _eos_ids, _Loaded, run_batch
from .local_kernels import pack_linears
from .local_sources import (
    LoadedModel,
    Progress,
    _load_folder,
    _quiet_transformers,
    convert_gguf,
    converted_name,
    count_params,
    is_converted,
    resolve_source,
)
from .resources import GB, LoadPlan, Resources, choose_evictions, plan_load, snapshot

logger = logging.getLogger("deliberate.local")


def model_ident(spec: Any) -> tuple[Any, ...]:
    """What makes two specs the same model in memory."""
    return (spec.source, spec.quantization, spec.device, spec.dtype)


class LoadedModels:
    """The local backend's models in memory, least recently used first, each with its batcher
    (``batch_window_s``, ``max_batch_size``)."""

    def __init__(self, settings: Settings, batch_window_s: float, max_batch_size: int) -> None:
        self.settings = settings
        self.batch_window_s = batch_window_s
        self.max_batch_size = max_batch_size
        self._models: OrderedDict[tuple[Any, ...], _Loaded] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()  # guards _models and counters
        self._load_lock = threading.Lock()  # one load at a time: a second caller finds it loaded
        self._batch_sizes: list[int] = []
        self.loads = 0  # loads from disk so far

    def _count_batch(self, size: int) -> None:
        with self._lock:
            self._batch_sizes.append(size)

    def batch_sizes(self) -> list[int]:
        """The size of every ``model.generate`` call so far, in order."""
        with self._lock:
            return list(self._batch_sizes)

    def find(self, spec: Any) -> _Loaded | None:
        """The model of ``spec`` if it is in memory."""
        with self._lock:
            return self._models.get(model_ident(spec))

    def infos(self) -> list[LoadedModel]:
        """What is in memory, least recently used first."""
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

    def acquire(self, spec: Any, model_key: str, notify: Progress) -> tuple[_Loaded, float, bool]:
        """The model of ``spec``, loaded if need be and held (see :meth:`release`): with the
        seconds this call waited for it and whether it was loaded by another call already."""
        ident = model_ident(spec)
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
                self.loads += 1
            return lm, time.monotonic() - start, False

    def release(self, lm: _Loaded) -> None:
        """Give back a hold taken by :meth:`acquire`."""
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
                fresh = convert_gguf(source, folder, notify)
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
            lambda jobs: run_batch(lm, jobs, self._count_batch), self.batch_window_s, self.max_batch_size, lm.name
        )
        notify(f"{source.name} ready on {device} in {lm.load_time:.1f}s ({plan.reason})")
        return lm
