"""Fan-out over real HTTP: 3 parallel expert calls, then 1 synthesizer call (multi_perspective).

Every call goes through the Gateway, the remote (litellm) backend and real HTTP to the test
server of tests/servers, run in its own process on 127.0.0.1, which waits a fixed delay before
each answer. With perfect
concurrency a run takes the critical path, 2 x delay (the experts together, then the
synthesizer); run one call after another it would take the sum, 4 x delay. Timed:

- ``engine``: the shipped ``multi_perspective`` flow through ``run_flow_async`` with no token
  listener, as ``deliberate run --json`` and CI runs go: one plain request per call
- ``engine+view``: the same with a subscriber that takes tokens, as the live view on a terminal:
  every call streamed
- ``gateway`` / ``gateway+view``: the same shape driven on the Gateway directly with
  ``asyncio.gather``, plain and streamed
- ``sdk`` / ``sdk+stream``: the same shape with the bare OpenAI SDK (no deliberate, no litellm),
  plain and streamed: the floor that the transport and the test server leave; the gap to it is
  deliberate's and litellm's CPU time

    python bench/fanout.py [--delay 0.3] [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fake_model import FakeModel

from deliberate.config import Settings
from deliberate.gateway import Gateway, GenerationRequest
from deliberate.gateway.backends.remote import RemoteBackend, load_litellm
from deliberate.registry import CostProfile, Limits, ModelSpec, Registry, StrategySpec

ROOT = Path(__file__).resolve().parents[1]

TARGET = 1.15  # at most this times the critical path
EXPERTS = ("security", "performance", "ux")
MODES = ("engine", "engine+view", "gateway", "gateway+view", "sdk", "sdk+stream")


def make_gateway(api_base: str) -> Gateway:
    remote = ModelSpec(key="remote", provider="litellm", litellm_model="openai/bench-model",
                       api_base=api_base, context_window=8192, cost_profile=CostProfile())
    strategy = StrategySpec(name="balanced", limits=Limits(max_tokens=64, timeout_s=30, max_retries=0))
    registry = Registry(models={"remote": remote, "smollm2-135m": remote.model_copy(update={"key": "smollm2-135m"})},
                        strategies={"balanced": strategy}, default_model="remote", default_strategy="balanced")
    settings = Settings(cache=False)
    return Gateway(registry, settings=settings, backends={"litellm": RemoteBackend(settings)})


def take_tokens(piece: str) -> None:
    """A token listener that does nothing with them: what streaming costs without a screen."""


async def via_gateway(gw: Gateway, task: str, stream: bool) -> float:
    on_token = take_tokens if stream else None
    started = time.perf_counter()
    answers = await asyncio.gather(*(gw.generate(GenerationRequest.from_prompt(
        f"Task: {task}\nAnswer as the {e} expert.", model_key="remote"), on_token=on_token) for e in EXPERTS))
    merged = "\n\n".join(f"## {e} expert\n{a.text}" for e, a in zip(EXPERTS, answers, strict=True))
    await gw.generate(GenerationRequest.from_prompt(f"Task: {task}\n{merged}\nMerge these.", model_key="remote"),
                      on_token=on_token)
    return time.perf_counter() - started


async def via_sdk(api_base: str, task: str, stream: bool) -> float:
    import openai

    client = openai.AsyncOpenAI(base_url=api_base, api_key="no-key-required", max_retries=0)

    async def one(prompt: str) -> str:
        messages: Any = [{"role": "user", "content": prompt}]
        if not stream:
            answer = await client.chat.completions.create(model="bench-model", max_tokens=64, messages=messages)
            return answer.choices[0].message.content or ""
        chunks = await client.chat.completions.create(model="bench-model", stream=True, max_tokens=64,
                                                      stream_options={"include_usage": True}, messages=messages)
        return "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])

    started = time.perf_counter()
    answers = await asyncio.gather(*(one(f"Task: {task}\nAnswer as the {e} expert.") for e in EXPERTS))
    await one(f"Task: {task}\n" + "\n\n".join(answers) + "\nMerge these.")
    elapsed = time.perf_counter() - started
    await client.close()
    return elapsed


async def via_engine(gw: Gateway, task: str, stream: bool) -> float:
    from deliberate._api import run_flow_async
    from deliberate.engine import RunOptions, Token

    def view(event: object) -> None:  # stands in for the live view: takes every token
        if isinstance(event, Token):
            take_tokens(event.text)

    started = time.perf_counter()
    outcome = await run_flow_async("multi_perspective", {"prompt": task}, RunOptions(models={"*": "remote"}),
                                   registry=gw.registry, gateway=gw, settings=gw.settings, record=False,
                                   subscribers=[view] if stream else None)
    elapsed = time.perf_counter() - started
    if outcome.result.status != "succeeded":
        raise SystemExit(f"the flow failed: {outcome.result.error}")
    return elapsed


async def measure(mode: str, server: FakeModel, runs: int) -> tuple[list[float], int, int]:
    gw = make_gateway(server.openai_base)

    way, _, extra = mode.partition("+")
    stream = bool(extra)

    async def once(task: str) -> float:
        if way == "sdk":
            return await via_sdk(server.openai_base, task, stream)
        return await (via_engine if way == "engine" else via_gateway)(gw, task, stream)

    await once("warm-up")  # first call: HTTP client and connection set-up, template compile
    before = server.stats()["calls"]
    times = [await once("Review a login form that stores passwords.") for _ in range(runs)]
    stats = server.stats()
    return times, stats["calls"] - before, stats["max_in_flight"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--delay", type=float, default=0.3, help="seconds the server waits before each answer")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--mode", choices=[*MODES, "all"], default="all")
    args = parser.parse_args()

    load_litellm()  # its import takes seconds; not part of any call
    if hasattr(os, "getloadavg"):
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (other work skews the numbers)")
    critical, total = 2 * args.delay, 4 * args.delay
    modes = list(MODES) if args.mode == "all" else [args.mode]
    print(f"fan-out: {len(EXPERTS)} experts in parallel, then 1 synthesizer; the server takes "
          f"{args.delay * 1000:.0f} ms per reply; {args.runs} runs each after a warm-up")
    print(f"critical path {critical:.2f} s, sum of calls {total:.2f} s\n")
    print(f"{'mode':<13}{'median':>9}{'min':>9}{'max':>9}{'vs critical':>13}{'vs sum':>9}{'calls':>7}"
          f"{'peak':>6}")
    ratios: dict[str, float] = {}
    server = FakeModel("Point one. Point two.", args.delay)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            os.chdir(tmp)  # the flow lookup reads ./flows first; keep the user's files out of it
            for mode in modes:
                times, calls, peak = asyncio.run(measure(mode, server, args.runs))
                med = statistics.median(times)
                ratios[mode] = med / critical
                print(f"{mode:<13}{med:>8.3f}s{min(times):>8.3f}s{max(times):>8.3f}s{med / critical:>12.2f}x"
                      f"{med / total:>8.2f}x{calls:>7}{peak:>6}")
    finally:
        server.close()
    print()
    for mode, what in (("engine", "the flow as `deliberate run --json` and CI run it"),
                       ("engine+view", "the flow streamed to a token listener (the live view)")):
        if mode in ratios:
            verdict = "within" if ratios[mode] <= TARGET else "OVER"
            print(f"{mode:<13}{ratios[mode]:.3f}x: {verdict} the target of {TARGET:.2f}x the critical path ({what})")
    sys.exit(0 if ratios.get("engine", 0.0) <= TARGET else 1)


if __name__ == "__main__":
    main()
