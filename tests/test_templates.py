"""Templates that only interpolate names take a fast path (a join instead of jinja's context
set-up); it must render exactly what jinja renders, and leave everything else to jinja."""

from __future__ import annotations

from typing import Any

import pytest

from deliberate.engine.values import BranchText, Verdict
from deliberate.flows.templates import TemplateProblem, _plain, compiled, render

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
