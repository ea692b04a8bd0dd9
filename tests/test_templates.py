"""Templates that only interpolate names take a fast path (a join instead of jinja's context
set-up); it must render exactly what jinja renders, and leave everything else to jinja."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from jinja2 import StrictUndefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

from deliberate.engine.builtins import Data
from deliberate.engine.values import BranchText, Verdict
from deliberate.flows import load_flow_text
from deliberate.flows.graph import step_templates
from deliberate.flows.templates import TemplateProblem, _plain, compiled, evaluate, references, render

ROOT = Path(__file__).resolve().parents[1]

CONTEXT: dict[str, Any] = {
    "prompt": "Write a haiku", "n": 3, "x": 2.5, "nothing": None, "flag": True,
    "experts": [BranchText("sec", "security", 0, "m"), BranchText("perf", "performance", 1, "m")],
    "verdict": Verdict(7.0, True, "fine", 1), "data": {"a": 1}, "empty": "",
}
TEMPLATES = [
    "", "plain text", "{{ prompt }}", "A {{ prompt }} B", "{{prompt}}{{n}}", "{{ x }} and {{ nothing }}",
    "{{ flag }}\n", "line one\n{{ prompt }}\n\n", "  {{ experts }}  ", "{{ verdict }}", "{{ data }}",
    "{{ empty }}|", "Critique:\n\n{{ prompt }}\n\nBe specific.\n", "{# note #}{{ prompt }}",
]


@pytest.mark.parametrize("source", TEMPLATES)
def test_fast_path_renders_what_jinja_renders(source: str) -> None:
    assert _plain(source) is not None
    assert render(source, CONTEXT) == compiled(source).render(CONTEXT)


@pytest.mark.parametrize("source", [
    "{{ prompt | upper }}", "{% for e in experts %}{{ e }} {% endfor %}", "{{ data.a }}", "{{ n + 1 }}",
    "{{ none }}", "{% if flag %}yes{% endif %}",
])
def test_other_templates_go_to_jinja(source: str) -> None:
    assert _plain(source) is None
    assert render(source, CONTEXT) == compiled(source).render(CONTEXT)


def test_names_the_context_lacks_fall_back_to_jinja() -> None:
    assert "safe_range" in render("{{ range }}", {})  # a jinja global (the sandbox's range)
    with pytest.raises(TemplateProblem, match="undefined name: 'missing' is undefined"):
        render("A {{ missing }}", CONTEXT)


# -- the budget changes nothing a normal template renders ----------------------------------------
# (tests/test_template_bombs.py has what it refuses)

REFERENCE = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False,
                                          trim_blocks=True, lstrip_blocks=True)  # stock jinja, as before the budget
NORMAL = [
    "{% for e in experts %}{{ loop.index }}/{{ loop.length }} {{ e.item }} ({{ e.index }}, {{ e.model }}): {{ e }}"
    "{% if not loop.last %}, {% endif %}{% endfor %}",
    "{% for e in experts if e.index > 0 %}{{ e.text | upper }}{% else %}none{% endfor %}",
    "{% for k, v in data.items() %}{{ k }}={{ v }};{% endfor %}{% for i in range(3) %}{{ loop.revindex }}{% endfor %}",
    "{{ experts | join(', ') }} | {{ experts | map(attribute='item') | join('/') }} | {{ experts | length }}",
    "{{ prompt | upper }} {{ prompt | lower }} {{ prompt | title }} {{ prompt | truncate(8) }} {{ prompt | wordcount }}",
    "{{ prompt | center(30) }}|{{ prompt | indent(2, true) }}|{{ prompt | replace('a', 'A') }}|{{ prompt | trim }}",
    "{{ prompt | wordwrap(5) }}|{{ '%s-%03d' | format(prompt, n) }}|{{ '%(a)s!' % {'a': prompt} }}|{{ x | round(1) }}",
    "{{ '{} and {:>6}'.format(prompt, n) }}|{{ '{a}'.format_map({'a': 1}) }}|{{ 'ab' * 3 }}|{{ [1, 2] * 2 }}",
    "{{ n + 1 }} {{ n - 1 }} {{ n * 2 }} {{ n / 2 }} {{ n // 2 }} {{ n % 2 }} {{ n ** 3 }} {{ x * 2 }} {{ -n }}",
    "{{ prompt ~ '!' ~ n ~ nothing }} {% set s = prompt ~ '?' %}{{ s }} {% set a, b = 1, 2 %}{{ a + b }}",
    "{% set ns = namespace(t='') %}{% for e in experts %}{% set ns.t = ns.t ~ e.item %}{% endfor %}{{ ns.t }}",
    "{% macro tag(x, y='!') %}<{{ x }}{{ y }}>{% endmacro %}{{ tag(prompt) }}{{ tag(n, y='?') }}",
    "{% macro box() %}[{{ caller() }}]{% endmacro %}{% call box() %}inside {{ n }}{% endcall %}",
    "{% filter upper %}shout {{ prompt }}{% endfilter %}",
    "{% for x in [[1, [2]], [3]] recursive %}{% if x is iterable %}({{ loop(x) }}){% else %}{{ x }}{% endif %}{% endfor %}",
    "{{ prompt.split() | length }} {{ prompt.strip().lower() }} {{ prompt.startswith('W') }} {{ '-'.join(['a', 'b']) }}",
    "{{ prompt.replace('a', 'b') }} {{ prompt.ljust(20) }}| {{ prompt.count('a') }} {{ data.get('a') }} {{ data['a'] }}",
    "{{ verdict.score }} {{ verdict.passed }} {{ verdict.feedback }} {{ verdict }} {{ data.a }}",
    "{{ experts | batch(1) | list | length }} {{ experts | slice(2) | list | length }} {{ [3, 1, 2] | sort }}",
    "{{ experts | sort(attribute='index', reverse=true) | map(attribute='item') | list }} {{ [1, 1, 2] | unique | list }}",
    "{{ [[1], [2]] | sum(start=[]) }} {{ [1, 2, 3] | sum }} {{ [3, 1] | max }} {{ [3, 1] | min }} {{ data | dictsort }}",
    "{{ experts | first }} {{ experts | last }} {{ experts | reverse | list | length }} {{ range(5) | select('odd') | list }}",
    "{{ data | tojson }} {{ prompt | e }} {{ data | xmlattr }} {{ prompt | urlencode }} {{ '3' | int + 1 }} {{ data | pprint }}",
    "{{ experts | groupby('model') | length }} {{ prompt | string }} {{ 1048576 | filesizeformat }} {{ nothing | default('-') }}",
    "{% set c = cycler('a', 'b') %}{{ c.next() }}{{ c.next() }}{% set j = joiner('|') %}{{ j() }}x{{ j() }}y {{ dict(a=1) }}",
    "{% if 'haiku' in prompt and n > 2 %}yes{% elif flag %}flag{% endif %} {{ 'a' if n else 'b' }} {{ n is odd }}",
    "{% with y = n * 2 %}{{ y }}{% endwith %} {{ (experts | map('upper') | list)[0] }} {{ prompt[:5] }} {{ experts[1] }}",
]


@pytest.mark.parametrize("source", NORMAL, ids=range(len(NORMAL)))
def test_normal_templates_render_as_stock_jinja_does(source: str) -> None:
    assert render(source, CONTEXT) == REFERENCE.from_string(source).render(CONTEXT)


@pytest.mark.parametrize("expr", [
    "n > 2 and 'haiku' in prompt", "experts | map(attribute='item') | list", "prompt ~ '!'", "[prompt] * 2",
    "verdict.score >= 7", "data.a + n", "experts | length", "range(3) | list",
])
def test_expressions_evaluate_as_stock_jinja_does(expr: str) -> None:
    assert evaluate(expr, CONTEXT) == REFERENCE.compile_expression(expr, undefined_to_none=False)(**CONTEXT)


def _sample(flow: Any, name: str) -> Any:
    """A value like the engine's for a name a template reads."""
    if name in flow.inputs:
        return ["alpha", "beta"] if flow.inputs[name].type == "list" else f"the {name}"
    if name in ("item", "round", "index"):
        return {"item": "alpha", "round": 2, "index": 0}[name]
    step = flow.steps[name]
    if step.for_each is not None:
        return [BranchText(f"{name} text {i}", item, i, "m") for i, item in enumerate(["alpha", "beta", "gamma"])]
    if step.kind == "judge":
        return Verdict(7.0, True, "good", 1)
    if step.kind not in ("generate", "vote"):
        return Data({"task_type": "technical", "complexity": "high", "needs_code": True, "words": 12})
    return f"{name} says " + "word " * 120


@pytest.mark.parametrize("path", sorted((ROOT / "flows").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_flows_render_as_stock_jinja_does(path: Path) -> None:
    flow = load_flow_text(path.read_text(), str(path)).flow
    rendered = 0
    for step in flow.steps.values():
        for _field, source in step_templates(step):
            context = {name: _sample(flow, name) for name in references(source) | {"item", "index", "round"}
                       if name in flow.inputs or name in flow.steps or name in ("item", "index", "round")}
            assert render(source, context) == REFERENCE.from_string(source).render(context)
            rendered += 1
    assert rendered >= 2


def test_compiled_templates_see_the_sandbox_globals_in_one_dict() -> None:
    """Each compiled template and expression holds the sandbox's globals in one plain dict (a
    render copies them), the same names and objects as the environment's."""
    from deliberate.flows.sandbox.environment import ENV
    from deliberate.flows.templates import compiled_expression

    for template in (compiled("{% for i in range(2) %}{{ i }}{% endfor %}"),
                     compiled_expression("range(2) | list")._template):
        assert type(template.globals) is dict
        assert template.globals == dict(ENV.globals)
    assert render("{{ range(2) | list }} {{ dict(a=1) }} {% set ns = namespace(n=1) %}{{ ns.n }}", {}) == \
        "[0, 1] {'a': 1} 1"
