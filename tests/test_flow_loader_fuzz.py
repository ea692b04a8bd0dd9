"""Fuzzing the flow loader: whatever the text, the loader answers with a FlowError (a clean
error with a location) or a valid flow, never another exception."""

from __future__ import annotations

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deliberate.errors import FlowError
from deliberate.flows import load_flow_text
from helpers.lanes import examples

names = st.sampled_from(["a", "b", "creator", "prompt", "item", "x y", "__class__", "round"])
templates = st.one_of(
    st.text(max_size=40),
    st.builds(lambda n: "{{ " + n + " }}", names),
    st.builds(lambda n, m: "{{ " + n + " }} and {{ " + m + " }}", names, names),
    st.sampled_from(["{{", "{% for %}", "{{ a.__class__ }}", "{{ a | upper }}", "{% if a %}x{% endif %}"]),
)
step = st.fixed_dictionaries({}, optional={
    "prompt": templates, "kind": st.sampled_from(["generate", "judge", "vote", "history", "nope", 3]),
    "needs": st.lists(names, max_size=3), "when": templates, "for_each": st.one_of(st.lists(names, max_size=3), names),
    "target": names, "from": names, "threshold": st.integers(-5, 20), "model": st.sampled_from(["m", "{{ item }}"]),
    "bogus": st.integers(),
})
flows = st.fixed_dictionaries({"name": st.one_of(st.text(max_size=5), st.integers())}, optional={
    "steps": st.dictionaries(names, step, max_size=4),
    "inputs": st.dictionaries(names, st.fixed_dictionaries({}, optional={"type": st.sampled_from(["text", "list", "x"])}), max_size=2),
    "rounds": st.fixed_dictionaries({"steps": st.lists(names, max_size=2)}, optional={
        "until": templates, "max": st.integers(-1, 30), "carry": st.dictionaries(names, names, max_size=2)}),
    "output": names,
})


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(flows)
def test_structured_flows_load_or_fail_cleanly(data: dict) -> None:
    text = yaml.safe_dump(data)
    try:
        loaded = load_flow_text(text, "fuzz.yaml")
    except FlowError as exc:
        assert exc.problems and all(p.file == "fuzz.yaml" for p in exc.problems)
        return
    assert set(loaded.order) == set(loaded.flow.steps)


@settings(max_examples=examples(300), deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_loads_or_fails_cleanly(text: str) -> None:
    try:
        load_flow_text(text, "fuzz.yaml")
    except FlowError as exc:
        assert exc.line()


def test_public_api_names_resolve() -> None:
    import deliberate

    for name in deliberate.__all__:
        assert getattr(deliberate, name) is not None, name
