"""The function step handler (engine/steps/function.py) called directly: every kind of the
``deliberate.steps`` group (built-in and the test plugin's word_count) runs through it, with its
``with:`` rendered, validated against the kind's params, and a FunctionContext of the run."""

from __future__ import annotations

import pytest
from deliberate_scripted import ScriptedBackend
from pydantic import ValidationError as PydanticValidationError

from deliberate.engine.builtins import Data
from deliberate.engine.kinds import kind_for
from deliberate.engine.steps import function
from test_step_generate import step_ctx

FLOW = """
name: fn
inputs: {prompt: {}}
steps:
  a: {prompt: "{{ prompt }}"}
  count: {kind: word_count, with: {text: "{{ a }} and {{ prompt }}"}}
  recent: {kind: history, with: {limit: 2}}
  sums: {kind: summary}
"""


async def test_a_plugin_function_step_gets_its_rendered_arguments() -> None:
    ctx, _ = step_ctx(FLOW, ScriptedBackend(rules=[]), {"prompt": "one two"})
    ctx.values["a"] = "three four five"
    value = await function.run(ctx, "count", ctx.flow.steps["count"])
    assert value == Data(words=6)  # "three four five and one two"


async def test_history_and_summary_see_the_run() -> None:
    ctx, _ = step_ctx(FLOW, ScriptedBackend(rules=[]), {"prompt": "q"})
    asked: list[tuple[str, int]] = []
    ctx.history = lambda flow, limit: asked.append((flow, limit)) or [{"run_id": "r1"}]
    assert await function.run(ctx, "recent", ctx.flow.steps["recent"]) == [Data(run_id="r1")]
    assert asked == [("fn", 2)]
    ctx.values["a"] = "x" * 200
    ctx.counts["calls"] = 3
    summary = await function.run(ctx, "sums", ctx.flow.steps["sums"])
    assert summary["flow"] == "fn" and summary["calls"] == 3
    assert summary["outputs"]["a"] == "x" * 160 + "..."


async def test_arguments_are_validated_when_rendered() -> None:
    ctx, _ = step_ctx(FLOW.replace("limit: 2", "limit: '{{ prompt }}'"), ScriptedBackend(rules=[]),
                      {"prompt": "lots"})
    with pytest.raises(PydanticValidationError, match="limit"):
        await function.run(ctx, "recent", ctx.flow.steps["recent"])


def test_every_function_kind_runs_through_the_one_handler() -> None:
    assert kind_for("history") is kind_for("word_count") is function.KIND
