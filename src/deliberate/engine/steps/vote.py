"""``kind: vote``: the majority answer among a for_each step's branches."""

from __future__ import annotations

import re
from collections import Counter

from ...errors import ValidationError
from ...flows.spec import VoteStep
from ..context import RunContext
from ..events import VoteDecided
from ..values import BranchText
from .base import StepKind


async def run(ctx: RunContext, name: str, step: VoteStep) -> str:
    """The winning answer (the first branch's text of the winning group); ties by ``tie``."""
    assert step.from_ is not None
    answers = [a for a in ctx.values[step.from_] if str(a).strip()]
    if not answers:
        raise ValidationError(f"vote {name!r}: step {step.from_!r} gave no answers")
    groups: dict[str, list[BranchText]] = {}
    for a in answers:
        groups.setdefault(normalise(str(a)), []).append(a)
    counts = Counter({k: len(v) for k, v in groups.items()})
    top = max(counts.values())
    tied = [k for k in groups if counts[k] == top]  # in branch order of first appearance
    rule = step.tie
    if rule == "first":
        winner = tied[0]
    elif rule == "last":
        winner = tied[-1]
    elif rule == "shortest":
        winner = min(tied, key=len)
    else:
        winner = max(tied, key=len)
    ctx.emit(VoteDecided(step=name, counts=dict(counts), winner=winner, tie=len(tied) > 1,
                         tie_rule=rule, tied=tied if len(tied) > 1 else []))
    return str(groups[winner][0])


_PUNCT = re.compile(r"[\s\.\,\!\?\;\:\"\'\`\*\(\)\[\]]+")


def normalise(answer: str) -> str:
    """Answers that differ only in case, spacing, quotes or punctuation count as one."""
    a = answer.strip().lower()
    a = re.sub(r"^(the )?(final )?answer( is)?\s*[:\-]?\s*", "", a)
    return _PUNCT.sub(" ", a).strip()


KIND = StepKind(VoteStep, run, "The majority answer of a for_each step's branches.")
