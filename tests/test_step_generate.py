"""The generate handler (engine/steps/generate.py), called directly with a run context over the
SCRIPTED test backend: what it asks the model, what it returns, what it tells the views.
``step_ctx`` is shared by the other handler tests (tests/test_step_*.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from deliberate_scripted import ScriptedBackend

from deliberate.config import Settings
from deliberate.engine.context import RunContext, RunOptions
from deliberate.engine.events import CallFinished, StepStarted
from deliberate.engine.executor import Engine
from deliberate.engine.steps import generate
from deliberate.engine.values import BranchText
from deliberate.errors import ProviderError, ValidationError
from deliberate.flows import load_flow_text
from deliberate.gateway import Gateway
from test_engine import registry


def step_ctx(text: str, backend: ScriptedBackend, inputs: dict[str, Any] | None = None,
             options: RunOptions | None = None) -> tuple[RunContext, list[Any]]:
    """A run context of a flow over the scripted backend, and the list its events go to."""
    reg = registry()
    loaded = load_flow_text(text, "t.yaml", reg)
    gw = Gateway(reg, settings=Settings(), backends={"scripted": backend}, retry_base_s=0.001)
    events: list[Any] = []
    engine = Engine(gw, [events.append], judge_backoff_s=0)
    return RunContext(engine, loaded, inputs or {}, options or RunOptions(), "run-1"), events


ONE = """
name: one
inputs: {prompt: {}}
defaults: {temperature: 0.5, seed: 7}
steps:
  a: {system: "be {{ prompt }}", prompt: "say {{ prompt }}", model: m2, temperature: 0.1}
"""


async def test_one_call_renders_system_and_prompt_and_returns_the_text() -> None:
    backend = ScriptedBackend(rules=[{"match": "^say", "reply": "hello"}])
    ctx, events = step_ctx(ONE, backend, {"prompt": "brief"})
    value = await generate.run(ctx, "a", ctx.flow.steps["a"])
    assert value == "hello"
    [call] = backend.calls
    assert [(m["role"], m["content"]) for m in call["messages"]] == [("system", "be brief"), ("user", "say brief")]
    assert call["model"] == "m2" and call["sampling"]["temperature"] == 0.1 and call["sampling"]["seed"] == 7
    # the judge re-sends exactly these messages, so the handler keeps them
    assert [m.content for m in ctx.last_messages["a"]] == ["be brief", "say brief"]
    [finished] = [e for e in events if isinstance(e, CallFinished)]
    assert finished.step == "a" and finished.call.text == "hello" and finished.call.model_key == "m2"
    assert ctx.counts["calls"] == 1 and ctx.counts["completion_tokens"] == 1


async def test_options_win_over_the_step_and_the_defaults() -> None:
    backend = ScriptedBackend(rules=[])
    opts = RunOptions(models={"a": "m3"}, temperature=0.9, seed=1)
    ctx, _ = step_ctx(ONE, backend, {"prompt": "x"}, opts)
    await generate.run(ctx, "a", ctx.flow.steps["a"])
    [call] = backend.calls
    assert (call["model"], call["sampling"]["temperature"], call["sampling"]["seed"]) == ("m3", 0.9, 1)


FAN = """
name: fan
inputs: {prompt: {}, models: {type: list, default: [m1, m2, m3]}}
defaults: {seed: 10}
steps:
  each: {for_each: "{{ models }}", model: "{{ item }}", prompt: "{{ prompt }} #{{ index }}"}
"""


async def test_for_each_runs_one_branch_per_item_in_order() -> None:
    backend = ScriptedBackend(rules=[{"match": "#0", "delay": 0.05}])  # the first answers last
    ctx, events = step_ctx(FAN, backend, {"prompt": "q", "models": ["m1", "m2", "m3"]})
    value = await generate.run(ctx, "each", ctx.flow.steps["each"])
    assert all(isinstance(v, BranchText) for v in value)
    assert [(v.item, v.index, v.model, str(v)) for v in value] == [
        ("m1", 0, "m1", "[m1] q #0"), ("m2", 1, "m2", "[m2] q #1"), ("m3", 2, "m3", "[m3] q #2")]
    starts = [e for e in events if isinstance(e, StepStarted)]
    assert [(e.branch, e.item, e.model_key) for e in starts] == [(0, "m1", "m1"), (1, "m2", "m2"), (2, "m3", "m3")]
    # same prompt shape, different branch: the seed moves with the branch
    assert sorted(c["sampling"]["seed"] for c in backend.calls) == [10, 11, 12]
    assert "each" not in ctx.last_messages  # a fan-out has no single request to re-send


async def test_for_each_of_a_comma_separated_input_and_an_empty_one() -> None:
    ctx, _ = step_ctx(FAN, ScriptedBackend(rules=[]), {"prompt": "q", "models": "m1, m2"})
    assert generate.for_each_items(ctx, "each", ctx.flow.steps["each"]) == ["m1", "m2"]
    ctx, _ = step_ctx(FAN, ScriptedBackend(rules=[]), {"prompt": "q", "models": []})
    with pytest.raises(ValidationError, match="for_each of step 'each' is empty"):
        await generate.run(ctx, "each", ctx.flow.steps["each"])


async def test_a_failing_branch_cancels_its_siblings() -> None:
    backend = ScriptedBackend(rules=[{"match": "#1", "fail": "fatal"}, {"match": "#", "delay": 5}])
    ctx, _ = step_ctx(FAN, backend, {"prompt": "q", "models": ["m1", "m2", "m3"]})
    with pytest.raises(ProviderError):
        await asyncio.wait_for(generate.run(ctx, "each", ctx.flow.steps["each"]), 3)
    # branch 0 was waiting on its model and was cancelled; branch 2, not started yet when branch 1
    # failed, is cancelled before it calls (or, had it started, while calling): none answers
    errors = sorted(c.get("error", "ok") for c in backend.calls)
    assert errors[0] == "CancelledError" and errors[-1] == "ProviderError"
    assert set(errors) == {"CancelledError", "ProviderError"} and errors.count("ProviderError") == 1


async def test_model_star_applies_unless_a_fan_out_names_its_models() -> None:
    backend = ScriptedBackend(rules=[])
    ctx, _ = step_ctx(FAN, backend, {"prompt": "q", "models": ["m2", "m3"]}, RunOptions(models={"*": "m1"}))
    await generate.run(ctx, "each", ctx.flow.steps["each"])
    assert sorted(c["model"] for c in backend.calls) == ["m2", "m3"]
    ctx, _ = step_ctx(ONE, backend, {"prompt": "q"}, RunOptions(models={"*": "m1"}))
    assert ctx.model_for("a", ctx.flow.steps["a"]) == "m1"
