"""What deliberation did, read from an item's run record: the answer as it stood after each
stage (the creator's draft, then each round), so each stage can be scored (per-round ablation),
and the flips between stages (right to wrong, wrong to right). In flows whose rounds hold a
fan-out (debate), every agent's answer is followed across rounds; an agent that gives up a right
answer counts as a conformity flip."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..engine.values import BranchText, as_text, from_json
from ..records.schema import RunRecord


@dataclass
class Stage:
    """One stage: its label and the answers then (one, or one per agent)."""

    label: str
    answers: list[str] = field(default_factory=list)


def _texts(value: Any) -> list[str]:
    v = from_json(value)
    if isinstance(v, list):
        return [str(b.text if isinstance(b, BranchText) else b) for b in v]
    return [as_text(v)]


def stages(record: RunRecord) -> list[Stage]:
    """The stages of the flow's answer in ``record`` (empty for a flow without rounds)."""
    flow = record.flow if isinstance(record.flow, dict) else {}
    rounds = flow.get("rounds") if isinstance(flow.get("rounds"), dict) else None
    if not rounds:
        return []
    loop = [s for s in rounds.get("steps", []) if isinstance(s, str)]
    carry = rounds.get("carry") if isinstance(rounds.get("carry"), dict) else {}
    out = record.output_step
    # the step followed: the output step when it is in the loop, else the loop step the output
    # reads last (debate: its agents)
    followed = out if out in loop else next((w for w in reversed(loop) if w in carry.values()), None)
    if followed is None or followed not in record.steps:
        return []
    found: list[Stage] = []
    source = next((r for r, w in carry.items() if w == followed), None)
    if source and source in record.steps and record.steps[source].status in ("succeeded", "reused"):
        found.append(Stage(source, _texts(record.steps[source].value)))
    for entry in record.steps[followed].rounds:
        if isinstance(entry, dict) and "value" in entry:
            found.append(Stage(f"round {entry.get('round', len(found))}", _texts(entry["value"])))
    if not record.steps[followed].rounds and record.steps[followed].status == "succeeded":
        found.append(Stage("round 1", _texts(record.steps[followed].value)))
    if followed != out and record.output is not None:
        found.append(Stage(out, [record.output]))
    return found


def flips(right: list[list[bool]]) -> dict[str, int]:
    """Transitions between consecutive stages, per agent (``right[stage][agent]``): right to
    wrong (in debates, conformity: an agent abandons a right answer) and wrong to right;
    ``right_before``: the right answers that could have been abandoned (the rate's denominator).
    The last stage of one answer after several (a debate's aggregate) is compared with their
    majority."""
    counts = {"right_to_wrong": 0, "wrong_to_right": 0, "right_before": 0}
    for before, after in zip(right, right[1:], strict=False):
        if len(before) != len(after):
            continue  # the final aggregate after a debate: compared as a whole below
        for b, a in zip(before, after, strict=True):
            counts["right_to_wrong"] += int(b and not a)
            counts["wrong_to_right"] += int(a and not b)
            counts["right_before"] += int(b)
    if len(right) >= 2 and len(right[-1]) == 1 and len(right[-2]) > 1:
        majority = sum(right[-2]) * 2 > len(right[-2])
        counts["right_to_wrong"] += int(majority and not right[-1][0])
        counts["wrong_to_right"] += int(right[-1][0] and not majority)
        counts["right_before"] += int(majority)
    return counts
