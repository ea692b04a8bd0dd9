"""Engine overhead per step, against LangGraph running the same graphs, in the same process.

A zero-latency benchmark backend answers instantly, so the time measured is the orchestration:
for deliberate, template rendering, gateway layers (breaker, retry, budget), events, and
optionally the run record written after every step; for LangGraph, its graph runtime calling an
async node that returns a string. Graphs: a 3-step chain and a 5-way fan-out followed by a merge.

    pip install langgraph   # only for this benchmark
    python bench/overhead.py [--iterations 200]
"""

from __future__ import annotations

import argparse
import asyncio
import operator
import statistics
import tempfile
import time
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


async def ours(flow_text: str, n: int, record: bool) -> float:
    reg = registry()
    flow = load_flow_text(flow_text, "bench", reg)
    settings = Settings()
    runs = Path(tempfile.mkdtemp())
    times = []
    for _ in range(n):
        gw = Gateway(reg, settings=settings, backends={"zero": ZeroBackend()})
        t0 = time.perf_counter()
        out = await run_flow_async(flow, {"prompt": "q"}, registry=reg, gateway=gw, runs_dir=runs, record=record)
        times.append(time.perf_counter() - t0)
        assert out.result.status == "succeeded"
    return statistics.median(times)


async def langgraph_time(kind: str, n: int) -> float | None:
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
    app = g.compile()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        await app.ainvoke({"prompt": "q"})
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iterations", type=int, default=200)
    n = ap.parse_args().iterations
    print(f"median per run over {n} runs; per-step = run time / model-calling steps")
    print(f"{'graph':10} {'steps':>5} {'ours, no record':>16} {'ours, record':>13} {'langgraph':>10} "
          f"{'ratio (no rec)':>15} {'ratio (rec)':>12}")
    for label, text, steps in (("chain", CHAIN, 3), ("fanout", FANOUT, 6)):
        await ours(text, 5, False)  # warm up
        no_rec = await ours(text, n, False)
        rec = await ours(text, n, True)
        lg = await langgraph_time(label, n)
        def per(t: float, steps: int = steps) -> float:
            return t / steps * 1e6

        lg_s = f"{per(lg):8.0f}us" if lg else "n/a"
        r1 = f"{no_rec / lg:14.2f}x" if lg else "n/a (pip install langgraph)"
        r2 = f"{rec / lg:11.2f}x" if lg else ""
        print(f"{label:10} {steps:5} {per(no_rec):14.0f}us {per(rec):11.0f}us {lg_s:>10} {r1:>15} {r2:>12}")
    print("target: ours at most 0.25x LangGraph's per-step overhead")


if __name__ == "__main__":
    asyncio.run(main())
