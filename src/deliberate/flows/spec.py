"""The flow language as pydantic models (``extra="forbid"`` everywhere).

One grammar for every step: a step has a ``kind`` (``generate`` by default, ``judge``, ``vote``,
or a function step such as ``task_analysis``, ``resources``, ``history``, ``summary`` and any kind
registered in the ``deliberate.steps`` entry point group). Edges are the template references;
``needs`` adds an edge without one. See docs/flows.md.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

#: Names every template may use besides inputs and steps.
BUILTIN_NAMES = {"item": "the current element of a for_each step",
                 "index": "the 0-based position of the current for_each element",
                 "round": "the current round (1-based) inside a rounds block, else 1"}

#: The fields that only some kinds accept (everything else is common to all kinds).
KIND_FIELDS: dict[str, set[str]] = {
    "generate": {"prompt", "system", "for_each"},
    "judge": {"target", "rubric", "threshold", "retries", "scale", "system", "on_fail"},
    "vote": {"from_", "tie"},
    "function": {"with_"},
}
SPECIFIC_FIELDS = set().union(*KIND_FIELDS.values())


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
        return self.required if self.required is not None else self.default is None


class Defaults(_Model):
    """Settings every step inherits unless it sets its own."""

    model: str | None = None
    strategy: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    seed: int | None = None


class Step(_Model):
    """One step of a flow."""

    kind: str = Field("generate", description="generate | judge | vote | a function step kind")
    description: str = ""
    # generate
    prompt: str | None = Field(None, description="Jinja2 template of the user message")
    system: str | None = Field(None, description="Jinja2 template of the system message")
    for_each: list[Any] | str | None = Field(
        None, description="fan-out: a list, or an expression naming a list input; each element is `item`"
    )
    # every model-calling kind
    model: str | None = Field(None, description="model key; may be a template such as '{{ item }}'")
    strategy: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    seed: int | None = None
    # graph and control
    needs: list[str] = Field(default_factory=list, description="extra edges without a reference")
    when: str | None = Field(None, description="expression; the step is skipped when it is false")
    optional: bool = Field(False, description="a failure of this step does not fail the run")
    # judge
    target: str | None = Field(None, description="judge: the step whose output is scored")
    rubric: str | None = Field(None, description="judge: what a good answer is (template)")
    threshold: float | None = Field(None, description="judge: the score to reach")
    retries: int = Field(2, ge=0, le=10, description="judge: re-runs of the target at most")
    scale: int = Field(10, ge=2, le=100, description="judge: scores run from 1 to scale")
    on_fail: Literal["keep_best", "fail"] = Field(
        "keep_best", description="judge: when no attempt reaches the threshold, keep the best draft and "
        "go on (shown as below threshold), or fail the run"
    )
    # vote
    from_: str | None = Field(None, alias="from", description="vote: the for_each step voted over")
    tie: Literal["first", "last", "shortest", "longest"] = Field(
        "first", description="vote: which of the tied answers wins (by branch order or length)"
    )
    # function steps
    with_: dict[str, Any] = Field(default_factory=dict, alias="with",
                                  description="function step arguments; strings are templates")

    @property
    def calls_model(self) -> bool:
        return self.kind in ("generate", "judge")


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
    steps: dict[str, Step]
    rounds: Rounds | None = None
    output: str | None = Field(None, description="the step whose value is the flow's answer")


def flow_json_schema() -> dict[str, Any]:
    """A JSON Schema of the flow format, for editors (``deliberate flows schema``)."""
    schema = Flow.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "deliberate flow"
    return schema
