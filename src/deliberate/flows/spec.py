"""The flow language as pydantic models (``extra="forbid"`` everywhere).

A step is one model per kind, chosen by its ``kind`` (``generate`` when it has none): ``judge``,
``vote``, a function step such as ``task_analysis``, ``resources``, ``history`` or ``summary`` (any
kind in the ``deliberate.steps`` entry point group), or a kind a plugin adds through the
``deliberate.step_kinds`` group with a model of its own. A key that belongs to another kind is an
error where it is written. Edges are the template references and a kind's own edges (a judge's
target, a vote's ``from``); ``needs`` adds an edge without one. See docs/flows.md.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from importlib.metadata import entry_points
from typing import Annotated, Any, ClassVar, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic import ValidationError as PydanticValidationError
from pydantic_core import CoreSchema, InitErrorDetails, PydanticCustomError, core_schema

from .functions import function_kinds

log = logging.getLogger("deliberate.flows")

#: Names every template may use besides inputs and steps.
BUILTIN_NAMES = {"item": "the current element of a for_each step",
                 "index": "the 0-based position of the current for_each element",
                 "round": "the current round (1-based) inside a rounds block, else 1"}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class InputSpec(_Model):
    """A flow input. The positional PROMPT of ``deliberate run`` fills the input named
    ``prompt`` (or the first required one)."""

    description: str = ""
    type: Literal["text", "list", "number"] = "text"
    default: Any = None
    required: bool | None = None

    @property
    def is_required(self) -> bool:
        """Whether a run must give it (it is required, or has no default)."""
        return self.required if self.required is not None else self.default is None


class Defaults(_Model):
    """Settings every step inherits unless it sets its own."""

    model: str | None = None
    strategy: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    seed: int | None = None


class Template(NamedTuple):
    """One template of a step: where it is (``prompt``, ``with.text``), its text, and whether it
    is an expression evaluated once (``when``, ``for_each``) rather than text rendered."""

    field: str
    source: str
    expression: bool = False


def for_each_expression(value: str) -> str:
    """``"{{ models }}"`` and ``"models"`` both name the expression ``models``."""
    v = value.strip()
    if v.startswith("{{") and v.endswith("}}"):
        v = v[2:-2].strip()
    return v


#: What the keys of the built-in kinds read as on a step of another kind: unset. Code that walks
#: every step (the graph, the checks, ``flows show``) reads ``step.for_each`` or ``step.model``
#: without switching on the kind; validation has already refused such a key where it was written.
_UNSET_ELSEWHERE: dict[str, Any] = dict.fromkeys(
    ("prompt", "system", "for_each", "model", "strategy", "max_tokens", "temperature", "seed",
     "target", "rubric", "threshold", "from_"))


class Step(_Model):
    """What every step has, whatever its kind. Each kind is a subclass with its own fields; a plugin
    kind subclasses this (or :class:`ModelStep`) with ``kind: Literal["its name"]``, lists its
    template fields in ``template_fields`` and, when a field names another step, returns it from
    :meth:`edges`."""

    kind: str = Field("generate", description="generate | judge | vote | a function or plugin step kind")
    description: str = ""
    needs: list[str] = Field(default_factory=list, description="extra edges without a reference")
    when: str | None = Field(None, description="expression; the step is skipped when it is false")
    optional: bool = Field(False, description="a failure of this step does not fail the run")

    #: Whether the step calls a model (its value is an answer: the default output prefers one).
    calls_model: ClassVar[bool] = False
    #: Fields rendered as templates, in the order the checks report them.
    template_fields: ClassVar[tuple[str, ...]] = ()

    def templates(self) -> list[Template]:
        """Every template of the step (the graph's edges and the checks come from these)."""
        out = [Template(f, v) for f in self.template_fields if isinstance(v := getattr(self, f), str) and v]
        if self.when:
            out.append(Template("when", self.when, expression=True))
        return out

    def edges(self) -> set[str]:
        """Steps this step reads by name rather than through a template."""
        return set()

    def __getattr__(self, name: str) -> Any:
        if name in _UNSET_ELSEWHERE:
            return _UNSET_ELSEWHERE[name]
        if name == "with_":
            return {}
        return super().__getattr__(name)  # type: ignore[misc]  # pydantic's (private attributes)


class ModelStep(Step):
    """A step whose kind may call a model, with the model settings it may set."""

    model: str | None = Field(None, description="model key; may be a template such as '{{ item }}'")
    strategy: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    seed: int | None = None

    def templates(self) -> list[Template]:
        """The kind's templates, and ``model`` when it holds a template tag."""
        out = super().templates()
        if self.model and ("{{" in self.model or "{%" in self.model):
            out.insert(len(out) - bool(self.when), Template("model", self.model))
        return out


class GenerateStep(ModelStep):
    """``kind: generate`` (the default): one model call, or one per element of ``for_each``."""

    kind: Literal["generate"] = Field("generate", description="generate (the default)")
    prompt: str | None = Field(None, description="Jinja2 template of the user message")
    system: str | None = Field(None, description="Jinja2 template of the system message")
    for_each: list[Any] | str | None = Field(
        None, description="fan-out: a list, or an expression naming a list input; each element is `item`"
    )

    calls_model: ClassVar[bool] = True
    template_fields: ClassVar[tuple[str, ...]] = ("prompt", "system")

    def templates(self) -> list[Template]:
        """Also ``for_each`` when it is an expression."""
        out = super().templates()
        if isinstance(self.for_each, str):
            out.append(Template("for_each", for_each_expression(self.for_each), expression=True))
        return out


class JudgeStep(ModelStep):
    """``kind: judge``: scores ``target`` against a rubric and re-runs it below the threshold."""

    kind: Literal["judge"]
    target: str | None = Field(None, description="judge: the step whose output is scored")
    rubric: str | None = Field(None, description="judge: what a good answer is (template)")
    threshold: float | None = Field(None, description="judge: the score to reach")
    retries: int = Field(2, ge=0, le=10, description="judge: re-runs of the target at most")
    scale: int = Field(10, ge=2, le=100, description="judge: scores run from 1 to scale")
    system: str | None = Field(None, description="Jinja2 template of the judge's system message")
    on_fail: Literal["keep_best", "fail"] = Field(
        "keep_best", description="judge: when no attempt reaches the threshold, keep the best draft and "
        "go on (shown as below threshold), or fail the run"
    )

    calls_model: ClassVar[bool] = True
    template_fields: ClassVar[tuple[str, ...]] = ("system", "rubric")

    def edges(self) -> set[str]:
        """The target: a judge runs after it, and whoever reads it reads the judged version."""
        return {self.target} if self.target else set()


class VoteStep(ModelStep):
    """``kind: vote``: the majority answer of a for_each step's branches."""

    kind: Literal["vote"]
    from_: str | None = Field(None, alias="from", description="vote: the for_each step voted over")
    tie: Literal["first", "last", "shortest", "longest"] = Field(
        "first", description="vote: which of the tied answers wins (by branch order or length)"
    )

    def edges(self) -> set[str]:
        """The for_each step voted over."""
        return {self.from_} if self.from_ else set()


class FunctionCallStep(Step):
    """A function step (``kind: history`` and the rest of the ``deliberate.steps`` group): Python
    code given ``with:`` as its arguments."""

    kind: str = Field(description="a function step kind (deliberate.steps entry point group)")
    with_: dict[str, Any] = Field(default_factory=dict, alias="with",
                                  description="function step arguments; strings are templates")

    def templates(self) -> list[Template]:
        """Also every string of ``with:``."""
        out = super().templates()
        out += [Template(f"with.{k}", v) for k, v in self.with_.items() if isinstance(v, str)]
        return out


#: The built-in kinds' models (the union's members). A new built-in kind adds its model here and
#: its handler to ``deliberate.engine.kinds``.
BUILTIN_KINDS: dict[str, type[Step]] = {"generate": GenerateStep, "judge": JudgeStep, "vote": VoteStep}


@lru_cache(maxsize=1)
def plugin_kinds() -> dict[str, Any]:
    """Every plugin step kind from the ``deliberate.step_kinds`` entry point group: name ->
    ``deliberate.engine.steps.StepKind`` (its ``spec`` model and its handler; validation reads the
    one, the engine runs the other). One that cannot load, takes a built-in name or has no spec
    model of its name is left out, with a warning: a broken plugin must not break every flow."""
    out: dict[str, Any] = {}
    for ep in entry_points(group="deliberate.step_kinds"):
        try:
            obj = ep.load()
        except Exception as exc:
            log.warning("step kind %r (%s) failed to load: %s: %s", ep.name, ep.value, type(exc).__name__, exc)
            continue
        spec = getattr(obj, "spec", None)
        # a built-in name is refused: a flow's meaning must not depend on what is installed
        if ep.name in BUILTIN_KINDS or not callable(getattr(obj, "run", None)) or not (
                isinstance(spec, type) and issubclass(spec, Step) and _names_kind(spec, ep.name)):
            log.warning("step kind %r (%s) is not a StepKind whose spec has kind %r; left out",
                        ep.name, ep.value, ep.name)
            continue
        out[ep.name] = obj
    return out


def _names_kind(spec: type[Step], name: str) -> bool:
    """Whether ``spec`` validates ``kind: name`` and nothing else (and so is that kind's model)."""
    field = spec.model_fields.get("kind")
    return field is not None and getattr(field.annotation, "__args__", None) == (name,)


def step_model(kind: str) -> type[Step] | None:
    """The model of a step kind; None for a kind nobody registered."""
    builtin = BUILTIN_KINDS.get(kind)
    if builtin is not None:
        return builtin
    plugin = plugin_kinds().get(kind)
    if plugin is not None:
        spec: type[Step] = plugin.spec
        return spec
    return FunctionCallStep if kind in function_kinds() else None


def step_keys(model: type[BaseModel]) -> list[str]:
    """The keys a step of this model may have, as written in YAML (``from``, not ``from_``)."""
    return [f.alias or n for n, f in model.model_fields.items()]


_COMMON_KEYS = set(step_keys(Step))
_KNOWN_KEYS = set(step_keys(FunctionCallStep)).union(*(step_keys(m) for m in BUILTIN_KINDS.values()))


def validate_step(data: Any) -> Step:
    """A step's data as the model of its kind. A key of another kind is refused with the kind
    named (``'on_fail' is not allowed on a generate step``); errors keep their location within
    the step, so the checks point at the line of the key."""
    if isinstance(data, Step):
        return data
    if not isinstance(data, dict):
        return Step.model_validate(data)  # refused: "Input should be a valid dictionary"
    kind = data.get("kind", "generate")
    model = step_model(kind) if isinstance(kind, str) else None
    if model is None:
        # an unknown kind (named by the checks, with a did-you-mean) or not a name at all (refused
        # by `kind: str`): its other keys mean nothing yet
        model, data = FunctionCallStep, {k: v for k, v in data.items() if k in _COMMON_KEYS}
    try:
        return model.model_validate(data)
    except PydanticValidationError as exc:
        errors: list[InitErrorDetails] = []
        for e in exc.errors(include_url=False):
            key = e["loc"][0] if e["loc"] else None
            if e["type"] == "extra_forbidden" and len(e["loc"]) == 1 and key in _known_keys():
                error = PydanticCustomError("kind_field", f"'{key}' is not allowed on a {kind} step")
            else:  # as pydantic said it (the same type and message)
                error = PydanticCustomError(e["type"], e["msg"])
            errors.append({"type": error, "loc": e["loc"], "input": e["input"]})
        raise PydanticValidationError.from_exception_data(exc.title, errors) from None


def _known_keys() -> set[str]:
    keys = set(_KNOWN_KEYS)
    for plugin in plugin_kinds().values():
        keys.update(step_keys(plugin.spec))
    return keys


class _ByKind:
    """``Annotated[Step, _ByKind]``: validated by :func:`validate_step`; in the JSON Schema, one
    alternative per kind (the built-in ones, each installed function step kind, each plugin)."""

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_plain_validator_function(validate_step)

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: CoreSchema, handler: GetJsonSchemaHandler) -> dict[str, Any]:
        plugins = plugin_kinds()
        members: list[type[BaseModel]] = [*BUILTIN_KINDS.values(), *(p.spec for p in plugins.values())]
        variants = [handler(m.__pydantic_core_schema__) for m in members]
        functions = sorted(set(function_kinds()) - set(BUILTIN_KINDS) - set(plugins))
        if functions:
            fn = handler(FunctionCallStep.__pydantic_core_schema__)
            fn = handler.resolve_ref_schema(fn) if "$ref" in fn else fn
            fn = {**fn, "properties": {**fn["properties"], "kind": {"enum": functions, "title": "Kind"}}}
            variants.append(fn)
        return {"oneOf": variants}


class Rounds(_Model):
    """Repeat some steps: after the first pass, run them again until ``until`` holds or ``max``
    rounds have run. ``carry`` maps a name the loop reads to the loop step whose last output it
    means from round 2 on (for example ``{creator: refiner}``: the refined answer becomes the new
    draft)."""

    steps: list[str]
    max: int = Field(2, ge=1, le=20)
    until: str | None = None
    carry: dict[str, str] = Field(default_factory=dict)


class Flow(_Model):
    """A deliberation workflow: a DAG of named steps."""

    name: str
    description: str = ""
    inputs: dict[str, InputSpec] = Field(default_factory=dict)
    defaults: Defaults = Field(default_factory=Defaults)
    steps: dict[str, Annotated[Step, _ByKind]]
    rounds: Rounds | None = None
    output: str | None = Field(None, description="the step whose value is the flow's answer")


def flow_json_schema() -> dict[str, Any]:
    """A JSON Schema of the flow format, for editors (``deliberate flows schema``)."""
    schema = Flow.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "deliberate flow"
    return schema
