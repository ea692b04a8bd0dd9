"""A recorded run as a flow-test case (``deliberate test --record runs/<id>.json``): its inputs
and options, every model answer replayed as a scripted reply (by step, by fan-out branch, in
order), and its answer, status and call counts pinned."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from ..errors import DeliberateError, InputError
from ..records.schema import RunRecord, StepRecord
from ..records.store import write_atomic
from ..yamlio import load_yaml_text, locate
from .spec import flow_path


def _error_kind(error_type: str) -> str:
    return "context_window" if error_type == "CapacityError" else "server_error"


def _step_replies(step: StepRecord) -> Any:
    calls = sorted(step.calls, key=lambda c: c.started_at)
    failed = {f.branch: _error_kind(f.error_type) for f in step.failures}
    if any(c.branch is not None for c in calls) or any(b is not None for b in failed):
        branches: dict[int, Any] = {}
        for c in calls:
            assert c.branch is not None
            branches.setdefault(c.branch, []).append(c.text)
        for b, kind in failed.items():
            if b is not None and b not in branches:
                branches[b] = {"error": kind}  # a lone error: every call of the branch fails
        return {"branches": dict(sorted(branches.items()))}
    if not calls and None in failed:
        return {"error": failed[None]}
    return [c.text for c in calls] or None


def case_from_record(rec: RunRecord, name: str | None = None) -> dict[str, Any]:
    """The case that replays ``rec`` and pins what it did."""
    replies = {n: r for n, s in rec.steps.items() if (r := _step_replies(s)) is not None}
    calls = {n: len(s.calls) for n, s in rec.steps.items() if s.calls}
    expect: dict[str, Any] = {"status": "ok" if rec.status == "succeeded" else "failed"}
    if rec.status == "succeeded":
        expect["output"] = {"equals": rec.output or ""}
    if not any(s.failures for s in rec.steps.values()):
        expect["calls"] = {**calls, "total": sum(calls.values())}
    if rec.rounds:
        expect["rounds"] = {"count": len(rec.rounds), "stop_reason": rec.rounds[-1].stop_reason}
    votes = {n: {"winner": s.vote.winner, "tie": s.vote.tie} for n, s in rec.steps.items() if s.vote}
    if votes:
        expect["votes"] = votes
    opts = rec.options or {}
    case: dict[str, Any] = {"name": name or f"replays run {rec.run_id}", "inputs": dict(rec.inputs)}
    if opts.get("models"):
        case["models"] = dict(opts["models"])
    for key in ("strategy", "rounds", "max_cost"):
        if opts.get(key) is not None:
            case[key] = opts[key]
    case["replies"] = replies
    case["expect"] = expect
    return case


def flow_ref(rec: RunRecord, out: Path) -> str:
    """How the test file at ``out`` names the recorded flow: its name when that finds the same
    file from there, else the path of the flow file relative to the test file."""
    source = Path(rec.flow_source)
    try:
        if flow_path(rec.flow_name, out).resolve() == source.resolve():
            return rec.flow_name
    except DeliberateError:
        pass
    if source.is_file():
        return Path(os.path.relpath(source.resolve(), out.parent.resolve())).as_posix()
    return rec.flow_name


def _dump(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)


def write_case(rec: RunRecord, out: Path, name: str | None = None) -> Path:
    """Write the record's case to ``out``: a new test file, or one more case appended to an
    existing one (its text kept as it is; refused when the result would not read back)."""
    case = case_from_record(rec, name)
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out, _dump({"flow": flow_ref(rec, out), "cases": [case]}))
        return out
    text = out.read_text(encoding="utf-8")
    data, marks = load_yaml_text(text, str(out))
    cases = data.get("cases") if isinstance(data, dict) else None
    if not isinstance(cases, list) or not cases or list(data)[-1] != "cases":
        raise InputError(f"cannot append a case to {out}: 'cases' is not its last key",
                         hint="write the case to a new file with --out")
    theirs = flow_path(str(data.get("flow")), out).resolve()
    if theirs != flow_path(flow_ref(rec, out), out).resolve():
        raise InputError(f"{out} tests flow {str(data.get('flow'))!r}; run {rec.run_id} is of flow "
                         f"{rec.flow_name!r}", hint="write the case to another file with --out")
    col = (locate(marks, ("cases", 0))[1] or 3) - 3  # the column of the items' "- "
    item = _dump([case])
    pad = " " * max(col, 0)
    added = text.rstrip("\n") + "\n" + "".join(pad + line if line else line for line in item.splitlines(True))
    again, _ = load_yaml_text(added, str(out))
    if not isinstance(again, dict) or again.get("cases", [])[-1:] != [case]:
        raise InputError(f"cannot append a case to {out} without rewriting it", hint="write the case to a new file with --out")
    write_atomic(out, added)
    return out
