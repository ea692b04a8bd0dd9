"""Property-based tests of the readers of untrusted files: the YAML loader (with anchors and
aliases), the flow validator (with hostile templates) and the CLI's validate command. Whatever
the input, the answer is a value or a clean error (exit 0 or 2), never a traceback, never a
file written, and each example finishes within Hypothesis' deadline."""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deliberate.errors import FlowError
from deliberate.flows import load_flow_text
from deliberate.flows.templates import TemplateProblem, render
from deliberate.yamlio import YamlProblem, load_yaml_text
from helpers.lanes import examples

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8),
                    st.floats(allow_nan=False))
trees = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=5), inner, max_size=5)), max_leaves=30)


@st.composite
def aliased(draw: Any) -> str:
    """YAML whose anchors are used many times: PyYAML's dumper anchors an object it meets twice."""
    leaf = draw(trees)
    layers = draw(st.integers(1, 9))
    fan = draw(st.integers(1, 9))
    doc: Any = leaf
    for _ in range(layers):
        doc = [doc] * fan
    return str(yaml.dump({"name": "fuzz", "data": doc}, Dumper=yaml.SafeDumper))


yaml_noise = st.text(alphabet=st.sampled_from(list("&*[]{}:,-!|>'\"#%@`? \n\tabc01")), max_size=120)


@settings(max_examples=examples(150), deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(aliased(), yaml_noise, trees.map(lambda t: yaml.safe_dump(t))))
def test_the_yaml_loader_answers_or_refuses_cleanly(text: str) -> None:
    try:
        load_yaml_text(text, "fuzz.yaml")
    except YamlProblem as exc:
        assert exc.line().startswith("fuzz.yaml")


fragments = st.sampled_from([
    "{{ prompt }}", "{{ prompt * 99999999 }}", "{{ 'x' * 10**10 }}", "{{ 2 ** 999999 }}",
    "{% for i in range(99999) %}{% for j in range(99999) %}.{% endfor %}{% endfor %}",
    "{{ 'x' | center(9999999999) }}", "{{ '%9999999999s' | format('x') }}", "{{ lipsum(99999) }}",
    "{{ 'x'.ljust(10**9) }}", "{{ (prompt ~ prompt) * 9999 }}", "{% set ns = namespace(s='x') %}"
    "{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
    "{{ prompt | upper }}", "{% if prompt %}yes{% endif %}", "{{", "}}", "{%", "%}", " text ",
    "{{ ''.__class__ }}", "{{ range(10) | join(',') }}", "{{ [1] | batch(999999999, 'x') | list }}",
])
templates = st.lists(fragments, min_size=1, max_size=4).map("".join)


@settings(max_examples=examples(120), deadline=3000, suppress_health_check=[HealthCheck.too_slow])
@given(templates)
def test_hostile_templates_validate_or_render_within_bounds(template: str) -> None:
    text = yaml.safe_dump({"name": "fuzz", "inputs": {"prompt": {}},
                           "steps": {"a": {"prompt": template}}, "output": "a"})
    try:
        load_flow_text(text, "fuzz.yaml")
    except FlowError as exc:
        assert exc.problems and all(p.file == "fuzz.yaml" for p in exc.problems)
        return
    try:
        out = render(template, {"prompt": "hello " * 100})
    except TemplateProblem as exc:
        assert exc.message
        return
    assert len(out) < 50_000_000


def _main(*args: str) -> tuple[int, str]:
    """The CLI's own entry point, in-process (what a subprocess would run), and its stderr."""
    from deliberate.cli.app import main

    err = io.StringIO()
    argv = sys.argv
    sys.argv = ["deliberate", *args]
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        sys.argv = argv
    return code, err.getvalue()


@settings(max_examples=examples(60), deadline=3000, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(st.one_of(yaml_noise, aliased(), templates.map(lambda t: f"name: f\nsteps:\n  a:\n    prompt: {t!r}\n")))
def test_flows_validate_exits_0_or_2_and_writes_nothing(isolated: Path, text: str) -> None:
    path = isolated / "fuzz.yaml"
    path.write_text(text)
    before = sorted(p.name for p in isolated.parent.rglob("*"))
    code, err = _main("flows", "validate", str(path))
    assert code in (0, 2), err
    assert "Traceback" not in err and "internal error" not in err
    assert sorted(p.name for p in isolated.parent.rglob("*")) == before
