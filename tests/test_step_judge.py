"""The judge handler (engine/steps/judge.py) called directly over the SCRIPTED test backend: its
scoring prompt, re-runs of the target with the feedback, the best draft kept, the verdict and its
events, on_fail, a skipped target, a reused verdict; and parse_score."""

from __future__ import annotations

import pytest
from deliberate_scripted import ScriptedBackend

from deliberate.engine import parse_score
from deliberate.engine.events import JudgeDecided, JudgeScored, StepFinished, StepStarted
from deliberate.engine.steps import SkipStep, judge
from deliberate.engine.values import Verdict
from test_step_generate import step_ctx

FLOW = """
name: j
inputs: {prompt: {}}
steps:
  answer: {prompt: "answer {{ prompt }}"}
  gate: {kind: judge, target: answer, rubric: "Is {{ prompt }} right?", threshold: 7, retries: 2, on_fail: %s}
"""


def ctx_with_draft(rules: list[dict[str, object]], on_fail: str = "keep_best") -> tuple:
    backend = ScriptedBackend(rules=rules)
    ctx, events = step_ctx(FLOW % on_fail, backend, {"prompt": "q"})
    ctx.values["answer"] = "v1"
    return ctx, events, backend


async def test_a_passing_first_score_is_the_verdict() -> None:
    ctx, events, backend = ctx_with_draft([{"match": "SCORE: N", "reply": "SCORE: 8\nFine."}])
    verdict = await judge.run(ctx, "gate", ctx.flow.steps["gate"])
    assert isinstance(verdict, Verdict)
    assert (verdict.score, verdict.passed, verdict.feedback, verdict.attempts) == (8, True, "Fine.", 1)
    [call] = backend.calls
    # the judge sees the target's request (rendered fresh: the target ran in another context) and draft
    assert "The request:\nanswer q\n\nThe answer:\nv1" in call["prompt"] and "Rubric: Is q right?" in call["prompt"]
    assert [type(e).__name__ for e in events if isinstance(e, (JudgeScored, JudgeDecided))] == [
        "JudgeScored", "JudgeDecided"]
    assert ctx.verdicts == {"gate": True} and ctx.values["answer"] == "v1"


async def test_below_threshold_sends_the_target_back_with_the_feedback() -> None:
    ctx, events, backend = ctx_with_draft([
        {"match": "The answer:\nv1", "reply": "SCORE: 3\nToo vague."},
        {"match": "Too vague", "reply": "v2"},
        {"match": "The answer:\nv2", "reply": "SCORE: 9\nGood."},
    ])
    ctx.last_messages["answer"] = []  # none kept: the handler renders the target's prompt
    verdict = await judge.run(ctx, "gate", ctx.flow.steps["gate"])
    assert (verdict.score, verdict.passed, verdict.attempts) == (9, True, 2)
    assert ctx.values["answer"] == "v2"
    revise = backend.calls[1]
    assert [m["role"] for m in revise["messages"]] == ["user", "assistant", "user"]
    assert revise["messages"][1]["content"] == "v1" and "scored this answer 3/10" in revise["prompt"]
    # the re-run is told as the target's own step, attempt 2
    assert [(e.step, e.attempt) for e in events if isinstance(e, StepStarted)] == [("answer", 2)]
    assert [e.value["text"] for e in events if isinstance(e, StepFinished)] == ["v2", "v2"]


async def test_never_passing_keeps_the_best_draft_and_says_below() -> None:
    ctx, events, _ = ctx_with_draft([
        {"match": "The answer:\nv1", "reply": "SCORE: 5 meh"},
        {"match": "SCORE: N", "reply": "SCORE: 2 worse"},
        {"match": "reviewer scored", "reply": "v-worse"},
    ])
    verdict = await judge.run(ctx, "gate", ctx.flow.steps["gate"])
    assert (verdict.score, verdict.passed, verdict.attempts) == (5, False, 3)
    assert ctx.values["answer"] == "v1" and ctx.verdicts == {"gate": False}
    [decided] = [e for e in events if isinstance(e, JudgeDecided)]
    assert (decided.passed, decided.score, decided.attempts, decided.on_fail) == (False, 5, 3, "keep_best")


async def test_on_fail_fail_raises_after_the_last_attempt() -> None:
    ctx, _, _ = ctx_with_draft([{"match": "SCORE: N", "reply": "SCORE: 3 no"}], on_fail="fail")
    with pytest.raises(judge.JudgeBelowThreshold, match="judge score 3 below threshold 7 after 3 attempts"):
        await judge.run(ctx, "gate", ctx.flow.steps["gate"])


async def test_a_skipped_target_skips_the_judge_without_a_call() -> None:
    ctx, _, backend = ctx_with_draft([])
    ctx.skipped.add("answer")
    with pytest.raises(SkipStep) as skip:
        await judge.run(ctx, "gate", ctx.flow.steps["gate"])
    assert skip.value.reason == "target answer was skipped" and skip.value.decided_by is False
    assert backend.calls == []


async def test_a_reused_verdict_is_told_like_a_decided_one() -> None:
    ctx, events, _ = ctx_with_draft([])
    judge.KIND.reused(ctx, "gate", ctx.flow.steps["gate"], Verdict(4, False, "f", 3))  # type: ignore[misc]
    [decided] = events
    assert isinstance(decided, JudgeDecided) and (decided.passed, decided.score, decided.attempts) == (False, 4, 3)
    assert ctx.verdicts == {"gate": False}
    judge.KIND.reused(ctx, "gate", ctx.flow.steps["gate"], "not a verdict")  # type: ignore[misc]
    assert len(events) == 1


@pytest.mark.parametrize("text,scale,expected", [
    ("SCORE: 8\nGood.", 10, (8.0, "Good.")),
    ("**Score**: 7/10 solid", 10, (7.0, "**Score**: 7/10 solid")),  # no SCORE: N, the first number
    ("I'd give it 4/5", 10, (8.0, "I'd give it 4/5")),
    ("no number at all", 10, (0.0, "no number at all")),
    ("SCORE: 42", 10, (10.0, "")),
])
def test_parse_score(text: str, scale: int, expected: tuple[float, str]) -> None:
    assert parse_score(text, scale) == expected
