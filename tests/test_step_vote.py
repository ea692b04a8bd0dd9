"""The vote handler (engine/steps/vote.py) called directly: majority over normalised answers,
the declared tie rules, the VoteDecided event, no answers; and normalise."""

from __future__ import annotations

import pytest
from deliberate_scripted import ScriptedBackend

from deliberate.engine import normalise
from deliberate.engine.events import VoteDecided
from deliberate.engine.steps import vote
from deliberate.engine.values import BranchText
from deliberate.errors import ValidationError
from test_step_generate import step_ctx

FLOW = """
name: v
steps:
  answers: {for_each: [a, b, c, d], prompt: "{{ item }}"}
  pick: {kind: vote, from: answers, tie: %s}
"""


def branches(*texts: str) -> list[BranchText]:
    return [BranchText(t, f"i{n}", n, "m1") for n, t in enumerate(texts)]


async def test_the_majority_wins_over_normalised_answers() -> None:
    ctx, events = step_ctx(FLOW % "first", ScriptedBackend(rules=[]))
    ctx.values["answers"] = branches("Paris", "The answer is: paris!", "Lyon", "  ")
    assert await vote.run(ctx, "pick", ctx.flow.steps["pick"]) == "Paris"  # the first branch's own text
    [decided] = events
    assert isinstance(decided, VoteDecided)
    assert (decided.counts, decided.winner, decided.tie, decided.tied) == ({"paris": 2, "lyon": 1}, "paris",
                                                                           False, [])


@pytest.mark.parametrize("rule,winner", [("first", "bb"), ("last", "a"), ("shortest", "a"), ("longest", "bb")])
async def test_a_tie_is_broken_by_the_declared_rule(rule: str, winner: str) -> None:
    ctx, events = step_ctx(FLOW % rule, ScriptedBackend(rules=[]))
    ctx.values["answers"] = branches("bb", "a", "BB.", "a")
    assert await vote.run(ctx, "pick", ctx.flow.steps["pick"]) == winner
    assert events[0].tie is True and events[0].tied == ["bb", "a"] and events[0].tie_rule == rule


async def test_no_answers_is_a_flow_failure() -> None:
    ctx, _ = step_ctx(FLOW % "first", ScriptedBackend(rules=[]))
    ctx.values["answers"] = branches("", " ")
    with pytest.raises(ValidationError, match="vote 'pick': step 'answers' gave no answers"):
        await vote.run(ctx, "pick", ctx.flow.steps["pick"])


def test_normalise() -> None:
    assert normalise("  The final answer is: 42. ") == "42"
    assert normalise('"Hello,   World!"') == normalise("hello world")
