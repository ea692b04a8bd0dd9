"""Working with recorded runs: re-run from a step, re-run all, resume, compare."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import InputError, RecordError
from ..flows.graph import descendants
from ..flows.loader import LoadedFlow, load_flow_data
from ..registry import Registry, did_you_mean
from .schema import RunRecord

DONE = ("succeeded", "reused", "skipped")


@dataclass
class Plan:
    """What a replay or resume will reuse and what it will run."""

    loaded: LoadedFlow
    inputs: dict[str, Any]
    options: dict[str, Any]
    preset: dict[str, Any]
    rerun: list[str]
    notes: list[str] = field(default_factory=list)


def recorded_flow(record: RunRecord, registry: Registry | None) -> LoadedFlow:
    try:
        return load_flow_data(record.flow, f"{record.run_id}.json#flow", registry)
    except InputError as exc:
        raise RecordError(f"the recorded flow no longer validates: {exc.line()}") from None


def _loop_closure(loaded: LoadedFlow, names: set[str]) -> set[str]:
    """A rounds block re-runs whole: touching one loop step re-runs the loop and its dependants."""
    r = loaded.flow.rounds
    if r and names & set(r.steps):
        names |= set(r.steps)
        for s in r.steps:
            names |= descendants(loaded.deps, s)
    return names


def plan_from(record: RunRecord, step: str, registry: Registry | None,
              new_flow: LoadedFlow | None = None) -> Plan:
    """Re-run ``step`` and everything downstream; reuse every other recorded output."""
    loaded = new_flow or recorded_flow(record, registry)
    steps = loaded.flow.steps
    if step not in steps:
        raise InputError(f"--from {step!r}: the flow has no such step", hint=did_you_mean(step, list(steps)))
    notes: list[str] = []
    start = {step}
    if new_flow is not None:
        old = record.flow.get("steps", {})
        changed = {n for n in steps if old.get(n) != new_flow.data["steps"].get(n)}
        upstream_changed = sorted(changed - {step} - descendants(loaded.deps, step))
        if upstream_changed:
            notes.append(f"the edited flow changed {', '.join(upstream_changed)} upstream of {step}; "
                         "re-running from there too")
        start |= changed
    rerun = set(start)
    for s in start:
        rerun |= descendants(loaded.deps, s)
    rerun = _loop_closure(loaded, rerun)
    preset = {}
    for name in steps:
        if name in rerun:
            continue
        rec = record.steps.get(name)
        if rec is None or rec.status not in DONE:
            rerun.add(name)
            continue
        preset[name] = rec.value
    rerun = _loop_closure(loaded, rerun)
    preset = {k: v for k, v in preset.items() if k not in rerun}
    return Plan(loaded, dict(record.inputs), dict(record.options), preset,
                [n for n in loaded.order if n in rerun], notes)


def plan_resume(record: RunRecord, registry: Registry | None) -> Plan:
    """Finish an interrupted or crashed run: finished steps are reused, the rest run."""
    if record.status not in ("running", "interrupted"):
        raise RecordError(f"run {record.run_id} is {record.status}; only running or interrupted runs resume",
                          hint="use 'deliberate replay --rerun' or '--from STEP' to run it again")
    loaded = recorded_flow(record, registry)
    done = {n for n, s in record.steps.items() if s.status in DONE}
    rerun = _loop_closure(loaded, set(loaded.flow.steps) - done)
    for s in list(rerun):
        rerun |= descendants(loaded.deps, s)
    preset = {n: record.steps[n].value for n in done if n not in rerun}
    return Plan(loaded, dict(record.inputs), dict(record.options), preset,
                [n for n in loaded.order if n in rerun])


def compare(a: RunRecord, b: RunRecord) -> list[dict[str, Any]]:
    """Step by step: status, output equality, models, tokens, cost."""
    rows = []
    for name in dict.fromkeys(list(a.order) + list(b.order)):
        sa, sb = a.steps.get(name), b.steps.get(name)

        def facts(s: Any) -> dict[str, Any]:
            if s is None:
                return {"status": "absent", "output": None, "models": [], "tokens": 0, "cost_usd": 0.0}
            return {"status": s.status, "output": s.output,
                    "models": sorted({c.model_key for c in s.calls}),
                    "tokens": sum(c.prompt_tokens + c.completion_tokens for c in s.calls),
                    "cost_usd": sum(c.cost_usd for c in s.calls)}

        fa, fb = facts(sa), facts(sb)
        rows.append({"step": name, "a": fa, "b": fb, "same_output": fa["output"] == fb["output"]})
    return rows
