"""The judge in evals: pointwise grades (``--scorer judge``), best-of-judge picks, another flow as
a baseline, and the pairwise audit asked in both orders, where a verdict that flips with the
order counts as a tie. Model calls go to the SCRIPTED test backend (canned replies by rule); the
judge is the scripted model ``alt``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conftest import cli
from deliberate.eval.deliberation import flips

ONE = "name: one\ninputs:\n  prompt: {}\nsteps:\n  answer: {prompt: 'Task: {{ prompt }}'}\n"
TWO = "name: two\ninputs:\n  prompt: {}\nsteps:\n  answer: {prompt: 'Other: {{ prompt }}'}\n"


def judge_rules() -> list[dict[str, Any]]:
    return [
        {"model": "alt", "match": "Answer to grade:\ngood", "reply": "Score: 9\nright."},
        {"model": "alt", "match": "Answer to grade:", "reply": "Score: 3 - wrong."},
        # pairwise: prefers the good answer wherever it stands; between equals, always the first
        {"model": "alt", "match": "Answer A:\ngood", "reply": "A"},
        {"model": "alt", "match": "Answer B:\ngood", "reply": "B"},
        {"model": "alt", "match": "Which answer is better", "reply": "A"},
        {"model": "alt", "match": "Which answer is the best", "reply": "1"},
        {"match": "^Task: Q[12]:", "reply": "good answer"},
        {"match": "^Task: Q", "reply": "bad answer"},
        {"match": "^Other: ", "reply": "bad answer"},
        {"match": "^Q1:", "reply": "good answer"},
        {"match": "^Q", "reply": "bad answer"},
    ]


def test_judge_scorer_best_of_judge_other_flow_and_the_pairwise_audit(scripted, isolated: Path) -> None:
    (isolated / "one.yaml").write_text(ONE)
    (isolated / "two.yaml").write_text(TWO)
    (isolated / "data.jsonl").write_text("".join(json.dumps({"prompt": f"Q{i}: answer well"}) + "\n"
                                                 for i in range(1, 5)))
    scripted.write(judge_rules())
    r = cli("eval", "one.yaml", "data.jsonl", "--scorer", "judge", "--judge-model", "alt", "--baseline",
            "best_of_judge", "--baseline", "flow:two.yaml", "--model", "smollm2-135m", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    arms = {a["arm"]: a for a in doc["arms"]}
    assert arms["flow"]["passed"] == 2 and arms["flow"]["score"] == pytest.approx(0.6)
    assert arms["best_of_judge"]["passed"] == 1 and arms["flow:two.yaml"]["passed"] == 0
    # one call a item: best-of-judge gets k = 1 sample + the judge's pick (its realised 2 calls shown)
    assert arms["best_of_judge"]["k"] == 1 and arms["best_of_judge"]["calls_per_item"] == 2
    comps = {c["baseline"]: c for c in doc["comparisons"]}
    assert comps["flow:two.yaml"]["test"] == "sign"
    assert (comps["flow:two.yaml"]["flow_wins"], comps["flow:two.yaml"]["baseline_wins"]) == (2, 0)
    assert comps["flow:two.yaml"]["p_value"] == pytest.approx(0.5)
    judge = doc["judge"]
    # 4 items x 2 baselines; equal answers flip with the order (5 of them): ties
    assert judge["pairs"] == 8 and judge["position_flips"] == 5 and judge["flip_rate"] == pytest.approx(5 / 8)
    assert judge["per_baseline"]["best_of_judge"] == {"flow": 1, "baseline": 0, "tie": 3}
    assert judge["per_baseline"]["flow:two.yaml"] == {"flow": 2, "baseline": 0, "tie": 2}
    assert judge["scorer_comparable"] == 3 and judge["scorer_agreement"] == 1.0
    # every judge call is a recorded run too
    rec = json.loads(Path(doc["record"]).read_text())
    flow = rec["items"]["1"]["arms"]["flow"]
    assert len(flow["run_ids"]) == 2 and len(flow["pairs"]["best_of_judge"]["run_ids"]) == 2
    assert all((isolated / "runs" / f"{rid}.json").exists() for rid in flow["run_ids"])


def test_flips_follow_each_agent_then_the_aggregate() -> None:
    # three agents: opening, one debate round, then the aggregate
    assert flips([[True, True, False], [True, False, False], [False]]) == {
        "right_to_wrong": 1, "wrong_to_right": 0, "right_before": 2}
    assert flips([[False, True, False], [True, True, False], [True]]) == {
        "right_to_wrong": 0, "wrong_to_right": 1, "right_before": 2}
    assert flips([[True], [False], [True]]) == {"right_to_wrong": 1, "wrong_to_right": 1, "right_before": 1}
