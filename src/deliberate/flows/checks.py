"""Static checks: everything that can be known about a flow before a single token is spent.

All problems in a file are reported together. Each names the file, line and column.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError as PydanticValidationError

from ..errors import Problem
from ..registry import Registry, did_you_mean
from ..yamlio import Marks, locate
from .functions import function_kinds
from .graph import dependencies, find_cycle, step_templates
from .spec import (
    BUILTIN_NAMES,
    Flow,
    FunctionCallStep,
    Step,
    for_each_expression,
    plugin_kinds,
    step_keys,
    step_model,
)
from .templates import TemplateProblem, constant_problem, expression_source, parse, references, unsafe_access

NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
ALIASES = {"from_": "from", "with_": "with"}
MODEL_KINDS = ("generate", "judge", "vote")


class Checker:
    def __init__(self, file: str, marks: Marks, registry: Registry | None) -> None:
        self.file, self.marks, self.registry = file, marks, registry
        self.problems: list[Problem] = []

    def add(self, loc: tuple[Any, ...], message: str, hint: str | None = None,
            line_offset: int = 0) -> None:
        line, col = locate(self.marks, tuple(ALIASES.get(p, p) if isinstance(p, str) else p for p in loc))
        if line is not None and line_offset:
            line += line_offset
            col = None
        self.problems.append(Problem(self.file, line, col, message, hint))


def check_data(data: Any, marks: Marks, file: str, registry: Registry | None = None
               ) -> tuple[Flow | None, list[Problem]]:
    """Validate parsed YAML as a flow. Returns the flow (when the schema holds) and problems."""
    c = Checker(file, marks, registry)
    if data is None:
        c.add((), "the file is empty", "a flow needs at least 'name' and 'steps'")
        return None, c.problems
    if not isinstance(data, dict):
        c.add((), f"a flow must be a mapping, not a {type(data).__name__}")
        return None, c.problems
    try:
        flow = Flow.model_validate(data)
    except PydanticValidationError as exc:
        for err in exc.errors():
            loc = tuple(err["loc"])
            field = ".".join(str(p) for p in loc)
            msg = err["msg"]
            hint = None
            if err["type"] == "kind_field":
                pass  # "'rubric' is not allowed on a generate step", at the key
            elif err["type"] == "extra_forbidden":
                msg = f"unknown key {loc[-1]!r}"
                known = _known_keys(loc, data)
                hint = did_you_mean(str(loc[-1]), known) if known else None
                if not hint and known:
                    hint = "allowed: " + ", ".join(known)
            elif err["type"] == "missing":
                msg = f"missing required key {loc[-1]!r}"
            else:
                msg = f"{field}: {msg}"
            c.add(loc, msg, hint)
        return None, c.problems
    _check_flow(flow, c)
    return flow, c.problems


def _known_keys(loc: tuple[Any, ...], data: dict[str, Any]) -> list[str]:
    from .spec import Defaults, InputSpec, Rounds

    if len(loc) == 1:
        return list(Flow.model_fields)
    if loc[0] == "steps" and len(loc) == 3:
        step = (data.get("steps") or {}).get(loc[1])
        kind = step.get("kind", "generate") if isinstance(step, dict) else "generate"
        model = step_model(kind) if isinstance(kind, str) else None
        return step_keys(model or Step)
    if loc[0] == "rounds":
        return list(Rounds.model_fields)
    if loc[0] == "defaults":
        return list(Defaults.model_fields)
    if loc[0] == "inputs" and len(loc) == 3:
        return list(InputSpec.model_fields)
    return []


def _check_flow(flow: Flow, c: Checker) -> None:
    steps, inputs = set(flow.steps), set(flow.inputs)
    # scanning entry points costs ~0.1 s: only when a step is not of a built-in kind
    other = any(s.kind not in MODEL_KINDS for s in flow.steps.values())
    kinds = function_kinds() if other else {}
    known_kinds = list(MODEL_KINDS) + sorted(set(kinds) | set(plugin_kinds() if other else ()))
    if not flow.steps:
        c.add(("steps",), "a flow needs at least one step")
    for name in list(inputs) + list(steps):
        section = "inputs" if name in inputs else "steps"
        if not NAME_RE.match(name):
            c.add((section, name), f"{name!r} is not a valid name", "use letters, digits and _")
        elif name in BUILTIN_NAMES or name in ("loop", "range", "dict", "namespace"):
            c.add((section, name), f"{name!r} is a reserved name", "rename it")
    for name in inputs & steps:
        c.add(("steps", name), f"{name!r} is both an input and a step", "rename one of them")

    for name, step in flow.steps.items():
        _check_step(flow, name, step, c, kinds, known_kinds)

    deps = dependencies(flow)
    for name, step in flow.steps.items():
        if name in step.needs or name in deps.get(name, set()):
            c.add(("steps", name), f"step {name!r} refers to itself", "a step cannot read its own output")
    clean = {n: d - {n} for n, d in deps.items()}
    cycle = find_cycle(clean)
    if cycle:
        c.add(("steps", cycle[0]), "cycle: " + " -> ".join(cycle), "remove one of these references")

    if flow.rounds is not None:
        _check_rounds(flow, c)
    if flow.output is not None and flow.output not in steps:
        c.add(("output",), f"output names unknown step {flow.output!r}", did_you_mean(flow.output, list(steps)))
    if c.registry is not None:
        if flow.defaults.model:
            _check_model(flow.defaults.model, ("defaults", "model"), c)
        if flow.defaults.strategy:
            _check_strategy(flow.defaults.strategy, ("defaults", "strategy"), c)


def _check_step(flow: Flow, name: str, step: Step, c: Checker, kinds: dict[str, Any],
                known_kinds: list[str]) -> None:
    where = ("steps", name)
    steps = set(flow.steps)
    if step.kind not in known_kinds:
        c.add(where + ("kind",), f"unknown step kind {step.kind!r}",
              did_you_mean(step.kind, known_kinds) or "known: " + ", ".join(known_kinds))
        return
    if isinstance(step, FunctionCallStep) and step.kind in kinds:
        fn = kinds[step.kind]
        try:
            fn.params.model_validate({k: v for k, v in step.with_.items() if not (isinstance(v, str) and "{{" in v)})
        except PydanticValidationError as exc:
            for err in exc.errors():
                if err["type"] == "missing" and any(isinstance(step.with_.get(str(p)), str) for p in err["loc"]):
                    continue
                c.add(where + ("with_",) + tuple(err["loc"]),
                      f"with.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}")
    if step.kind == "generate" and not step.prompt:
        c.add(where, f"step {name!r} needs a 'prompt'")
    if step.kind == "judge":
        for req in ("target", "rubric", "threshold"):
            if getattr(step, req) is None:
                c.add(where, f"judge step {name!r} needs {req!r}")
        if step.target is not None:
            if step.target not in steps:
                c.add(where + ("target",), f"judge target {step.target!r} is not a step",
                      did_you_mean(step.target, list(steps)))
            elif flow.steps[step.target].kind != "generate":
                c.add(where + ("target",), f"judge target {step.target!r} must be a generate step")
            elif flow.steps[step.target].for_each is not None:
                c.add(where + ("target",), f"judge target {step.target!r} is a for_each step; judge its synthesis instead")
        if step.threshold is not None and not (1 <= step.threshold <= step.scale):
            c.add(where + ("threshold",), f"threshold {step.threshold:g} is outside 1..{step.scale}")
    if step.kind == "vote":
        if step.from_ is None:
            c.add(where, f"vote step {name!r} needs 'from' (a for_each step)")
        elif step.from_ not in steps:
            c.add(where + ("from_",), f"vote 'from' names unknown step {step.from_!r}",
                  did_you_mean(step.from_, list(steps)))
        elif flow.steps[step.from_].for_each is None:
            c.add(where + ("from_",), f"vote 'from' step {step.from_!r} is not a for_each step")
    for need in step.needs:
        if need not in steps:
            c.add(where + ("needs",), f"needs unknown step {need!r}", did_you_mean(need, list(steps)))

    known = set(flow.steps) | set(flow.inputs) | {"round"}
    if step.for_each is not None:
        known |= {"item", "index"}
    for field, source in step_templates(step):
        floc: tuple[str, ...] = where + (field.split(".")[0] if not field.startswith("with.") else "with_",)
        if field.startswith("with."):
            floc = where + ("with_", field.split(".", 1)[1])
        try:
            parse(source)
        except TemplateProblem as exc:
            offset = (exc.line - 1) if exc.line and field not in ("when", "for_each") else 0
            c.add(floc, f"step {name!r}, {field}: {exc.message}", line_offset=offset)
            continue
        bad = unsafe_access(source)
        if bad:
            c.add(floc, f"step {name!r}, {field}: access to {', '.join(repr(b) for b in dict.fromkeys(bad))} is refused",
                  "templates may not reach Python internals")
        limit = constant_problem(source)
        if limit is not None:
            offset = (limit.line - 1) if limit.line and field not in ("when", "for_each") else 0
            c.add(floc, f"step {name!r}, {field}: {limit.message}", line_offset=offset)
        field_known = known - {"item", "index"} if field in ("when", "for_each") else known
        for ref in sorted(references(source) - field_known):
            if ref == name:
                continue  # reported as a self-reference
            if ref in ("item", "index") and field in ("when", "for_each"):
                c.add(floc, f"step {name!r}, {field}: {ref!r} is not defined here",
                      f"{field} is evaluated once for the whole step, before its branches")
                continue
            if ref in ("item", "index"):
                c.add(floc, f"step {name!r}, {field}: {ref!r} is only defined in a for_each step")
                continue
            hint = did_you_mean(ref, sorted(known - {"round"}))
            c.add(floc, f"step {name!r}, {field}: unknown name {ref!r}",
                  hint or "use an input, a step name, item, index or round")
    if c.registry is not None:
        if step.model:
            if "{{" in step.model:
                if isinstance(step.for_each, list) and step.model.replace(" ", "") == "{{item}}":
                    for i, item in enumerate(step.for_each):
                        _check_model(str(item), where + ("for_each", i), c)
            else:
                _check_model(step.model, where + ("model",), c)
        if step.strategy:
            _check_strategy(step.strategy, where + ("strategy",), c)


def _check_rounds(flow: Flow, c: Checker) -> None:
    assert flow.rounds is not None
    r = flow.rounds
    steps = set(flow.steps)
    for i, name in enumerate(r.steps):
        if name not in steps:
            c.add(("rounds", "steps", i), f"rounds names unknown step {name!r}", did_you_mean(name, list(steps)))
    if not r.steps:
        c.add(("rounds", "steps"), "rounds needs at least one step")
    for reader, writer in r.carry.items():
        if reader not in steps and reader not in flow.inputs:
            c.add(("rounds", "carry", reader), f"carry: {reader!r} is not a step or input")
        elif reader in r.steps:
            c.add(("rounds", "carry", reader), f"carry: {reader!r} is itself a loop step")
        if writer not in r.steps:
            c.add(("rounds", "carry", reader), f"carry: {writer!r} is not one of the rounds steps")
    loop = [n for n in r.steps if n in steps]
    if loop:
        # the executor runs the loop as one node: that graph must have no cycle either
        from .graph import ancestors, dependencies

        deps = dependencies(flow)
        node = "<rounds>"
        collapsed: dict[str, set[str]] = {n: {node if d in loop else d for d in deps[n]} - {n}
                                           for n in steps if n not in loop}
        collapsed[node] = {d for n in loop for d in deps[n] if d not in loop}
        cycle = find_cycle(collapsed)
        if cycle:
            outside = [n for n in cycle if n != node]
            c.add(("rounds", "steps"), "the rounds block and " + ", ".join(repr(n) for n in dict.fromkeys(outside))
                  + " depend on each other", "add " + " and ".join(dict.fromkeys(outside))
                  + " to rounds.steps, or stop the loop steps from reading them")
        upstream = set().union(*(ancestors(deps, n) for n in loop)) - set(loop)
    else:
        upstream = set()
    if r.until is not None:
        source = expression_source(r.until)
        try:
            parse(source)
        except TemplateProblem as exc:
            c.add(("rounds", "until"), f"until: {exc.message}")
            return
        refs = references(source)
        known = steps | set(flow.inputs) | {"round"}
        unknown = refs - known
        for ref in sorted(unknown):
            c.add(("rounds", "until"), f"until: unknown name {ref!r}", did_you_mean(ref, sorted(known)))
        for ref in sorted((refs & steps) - set(loop) - upstream):
            c.add(("rounds", "until"), f"until: {ref!r} is not ready when the loop checks it",
                  "name a rounds step, or a step the rounds steps read")
        if not refs:
            c.add(("rounds", "until"), "until references nothing known",
                  "write an expression over a step's output, e.g. \"'NO ISSUES' in challenger\"")
        if unsafe_access(source):
            c.add(("rounds", "until"), "until: access to Python internals is refused")
        limit = constant_problem(source)
        if limit is not None:
            c.add(("rounds", "until"), f"until: {limit.message}")


def _check_model(key: str, loc: tuple[Any, ...], c: Checker) -> None:
    assert c.registry is not None
    if key not in c.registry.models:
        c.add(loc, f"unknown model key {key!r}",
              did_you_mean(key, list(c.registry.models)) or "see: deliberate models list")


def _check_strategy(name: str, loc: tuple[Any, ...], c: Checker) -> None:
    assert c.registry is not None
    if name not in c.registry.strategies:
        c.add(loc, f"unknown strategy {name!r}",
              did_you_mean(name, list(c.registry.strategies)) or "see: deliberate strategies list")


__all__ = ["check_data", "for_each_expression"]
