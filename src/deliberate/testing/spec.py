"""The flow-test file format as pydantic models (``extra="forbid"`` everywhere), and its loading:
YAML through :mod:`deliberate.yamlio` (line marks, no YAML bombs), the schema, then the checks
against the flow (steps that exist, replies only for steps that call a model). Every problem
names the file and line, like a flow's (:class:`~deliberate.errors.FlowError`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic import ValidationError as PydanticValidationError

from ..errors import DeliberateError, FlowError, Problem
from ..flows.loader import LoadedFlow, load_flow, resolve_flow_path
from ..flows.spec import ModelStep
from ..registry import Registry, did_you_mean
from ..yamlio import Marks, YamlProblem, load_yaml_file, locate
from .backend import parse_replies
from .replies import Problems


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Match(_Strict):
    """A text check: ``equals``, ``contains``, ``not_contains``, ``regex``; with ``json_path``
    (``$.a.b[0]``) the text is read as JSON and the checks apply to the value found there. A
    plain value is ``equals``."""

    equals: Any = None
    contains: str | list[str] | None = None
    not_contains: str | list[str] | None = None
    regex: str | None = None
    json_path: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _plain(cls, value: Any) -> Any:
        # a plain text or number is `equals`; a list is not (write {equals: [...]} for one)
        return {"equals": value} if isinstance(value, (str, int, float, bool)) or value is None else value


class Number(_Strict):
    """A number check: a plain number is ``equals``; else ``min`` and/or ``max``."""

    equals: float | None = None
    min: float | None = None
    max: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _plain(cls, value: Any) -> Any:
        return {"equals": value} if isinstance(value, (int, float)) and not isinstance(value, bool) else value


class RoundsExpect(_Strict):
    count: Number | None = None
    stop_reason: Literal["until", "max"] | None = None


class StepExpect(_Strict):
    status: Literal["succeeded", "failed", "skipped", "pending"] | None = None
    output: Match | None = None
    error: Match | None = None


class JudgeExpect(_Strict):
    passed: bool | None = None
    score: Number | None = None
    attempts: Number | None = None


class VoteExpect(_Strict):
    winner: Match | None = None
    tie: bool | None = None
    counts: dict[str, int] | None = None


class TokensExpect(_Strict):
    prompt: Number | None = None
    completion: Number | None = None
    total: Number | None = None


class Expect(_Strict):
    """What a case checks; only what it names. ``status`` is ``ok`` unless it says ``failed``."""

    status: Literal["ok", "failed"] = "ok"
    output: Match | None = None
    error: Match | None = None
    calls: dict[str, int] | None = None  # step -> backend calls (retries included); "total"
    rounds: RoundsExpect | None = None
    prompts: dict[str, Match | list[Match]] | None = None  # the last (or each) prompt a step was sent
    steps: dict[str, StepExpect] | None = None
    skipped: list[str] | None = None  # exactly the steps skipped
    judges: dict[str, JudgeExpect] | None = None
    votes: dict[str, VoteExpect] | None = None
    events: dict[Literal["retry", "fallback", "breaker_open"], Number] | None = None
    tokens: TokensExpect | None = None
    cost: Number | None = None
    record: dict[str, Match] | None = None  # a dotted path in the run record -> its check


class Case(_Strict):
    name: str = Field(min_length=1)
    description: str = ""
    inputs: dict[str, Any] = Field(default_factory=dict)
    models: dict[str, str] = Field(default_factory=dict)  # step (or "*") -> model key, as --model
    strategy: str | None = None
    rounds: int | None = Field(None, ge=1, le=20)
    max_cost: float | None = Field(None, ge=0)
    replies: dict[str, Any] = Field(default_factory=dict)
    expect: Expect = Field(default_factory=Expect)


class TestFile(_Strict):
    __test__: ClassVar[bool] = False  # not a pytest test class

    flow: str = Field(min_length=1)
    description: str = ""
    cases: list[Case] = Field(min_length=1)


@dataclass
class LoadedTests:
    """A validated test file: its cases, the flow they test, and where each key is."""

    path: Path
    spec: TestFile
    loaded: LoadedFlow
    marks: Marks

    def where(self, loc: tuple[Any, ...]) -> Problem:
        line, col = locate(self.marks, loc)
        return Problem(str(self.path), line, col, "")


def flow_path(ref: str, test_file: Path) -> Path:
    """The flow a test file names: a path (relative to the test file), else a flow beside it or
    one level up (``flows/tests/x.yaml`` tests ``flows/x.yaml``), else the lookup order's."""
    here = test_file.parent
    if ref.endswith((".yaml", ".yml")) or "/" in ref:
        return here / ref
    for cand in (here.parent / f"{ref}.yaml", here / f"{ref}.yaml"):
        if cand.is_file() and cand.resolve() != test_file.resolve():
            return cand
    return resolve_flow_path(ref)


def load_tests(path: Path, registry: Registry) -> LoadedTests:
    """Load and check one test file; :class:`FlowError` with every problem (exit 2)."""
    try:
        data, marks = load_yaml_file(path)
    except YamlProblem as exc:
        raise FlowError([exc.problem]) from None
    problems: list[Problem] = []

    def add(loc: tuple[Any, ...], message: str, hint: str | None = None) -> None:
        line, col = locate(marks, loc)
        problems.append(Problem(str(path), line, col, message, hint))

    if not isinstance(data, dict):
        add((), "a test file is a mapping with 'flow' and 'cases'")
        raise FlowError(problems)
    try:
        spec = TestFile.model_validate(data)
    except PydanticValidationError as exc:
        for err in exc.errors():
            loc = _in_data(data, err["loc"])  # without pydantic's union tags ("str", "list[Match]")
            if err["type"] == "extra_forbidden":
                add(loc, f"unknown key {loc[-1]!r}", _allowed(loc))
            elif err["type"] == "missing":
                add(loc, f"missing required key {err['loc'][-1]!r}")
            else:
                add(loc, f"{'.'.join(str(p) for p in loc)}: {err['msg']}")
        raise FlowError(problems) from None
    try:
        loaded = load_flow(flow_path(spec.flow, path), registry)
    except DeliberateError as exc:
        add(("flow",), f"flow {spec.flow!r}: {exc.line()}")
        raise FlowError(problems) from None
    for i, case in enumerate(spec.cases):
        _check_case(loaded, case, ("cases", i), add, registry)
    if problems:
        raise FlowError(problems)
    return LoadedTests(path, spec, loaded, marks)


def _in_data(data: Any, loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """The parts of an error's location that are keys and indexes of the data."""
    out: list[Any] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            continue
        out.append(part)
    return tuple(out)


def _model_in(tp: Any) -> tuple[type[BaseModel] | None, int]:
    """The model an annotation holds, and how many mapping keys or list indexes lie before it."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp, 0
    args = get_args(tp)
    if get_origin(tp) in (dict, list) and args:
        model, skip = _model_in(args[-1])
        return model, skip + 1
    for a in args:
        model, skip = _model_in(a)
        if model is not None:
            return model, skip
    return None, 0


def _allowed(loc: tuple[Any, ...]) -> str | None:
    """'did you mean' (or the allowed keys) for an unknown key at ``loc``."""
    model: type[BaseModel] | None = TestFile
    skip = 0
    for part in loc[:-1]:
        if skip:
            skip -= 1
            continue
        if model is None or part not in model.model_fields:
            return None
        model, skip = _model_in(model.model_fields[str(part)].annotation)
    if model is None:
        return None
    fields = list(model.model_fields)
    return did_you_mean(str(loc[-1]), fields) or f"allowed: {', '.join(fields)}"


def _check_case(loaded: LoadedFlow, case: Case, loc: tuple[Any, ...], add: Any, registry: Registry) -> None:
    flow = loaded.flow
    for step, key in case.models.items():
        if key not in registry.models:
            add((*loc, "models", step), f"unknown model key {key!r}",
                did_you_mean(key, list(registry.models)) or "add it to models.yaml")
    if case.strategy is not None and case.strategy not in registry.strategies:
        add((*loc, "strategy"), f"unknown strategy {case.strategy!r}",
            did_you_mean(case.strategy, list(registry.strategies)) or f"known: {', '.join(registry.strategies)}")
    steps = list(flow.steps)
    calling = [n for n, s in flow.steps.items() if isinstance(s, ModelStep) and s.kind != "vote"]

    def step_names(where: tuple[Any, ...], names: Any, allowed: list[str], what: str) -> None:
        for name in names:
            if name not in allowed:
                if name in steps:
                    add((*where, name), f"step {name!r} is a {flow.steps[name].kind} step: it {what}")
                else:
                    add((*where, name), f"flow {flow.name!r} has no step {name!r}",
                        did_you_mean(str(name), steps) or f"steps: {', '.join(steps)}")

    for name in case.inputs:
        if name not in flow.inputs:
            add((*loc, "inputs", name), f"flow {flow.name!r} has no input {name!r}",
                did_you_mean(name, list(flow.inputs)) or f"inputs: {', '.join(flow.inputs) or 'none'}")
    for name, spec in flow.inputs.items():
        if spec.is_required and name not in case.inputs:
            add((*loc, "inputs") if "inputs" in case.model_fields_set else loc, f"case {case.name!r} gives no input {name!r} "
                f"({spec.description or 'required'})", f"add it: inputs: {{{name}: ...}}")
    step_names((*loc, "models"), [m for m in case.models if m != "*"], steps, "")
    step_names((*loc, "replies"), case.replies, calling, "calls no model, so it takes no replies")
    problems: Problems = []
    parse_replies(case.replies, (*loc, "replies"), problems)
    for where, message in problems:
        add(where, message)
    e, at = case.expect, (*loc, "expect")
    step_names((*at, "calls"), [n for n in e.calls or {} if n != "total"], calling, "calls no model")
    step_names((*at, "prompts"), e.prompts or {}, calling, "is sent no prompt")
    step_names((*at, "steps"), e.steps or {}, steps, "")
    for i, name in enumerate(e.skipped or []):
        step_names((*at, "skipped", i), [name], steps, "")
    step_names((*at, "judges"), e.judges or {}, [n for n in steps if flow.steps[n].kind == "judge"], "is not a judge")
    step_names((*at, "votes"), e.votes or {}, [n for n in steps if flow.steps[n].kind == "vote"], "is not a vote")
    if e.rounds is not None and flow.rounds is None:
        add((*at, "rounds"), f"flow {flow.name!r} has no rounds block")
