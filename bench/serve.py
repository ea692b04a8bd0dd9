"""What ``deliberate serve`` adds to one proxied model call, against a zero-latency model (the test
server of tests/servers, in its own process on 127.0.0.1), side by side with the LiteLLM proxy
forwarding the same calls to the same model in the same run; and a streamed flow's time to its
first reasoning token.

Three servers, each in its own process: the model, ``deliberate serve`` (one worker, a model key
pointing at the model, an API key, its access log on, every call a recorded run as always) and
``litellm --config`` (one worker, a master key, the same model). The client sends the same
``POST /v1/chat/completions`` (non-streamed, 16 tokens at most) to each:

- latency: K calls one after another; the time per call, and the time added per call over the
  model alone (``direct``);
- throughput: T calls, C at a time: calls per second;
- stream: ``flow:two`` (a draft step, then the answer) streamed: time to the first reasoning
  delta (the draft step's header), to the first reasoning token (the model's first token of the
  draft), to the first answer token, and to ``[DONE]``; with the model's own first streamed token
  for reference.

Rounds are interleaved (each round runs every side, in a rotating order) so that a busy machine
skews all sides alike; the table shows the best and the median of the rounds. Target: serve's
added latency at most 1.2x the LiteLLM proxy's (medians).

LiteLLM's proxy needs ``litellm[proxy]``, which the project does not depend on: run this with a
Python that has both this checkout and the proxy installed (its ``litellm`` executable is looked
up next to that Python, or pass ``--litellm PATH``). Without it, the bench says so and prints
deliberate's figures alone.

    python -m venv /tmp/benchvenv
    /tmp/benchvenv/bin/pip install -e '.[serve]' 'litellm[proxy]'
    /tmp/benchvenv/bin/python bench/serve.py [--rounds 5] [--calls 50] [--total 200] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from fake_model import FakeModel

ROOT = Path(__file__).resolve().parents[1]
TARGET = 1.2  # serve's added latency per call, at most this times the LiteLLM proxy's
TEXT = "Hello from the fake model."
KEY = "sk-bench-" + secrets.token_hex(16)
FLOW = """name: two
description: a draft, then the answer
inputs:
  prompt: {description: the task}
defaults: {model: bench}
steps:
  draft: {prompt: "Draft: {{ prompt }}"}
  answer: {prompt: "Answer: {{ prompt }}\\n{{ draft }}"}
output: answer
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proxy:
    """A proxy server in its own process, its output in a log file; ready once ``ready`` answers."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], cwd: Path, port: int) -> None:
        self.name, self.port = name, port
        self.log = cwd / f"{name}.log"
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(cmd, env={**os.environ, **env}, cwd=cwd, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT)
        self.base = f"http://127.0.0.1:{port}/v1"

    def wait(self, ready: str, timeout: float) -> str | None:
        """None once ready; else why not (the end of its log)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}{ready}", timeout=2).status_code == 200:
                    return None
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        tail = self.log.read_text(errors="replace").strip().splitlines()[-3:]
        return f"{self.name} did not start ({'exited' if self.proc.poll() is not None else 'timed out'}): " \
               + " | ".join(tail)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start_deliberate(work: Path, model_base: str) -> Proxy:
    (work / "models.yaml").write_text(
        "bench:\n  provider: litellm\n  family: bench\n  litellm_model: openai/bench-model\n"
        f"  api_base: {model_base}\n  context_window: 8192\n"
        "  cost_profile: {input_per_million: 0, output_per_million: 0}\n")
    (work / "flows").mkdir()
    (work / "flows" / "two.yaml").write_text(FLOW)
    port = free_port()
    env = {"DELIBERATE_HOME": str(work / "home"), "DELIBERATE_TRUST_LOCAL_CONFIG": "1", "BENCH_SERVE_KEY": KEY,
           "LITELLM_LOCAL_MODEL_COST_MAP": "True", "NO_COLOR": "1"}
    return Proxy("deliberate", [sys.executable, "-m", "deliberate", "serve", "--port", str(port),
                                "--api-key-env", "BENCH_SERVE_KEY"], env, work, port)


def start_litellm(exe: str, work: Path, model_base: str) -> Proxy:
    (work / "litellm.yaml").write_text(
        "model_list:\n  - model_name: bench-model\n    litellm_params:\n      model: openai/bench-model\n"
        f"      api_base: {model_base}\n      api_key: none\n")
    port = free_port()
    env = {"LITELLM_MASTER_KEY": KEY, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False"}
    return Proxy("litellm", [exe, "--config", str(work / "litellm.yaml"), "--host", "127.0.0.1",
                             "--port", str(port)], env, work, port)


def body(model: str, stream: bool = False) -> dict[str, Any]:
    return {"model": model, "max_tokens": 16, "stream": stream,
            "messages": [{"role": "user", "content": "Say hello."}]}


def latency(base: str, model: str, calls: int) -> float:
    """Seconds per call, K calls one after another on one keep-alive connection."""
    with httpx.Client(headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as client:
        started = time.perf_counter()
        for _ in range(calls):
            r = client.post(f"{base}/chat/completions", json=body(model))
            if r.status_code != 200 or r.json()["choices"][0]["message"]["content"] != TEXT:
                raise SystemExit(f"{base}: {r.status_code} {r.text[:300]}")
        return (time.perf_counter() - started) / calls


async def throughput(base: str, model: str, total: int, concurrency: int) -> float:
    """Calls per second, ``total`` calls ``concurrency`` at a time."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {KEY}"}, timeout=120, limits=limits) as client:
        todo = iter(range(total))

        async def worker() -> None:
            for _ in todo:
                try:
                    r = await client.post(f"{base}/chat/completions", json=body(model))
                except httpx.TransportError as exc:
                    raise SystemExit(f"{base}: {type(exc).__name__} {exc}") from None
                if r.status_code != 200:
                    raise SystemExit(f"{base}: {r.status_code} {r.text[:300]}")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return total / (time.perf_counter() - started)


def streamed(base: str, model: str) -> dict[str, float]:
    """One streamed completion: seconds to its first reasoning delta, first reasoning token (not
    a step header), first content token, and [DONE]."""
    marks: dict[str, float] = {}
    with httpx.Client(headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as client:
        started = time.perf_counter()
        with client.stream("POST", f"{base}/chat/completions", json=body(model, stream=True)) as r:
            if r.status_code != 200:
                raise SystemExit(f"{base}: {r.status_code} {r.read()[:300]!r}")
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                now = time.perf_counter() - started
                if line == "data: [DONE]":
                    marks["done"] = now
                    break
                for choice in json.loads(line[6:]).get("choices", []):
                    delta = choice.get("delta", {})
                    reasoning = delta.get("reasoning_content") or ""
                    if reasoning:
                        marks.setdefault("reasoning", now)
                        if not reasoning.startswith("### "):
                            marks.setdefault("reasoning_token", now)
                    if delta.get("content"):
                        marks.setdefault("content", now)
    return marks


def best_median(values: list[float]) -> tuple[float, float]:
    return min(values), statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (best and median kept)")
    parser.add_argument("--calls", type=int, default=50, help="sequential calls per side per round")
    parser.add_argument("--total", type=int, default=200, help="calls per side per round for throughput")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--streams", type=int, default=10, help="streamed flow runs per round")
    parser.add_argument("--litellm", default=None, help="the LiteLLM proxy executable (default: next to python)")
    args = parser.parse_args()
    exe = args.litellm or shutil.which("litellm", path=os.pathsep.join([str(Path(sys.executable).parent),
                                                                         os.environ.get("PATH", "")]))
    if hasattr(os, "getloadavg"):
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (other work skews the numbers)")
    print(f"{args.rounds} interleaved rounds; each: {args.calls} calls one after another (latency), "
          f"{args.total} calls {args.concurrency} at a time (throughput), {args.streams} streamed flow runs\n")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "deliberate").mkdir()
        (work / "litellm").mkdir()
        model = FakeModel(TEXT)
        proxies: list[Proxy] = []
        try:
            ours = start_deliberate(work / "deliberate", model.openai_base)
            proxies.append(ours)
            theirs = start_litellm(exe, work / "litellm", model.openai_base) if exe else None
            if theirs is not None:
                proxies.append(theirs)
            problem = ours.wait("/readyz", 120)
            if problem:
                raise SystemExit(problem)
            skipped = "litellm is not installed next to this Python (pip install 'litellm[proxy]', or --litellm PATH)"
            if theirs is not None:
                skipped = theirs.wait("/health/liveliness", 180) or ""
            sides = {"direct": (model.openai_base, "bench-model"), "deliberate": (ours.base, "bench")}
            if not skipped and theirs is not None:
                sides["litellm"] = (theirs.base, "bench-model")
            measure(sides, args, skipped)
        finally:
            for p in proxies:
                p.close()
            model.close()


def measure(sides: dict[str, tuple[str, str]], args: argparse.Namespace, skipped: str) -> None:
    names = list(sides)
    lat: dict[str, list[float]] = {n: [] for n in names}
    rps: dict[str, list[float]] = {n: [] for n in names}
    marks: dict[str, list[float]] = {}
    direct_first: list[float] = []
    for name in names:  # warm-up: connections, imports, first-call paths
        latency(*sides[name], 5)
        asyncio.run(throughput(*sides[name], args.concurrency, args.concurrency))
    streamed(sides["deliberate"][0], "flow:two")
    for r in range(args.rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            lat[name].append(latency(*sides[name], args.calls))
        for name in order:
            rps[name].append(asyncio.run(throughput(*sides[name], args.total, args.concurrency)))
        runs = [streamed(sides["deliberate"][0], "flow:two") for _ in range(args.streams)]
        for key in ("reasoning", "reasoning_token", "content", "done"):
            marks.setdefault(key, []).append(statistics.median(m[key] for m in runs))
        direct_first.append(statistics.median(streamed(*sides["direct"])["content"] for _ in range(args.streams)))
    table(names, lat, rps)
    ms: Callable[[float], str] = lambda s: f"{s * 1000:.2f}"  # noqa: E731
    print(f"\nflow:two streamed through serve (medians of rounds' medians, ms): first reasoning delta "
          f"{ms(statistics.median(marks['reasoning']))}, first reasoning token "
          f"{ms(statistics.median(marks['reasoning_token']))}, first answer token "
          f"{ms(statistics.median(marks['content']))}, [DONE] {ms(statistics.median(marks['done']))}; "
          f"the model's own first streamed token {ms(statistics.median(direct_first))}")
    added = {n: statistics.median(lat[n]) - statistics.median(lat["direct"]) for n in names if n != "direct"}
    added_best = {n: min(lat[n]) - min(lat["direct"]) for n in names if n != "direct"}
    print()
    if "litellm" not in added:
        print(f"LiteLLM proxy skipped: {skipped}")
        print(f"deliberate serve added latency: {ms(added['deliberate'])} ms per call (median; best "
              f"{ms(added_best['deliberate'])} ms)")
        return
    ratio = added["deliberate"] / added["litellm"] if added["litellm"] > 0 else float("inf")
    ratio_best = added_best["deliberate"] / added_best["litellm"] if added_best["litellm"] > 0 else float("inf")
    verdict = "within" if ratio <= TARGET else "OVER"
    print(f"serve/litellm added latency {ratio:.3f}x (median; best-of-rounds {ratio_best:.3f}x): {verdict} the "
          f"target of {TARGET:.1f}x the LiteLLM proxy's added latency")
    rps_ratio = statistics.median(rps["deliberate"]) / statistics.median(rps["litellm"])
    print(f"serve/litellm throughput {rps_ratio:.3f}x (median calls per second, {args.concurrency} at a time)")
    sys.exit(0 if ratio <= TARGET else 1)


def table(names: list[str], lat: dict[str, list[float]], rps: dict[str, list[float]]) -> None:
    print(f"{'side':<12}{'ms/call best':>14}{'median':>9}{'added ms best':>15}{'median':>9}"
          f"{'calls/s best':>14}{'median':>9}")
    d_best, d_med = best_median(lat["direct"])
    for name in names:
        best, med = best_median(lat[name])
        r_best, r_med = max(rps[name]), statistics.median(rps[name])
        added = "" if name == "direct" else f"{(best - d_best) * 1000:>15.2f}{(med - d_med) * 1000:>9.2f}"
        print(f"{name:<12}{best * 1000:>14.2f}{med * 1000:>9.2f}{added or ' ' * 24}{r_best:>14.1f}{r_med:>9.1f}")


if __name__ == "__main__":
    main()
