"""Working with a recorded run through the real CLI: re-run from a step (with another model or an
edited flow), re-run all and verify, resume refusals, show and diff. The SCRIPTED backend logs
every call, so "not called again" is counted, not assumed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conftest import cli
from deliberate.records.store import load

ADVERSARIAL = [
    {"match": "Propose a solution", "reply": "PROPOSAL"},
    {"match": "strongest attacks", "reply": "ATTACKS"},
    {"match": "Answer each attack", "reply": "DEFENCE"},
    {"match": "Decide: the final", "reply": "VERDICT"},
]
# the last user message of each step of the adversarial flow, as the scripted log shows it
PROMPTS = {"proposal": "Propose a solution", "red_team": "strongest attacks",
           "blue_team": "Answer each attack", "arbiter": "Decide: the final"}


def run_json(*args: str) -> dict[str, Any]:
    r = cli(*args, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)  # stdout holds exactly one JSON document


def calls_per_step(scripted: Any) -> dict[str, int]:
    calls = [c for c in scripted.calls() if c.get("ok")]
    return {step: sum(needle in c["prompt"] for c in calls) for step, needle in PROMPTS.items()}


def test_replay_from_a_step_reuses_upstream_and_reruns_downstream(scripted) -> None:
    scripted.write(ADVERSARIAL)
    first = run_json("run", "adversarial", "Ship on Friday?")
    original = Path(first["record"]).read_bytes()
    scripted.write([{"match": "Answer each attack", "reply": "DEFENCE-2"},
                    {"match": "Decide: the final", "reply": "VERDICT-2"}], echo=True)

    doc = run_json("replay", first["record"], "--from", "blue_team")

    assert calls_per_step(scripted) == {"proposal": 1, "red_team": 1, "blue_team": 2, "arbiter": 2}
    assert doc["output"] == "VERDICT-2" and doc["run_id"] != first["run_id"]
    assert doc["reused"] == ["proposal", "red_team"] and doc["rerun"] == ["blue_team", "arbiter"]
    rec = load(Path(doc["record"]))
    assert rec.parent_run_id == first["run_id"] and rec.status == "succeeded"
    assert {n: s.status for n, s in rec.steps.items()} == {
        "proposal": "reused", "red_team": "reused", "blue_team": "succeeded", "arbiter": "succeeded"}
    assert rec.steps["proposal"].output == "PROPOSAL" and rec.steps["red_team"].output == "ATTACKS"
    assert not rec.steps["proposal"].calls and not rec.steps["red_team"].calls
    # the re-run step was fed the recorded outputs of its inputs
    blue_prompt = rec.steps["blue_team"].calls[0].messages[-1].content
    assert "PROPOSAL" in blue_prompt and "ATTACKS" in blue_prompt
    assert Path(first["record"]).read_bytes() == original  # the parent record is not touched


def test_replay_from_with_another_model(scripted) -> None:
    scripted.write(ADVERSARIAL)
    first = run_json("run", "adversarial", "x")

    doc = run_json("replay", first["run_id"], "--from", "arbiter", "--model", "arbiter=alt")
    rec = load(Path(doc["record"]))
    assert [c.model_key for c in rec.steps["arbiter"].calls] == ["alt"]
    assert calls_per_step(scripted) == {"proposal": 1, "red_team": 1, "blue_team": 1, "arbiter": 2}
    assert scripted.calls()[-1]["model"] == "alt"

    # a new model for a step upstream of --from is a change to that step: it re-runs too, and says so
    r = cli("replay", first["run_id"], "--from", "arbiter", "--model", "red_team=alt")
    assert r.returncode == 0, r.stderr
    assert "--model changes the model of red_team upstream of arbiter" in r.stderr
    assert calls_per_step(scripted) == {"proposal": 1, "red_team": 2, "blue_team": 2, "arbiter": 3}
    assert [c["model"] for c in scripted.calls() if "strongest attacks" in c["prompt"]] == ["smollm2-135m", "alt"]


def test_replay_from_with_an_edited_flow(scripted, isolated) -> None:
    from deliberate.flows.loader import resolve_flow_path

    scripted.write(ADVERSARIAL)
    first = run_json("run", "adversarial", "x")
    text = resolve_flow_path("adversarial").read_text()
    edited = isolated / "edited.yaml"

    # only the arbiter's prompt changed, downstream of blue_team: no note, nothing extra re-runs
    edited.write_text(text.replace("Decide: the final answer", "Decide: the final verdict"))
    r = cli("replay", first["record"], "--from", "blue_team", "--flow", str(edited))
    assert r.returncode == 0, r.stderr
    assert "upstream" not in r.stderr
    assert calls_per_step(scripted) == {"proposal": 1, "red_team": 1, "blue_team": 2, "arbiter": 2}

    # the red team's prompt changed, upstream of arbiter: say so and re-run from there
    edited.write_text(text.replace("List the strongest attacks", "List the three strongest attacks"))
    doc = run_json("replay", first["record"], "--from", "arbiter", "--flow", str(edited))
    assert any("changed red_team upstream of arbiter" in n for n in doc["notes"]), doc["notes"]
    assert doc["reused"] == ["proposal"] and doc["rerun"] == ["red_team", "blue_team", "arbiter"]
    assert calls_per_step(scripted) == {"proposal": 1, "red_team": 2, "blue_team": 3, "arbiter": 3}
    assert any("three strongest" in c["prompt"] for c in scripted.calls())
    rec = load(Path(doc["record"]))
    assert rec.flow_source == str(edited) and rec.steps["proposal"].status == "reused"


def test_replay_from_inside_a_rounds_block_reruns_the_whole_block(scripted) -> None:
    scripted.write([{"match": "Produce a complete", "reply": "DRAFT"}])
    first = run_json("run", "challenge", "x", "--rounds", "2")
    creator = sum("Produce a complete" in c["prompt"] for c in scripted.calls())
    assert creator == 1

    doc = run_json("replay", first["record"], "--from", "refiner")
    assert doc["reused"] == ["creator"] and doc["rerun"] == ["challenger", "refiner"]
    assert any("rounds block" in n for n in doc["notes"])
    calls = scripted.calls()
    assert sum("Produce a complete" in c["prompt"] for c in calls) == 1
    assert sum("Solution to review" in c["prompt"] for c in calls) == 4  # 2 rounds, twice
    rec = load(Path(doc["record"]))
    assert [r.round for r in rec.rounds] == [1, 2] and rec.rounds[-1].stop_reason == "max"
    # round 1 of the re-run reviewed the recorded draft
    assert "DRAFT" in rec.steps["challenger"].calls[0].messages[-1].content


def test_replay_from_unknown_step_is_bad_input(scripted) -> None:
    scripted.write(ADVERSARIAL)
    first = run_json("run", "adversarial", "x")
    r = cli("replay", first["record"], "--from", "blue_tem")
    assert r.returncode == 2 and "no such step" in r.stderr and "blue_team" in r.stderr
    assert "Traceback" not in r.stderr
    assert len(list(Path("runs").glob("*.json"))) == 1


def test_rerun_verify_identical_then_different(scripted) -> None:
    scripted.write(ADVERSARIAL)
    first = run_json("run", "adversarial", "x")

    r = cli("replay", first["record"], "--rerun", "--verify")
    assert r.returncode == 0, r.stderr
    assert "identical" in r.stderr and "differ" not in r.stderr
    assert calls_per_step(scripted) == {"proposal": 2, "red_team": 2, "blue_team": 2, "arbiter": 2}
    children = [load(p) for p in Path("runs").glob("*.json")]
    child = next(c for c in children if c.run_id != first["run_id"])
    assert child.parent_run_id == first["run_id"] and child.inputs == {"prompt": "x"}
    assert all(s.status == "succeeded" for s in child.steps.values())

    # the "model" answers differently for one step now
    scripted.write([{**ADVERSARIAL[1], "reply": "OTHER ATTACKS"}, *ADVERSARIAL])
    r = cli("replay", first["record"], "--rerun", "--verify", "--json")
    assert r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)
    assert doc["identical"] is False and doc["differs"] == ["red_team"]
    assert doc["parent_run_id"] == first["run_id"] and doc["status"] == "succeeded"

    r = cli("replay", first["record"], "--rerun", "--verify")
    assert r.returncode == 1 and "outputs differ" in r.stderr and "red_team" in r.stderr


def test_resume_refuses_a_finished_run(scripted) -> None:
    scripted.write(ADVERSARIAL)
    first = run_json("run", "adversarial", "x")
    before = Path(first["record"]).read_bytes()
    r = cli("resume", first["run_id"])
    assert r.returncode == 2, r.stderr
    assert "is succeeded; only running or interrupted runs resume" in r.stderr and "Traceback" not in r.stderr
    assert Path(first["record"]).read_bytes() == before
    assert calls_per_step(scripted) == {"proposal": 1, "red_team": 1, "blue_team": 1, "arbiter": 1}


def test_runs_show_and_diff(scripted) -> None:
    scripted.write(ADVERSARIAL)
    a = run_json("run", "adversarial", "x")
    scripted.write([{**ADVERSARIAL[1], "reply": "PAID ATTACKS\nsecond line"}, *ADVERSARIAL])
    b = run_json("run", "adversarial", "x", "--model", "red_team=paid")

    r = cli("runs", "show", a["run_id"][:20])  # an id prefix is enough
    assert r.returncode == 0, r.stderr
    for step in PROMPTS:
        assert step in r.stderr
    assert "VERDICT" in r.stdout
    shown = json.loads(cli("runs", "show", b["record"], "--json").stdout)
    assert shown["run_id"] == b["run_id"] and shown["steps"]["red_team"]["models"] == ["paid"]

    d = json.loads(cli("runs", "diff", a["run_id"], b["run_id"], "--json").stdout)
    rows = {row["step"]: row for row in d["steps"]}
    assert [n for n, row in rows.items() if not row["same_output"]] == ["red_team"]
    red = rows["red_team"]
    assert red["a"]["models"] == ["smollm2-135m"] and red["b"]["models"] == ["paid"]
    assert red["a"]["cost_usd"] == 0 and red["b"]["cost_usd"] > 0
    assert red["a"]["tokens"] > 0 and red["b"]["tokens"] > 0
    assert red["a"]["output"] == "ATTACKS" and red["b"]["output"].startswith("PAID ATTACKS")

    r = cli("runs", "diff", a["run_id"], b["run_id"])
    assert r.returncode == 0, r.stderr
    assert "differs" in r.stdout and "-ATTACKS" in r.stdout and "+PAID ATTACKS" in r.stdout


def test_replay_from_keeps_reused_votes_and_judge_scores(scripted, isolated) -> None:
    flow = isolated / "vj.yaml"
    flow.write_text(
        "name: vj\ninputs: {prompt: {}}\nsteps:\n"
        "  answers: {for_each: [a, b, c], prompt: '{{ prompt }} {{ item }}'}\n"
        "  pick: {kind: vote, from: answers}\n"
        "  draft: {prompt: 'draft {{ pick }}'}\n"
        "  gate: {kind: judge, target: draft, rubric: 'ok?', threshold: 5, retries: 0}\n"
        "  final: {prompt: 'final {{ draft }} {{ gate }}'}\n")
    scripted.write([{"match": "SCORE: N", "reply": "SCORE: 8 fine"}, {"match": " [abc]$", "reply": "Paris"}])
    r = cli("run", str(flow), "capital?", "--json")
    assert r.returncode == 0, r.stderr
    first = json.loads(r.stdout)["record"]
    r2 = cli("replay", first, "--from", "final", "--json")
    assert r2.returncode == 0, r2.stderr
    child = json.loads(Path(json.loads(r2.stdout)["record"]).read_text())
    assert child["steps"]["pick"]["status"] == "reused"
    assert child["steps"]["pick"]["vote"]["counts"] == {"paris": 3}
    assert [j["score"] for j in child["steps"]["gate"]["judge"]] == [8]
    assert child["steps"]["final"]["status"] == "succeeded"


@pytest.mark.parametrize(("options", "field"), [({"temperature": 3}, "temperature"), ({"rounds": 0}, "rounds"),
                                                ({"max_cost": -1}, "max_cost")])
def test_recorded_options_no_run_could_take_are_a_record_error(options: dict[str, Any], field: str) -> None:
    """A record is untrusted input: options a run would refuse are the record's fault, said as
    such, before a replay or a resume starts."""
    from types import SimpleNamespace

    from deliberate.errors import RecordError
    from deliberate.records.replay import recorded_options

    record = SimpleNamespace(run_id="01J9Z3QK8M7T2V4X6Y8Z0A1B2C", options=options)
    with pytest.raises(RecordError, match=f"options.{field}"):
        recorded_options(record)  # type: ignore[arg-type]
    assert recorded_options(SimpleNamespace(run_id="r", options={"temperature": 2}))["temperature"] == 2  # type: ignore[arg-type]
