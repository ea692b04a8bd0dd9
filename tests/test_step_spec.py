"""The flow model as a union on ``kind`` (flows/spec.py): each kind validates its own keys, a key
of another kind is refused where it is written (file:line), and the JSON Schema says the same."""

from __future__ import annotations

import json

import jsonschema
import pytest

from deliberate.errors import FlowError
from deliberate.flows import load_flow_text
from deliberate.flows.spec import (
    FunctionCallStep,
    GenerateStep,
    JudgeStep,
    Template,
    VoteStep,
    flow_json_schema,
)
from test_engine import registry

HEAD = "name: t\ninputs: {prompt: {}}\nsteps:\n  a: {for_each: [x, y], prompt: '{{ item }}'}\n"


@pytest.mark.parametrize("lines,key,kind", [
    (["prompt: hi", "on_fail: fail"], "on_fail", "generate"),
    (["prompt: hi", "with: {text: x}"], "with", "generate"),
    (["kind: vote", "from: a", "target: a"], "target", "vote"),
    (["kind: judge", "target: a", "rubric: r", "for_each: [1]", "threshold: 5"], "for_each", "judge"),
    (["kind: judge", "from: a", "target: a", "rubric: r", "threshold: 5"], "from", "judge"),
    (["kind: history", "model: m1"], "model", "history"),
    (["kind: summary", "prompt: hi"], "prompt", "summary"),
])
def test_a_key_of_another_kind_is_refused_at_its_line(lines: list[str], key: str, kind: str) -> None:
    text = HEAD + "  b:\n" + "".join(f"    {line}\n" for line in lines)
    with pytest.raises(FlowError) as exc:
        load_flow_text(text, "t.yaml", registry())
    [problem] = exc.value.problems
    assert f"'{key}' is not allowed on a {kind} step" in problem.message
    assert problem.line == 6 + next(i for i, line in enumerate(lines) if line.startswith(key + ":"))


def test_every_kind_validates_as_its_own_model() -> None:
    flow = load_flow_text(HEAD + "  g: {prompt: '{{ a }}'}\n  j: {kind: judge, target: g, rubric: r, threshold: 5}\n"
                          "  v: {kind: vote, from: a}\n  h: {kind: history, with: {limit: 2}}\n",
                          "t.yaml", registry()).flow
    assert [type(flow.steps[n]) for n in "agjvh"] == [GenerateStep, GenerateStep, JudgeStep, VoteStep, FunctionCallStep]
    # a key of another kind reads as unset, so code walking every step needn't switch on the kind
    assert flow.steps["g"].target is None and flow.steps["j"].for_each is None and flow.steps["h"].model is None
    assert flow.steps["g"].with_ == {}
    with pytest.raises(AttributeError):
        _ = flow.steps["g"].promtp  # a typo is still an error


def test_each_kind_says_its_templates_and_edges() -> None:
    flow = load_flow_text(
        "name: t\ninputs: {prompt: {}, ms: {type: list, default: [m1]}}\nsteps:\n"
        "  a: {for_each: '{{ ms }}', model: '{{ item }}', system: s, prompt: p, when: prompt}\n"
        "  j: {kind: judge, target: a2, rubric: '{{ prompt }}', threshold: 5}\n  a2: {prompt: x}\n"
        "  v: {kind: vote, from: a}\n  h: {kind: task_analysis, with: {text: '{{ prompt }}'}}\n",
        "t.yaml", registry()).flow
    assert flow.steps["a"].templates() == [Template("prompt", "p"), Template("system", "s"),
                                           Template("model", "{{ item }}"), Template("when", "prompt", True),
                                           Template("for_each", "ms", True)]
    assert flow.steps["j"].templates() == [Template("rubric", "{{ prompt }}")]
    assert flow.steps["h"].templates() == [Template("with.text", "{{ prompt }}")]
    assert (flow.steps["j"].edges(), flow.steps["v"].edges(), flow.steps["a"].edges()) == ({"a2"}, {"a"}, set())


def test_an_unknown_kind_is_still_named_with_a_suggestion() -> None:
    with pytest.raises(FlowError) as exc:
        load_flow_text(HEAD + "  b: {kind: histroy, with: {limit: 2}}\n", "t.yaml", registry())
    assert "unknown step kind 'histroy'" in exc.value.line() and "history" in str(exc.value.problems[0].hint)


def test_the_json_schema_is_a_union_on_kind() -> None:
    schema = json.loads(json.dumps(flow_json_schema()))
    jsonschema.Draft202012Validator.check_schema(schema)

    def ok(step: dict[str, object]) -> bool:
        try:
            jsonschema.validate({"name": "t", "steps": {"s": step}}, schema)
        except jsonschema.ValidationError:
            return False
        return True

    assert ok({"prompt": "p"}) and ok({"kind": "generate", "prompt": "p", "for_each": ["a"]})
    assert ok({"kind": "judge", "target": "a", "rubric": "r", "threshold": 5, "on_fail": "fail"})
    assert ok({"kind": "vote", "from": "a", "tie": "last"}) and ok({"kind": "history", "with": {"limit": 2}})
    assert not ok({"prompt": "p", "on_fail": "fail"})  # a judge's key on a generate step
    assert not ok({"kind": "vote", "from": "a", "rubric": "r"})
    assert not ok({"kind": "history", "model": "m1"})
    assert not ok({"kind": "histroy"})  # only installed kinds
    variants = schema["properties"]["steps"]["additionalProperties"]["oneOf"]
    assert len(variants) >= 4
