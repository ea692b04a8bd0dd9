"""``deliberate test --update``: a failing pinned value (``status``, ``output: {equals}``,
``calls``, ``rounds``, ``skipped``, votes, judges, events, tokens, cost) is rewritten with what the
run did. Checks that are not a pinned value (``contains``, ``regex``, ``min``/``max``) are left for
a person to fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..records.store import write_atomic
from ..yamlio import load_yaml_file
from .expect import Failure
from .runner import CaseResult

_MATCHES = ("output", "error", "winner")  # fields that hold a Match (a plain value is its equals)


def _set(expect: dict[str, Any], f: Failure) -> bool:
    if f.message != "differs" or " " in f.what or "[" in f.what:
        return False
    *parents, last = f.what.split(".")
    node = expect
    for key in parents:
        nxt = node.get(key)
        if not isinstance(nxt, dict):
            return False
        node = nxt
    if last not in node:
        return False
    if last in _MATCHES and isinstance(node[last], dict):
        if set(node[last]) != {"equals"}:
            return False
        node[last]["equals"] = f.actual
    else:
        node[last] = f.actual
    return True


def update_files(results: list[CaseResult]) -> dict[str, int]:
    """Rewrite the failing pinned values of ``results`` in their files; file -> values changed."""
    by_file: dict[str, list[CaseResult]] = {}
    for r in results:
        if not r.passed:
            by_file.setdefault(r.file, []).append(r)
    changed: dict[str, int] = {}
    for file, failing in by_file.items():
        data, _marks = load_yaml_file(Path(file))
        n = 0
        for r in failing:
            expect = data["cases"][r.index].setdefault("expect", {})
            n += sum(_set(expect, f) for f in r.failures)
        if n:
            write_atomic(Path(file), yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100))
            changed[file] = n
    return changed
