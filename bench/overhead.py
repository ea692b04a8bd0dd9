"""Engine overhead per step, against LangGraph running the same graphs, in the same process.

A zero-latency benchmark backend answers instantly, so the time measured is the orchestration:
for deliberate, template rendering, gateway layers (breaker, retry, budget), events, and
optionally the run record; for LangGraph, its graph runtime calling an async node that returns a
string. Graphs: a 3-step chain and a 5-way fan-out followed by a merge.

With the record, each run's file is complete on disk when the run returns (its final write is
synchronous). Snapshots after steps are encoded on the loop and written by a background thread;
the first waits 50 ms, so these instant runs are written once each (see docs/records.md).

LangGraph runs each graph twice: bare, and with its SQLite checkpointer saving every step to a
file (its counterpart of our run record). The ratios compare like with like: ours without the
record against bare LangGraph, ours with the record against LangGraph with the checkpointer (and,
for the record, against bare LangGraph too).

    pip install langgraph langgraph-checkpoint-sqlite   # only for this benchmark
    python bench/overhead.py [--iterations 200]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import operator
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypedDict

from deliberate._api import run_flow_async
from deliberate.config import Settings
from deliberate.flows import load_flow_text
from deliberate.gateway import Gateway, Reply
from deliberate.registry import ModelSpec, Registry, StrategySpec

CHAIN = """
name: chain
inputs: {prompt: {}}
steps:
  a: {prompt: "A {{ prompt }}"}
  b: {prompt: "B {{ a }}"}
  c: {prompt: "C {{ b }}"}
"""
FANOUT = """
name: fanout
inputs: {prompt: {}}
steps:
  experts: {for_each: [e1, e2, e3, e4, e5], prompt: "{{ prompt }} as {{ item }}"}
  merge: {prompt: "{% for e in experts %}{{ e }} {% endfor %}"}
"""


class ZeroBackend:
    """Benchmark backend: answers at once with a fixed short text."""

    name = "zero"

    async def generate(self, call: Any, on_token: Any = None) -> Reply:
        return Reply(text="ok", prompt_tokens=1, completion_tokens=1, source="zero")


def registry() -> Registry:
    return Registry({"z": ModelSpec(key="z", provider="zero", context_window=100000)},
                    {"balanced": StrategySpec(name="balanced")}, default_model="z")


Runner = Callable[[], Awaitable[float]]


def ours(flow_text: str, record: bool) -> Runner:
    """One run of the flow through deliberate; returns its wall time."""
    reg = registry()
    flow = load_flow_text(flow_text, "bench", reg)
    settings = Settings()
    runs = Path(tempfile.mkdtemp())

    async def once() -> float:
        gw = Gateway(reg, settings=settings, backends={"zero": ZeroBackend()})
        t0 = time.perf_counter()
        out = await run_flow_async(flow, {"prompt": "q"}, registry=reg, gateway=gw, runs_dir=runs, record=record)
        elapsed = time.perf_counter() - t0
        assert out.result.status == "succeeded"
        return elapsed

    return once


def langgraph(kind: str, saver: Any = None) -> Runner | None:
    """One run of the same graph in LangGraph (with ``saver`` as its checkpointer)."""
    try:
        from langgraph.graph import END, START, StateGraph
    except ImportError:
        return None

    async def node_text(prompt: str) -> str:
        return "ok"

    if kind == "chain":
        class S(TypedDict):
            prompt: str
            a: str
            b: str
            c: str

        g = StateGraph(S)

        async def a(s: S) -> dict[str, str]:
            return {"a": await node_text(f"A {s['prompt']}")}

        async def b(s: S) -> dict[str, str]:
            return {"b": await node_text(f"B {s['a']}")}

        async def c(s: S) -> dict[str, str]:
            return {"c": await node_text(f"C {s['b']}")}

        for name, fn in (("a", a), ("b", b), ("c", c)):
            g.add_node(name, fn)
        g.add_edge(START, "a")
        g.add_edge("a", "b")
        g.add_edge("b", "c")
        g.add_edge("c", END)
    else:
        class F(TypedDict):
            prompt: str
            experts: Annotated[list[str], operator.add]
            merge: str

        g = StateGraph(F)

        def make(i: int) -> Any:
            async def expert(s: F) -> dict[str, list[str]]:
                return {"experts": [await node_text(f"{s['prompt']} as e{i}")]}
            return expert

        async def merge(s: F) -> dict[str, str]:
            return {"merge": await node_text(" ".join(s["experts"]))}

        g.add_node("merge", merge)
        for i in range(5):
            g.add_node(f"e{i}", make(i))
            g.add_edge(START, f"e{i}")
            g.add_edge(f"e{i}", "merge")
        g.add_edge("merge", END)
    app = g.compile(checkpointer=saver)
    runs = iter(range(10**9))

    async def once() -> float:
        config = {"configurable": {"thread_id": f"run-{next(runs)}"}} if saver is not None else None
        t0 = time.perf_counter()
        await app.ainvoke({"prompt": "q"}, config)
        return time.perf_counter() - t0

    return once


async def sqlite_saver(stack: contextlib.AsyncExitStack) -> Any:
    """LangGraph's SQLite checkpointer on a fresh file, or None when it is not installed."""
    try:
        from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
    except ImportError:
        return None
    path = Path(tempfile.mkdtemp()) / "checkpoints.sqlite"
    return await stack.enter_async_context(AsyncSqliteSaver.from_conn_string(str(path)))


async def measure(runners: dict[str, Runner | None], n: int, blocks: int = 10) -> dict[str, float | None]:
    """Median run time of each runner, interleaved in blocks so that the machine's load, which
    drifts on a shared box, falls on every runner alike."""
    live = {k: r for k, r in runners.items() if r is not None}
    for r in live.values():  # warm up
        for _ in range(5):
            await r()
    times: dict[str, list[float]] = {k: [] for k in live}
    for _ in range(blocks):
        for k, r in live.items():
            for _ in range(max(1, n // blocks)):
                times[k].append(await r())
    return {k: statistics.median(times[k]) if k in times else None for k in runners}


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iterations", type=int, default=200)
    n = ap.parse_args().iterations
    print(f"median per run over {n} runs, divided by the model-calling steps; microseconds per step")
    print(f"{'graph':7} {'steps':>5} | {'ours':>6} {'+record':>8} | {'langgraph':>9} {'+sqlite':>8} | "
          f"{'ours/lg':>8} {'+record/+sqlite':>16} {'+record/lg':>11}")
    lg = None
    for label, text, steps in (("chain", CHAIN, 3), ("fanout", FANOUT, 6)):
        async with contextlib.AsyncExitStack() as stack:
            saver = await sqlite_saver(stack)
            t = await measure({
                "ours": ours(text, False), "record": ours(text, True), "lg": langgraph(label),
                "lg_db": langgraph(label, saver) if saver is not None else None,
            }, n)
        lg = t["lg"]

        def us(x: float | None, steps: int = steps) -> str:
            return f"{x / steps * 1e6:.0f}" if x else "n/a"

        def ratio(a: float | None, b: float | None) -> str:
            return f"{a / b:.2f}x" if a and b else "n/a"

        print(f"{label:7} {steps:5} | {us(t['ours']):>6} {us(t['record']):>8} | {us(t['lg']):>9} "
              f"{us(t['lg_db']):>8} | {ratio(t['ours'], t['lg']):>8} {ratio(t['record'], t['lg_db']):>16} "
              f"{ratio(t['record'], t['lg']):>11}")
    if not lg:
        print("langgraph is not installed: pip install langgraph langgraph-checkpoint-sqlite")
    print("target: ours at most 0.25x LangGraph's per-step overhead")


if __name__ == "__main__":
    asyncio.run(main())
