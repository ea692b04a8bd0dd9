"""Running flow tests: each case runs its flow through the run service, on a registry where every
model key is served by the ``replies`` backend under the gateway's real layers (no model is
ever called), and its expectations are checked against what the run did."""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Settings, get_settings
from ..engine.executor import RunOptions
from ..errors import DeliberateError
from ..gateway.gateway import Gateway
from ..registry import Registry
from ..services.run import OutputOptions, RunOutcome, RunRequest, Services, run
from .backend import PROVIDER, RepliesBackend, parse_replies
from .expect import Failure, check
from .replies import Problems, Script
from .spec import Case, LoadedTests

#: what a registry entry keeps when the replies backend serves it: its name, window and prices
_DROP = {"source": None, "litellm_model": None, "api_base": None, "api_key_env": None, "rate_limit": None,
         "min_vram_gb": None, "quantization": "none", "device": "auto"}


def replies_registry(base: Registry) -> Registry:
    """``base`` with every model served by the replies backend: same keys, context windows, cost
    profiles and strategies (retries, timeouts, fallbacks), nothing that reaches a model."""
    models = {k: m.model_copy(update={"provider": PROVIDER, **_DROP}) for k, m in base.models.items()}
    return Registry(models, dict(base.strategies), dict(base.sources), base.default_model, base.default_strategy)


@dataclass
class CaseResult:
    """How one case went: its failures (empty: passed) and unused replies (a problem of the file)."""

    file: str
    flow: str
    case: str
    index: int = 0  # the case's position in its file
    line: int | None = None  # where the case starts in its file
    failures: list[Failure] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)  # "file:line: ..." lines
    seconds: float = 0.0
    actual: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "flow": self.flow, "case": self.case, "passed": self.passed,
                "seconds": round(self.seconds, 3), "failures": [f.to_json() for f in self.failures],
                "unused_replies": self.unused,
                "actual": {k: v for k, v in self.actual.items() if k != "record"}}


def observe(outcome: RunOutcome, script: Script, gateway: Gateway) -> dict[str, Any]:
    """What a case's run did, in the terms of :class:`~.spec.Expect`."""
    rec = outcome.record
    assert rec is not None
    calls: dict[str, int] = {"total": len(script.calls)}
    prompts: dict[str, list[str]] = {}
    for c in script.calls:
        calls[c.step] = calls.get(c.step, 0) + 1
        prompts.setdefault(c.step, []).append(c.prompt)
    steps = {n: {"status": s.status, "output": s.output, "error": s.error} for n, s in rec.steps.items()}
    judges = {n: {"passed": v.outcome == "passed", "score": v.score, "attempts": v.attempts}
              for n, s in rec.steps.items() if (v := s.judge_verdict()) is not None}
    votes = {n: {"winner": s.vote.winner, "tie": s.vote.tie, "counts": s.vote.counts}
             for n, s in rec.steps.items() if s.vote is not None}
    events: dict[str, int] = {}
    for ev in gateway.events:
        events[ev.kind] = events.get(ev.kind, 0) + 1
    t = rec.totals
    return {
        "status": "ok" if outcome.status == "succeeded" else "failed", "output": outcome.result.output,
        "error": outcome.result.error, "calls": calls, "prompts": prompts,
        "rounds": {"count": len(rec.rounds), "stop_reason": rec.rounds[-1].stop_reason if rec.rounds else None},
        "steps": steps, "skipped": [n for n, s in steps.items() if s["status"] == "skipped"],
        "judges": judges, "votes": votes, "events": events,
        "tokens": {"prompt": t.prompt_tokens, "completion": t.completion_tokens,
                   "total": t.prompt_tokens + t.completion_tokens},
        "cost": t.cost_usd, "record": rec.model_dump(mode="json"),
    }


class Runner:
    """Runs the cases of loaded test files, ``concurrency`` at a time."""

    def __init__(self, registry: Registry, settings: Settings | None = None, concurrency: int = 8) -> None:
        # scripted replies come at once: a judge's wait before asking its target again (there to
        # spare a real model's rate limit) would only slow the suite, as a retry's backoff would
        self.settings = (settings or get_settings()).model_copy(update={"judge_backoff_s": 0.0})
        self.registry = registry  # already a replies_registry
        self.concurrency = concurrency
        # runs/ for the history step: a folder that is never made, so a case sees no history
        self._history = Path(tempfile.gettempdir()) / f"deliberate-test-no-runs-{uuid.uuid4().hex}"

    async def run_case(self, tests: LoadedTests, index: int) -> CaseResult:
        """Run one case and check it."""
        case = tests.spec.cases[index]
        result = CaseResult(str(tests.path), tests.loaded.flow.name, case.name, index,
                            tests.where(("cases", index)).line)
        started = time.perf_counter()
        script = case_script(case)
        gateway = Gateway(self.registry, settings=self.settings, backends={PROVIDER: RepliesBackend(script=script)},
                          retry_base_s=0.001)
        gateway.cache = None  # every call reaches the backend, whatever DELIBERATE_CACHE says
        options = RunOptions(models=dict(case.models), strategy=case.strategy, rounds=case.rounds,
                             max_cost=case.max_cost)
        env = Services(settings=self.settings, registry=self.registry, gateway=gateway, subscribers=[script])
        request = RunRequest(tests.loaded, dict(case.inputs), options,
                             OutputOptions(record=False, runs_dir=self._history, cache=False))
        try:
            outcome = await run(request, env)
        except DeliberateError as exc:  # refused before it ran (a bad model key, an input)
            result.failures.append(Failure("run", f"refused: {exc.line()}"))
            result.seconds = time.perf_counter() - started
            return result
        finally:
            await gateway.aclose()
        result.actual = observe(outcome, script, gateway)
        result.failures = [Failure("replies", p) for p in dict.fromkeys(script.problems)]
        result.failures += check(case.expect, result.actual)
        for step in script.unused() if result.passed else []:  # a failing case says why already
            p = tests.where(("cases", index, "replies", step))
            result.unused.append(f"{p.location()}: replies for step {step!r}, which never ran in case "
                                 f"{case.name!r} (remove them, or fix the case)")
        result.seconds = time.perf_counter() - started
        return result

    async def run_all(self, files: list[LoadedTests], keyword: str | None = None) -> list[CaseResult]:
        """Every case (whose name or file matches ``keyword``), concurrently; results in file order."""
        sem = asyncio.Semaphore(self.concurrency)

        async def one(t: LoadedTests, i: int) -> CaseResult:
            async with sem:
                return await self.run_case(t, i)

        jobs = [one(t, i) for t in files for i, c in enumerate(t.spec.cases) if selected(keyword, t, c)]
        return list(await asyncio.gather(*jobs))


def case_script(case: Case) -> Script:
    """A fresh script of a case's replies (checked when the file was loaded)."""
    problems: Problems = []
    return Script(parse_replies(case.replies, ("replies",), problems))


def selected(keyword: str | None, tests: LoadedTests, case: Case) -> bool:
    """``-k``: every word (``and``/``or``/``not`` as pytest's, simplified) in the case's id."""
    if not keyword:
        return True
    text = f"{tests.path} {tests.loaded.flow.name} {case.name}".lower()
    alternatives = [a.strip() for a in keyword.lower().split(" or ")]
    for alt in alternatives:
        words = [w for w in alt.split(" and ")]
        ok = True
        for w in words:
            w = w.strip()
            neg = w.startswith("not ")
            w = w[4:].strip() if neg else w
            if (w in text) == neg:
                ok = False
        if ok:
            return True
    return False
