"""``kind: judge``: scores its target against a rubric; below the threshold it sends the target
back with the feedback and scores again, up to ``retries`` times, keeping the best draft."""

from __future__ import annotations

import asyncio
import re
from typing import Any, cast

from ...errors import ValidationError
from ...flows.spec import GenerateStep, JudgeStep
from ...flows.templates import render
from ...gateway.contracts import Message
from ..context import RunContext
from ..events import JudgeDecided, JudgeScored, StepFinished, StepStarted
from ..values import Verdict, to_json
from .base import SkipStep, StepKind
from .generate import prompt_messages


class JudgeBelowThreshold(ValidationError):
    """A judge with ``on_fail: fail`` whose attempts all scored below its threshold."""


async def run(ctx: RunContext, name: str, step: JudgeStep) -> Verdict:
    """The verdict; the target's value becomes its best draft."""
    assert step.target is not None and step.threshold is not None
    if step.target in ctx.skipped:
        raise SkipStep(f"target {step.target} was skipped")
    target = cast(GenerateStep, ctx.flow.steps[step.target])
    # the messages the target was last sent (after rounds they differ from a fresh render)
    target_msgs = ctx.last_messages.get(step.target) or prompt_messages(ctx, target)
    draft = str(ctx.values[step.target])
    best: tuple[float, str] = (-1.0, draft)
    score, feedback = 0.0, ""
    attempt = 0
    for attempt in range(1, step.retries + 2):
        scope = ctx.scope()
        rubric = render(step.rubric or "", scope)
        msgs = [
            Message(role="system", content=render(step.system, scope) if step.system else
                    "You are a strict judge. Score the answer against the rubric."),
            Message(role="user", content=(
                f"The request:\n{target_msgs[-1].content}\n\nThe answer:\n{draft}\n\n"
                f"Rubric: {rubric}\n\nReply with 'SCORE: N' (N from 1 to {step.scale}) on the "
                "first line, then one short paragraph of feedback.")),
        ]
        result = await ctx.call(name, ctx.request(name, step, msgs, ctx.model_for(name, step)), attempt=attempt)
        score, feedback = parse_score(result.text, step.scale)
        passed = score >= step.threshold
        ctx.emit(JudgeScored(step=name, target=step.target, attempt=attempt, score=score,
                             threshold=step.threshold, passed=passed, feedback=feedback))
        if score > best[0]:
            best = (score, draft)
        if passed or attempt > step.retries:
            break
        await asyncio.sleep(min(30.0, ctx.judge_backoff_s * 2 ** (attempt - 1)))
        draft = await _revise(ctx, step, target, target_msgs + [
            Message(role="assistant", content=draft),
            Message(role="user", content=(
                f"A reviewer scored this answer {score:g}/{step.scale}. Feedback: {feedback}\n"
                "Write the improved answer in full.")),
        ], attempt + 1)
    if best[0] > score:  # keep the best draft so far, not the last
        score = best[0]
    ctx.values[step.target] = best[1] if best[0] >= 0 else draft
    ctx.emit(StepFinished(step=step.target, kind="generate", round=ctx.round,
                          value=to_json(ctx.values[step.target])))
    passed = score >= step.threshold
    ctx.verdicts[name] = passed
    ctx.emit(JudgeDecided(step=name, target=step.target, passed=passed, score=score,
                          threshold=step.threshold, scale=step.scale, attempts=attempt, on_fail=step.on_fail))
    if not passed and step.on_fail == "fail":
        raise JudgeBelowThreshold(f"judge score {score:g} below threshold {step.threshold:g} after "
                                  f"{attempt} attempt{'s' if attempt != 1 else ''}")
    return Verdict(score, passed, feedback, attempt, step.scale)


async def _revise(ctx: RunContext, step: JudgeStep, target: GenerateStep, messages: list[Message],
                  attempt: int) -> str:
    """The target run again on ``messages`` (its request and draft, then the feedback): the new
    draft, told to the views as the target's own step running again."""
    name = step.target
    assert name is not None
    ctx.emit(StepStarted(step=name, kind="generate", round=ctx.round, attempt=attempt))
    req = ctx.request(name, target, messages, ctx.model_for(name, target))
    draft = (await ctx.call(name, req, attempt=attempt)).text
    ctx.values[name] = draft
    ctx.emit(StepFinished(step=name, kind="generate", round=ctx.round, value=to_json(draft)))
    return draft



def reused(ctx: RunContext, name: str, step: JudgeStep, value: Any) -> None:
    """A reused judge says how it ended, like one that ran (views have no parent record)."""
    if isinstance(value, Verdict) and step.target is not None and step.threshold is not None:
        ctx.verdicts[name] = value.passed
        ctx.emit(JudgeDecided(step=name, target=step.target, passed=value.passed, score=value.score,
                              threshold=step.threshold, scale=value.scale, attempts=value.attempts,
                              on_fail=step.on_fail))


_SCORE = re.compile(r"score\s*[:=]?\s*\**\s*(\d+(?:\.\d+)?)", re.I)
_NUM = re.compile(r"(\d+(?:\.\d+)?)\s*(?:/\s*(\d+))?")


def parse_score(text: str, scale: int = 10) -> tuple[float, str]:
    """A judge's score and feedback. Small models ignore formats: an answer with no number scores
    0, so it never passes by accident."""
    m = _SCORE.search(text)
    value: float | None = float(m.group(1)) if m else None
    if value is None:
        m2 = _NUM.search(text)
        if m2:
            value = float(m2.group(1))
            if m2.group(2) and float(m2.group(2)) not in (0, scale):
                value = value * scale / float(m2.group(2))
    if value is None:
        return 0.0, text.strip()
    value = max(0.0, min(float(scale), value))
    feedback = _SCORE.sub("", text, count=1).strip(" \n:-*") if m else text.strip()
    return value, feedback


KIND = StepKind(JudgeStep, run, "Score a step against a rubric; re-run it below the threshold.", reused)
