"""`deliberate run` end to end through the real CLI, with the SCRIPTED test backend standing in
for models (it answers with canned text; these tests check the engine, not model quality)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import ROOT, cli

SHIPPED = ["linear", "challenge", "multi_perspective", "adversarial", "consensus", "debate"]
JUDGE_OK = {"match": "SCORE: N", "reply": "SCORE: 8\nSolid answer."}


@pytest.mark.parametrize("flow", SHIPPED)
def test_every_shipped_flow_runs_end_to_end(scripted, flow: str) -> None:
    scripted.write([JUDGE_OK])
    r = cli("run", flow, "How should I store passwords?", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)  # stdout is exactly one JSON document
    assert doc["status"] == "succeeded" and doc["output"]
    record = json.loads(Path(doc["record"]).read_text())
    assert record["status"] == "succeeded" and record["flow_name"] == flow
    ran = [n for n, s in record["steps"].items() if s["status"] == "succeeded"]
    assert ran, record["steps"]
    calls = scripted.calls()
    assert record["totals"]["calls"] == len(calls) > 0
    # every prompt the backend saw was rendered: no template syntax left in it
    assert all("{{" not in c["prompt"] and "{%" not in c["prompt"] for c in calls)


def test_challenge_wires_outputs_into_later_prompts(scripted) -> None:
    scripted.write([
        {"match": "^Task: .*Produce a complete solution", "reply": "DRAFT-1"},
        {"match": "Solution to review", "reply": "CRITIQUE-1"},
        {"match": "Write the improved solution", "reply": "FINAL-1"},
    ], echo=False)
    r = cli("run", "challenge", "Sort a list", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["output"] == "FINAL-1"
    calls = scripted.calls()
    refiner = [c for c in calls if "Write the improved" in c["prompt"]][0]
    assert "DRAFT-1" in refiner["prompt"] and "CRITIQUE-1" in refiner["prompt"]


def test_prompt_from_stdin_and_input_from_file(scripted, isolated) -> None:
    (isolated / "code.py").write_text("def f(): return 1\n")
    flow = isolated / "review.yaml"
    flow.write_text("name: review\ninputs:\n  prompt: {}\n  code: {}\nsteps:\n  r:\n"
                    "    prompt: \"{{ prompt }} :: {{ code }}\"\n")
    r = cli("run", str(flow), "-", "--input", "code=@code.py", "--json", input="Review this\n")
    assert r.returncode == 0, r.stderr
    assert "Review this" in scripted.calls()[0]["prompt"] and "def f()" in scripted.calls()[0]["prompt"]


def test_model_overrides_per_step_and_global(scripted) -> None:
    r = cli("run", "challenge", "x", "--model", "challenger=alt", "--json")
    assert r.returncode == 0, r.stderr
    by_model = {(c["model"], "review" in c["prompt"]) for c in scripted.calls()}
    assert ("alt", True) in by_model and ("smollm2-135m", False) in by_model
    r = cli("run", "challenge", "x", "--model", "alt", "--json")
    assert json.loads(r.stdout)["summary"]["steps"]["creator"]["models"] == ["alt"]


def test_unknown_step_in_model_override_is_bad_input(scripted) -> None:
    r = cli("run", "challenge", "x", "--model", "critic=alt")
    assert r.returncode == 2 and "no step 'critic'" in r.stderr and "Traceback" not in r.stderr


def test_missing_prompt_is_a_clear_error(scripted) -> None:
    r = cli("run", "challenge")
    assert r.returncode == 2 and "missing input 'prompt'" in r.stderr


def test_human_output_goes_to_stderr_answer_to_stdout(scripted) -> None:
    scripted.write([{"match": "Write the improved", "reply": "THE ANSWER"}])
    r = cli("run", "challenge", "x")
    assert r.returncode == 0, r.stderr
    assert "THE ANSWER" in r.stdout
    assert "creator" in r.stderr and "steps" in r.stderr  # the view and the summary line
    assert "record: runs/" in r.stderr


def test_failed_provider_exits_1_with_reason(scripted) -> None:
    scripted.write([{"match": "Produce", "fail": "fatal"}])
    r = cli("run", "challenge", "x", "--json")
    assert r.returncode == 1
    doc = json.loads(r.stdout)
    assert doc["status"] == "failed" and "creator" in doc["error"] and "scripted fatal failure" in doc["error"]
    rec = json.loads(Path(doc["record"]).read_text())
    assert rec["steps"]["creator"]["status"] == "failed"
    assert rec["steps"]["refiner"]["status"] == "pending"


def test_generate_direct_mode_is_a_one_step_run(scripted) -> None:
    scripted.write([{"match": "capital", "reply": "Paris"}])
    r = cli("generate", "What is the capital of France?", "--model", "alt", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["output"] == "Paris"
    rec = json.loads(Path(doc["record"]).read_text())
    assert list(rec["steps"]) == ["answer"] and rec["steps"]["answer"]["calls"][0]["model_key"] == "alt"


@pytest.mark.parametrize(("args", "says"), [
    (["run", "challenge", "bad \udcff input"], "input 'prompt' holds a byte that is not UTF-8 (0xff) at character 4"),
    (["generate", "ok", "--system", "x\udcfe"], "input 'system' holds a byte that is not UTF-8 (0xfe) at character 1"),
    (["run", "challenge", "-i", "prompt=ok \udcc3"], "input 'prompt' holds a byte that is not UTF-8 (0xc3) at character 3"),
])
def test_text_no_utf_8_can_hold_is_one_line_exit_2_and_nothing_recorded(scripted, isolated, args: list[str],
                                                                        says: str) -> None:
    """A command-line argument with a byte that is not UTF-8 arrives as a lone surrogate, which no
    record or request can carry: refused before any call, not a failed run with tracebacks."""
    r = cli(*args)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and says in r.stderr
    assert "Traceback" not in r.stderr and not (isolated / "runs").exists() and scripted.calls() == []


def test_a_flow_file_named_with_a_byte_that_is_not_utf_8_runs_and_is_recorded(scripted, isolated) -> None:
    """Such a name arrives as a lone surrogate, which no UTF-8 record can hold: the record keeps
    U+FFFD in its place (it failed the run with tracebacks when the record could not be written)."""
    name = "fl\udcffow.yaml"  # the bytes b"fl\xffow.yaml" on disk
    (isolated / name).write_text((ROOT / "flows" / "linear.yaml").read_text())
    r = cli("run", name, "hi", "--json")
    assert r.returncode == 0, r.stderr
    rec = json.loads(Path(json.loads(r.stdout)["record"]).read_text(encoding="utf-8"))
    assert rec["status"] == "succeeded" and rec["flow_source"].endswith("fl\ufffdow.yaml")


async def test_a_library_input_with_a_lone_surrogate_is_refused_before_the_run(tmp_path: Path) -> None:
    from deliberate._api import run_flow_async
    from deliberate.errors import InputError

    with pytest.raises(InputError, match=r"input 'prompt' holds a lone surrogate \(U\+D800\), which is not Unicode"):
        await run_flow_async("linear", {"prompt": "a \ud800 b"}, runs_dir=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_no_record_writes_nothing(scripted, isolated) -> None:
    r = cli("run", "challenge", "x", "--no-record", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["record"] is None
    assert not (isolated / "runs").exists()


def test_runs_list_and_replay_show_without_model_calls(scripted, isolated) -> None:
    r = cli("run", "adversarial", "x", "--json")
    rid = json.loads(r.stdout)["run_id"]
    before = len(scripted.calls())
    listed = json.loads(cli("runs", "list", "--json").stdout)
    assert listed[0]["run_id"] == rid and listed[0]["flow"] == "adversarial"
    shown = cli("replay", f"runs/{rid}.json")
    assert shown.returncode == 0, shown.stderr
    assert "arbiter" in shown.stderr and "red_team" in shown.stderr
    assert len(scripted.calls()) == before  # replay calls no model


@pytest.mark.parametrize("columns", [40, 80, 140, None])
def test_runs_list_shows_each_run_id_whole_at_any_width(scripted, isolated, columns: int | None,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The id is what show, replay and resume take: never cut. Under 60 columns a line a run;
    an 80-column terminal drops calls, tokens and wall time and says where they are; piped with no
    COLUMNS (None), every column."""
    monkeypatch.delenv("COLUMNS", raising=False)
    rid = json.loads(cli("run", "adversarial", "x", "--json").stdout)["run_id"]
    out = cli("runs", "list", env={"COLUMNS": str(columns)} if columns else None).stdout
    assert rid in out and "succeeded" in out
    if columns == 40:
        assert out.splitlines() == [f"{rid}  succeeded  adversarial"]
        return
    assert max(len(line) for line in out.splitlines()) <= (columns or 200)
    header = next(line for line in out.splitlines() if "run id" in line)
    wide = columns is None or columns >= 125
    assert ("tokens" in header) is ("wall" in header) is wide
    assert ("runs show, --json or a wider terminal" in out) is (not wide)


@pytest.mark.parametrize("content,needle", [
    ('{"kind": "deliberate.run", "schema_version": 1, "run_id"', "truncated or corrupt"),
    ('{"hello": "world"}', "not a deliberate run record"),
    ('{"kind": "deliberate.run", "schema_version": 99}', "newer than this deliberate"),
    ("\x00\xff", "not"),
])
def test_bad_records_are_clean_errors(isolated, content: str, needle: str) -> None:
    path = isolated / "bad.json"
    path.write_bytes(content.encode("latin-1"))
    before = path.read_bytes()
    r = cli("replay", str(path))
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr and "bad.json" in r.stderr and "Traceback" not in r.stderr
    assert path.read_bytes() == before


def test_events_feed_a_json_log_file_without_secrets(scripted, isolated) -> None:
    secret = "sk-log-SECRET-value-99"
    log = isolated / "log" / "deliberate.jsonl"
    r = cli("run", "challenge", f"key {secret}", "--json",
            env={"DELIBERATE_LOG_FILE": str(log), "OPENAI_API_KEY": secret})
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    names = [x["msg"] for x in lines]
    assert names[0] == "RunStarted" and names[-1] == "RunFinished"
    assert names.count("StepFinished") == 3
    assert secret not in log.read_text()


def test_response_cache_answers_repeated_deterministic_calls(scripted, isolated) -> None:
    (isolated / "strategies.yaml").write_text("greedy: {sampling: {temperature: 0}}\n")
    first = cli("run", "challenge", "x", "--strategy", "greedy", "--cache", "--json")
    assert first.returncode == 0, first.stderr
    n = len(scripted.calls())
    second = cli("run", "challenge", "x", "--strategy", "greedy", "--cache", "--json")
    assert second.returncode == 0, second.stderr
    assert len(scripted.calls()) == n  # every answer came from the cache
    doc = json.loads(second.stdout)
    assert doc["output"] == json.loads(first.stdout)["output"]
    rec = json.loads(Path(doc["record"]).read_text())
    assert all(c["cache_hit"] for s in rec["steps"].values() for c in s["calls"])
    assert rec["totals"]["calls"] == 0
    # sampled calls are never cached
    cli("run", "challenge", "y", "--cache", "--json")
    cli("run", "challenge", "y", "--cache", "--json")
    assert len(scripted.calls()) == n + 6
    listed = json.loads(cli("cache", "list", "--json").stdout)
    assert listed["entries"] == 3
    assert json.loads(cli("cache", "clear", "--json").stdout)["removed"] == 3
