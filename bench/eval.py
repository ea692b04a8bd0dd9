"""Eval overhead per item: what ``deliberate eval`` spends per item on top of the model call,
against a zero-latency OpenAI-compatible server (the test server of tests/servers, in its own
process on 127.0.0.1), side by side with inspect_ai running the same items in the same run.

Each side evaluates N items with one model call per item (deliberate: a one-step flow; inspect_ai:
``generate()``), scored by ``includes``, one item at a time, so the time per item is the client's
own work plus one HTTP round trip. Timed:

- ``sdk``: the floor, the bare OpenAI SDK making the same N calls (no eval tool at all);
- ``deliberate``: ``run_eval`` (dataset checks, a recorded run per item, scoring, the eval record
  written atomically after every item, the analysis with its 10,000-resample bootstrap);
- ``inspect_ai``: ``inspect_ai.eval`` on the same items (its log written as it goes), when
  installed. This bench installs nothing: without inspect_ai it says how to install it
  (``pip install inspect-ai``) and prints deliberate's figures alone.

Overhead per item = time per item - the SDK's time per item. The target: deliberate's overhead
at most 0.5x inspect_ai's.

    python bench/eval.py [--items 100]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fake_model import FakeModel

ROOT = Path(__file__).resolve().parents[1]
TARGET = 0.5  # deliberate's overhead per item, at most this times inspect_ai's
TEXT = "Hello from the fake model."


def rows(n: int) -> list[dict[str, str]]:
    return [{"id": f"q{i}", "prompt": f"Question {i}: say hello.", "target": "hello" if i % 2 else "goodbye"}
            for i in range(n)]


async def via_sdk(base: str, items: list[dict[str, str]]) -> float:
    import openai

    client = openai.AsyncOpenAI(base_url=base, api_key="no-key-required", max_retries=0)
    started = time.perf_counter()
    for row in items:
        answer = await client.chat.completions.create(model="bench-model", max_tokens=64,
                                                      messages=[{"role": "user", "content": row["prompt"]}])
        _ = row["target"].lower() in (answer.choices[0].message.content or "").lower()
    elapsed = time.perf_counter() - started
    await client.close()
    return elapsed


def via_deliberate(base: str, items: list[dict[str, str]], work: Path) -> float:
    from deliberate.config import Settings
    from deliberate.eval.runner import EvalControl, EvalRequest, run_eval
    from deliberate.gateway import Gateway
    from deliberate.gateway.backends.remote import RemoteBackend
    from deliberate.registry import CostProfile, Limits, ModelSpec, Registry, StrategySpec
    from deliberate.services import Services
    from deliberate.services.run import RunOptions

    data = work / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in items))
    (work / "one.yaml").write_text("name: one\ninputs:\n  prompt: {}\nsteps:\n  answer: {prompt: '{{ prompt }}'}\n")
    remote = ModelSpec(key="remote", provider="litellm", litellm_model="openai/bench-model", api_base=base,
                       context_window=8192, cost_profile=CostProfile())
    strategy = StrategySpec(name="bench", limits=Limits(max_tokens=64, timeout_s=30, max_retries=0))
    registry = Registry(models={"remote": remote}, strategies={"bench": strategy}, default_model="remote",
                        default_strategy="bench")
    settings = Settings(cache=False, runs_dir=work / "runs")
    gateway = Gateway(registry, settings=settings, backends={"litellm": RemoteBackend(settings)})
    request = EvalRequest(str(work / "one.yaml"), str(data), scorer="includes",
                          options=RunOptions(models={"*": "remote"}),
                          control=EvalControl(concurrency=1, evals_dir=work / "evals", runs_dir=work / "runs"))
    env = Services(settings=settings, registry=registry, gateway=gateway)
    started = time.perf_counter()
    outcome = asyncio.run(run_eval(request, env))
    elapsed = time.perf_counter() - started
    if outcome.report["done"] != len(items):
        raise SystemExit(f"deliberate finished {outcome.report['done']} of {len(items)} items")
    return elapsed


def via_inspect(base: str, items: list[dict[str, str]], work: Path) -> float:
    from inspect_ai import Task, eval
    from inspect_ai.dataset import Sample
    from inspect_ai.scorer import includes
    from inspect_ai.solver import generate

    task = Task(dataset=[Sample(input=r["prompt"], target=r["target"], id=r["id"]) for r in items],
                solver=generate(), scorer=includes())
    os.environ.setdefault("OPENAI_API_KEY", "no-key-required")
    started = time.perf_counter()
    # chat completions, as deliberate and the SDK side use (inspect_ai prefers the Responses API)
    logs = eval(task, model="openai/bench-model", model_base_url=base, model_args={"responses_api": False},
                max_connections=1, max_samples=1,
                log_dir=str(work / "inspect-logs"), display="none", max_tokens=64)
    elapsed = time.perf_counter() - started
    if not logs or logs[0].status != "success":
        raise SystemExit(f"inspect_ai did not finish: {logs[0].status if logs else 'no log'}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each side (the median is kept)")
    args = parser.parse_args()
    from deliberate.gateway.backends.remote import load_litellm

    load_litellm()  # its import takes seconds, once per process: not part of any item
    have_inspect = importlib.util.find_spec("inspect_ai") is not None
    if hasattr(os, "getloadavg"):
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (other work skews the numbers)")
    print(f"{args.items} items, one call each, one item at a time, against a zero-latency server; "
          f"median of {args.runs} runs after a warm-up\n")
    server = FakeModel(TEXT)
    items = rows(args.items)
    results: dict[str, float] = {}
    try:
        sides: list[tuple[str, Any]] = [("sdk", lambda w: asyncio.run(via_sdk(server.openai_base, items))),
                                        ("deliberate", lambda w: via_deliberate(server.openai_base, items, w))]
        if have_inspect:
            sides.append(("inspect_ai", lambda w: via_inspect(server.openai_base, items, w)))
        for name, fn in sides:
            with tempfile.TemporaryDirectory() as tmp:
                warm = Path(tmp) / "warm"
                warm.mkdir()
                fn(warm)  # warm-up: connections, imports, template compiles
            times = []
            for i in range(args.runs):
                with tempfile.TemporaryDirectory() as tmp:
                    work = Path(tmp) / f"run{i}"
                    work.mkdir()
                    times.append(fn(work))
            results[name] = statistics.median(times) / args.items
    finally:
        server.close()
    floor = results["sdk"]
    print(f"{'side':<12}{'ms/item':>10}{'overhead ms/item':>19}")
    for name, per in results.items():
        print(f"{name:<12}{per * 1000:>10.2f}{(per - floor) * 1000:>19.2f}")
    ours = results["deliberate"] - floor
    print()
    if not have_inspect:
        print("inspect_ai is not installed: its side is skipped (pip install inspect-ai, then run this again)")
        print(f"deliberate eval overhead: {ours * 1000:.2f} ms per item over the bare SDK call")
        return
    theirs = results["inspect_ai"] - floor
    ratio = ours / theirs if theirs > 0 else float("inf")
    verdict = "within" if ratio <= TARGET else "OVER"
    print(f"eval/inspect_ai {ratio:.3f}x: {verdict} the target of {TARGET:.2f}x inspect_ai's overhead per item")
    sys.exit(0 if ratio <= TARGET else 1)


if __name__ == "__main__":
    main()
