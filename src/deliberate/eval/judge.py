"""Judging with a model: pointwise (``--scorer judge[:RUBRIC]``: a grade 1-10 against a rubric
and the target) and pairwise (two answers, asked in both orders; a verdict that flips with the
order counts as a tie, after Zheng et al. 2023, whose judges kept their verdict after a swap only
about two times in three)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from .datasets import Item
from .scorers import JudgeReply, Score, ScoreContext, Scorer

DEFAULT_RUBRIC = "Is the answer correct and complete for the task?"
PASS_AT = 7  # of 10
_GRADE = re.compile(r"(?:score|grade|rating)?\s*[:=]?\s*\b(10|[1-9])(?:\s*/\s*10)?\b", re.I)
_PICK = re.compile(r"\b(?:answer\s*)?([AB])\b")


def task_text(item: Item) -> str:
    return "\n".join(str(v) for v in item.inputs.values())


def grade_prompt(item: Item, answer: str, rubric: str) -> str:
    ref = f"\nReference answer:\n{item.target}\n" if item.target not in (None, "") else ""
    return (f"Task:\n{task_text(item)}\n{ref}\nAnswer to grade:\n{answer}\n\nRubric: {rubric}\n"
            "Grade the answer from 1 (wrong) to 10 (fully right). Reply with the grade first, as "
            "'Score: N', then one line of reason.")


def parse_grade(text: str) -> int | None:
    m = re.search(r"score\s*[:=]?\s*(10|[1-9])\b", text, re.I) or _GRADE.search(text)
    return int(m.group(1)) if m else None


class JudgeScorer(Scorer):
    name = "judge"
    needs_target = False
    graded = True

    def __init__(self, rubric: str | None) -> None:
        self.rubric = rubric or DEFAULT_RUBRIC

    async def score(self, answer: str, item: Item, ctx: ScoreContext) -> Score:
        if ctx.judge is None:
            raise RuntimeError("the judge scorer needs a judge model")
        rubric = str(item.fields.get("rubric") or self.rubric)
        reply = await ctx.judge(grade_prompt(item, answer, rubric))
        grade = parse_grade(reply.text)
        runs = [reply.run_id] if reply.run_id else []
        if grade is None:
            return Score(0.0, False, f"the judge gave no grade: {reply.text[:80]!r}", runs, reply.cost_usd)
        return Score(grade / 10, grade >= PASS_AT, f"graded {grade}/10", runs, reply.cost_usd)


def pair_prompt(item: Item, first: str, second: str) -> str:
    ref = f"\nReference answer:\n{item.target}\n" if item.target not in (None, "") else ""
    return (f"Task:\n{task_text(item)}\n{ref}\nAnswer A:\n{first}\n\nAnswer B:\n{second}\n\n"
            "Which answer is better for the task? Reply with one letter, A or B, then one line of reason.")


def parse_pick(text: str) -> Literal["A", "B"] | None:
    m = _PICK.search(text.strip()[:200])
    return m.group(1) if m else None  # type: ignore[return-value]


@dataclass
class PairVerdict:
    """A pairwise verdict between answer ``x`` and answer ``y``: ``winner`` is "x", "y" or "tie";
    ``flipped`` when the two orders disagreed (then it is a tie)."""

    winner: Literal["x", "y", "tie"]
    flipped: bool
    picks: list[str | None] = field(default_factory=list)
    run_ids: list[str] = field(default_factory=list)
    cost_usd: float = 0.0


async def pairwise(ctx: ScoreContext, item: Item, x: str, y: str) -> PairVerdict:
    """Ask the judge both ways (x as A, then y as A); only a consistent verdict counts."""
    assert ctx.judge is not None
    first: JudgeReply = await ctx.judge(pair_prompt(item, x, y))
    second: JudgeReply = await ctx.judge(pair_prompt(item, y, x))
    a, b = parse_pick(first.text), parse_pick(second.text)
    one = {"A": "x", "B": "y"}.get(a or "")
    two = {"A": "y", "B": "x"}.get(b or "")
    runs = [r for r in (first.run_id, second.run_id) if r]
    cost = first.cost_usd + second.cost_usd
    if one is not None and one == two:
        return PairVerdict(one, False, [a, b], runs, cost)  # type: ignore[arg-type]
    return PairVerdict("tie", one is not None and two is not None, [a, b], runs, cost)
