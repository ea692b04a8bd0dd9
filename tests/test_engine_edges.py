"""Edge cases found in review: concurrent budgets, rounds isolation, cancelled branches, checks
that the executor's graph needs, judges after rounds. SCRIPTED test backend throughout."""

from __future__ import annotations

import asyncio

import pytest
from deliberate_scripted import ScriptedBackend

from deliberate import RunOptions
from deliberate.config import Settings
from deliberate.errors import FlowError
from deliberate.flows import load_flow_text
from deliberate.gateway import Budget, Gateway, GenerationRequest
from test_engine import registry, run


async def test_budget_holds_across_concurrent_branches() -> None:
    flow = """
name: fan
inputs: {prompt: {}}
defaults: {model: paid, max_tokens: 10}
steps:
  many: {for_each: [a, b, c, d, e], prompt: "{{ prompt }} {{ item }}"}
"""
    backend = ScriptedBackend(rules=[{"reply": "x", "tokens": 10, "delay": 0.05}])
    outcome, _e, rec = await run(flow, backend, {"prompt": "q"}, budget=Budget(0.12),
                                 options=RunOptions(max_cost=0.12))
    assert outcome.result.error_type == "BudgetExceeded"
    assert len(backend.calls) == 1  # the other four were refused before they started
    assert rec["totals"]["cost_usd"] <= 0.12


async def test_rounds_do_not_leak_into_steps_running_beside_them() -> None:
    flow = """
name: side
inputs: {prompt: {}}
steps:
  creator: {prompt: "draft {{ prompt }}"}
  challenger: {prompt: "review {{ creator }}"}
  refiner: {prompt: "refine {{ creator }} / {{ challenger }}"}
  slow: {prompt: "slow {{ prompt }}"}
  side: {prompt: "side {{ creator }} {{ slow }} r{{ round }}"}
rounds: {steps: [challenger, refiner], max: 6, carry: {creator: refiner}}
"""
    backend = ScriptedBackend(rules=[{"match": "^slow", "delay": 0.25, "reply": "S"},
                                     {"match": "^draft", "reply": "D"}, {"match": "^refine", "reply": "R"},
                                     {"match": "^review", "delay": 0.1, "reply": "C"}])
    outcome, _e, rec = await run(flow, backend, {"prompt": "q"})
    assert outcome.result.status == "succeeded"
    side = rec["steps"]["side"]["calls"][0]["messages"][-1]["content"]
    assert side == "side D S r1"


async def test_a_failing_branch_cancels_its_siblings() -> None:
    flow = """
name: fail
inputs: {prompt: {}}
steps:
  many: {optional: true, for_each: [a, b, c], prompt: "{{ item }}"}
  after: {prompt: "after [{{ many }}]"}
"""
    backend = ScriptedBackend(rules=[{"match": "^a$", "fail": "fatal"}, {"match": "^[bc]$", "delay": 1.0}])
    outcome, events, _rec = await run(flow, backend, {"prompt": "q"})
    assert outcome.result.status == "succeeded"
    # no waiting out the 1 s delays: a branch left running would still be a pending task now
    await asyncio.sleep(0)
    left_running = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
    assert left_running == []
    finished_branches = [c for c in backend.calls if c["prompt"] in ("b", "c") and c.get("ok")]
    assert finished_branches == []  # cancelled, not left running
    assert type(events[-1]).__name__ == "RunFinished"


@pytest.mark.parametrize("text,needle", [
    ("steps:\n  a: {prompt: hi}\n  b: {prompt: '{{ a }}'}\n  c: {prompt: '{{ b }}'}\nrounds: {steps: [a, c]}\n",
     "add b to rounds.steps"),
    ("steps:\n  a: {prompt: hi}\n  r: {prompt: '{{ a }}'}\n  final: {prompt: '{{ r }}'}\n"
     "rounds: {steps: [r], until: \"'X' in final\"}\n", "'final' is not ready"),
    ("steps:\n  a: {for_each: [x, y], when: \"item != 'y'\", prompt: '{{ item }}'}\n", "'item' is not defined here"),
])
def test_checks_catch_what_the_executor_could_not_run(text: str, needle: str) -> None:
    with pytest.raises(FlowError) as exc:
        load_flow_text("name: t\n" + text, "t.yaml")
    assert needle in exc.value.line()


async def test_an_empty_vote_is_a_flow_failure_not_bad_input() -> None:
    flow = """
name: v
inputs: {prompt: {}}
steps:
  answers: {for_each: [a, b], prompt: "{{ item }}"}
  pick: {kind: vote, from: answers}
"""
    outcome, _e, _r = await run(flow, ScriptedBackend(rules=[{"reply": "  "}]), {"prompt": "q"})
    assert outcome.result.status == "failed" and outcome.result.exit_code == 1


async def test_judge_after_rounds_sees_the_request_the_target_last_answered() -> None:
    flow = """
name: j
inputs: {prompt: {}}
steps:
  creator: {prompt: "draft {{ prompt }}"}
  refiner: {prompt: "refine {{ creator }}"}
  gate: {kind: judge, target: refiner, rubric: "ok?", threshold: 5, retries: 0, system: "Judge for {{ prompt }}"}
rounds: {steps: [refiner], max: 2, carry: {creator: refiner}}
"""
    backend = ScriptedBackend(rules=[{"match": "SCORE: N", "reply": "SCORE: 9"},
                                     {"match": "^draft", "reply": "D"}, {"match": "^refine D", "reply": "R1"},
                                     {"match": "^refine R1", "reply": "R2"}])
    outcome, _e, rec = await run(flow, backend, {"prompt": "cats"})
    judge_msgs = rec["steps"]["gate"]["calls"][0]["messages"]
    assert judge_msgs[0]["content"] == "Judge for cats"
    assert "The request:\nrefine R1" in judge_msgs[1]["content"] and "The answer:\nR2" in judge_msgs[1]["content"]


async def test_judge_of_a_skipped_step_is_skipped() -> None:
    flow = """
name: js
inputs: {prompt: {}}
steps:
  critique: {when: "prompt == 'never'", prompt: "c {{ prompt }}"}
  gate: {kind: judge, target: critique, rubric: "ok?", threshold: 5}
"""
    backend = ScriptedBackend()
    outcome, _e, rec = await run(flow, backend, {"prompt": "q"})
    assert rec["steps"]["critique"]["status"] == "skipped" and rec["steps"]["gate"]["status"] == "skipped"
    assert backend.calls == []


async def test_cancelled_calls_do_not_open_the_breaker() -> None:
    reg = registry()
    backend = ScriptedBackend(rules=[{"delay": 5}])
    gw = Gateway(reg, settings=Settings(circuit_breaker_max_failures=2), backends={"scripted": backend})
    for _ in range(3):
        task = asyncio.create_task(gw.generate(GenerationRequest.from_prompt("x", model_key="m1")))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert gw.breaker_state("scripted:m1") == "closed"
