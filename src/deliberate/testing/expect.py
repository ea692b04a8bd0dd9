"""Expectations against what a case's run did: each check that does not hold is one
:class:`Failure` with the expected and the actual value (the CLI shows their diff)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from .spec import Expect, Match, Number

_PATH = re.compile(r"\.?([^.\[\]]+)|\[(\d+)\]")


@dataclass
class Failure:
    """One check that did not hold: what (``output``, ``calls.refiner``), why, both values."""

    what: str
    message: str
    expected: Any = None
    actual: Any = None

    def to_json(self) -> dict[str, Any]:
        return {"what": self.what, "message": self.message, "expected": self.expected, "actual": self.actual}


def dig(value: Any, path: str) -> tuple[bool, Any]:
    """The value at ``path`` (``a.b[0]``, a leading ``$`` allowed) in JSON data: (found, value)."""
    for key, index in _PATH.findall(path.lstrip("$")):
        if index:
            if not isinstance(value, list) or int(index) >= len(value):
                return False, None
            value = value[int(index)]
        elif isinstance(value, dict) and key in value:
            value = value[key]
        else:
            return False, None
    return True, value


def check_match(what: str, m: Match, actual: Any) -> list[Failure]:
    """Every way ``actual`` (a text, or any value) breaks ``m``."""
    out: list[Failure] = []
    if m.json_path is not None:
        try:
            data = json.loads(actual) if isinstance(actual, str) else actual
        except ValueError:
            return [Failure(what, f"not JSON, so {m.json_path} cannot be read", m.json_path, actual)]
        found, actual = dig(data, m.json_path)
        what = f"{what} {m.json_path}"
        if not found:
            return [Failure(what, f"{m.json_path} not found", m.json_path, data)]
    text = actual if isinstance(actual, str) else json.dumps(actual) if actual is not None else ""
    if "equals" in m.model_fields_set and actual != m.equals and not (
            isinstance(m.equals, str) and isinstance(actual, str) and actual.strip() == m.equals.strip()):
        out.append(Failure(what, "differs", m.equals, actual))
    for needle in _listed(m.contains):
        if needle not in text:
            out.append(Failure(what, f"does not contain {needle!r}", needle, actual))
    for needle in _listed(m.not_contains):
        if needle in text:
            out.append(Failure(what, f"contains {needle!r}", f"not {needle!r}", actual))
    if m.regex is not None and not re.search(m.regex, text, re.S):
        out.append(Failure(what, f"does not match /{m.regex}/", m.regex, actual))
    return out


def _listed(value: str | list[str] | None) -> list[str]:
    return [] if value is None else [value] if isinstance(value, str) else value


def _num(x: float) -> float | int:
    return int(x) if float(x).is_integer() else x


def check_number(what: str, n: Number, actual: Any) -> list[Failure]:
    if not isinstance(actual, (int, float)):
        return [Failure(what, "no such number", n.model_dump(exclude_none=True), actual)]
    if n.equals is not None and abs(actual - n.equals) > 1e-9:
        return [Failure(what, "differs", _num(n.equals), actual)]
    if n.min is not None and actual < n.min:
        return [Failure(what, f"below {n.min:g}", f">= {n.min:g}", actual)]
    if n.max is not None and actual > n.max:
        return [Failure(what, f"above {n.max:g}", f"<= {n.max:g}", actual)]
    return []


def _same(what: str, expected: Any, actual: Any) -> list[Failure]:
    return [] if expected == actual else [Failure(what, "differs", expected, actual)]


def check(e: Expect, a: dict[str, Any]) -> list[Failure]:
    """Every expectation of ``e`` that the observed run ``a`` (see runner.observe) breaks."""
    out = _same("status", e.status, a["status"])
    if e.output is not None:
        out += check_match("output", e.output, a["output"])
    if e.error is not None:
        out += check_match("error", e.error, a["error"] or "")
    for step, n in (e.calls or {}).items():
        out += _same(f"calls.{step}", n, a["calls"].get(step, 0))
    if e.rounds is not None:
        if e.rounds.count is not None:
            out += check_number("rounds.count", e.rounds.count, a["rounds"]["count"])
        if e.rounds.stop_reason is not None:
            out += _same("rounds.stop_reason", e.rounds.stop_reason, a["rounds"]["stop_reason"])
    for step, m in (e.prompts or {}).items():
        sent = a["prompts"].get(step, [])
        if isinstance(m, list):
            out += _same(f"prompts.{step} (calls)", len(m), len(sent)) if len(m) != len(sent) else []
            for i, (mi, p) in enumerate(zip(m, sent, strict=False)):
                out += check_match(f"prompts.{step}[{i}]", mi, p)
        elif not sent:
            out.append(Failure(f"prompts.{step}", "the step was sent no prompt", m.model_dump(exclude_none=True), None))
        else:
            out += check_match(f"prompts.{step}", m, sent[-1])
    for step, se in (e.steps or {}).items():
        got = a["steps"].get(step, {"status": "pending", "output": None, "error": None})
        if se.status is not None:
            out += _same(f"steps.{step}.status", se.status, got["status"])
        if se.output is not None:
            out += check_match(f"steps.{step}.output", se.output, got["output"])
        if se.error is not None:
            out += check_match(f"steps.{step}.error", se.error, got["error"] or "")
    if e.skipped is not None:
        out += _same("skipped", sorted(e.skipped), sorted(a["skipped"]))
    out += _judges_votes(e, a)
    for kind, count in (e.events or {}).items():
        out += check_number(f"events.{kind}", count, a["events"].get(kind, 0))
    if e.tokens is not None:
        for part in ("prompt", "completion", "total"):
            if (n := getattr(e.tokens, part)) is not None:
                out += check_number(f"tokens.{part}", n, a["tokens"][part])
    if e.cost is not None:
        out += check_number("cost", e.cost, a["cost"])
    for path, m in (e.record or {}).items():
        found, value = dig(a["record"], path)
        out += check_match(f"record.{path}", m, value) if found else [
            Failure(f"record.{path}", "no such field in the run record", m.model_dump(exclude_none=True), None)]
    return out


def _judges_votes(e: Expect, a: dict[str, Any]) -> list[Failure]:
    out: list[Failure] = []
    for step, je in (e.judges or {}).items():
        got = a["judges"].get(step)
        if got is None:
            out.append(Failure(f"judges.{step}", "the judge did not decide", je.model_dump(exclude_none=True), None))
            continue
        if je.passed is not None:
            out += _same(f"judges.{step}.passed", je.passed, got["passed"])
        if je.score is not None:
            out += check_number(f"judges.{step}.score", je.score, got["score"])
        if je.attempts is not None:
            out += check_number(f"judges.{step}.attempts", je.attempts, got["attempts"])
    for step, ve in (e.votes or {}).items():
        got = a["votes"].get(step)
        if got is None:
            out.append(Failure(f"votes.{step}", "the vote did not decide", ve.model_dump(exclude_none=True), None))
            continue
        if ve.winner is not None:
            out += check_match(f"votes.{step}.winner", ve.winner, got["winner"])
        if ve.tie is not None:
            out += _same(f"votes.{step}.tie", ve.tie, got["tie"])
        if ve.counts is not None:
            out += _same(f"votes.{step}.counts", ve.counts, got["counts"])
    return out
