"""Working with recorded runs: re-run from a step, re-run all, resume, compare.

Each ``plan_*`` function decides, from a record and a flow, which steps keep their recorded value
(``preset``: the engine emits them as reused, no model call) and which run again. Two rules hold
for all of them: what re-runs takes everything downstream of it along, and a ``rounds`` block
re-runs as a whole, from round 1 (its rounds feed each other, so half a loop has no meaning).
See docs/records.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError

from ..errors import InputError, RecordError
from ..flows.graph import descendants
from ..flows.loader import LoadedFlow, load_flow_data
from ..flows.spec import Defaults, Flow
from ..registry import Registry, did_you_mean
from .schema import RunRecord
from .store import validation_problem

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
    base: RunRecord | None = None  # resume: the record to continue, tidied for the steps that re-run


class _Options(BaseModel):
    """The run options a record holds, as the engine takes them (what ``deliberate run`` accepts)."""

    model_config = ConfigDict(extra="allow")

    models: dict[str, str] = Field(default_factory=dict)
    strategy: str | None = None
    rounds: int | None = Field(None, ge=1, le=20)
    seed: int | None = None
    max_cost: float | None = Field(None, ge=0, allow_inf_nan=False)
    temperature: float | None = Field(None, ge=0, le=2, allow_inf_nan=False)


def recorded_options(record: RunRecord) -> dict[str, Any]:
    """The record's options, checked: a record is untrusted input, and the engine takes these as
    they are."""
    data = dict(record.options)
    if data.get("models") is None:
        data["models"] = {}
    try:
        return _Options.model_validate(data).model_dump()
    except PydanticValidationError as exc:
        raise RecordError(f"invalid run record: options.{validation_problem(exc)}",
                          where=f"{record.run_id}.json") from None


def recorded_flow(record: RunRecord, registry: Registry | None) -> LoadedFlow:
    """The flow exactly as the run used it, validated again."""
    try:
        return load_flow_data(record.flow, f"{record.run_id}.json#flow", registry)
    except InputError as exc:
        raise RecordError(f"the recorded flow no longer validates: {exc.line()}") from None
    except RecursionError:
        raise RecordError("the recorded flow no longer validates: nested too deeply",
                          where=f"{record.run_id}.json#flow") from None


def _value_shape_ok(v: Any) -> bool:
    """Whether a recorded step value has the shape :func:`engine.values.to_json` writes."""
    if not isinstance(v, dict) or "type" not in v:
        return True  # read back as its text
    kind = v["type"]
    if kind == "verdict":
        score = v.get("score")
        return (isinstance(score, int | float) and not isinstance(score, bool) and math.isfinite(score)
                and isinstance(v.get("passed"), bool) and isinstance(v.get("feedback"), str)
                and _is_int(v.get("attempts")) and _is_int(v.get("scale", 10)))
    if kind == "branches":
        branches = v.get("branches")
        return isinstance(branches, list) and all(
            isinstance(b, dict) and isinstance(b.get("text"), str) and _is_int(b.get("index", 0))
            and isinstance(b.get("model", ""), str) for b in branches)
    if kind == "data":
        return isinstance(v.get("data"), dict | list)
    return isinstance(v.get("text", ""), str)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def recorded_values(record: RunRecord, names: Iterable[str]) -> dict[str, Any]:
    """The recorded values of ``names`` (the steps a replay or resume keeps), checked: the engine
    reads them back as a step's output."""
    from ..engine.values import as_text, from_json, to_json

    out = {}
    for n in names:
        value = record.steps[n].value
        ok = _value_shape_ok(value)
        if ok:
            try:
                back = from_json(value)
                as_text(back)
                to_json(back)
            except (KeyError, TypeError, ValueError, AttributeError, IndexError, RecursionError):
                ok = False
        if not ok:
            raise RecordError(f"invalid run record: steps.{n}.value: not a step value as deliberate records it",
                              where=f"{record.run_id}.json")
        out[n] = value
    return out


def close(loaded: LoadedFlow, names: set[str]) -> set[str]:
    """``names`` plus everything downstream of them, with a touched rounds block taken whole."""
    out = set(names)
    loop = set(loaded.flow.rounds.steps) if loaded.flow.rounds else set()
    while True:
        grown = set(out)
        for n in out:
            grown |= descendants(loaded.deps, n)
        if grown & loop:
            grown |= loop
        if grown == out:
            return out
        out = grown


def finished_steps(record: RunRecord, loaded: LoadedFlow) -> set[str]:
    """Steps whose recorded value is final. A loop step's value is final only when its rounds
    block ended (a stop reason was recorded) or the whole block was reused: a run killed in
    round 2 shows the loop steps 'succeeded' with round 1's values."""
    done = {n for n, s in record.steps.items() if s.status in DONE and n in loaded.flow.steps}
    r = loaded.flow.rounds
    if r:
        loop = set(r.steps)
        ended = bool(record.rounds) and record.rounds[-1].stop_reason is not None
        reused = all(record.steps.get(n) is not None and record.steps[n].status == "reused" for n in loop)
        if not (ended or reused):
            done -= loop
    return done


def _effective(flow: Flow, name: str) -> dict[str, Any]:
    """What decides a step's output besides its inputs: its spec, the defaults it inherits and,
    for a loop step, the rounds block."""
    step = flow.steps[name]
    eff = step.model_dump(by_alias=True)
    for key in Defaults.model_fields:
        if eff.get(key) is None:
            eff[key] = getattr(flow.defaults, key)
    if flow.rounds and name in flow.rounds.steps:
        eff["<rounds>"] = flow.rounds.model_dump()
    return eff


def changed_steps(record: RunRecord, new_flow: LoadedFlow) -> set[str]:
    """Steps of ``new_flow`` that differ from the recorded flow (new steps count as changed)."""
    try:
        old: Flow | None = Flow.model_validate(record.flow)
    except Exception:  # a record of an older grammar: compare the raw specs
        old = None
    out = set()
    old_steps = record.flow.get("steps")
    old_steps = old_steps if isinstance(old_steps, dict) else {}
    for name in new_flow.flow.steps:
        if old is None:
            if old_steps.get(name) != new_flow.data["steps"].get(name):
                out.add(name)
        elif name not in old.steps or _effective(old, name) != _effective(new_flow.flow, name):
            out.add(name)
    return out


def plan_from(record: RunRecord, step: str, registry: Registry | None,
              new_flow: LoadedFlow | None = None, models: dict[str, str] | None = None) -> Plan:
    """Re-run ``step`` and everything downstream; reuse every other recorded output.

    ``new_flow`` (an edited flow file) and ``models`` (``--model`` overrides: ``STEP=KEY`` or
    ``*`` for every re-run step) may change steps upstream of ``step``: those re-run too, and a
    note says so."""
    loaded = new_flow or recorded_flow(record, registry)
    steps = loaded.flow.steps
    if step not in steps:
        raise InputError(f"--from {step!r}: the flow has no such step", hint=did_you_mean(step, list(steps)))
    models = dict(models or {})
    for name, key in models.items():
        if name != "*" and name not in steps:
            raise InputError(f"--model {name}={key}: the flow has no step {name!r}",
                             hint=did_you_mean(name, list(steps)))
    recorded = recorded_options(record)
    old_models = dict(recorded["models"])
    new_models = {**old_models, **models}
    notes: list[str] = []
    downstream = close(loaded, {step})
    if new_flow is not None:
        edited = changed_steps(record, new_flow)
        upstream = sorted(edited - downstream, key=loaded.order.index)
        if upstream:
            notes.append(f"the edited flow changed {', '.join(upstream)} upstream of {step}; "
                         "re-running from there too")
        start = {step} | edited
    else:
        start = {step}
    remodelled = {n for n in steps if n in models and _new_model(record, old_models, n, models[n])}
    upstream_models = sorted(remodelled - close(loaded, start), key=loaded.order.index)
    if upstream_models:
        notes.append(f"--model changes the model of {', '.join(upstream_models)} upstream of {step}; "
                     "re-running from there too")
    start |= remodelled
    rerun = close(loaded, start)
    missing = set(steps) - rerun - finished_steps(record, loaded)
    if missing:
        notes.append(f"the record has no finished output for {', '.join(sorted(missing, key=loaded.order.index))}; "
                     "running it too")
        rerun = close(loaded, rerun | missing)
    loop = loaded.flow.rounds
    if loop and rerun & set(loop.steps) and step in loop.steps:
        notes.append(f"{step} is in the rounds block: re-running the block ({', '.join(loop.steps)}) "
                     "from round 1")
    preset = recorded_values(record, [n for n in steps if n not in rerun])
    inputs = {k: v for k, v in record.inputs.items() if k in loaded.flow.inputs}
    dropped = sorted(set(record.inputs) - set(inputs))
    if dropped:
        notes.append(f"the edited flow has no input {', '.join(dropped)}; dropped")
    options = {**recorded, "models": new_models}
    return Plan(loaded, inputs, options, preset, [n for n in loaded.order if n in rerun], notes)


def _new_model(record: RunRecord, old_models: dict[str, str], step: str, key: str) -> bool:
    """Whether ``--model STEP=KEY`` changes what answered ``step`` in the recorded run."""
    if old_models.get(step) == key:
        return False
    rec = record.steps.get(step)
    used = {c.model_requested or c.model_key for c in rec.calls} if rec else set()
    return used != {key}


def plan_rerun(record: RunRecord, registry: Registry | None, new_flow: LoadedFlow | None = None,
               models: dict[str, str] | None = None) -> Plan:
    """The whole flow again with the recorded inputs and settings (``models`` added on top)."""
    loaded = new_flow or recorded_flow(record, registry)
    recorded = recorded_options(record)
    options = {**recorded, "models": {**recorded["models"], **(models or {})}}
    inputs = {k: v for k, v in record.inputs.items() if k in loaded.flow.inputs}
    notes = [f"re-running {record.run_id} ({record.flow_name}) with the same inputs and settings"]
    return Plan(loaded, inputs, options, {}, list(loaded.order), notes)


def plan_resume(record: RunRecord, registry: Registry | None) -> Plan:
    """Finish an interrupted or crashed run: finished steps are reused, the rest run (steps
    that were in flight run again from the start)."""
    if record.status not in ("running", "interrupted"):
        raise RecordError(f"run {record.run_id} is {record.status}; only running or interrupted runs resume",
                          hint="use 'deliberate replay --rerun' or '--from STEP' to run it again")
    loaded = recorded_flow(record, registry)
    done = finished_steps(record, loaded)
    rerun = close(loaded, set(loaded.flow.steps) - done)
    preset = recorded_values(record, [n for n in loaded.flow.steps if n not in rerun])
    options = recorded_options(record)
    notes: list[str] = []
    base = record.model_copy(deep=True)
    loop = loaded.flow.rounds
    if loop and rerun & set(loop.steps):
        # The block re-runs from round 1: drop the half-finished rounds so they are not counted
        # twice. The calls stay: they were made and paid for.
        base.rounds = []
        for n in loop.steps:
            base.steps[n].rounds = []
            if base.steps[n].status in DONE:
                base.steps[n].status = "pending"
        if record.rounds:
            notes.append(f"the rounds block ({', '.join(loop.steps)}) had not finished; "
                         "running it again from round 1")
    spent = sum(c.cost_usd for s in record.steps.values() for c in s.calls)
    if options.get("max_cost") is not None and spent:
        options["max_cost"] = max(0.0, float(options["max_cost"]) - spent)
        notes.append(f"budget: ${spent:.4f} already spent, ${options['max_cost']:.4f} left")
    return Plan(loaded, dict(record.inputs), options, preset,
                [n for n in loaded.order if n in rerun], notes, base)


def compare(a: RunRecord, b: RunRecord) -> list[dict[str, Any]]:
    """Step by step: status, output equality, models, tokens, cost."""
    rows = []
    for name in dict.fromkeys(list(a.order) + list(b.order)):
        fa, fb = _facts(a.steps.get(name)), _facts(b.steps.get(name))
        rows.append({"step": name, "a": fa, "b": fb, "same_output": fa["output"] == fb["output"],
                     "same_models": fa["models"] == fb["models"]})
    return rows


def _facts(s: Any) -> dict[str, Any]:
    if s is None:
        return {"status": "absent", "output": None, "models": [], "calls": 0, "tokens": 0, "cost_usd": 0.0}
    return {"status": s.status, "output": s.output,
            "models": sorted({c.model_key for c in s.calls}), "calls": len(s.calls),
            "tokens": sum(c.prompt_tokens + c.completion_tokens for c in s.calls),
            "cost_usd": sum(c.cost_usd for c in s.calls)}
