"""What the machine has (free VRAM, free RAM, bfloat16 on the CPU) and how a local model fits it.

Probing is cheap and imports neither torch nor transformers: VRAM comes from NVML (``pynvml``,
from the ``nvidia-ml-py`` package), RAM from psutil or ``/proc/meminfo``. The capacity rules are
pure functions (:func:`plan_load`, :func:`choose_evictions`) so they are tested without a GPU.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

from ...errors import CapacityError

#: Weights are not the whole bill: activations, the KV cache and allocator slack come on top.
OVERHEAD = 1.2
_BYTES = {"float32": 4.0, "bfloat16": 2.0, "float16": 2.0}
_QUANT_BYTES = {"8bit": 1.0, "4bit": 0.5}
GB = 1e9
DType = Literal["float32", "bfloat16", "float16"]
Quantization = Literal["none", "4bit", "8bit"]
K = TypeVar("K")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GpuInfo(_Model):
    """One NVIDIA GPU as NVML sees it. ``index`` is the CUDA index (after CUDA_VISIBLE_DEVICES)."""

    index: int
    name: str
    free_gb: float
    total_gb: float


class Resources(_Model):
    """A snapshot of the machine."""

    gpus: list[GpuInfo]
    gpu_note: str = ""  # why there is no GPU, when there is none
    ram_free_gb: float | None = None
    ram_total_gb: float | None = None
    cpu_bf16: bool = False

    @property
    def gpu(self) -> GpuInfo | None:
        """The GPU with the most free memory, or None."""
        return max(self.gpus, key=lambda g: g.free_gb) if self.gpus else None


class LoadPlan(_Model):
    """How one model will be loaded: where, in which dtype, quantized or not, and why."""

    device: Literal["cpu", "cuda"]
    dtype: DType
    quantization: Quantization
    need_gb: float  # estimated memory on ``device`` (0 when the size is unknown)
    reason: str


# ---------------------------------------------------------------------------------------------
# Probing


def _visible_nvml_indices() -> list[int] | None:
    """NVML indices in CUDA order when CUDA_VISIBLE_DEVICES lists integers; None: all."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    parts = [p.strip() for p in value.split(",") if p.strip()]
    out: list[int] = []
    for p in parts:
        if not p.lstrip("-").isdigit():
            return None  # UUIDs or MIG names: trust NVML's order
        if int(p) < 0:
            break  # CUDA stops at the first invalid index
        out.append(int(p))
    return out


def probe_gpus() -> tuple[list[GpuInfo], str]:
    """Free and total memory of each NVIDIA GPU, and a note saying why there is none.

    A missing ``pynvml``, a missing NVML library (no driver) or any NVML error means no GPU.
    """
    try:
        import pynvml
    except ImportError:
        return [], "nvidia-ml-py is not installed (pip install 'deliberate[local]')"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError_LibraryNotFound:
        return [], "no NVIDIA driver found (NVML library not found)"
    except Exception as exc:  # any NVML init failure: treat the machine as GPU-less
        return [], f"NVML did not start: {exc}"
    try:
        count = pynvml.nvmlDeviceGetCount()
        visible = _visible_nvml_indices()
        order = list(range(count)) if visible is None else [i for i in visible if i < count]
        gpus = []
        for cuda_index, nvml_index in enumerate(order):
            handle = pynvml.nvmlDeviceGetHandleByIndex(nvml_index)
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            if isinstance(name, bytes):
                name = name.decode(errors="replace")
            gpus.append(
                GpuInfo(index=cuda_index, name=str(name), free_gb=mem.free / GB, total_gb=mem.total / GB)
            )
        return gpus, "" if gpus else "NVML found no visible GPU"
    except Exception as exc:
        return [], f"NVML query failed: {exc}"
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def probe_ram() -> tuple[float | None, float | None]:
    """(available, total) RAM in GB, or None where it cannot be read."""
    try:
        import psutil

        vm = psutil.virtual_memory()
        return vm.available / GB, vm.total / GB
    except ImportError:
        pass
    try:
        fields = {}
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            fields[key] = float(rest.split()[0]) * 1024 / GB
        return fields.get("MemAvailable"), fields.get("MemTotal")
    except (OSError, ValueError, IndexError):
        return None, None


def cpu_supports_bf16() -> bool:
    """Whether the CPU computes bfloat16 natively (AVX512-BF16, AMX, or Arm BF16).

    Without it torch emulates bfloat16 and float32 is the faster choice.
    """
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    for line in text.splitlines():
        key = line.split(":", 1)[0].strip().lower()
        if key in ("flags", "features"):
            flags = set(line.split(":", 1)[1].split())
            return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    return False


def snapshot() -> Resources:
    """Probe GPUs, RAM and the CPU now."""
    gpus, note = probe_gpus()
    free, total = probe_ram()
    return Resources(
        gpus=gpus, gpu_note=note, ram_free_gb=free, ram_total_gb=total, cpu_bf16=cpu_supports_bf16()
    )


def gpu_snapshot() -> list[dict[str, Any]]:
    """Each GPU's name and memory in GB, for ``doctor`` and the ``resources`` step; [] if none."""
    gpus, _ = probe_gpus()
    return [
        {"index": g.index, "name": g.name, "free_gb": round(g.free_gb, 2), "total_gb": round(g.total_gb, 2)}
        for g in gpus
    ]


# ---------------------------------------------------------------------------------------------
# Capacity rules (pure)


def estimate_gb(n_params: int | None, dtype: str, quantization: str) -> float | None:
    """Estimated memory to run a model of ``n_params`` parameters, overhead included."""
    if n_params is None:
        return None
    per = _QUANT_BYTES.get(quantization) or _BYTES[dtype]
    return n_params * per * OVERHEAD / GB


def plan_load(
    spec: Any,
    *,
    n_params: int | None,
    gpu_free_gb: float | None,
    ram_free_gb: float | None,
    cpu_bf16: bool,
    gpu_bf16: bool = True,
    gpu_note: str = "",
    budget_note: str = "",
) -> LoadPlan:
    """Decide where and how to load ``spec`` (a :class:`~deliberate.registry.ModelSpec`).

    ``gpu_free_gb`` is None when there is no usable GPU; ``n_params`` None when the size is not
    known yet (only the declared ``min_vram_gb`` and ``device`` are checked then). The rules:
    on a GPU, full precision when it fits, else 4-bit; ``quantization: 4bit|8bit`` is always
    honoured; on the CPU bfloat16 where the CPU has it, else float32 (``dtype`` overrides);
    :class:`CapacityError` with the numbers when nothing fits or ``device: cuda`` has no GPU.
    ``budget_note`` (e.g. "MAX_VRAM_USAGE_GB=8 applies") is added to a refusal.
    """
    name = spec.key or spec.source or "model"
    min_vram = spec.min_vram_gb or 0.0
    options: list[Quantization] = ["none", "4bit"] if spec.quantization == "none" else [spec.quantization]
    gpu_problem = ""

    if spec.device != "cpu" and gpu_free_gb is not None:
        dtype: DType = spec.dtype if spec.dtype != "auto" else ("bfloat16" if gpu_bf16 else "float16")
        tried: list[str] = []
        for q in options:
            est = estimate_gb(n_params, dtype, q)
            need = max(est or 0.0, min_vram)
            if need <= gpu_free_gb:
                why = f"{need:.2f} GB needed, {gpu_free_gb:.2f} GB VRAM free"
                if tried:
                    why = f"full precision does not fit ({tried[0]}); 4-bit: {why}"
                return LoadPlan(device="cuda", dtype=dtype, quantization=q, need_gb=need, reason=why)
            label = "full precision" if q == "none" else q
            source = "min_vram_gb" if need == min_vram and min_vram > (est or 0.0) else "estimated"
            tried.append(f"{label} needs {need:.2f} GB VRAM ({source})")
        gpu_problem = f"{'; '.join(tried)}, only {gpu_free_gb:.2f} GB free"
    elif spec.device == "cuda":
        needs = f" and {min_vram:g} GB VRAM (min_vram_gb)" if min_vram else ""
        raise CapacityError(
            f"model {name!r} needs a CUDA GPU (device: cuda){needs}, but none is usable: {gpu_note or 'no GPU'}",
            hint="set device: auto in models.yaml to allow the CPU, or run where a GPU is available",
        )
    if spec.device == "cuda":
        raise CapacityError(
            f"model {name!r} does not fit the GPU: {gpu_problem}; device: cuda forbids the CPU"
            + (f" ({budget_note})" if budget_note else ""),
            hint="free GPU memory, raise MAX_VRAM_USAGE_GB, or use quantization: 4bit",
        )

    dtype = spec.dtype if spec.dtype != "auto" else ("bfloat16" if cpu_bf16 else "float32")
    tried = []
    for q in options:
        need = estimate_gb(n_params, dtype, q)
        if need is None or ram_free_gb is None or need <= ram_free_gb:
            where = (
                "no GPU" if gpu_free_gb is None else ("device: cpu" if spec.device == "cpu" else gpu_problem)
            )
            why = f"CPU ({where})"
            if need is not None and ram_free_gb is not None:
                why += f"; {need:.2f} GB needed, {ram_free_gb:.2f} GB RAM free"
            if tried:
                why += f"; full precision does not fit RAM ({tried[0]})"
            return LoadPlan(device="cpu", dtype=dtype, quantization=q, need_gb=need or 0.0, reason=why)
        tried.append(f"{'full precision' if q == 'none' else q} needs {need:.2f} GB")
    gpu_part = f"GPU: {gpu_problem}; " if gpu_problem else (f"GPU: {gpu_note}; " if gpu_note else "")
    raise CapacityError(
        f"model {name!r} does not fit: {gpu_part}RAM: {'; '.join(tried)}, only {ram_free_gb:.2f} GB free"
        + (f" ({budget_note})" if budget_note else ""),
        hint="close other programs, raise DELIBERATE_MAX_RAM_GB, or pick a smaller model",
    )


def choose_evictions(
    idle: list[tuple[K, float]],
    *,
    need_gb: float,
    free_gb: float | None,
    in_use_gb: float,
    budget_gb: float | None,
) -> list[K] | None:
    """Which idle loaded models (least recently used first) to unload so ``need_gb`` fits.

    ``free_gb`` is what the device has free now (None: unknown, do not count it), ``in_use_gb``
    what our busy models hold, ``budget_gb`` the user's cap on all our models together. Returns
    the keys to unload, or None when even unloading every idle model is not enough.
    """
    idle_total = sum(gb for _, gb in idle)
    evict: list[K] = []
    freed = 0.0

    def fits() -> bool:
        if free_gb is not None and need_gb > free_gb + freed:
            return False
        return budget_gb is None or in_use_gb + (idle_total - freed) + need_gb <= budget_gb

    for key, gb in idle:
        if fits():
            return evict
        evict.append(key)
        freed += gb
    return evict if fits() else None


__all__ = [
    "GpuInfo",
    "LoadPlan",
    "Resources",
    "choose_evictions",
    "cpu_supports_bf16",
    "estimate_gb",
    "gpu_snapshot",
    "plan_load",
    "probe_gpus",
    "probe_ram",
    "snapshot",
]
