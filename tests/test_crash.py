"""Crash safety: a killed run leaves a valid record that `deliberate resume` finishes without
calling finished steps again; concurrent runs never clobber each other's records; a bad record
file is a clean error and is never overwritten. Real subprocesses, real signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import cli, cli_process
from deliberate.records.store import load
from helpers.lanes import processes

ADVERSARIAL = [
    {"match": "Propose a solution", "reply": "PROPOSAL"},
    {"match": "strongest attacks", "reply": "ATTACKS"},
    {"match": "Answer each attack", "reply": "DEFENCE"},
    {"match": "Decide: the final", "reply": "VERDICT"},
]


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "deliberate", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ))


def wait_for_record(proc: subprocess.Popen[str], ready: Any, timeout: float = 60) -> Path:
    """Poll runs/ until the (only) record satisfies ``ready``; every read must be valid JSON."""
    runs = Path("runs")
    deadline = time.time() + timeout
    while time.time() < deadline:
        for path in runs.glob("*.json") if runs.is_dir() else []:
            if ready(json.loads(path.read_text())):  # atomic writes: never half a file
                return path
        if proc.poll() is not None:
            raise AssertionError(f"the run ended early: {proc.communicate()}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("the record never reached the awaited state")


def ok_calls(scripted: Any, needle: str) -> int:
    return sum(1 for c in scripted.calls() if c.get("ok") and needle in c["prompt"])


@pytest.mark.parametrize("sig,status", [(signal.SIGKILL, "running"), (signal.SIGINT, "interrupted")],
                         ids=["sigkill", "sigint"])
def test_killed_run_resumes_without_redoing_finished_steps(scripted, sig: int, status: str) -> None:
    scripted.write([{**ADVERSARIAL[1], "delay": 60}, *ADVERSARIAL])
    proc = start("run", "adversarial", "Ship on Friday?", "--quiet")
    path = wait_for_record(proc, lambda r: r["steps"]["proposal"]["status"] == "succeeded")
    proc.send_signal(sig)
    proc.communicate(timeout=30)
    assert proc.returncode == (-signal.SIGKILL if sig == signal.SIGKILL else 130)

    crashed = json.loads(path.read_text())
    assert crashed["status"] == status
    assert crashed["steps"]["proposal"]["output"] == "PROPOSAL"
    assert crashed["steps"]["arbiter"]["status"] == "pending"
    assert load(path).run_id == path.stem  # the schema validates too

    scripted.write(ADVERSARIAL)  # the provider answers promptly now
    r = cli_process("resume", str(path))  # a fresh process picks up what the killed one left
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stderr and "VERDICT" in r.stdout
    assert ok_calls(scripted, "Propose a solution") == 1  # finished before the kill: not called again
    for needle in ("strongest attacks", "Answer each attack", "Decide: the final"):
        assert ok_calls(scripted, needle) == 1
    assert list(Path("runs").glob("*.json")) == [path]  # completed in place, same run id
    rec = load(path)
    assert rec.run_id == crashed["run_id"] and rec.status == "succeeded" and rec.output == "VERDICT"
    assert rec.steps["proposal"].status == "succeeded" and len(rec.steps["proposal"].calls) == 1
    assert "PROPOSAL" in rec.steps["arbiter"].calls[0].messages[-1].content
    assert rec.totals.calls == 4 and rec.totals.steps == 4

    r = cli("resume", str(path))  # a finished run does not resume twice
    assert r.returncode == 2 and "only running or interrupted runs resume" in r.stderr


def test_killed_in_round_two_resumes_the_rounds_block_from_round_one(scripted) -> None:
    scripted.write([{"match": "Produce a complete", "reply": "DRAFT"},
                    {"match": "List the concrete problems", "reply": "CRIT", "times": 1},
                    {"match": "List the concrete problems", "delay": 60},
                    {"match": "Write the improved", "reply": "R1"}])
    proc = start("run", "challenge", "x", "--rounds", "2", "--quiet")
    # round 1 is recorded and round 2's critic is in flight
    path = wait_for_record(proc, lambda r: len(r["rounds"]) == 1 and r["steps"]["challenger"]["status"] == "running")
    proc.kill()
    proc.communicate(timeout=30)
    crashed = json.loads(path.read_text())
    # the refiner looks finished (round 1's value): resume must not trust it
    assert crashed["status"] == "running" and crashed["steps"]["refiner"]["status"] == "succeeded"

    scripted.write([{"match": "List the concrete problems", "reply": "CRIT2"},
                    {"match": "Write the improved", "reply": "FINAL"}])
    r = cli("resume", str(path), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["output"] == "FINAL" and doc["reused"] == ["creator"]
    assert doc["rerun"] == ["challenger", "refiner"]
    assert ok_calls(scripted, "Produce a complete") == 1
    rec = load(path)
    assert rec.status == "succeeded"
    assert [(x.round, x.stop_reason) for x in rec.rounds] == [(1, None), (2, "max")]
    assert [x["round"] for x in rec.steps["refiner"].rounds] == [1, 2]
    assert rec.steps["refiner"].output == "FINAL"


TINY = "name: tiny\ninputs: {prompt: {}}\nsteps:\n  answer: {prompt: \"{{ prompt }}\"}\n"


def test_twenty_concurrent_runs_write_twenty_valid_records(scripted, isolated) -> None:
    n = processes(20, fast=6)
    (isolated / "tiny.yaml").write_text(TINY)
    procs = [start("run", "tiny.yaml", f"question {i}", "--quiet") for i in range(n)]
    for p in procs:
        _out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    runs = isolated / "runs"
    paths = sorted(runs.glob("*.json"))
    assert len(paths) == n
    recs = [load(p) for p in paths]
    assert len({r.run_id for r in recs}) == n
    assert all(r.status == "succeeded" and p.stem == r.run_id for r, p in zip(recs, paths, strict=True))
    assert {r.inputs["prompt"] for r in recs} == {f"question {i}" for i in range(n)}
    assert all(r.output == f"[smollm2-135m] {r.inputs['prompt']}" for r in recs)  # no record got another's
    assert not [p for p in runs.iterdir() if p.suffix != ".json"]  # no temp files left behind


BAD = {
    "truncated": '{"kind": "deliberate.run", "schema_version": 1, "run_id": "01',
    "foreign": '{"name": "challenge", "steps": {}}',
    "newer": '{"kind": "deliberate.run", "schema_version": 99, "run_id": "x", "status": "running"}',
}
NEEDLE = {"truncated": "truncated or corrupt", "foreign": "not a deliberate run record",
          "newer": "newer than this deliberate"}


@pytest.mark.parametrize("kind", sorted(BAD))
@pytest.mark.parametrize("command", [["resume"], ["replay", "--from", "creator"], ["replay", "--html", "r.html"]],
                         ids=["resume", "replay-from", "replay-html"])
def test_bad_record_is_a_clean_error_and_left_alone(isolated, kind: str, command: list[str]) -> None:
    runs = isolated / "runs"
    runs.mkdir()
    path = runs / "01JBADRECORD0000000000000.json"
    path.write_text(BAD[kind])
    before = path.read_bytes()
    r = cli(command[0], "01JBADRECORD", *command[1:])  # by run id prefix, as a user would
    assert r.returncode == 2, r.stderr
    assert NEEDLE[kind] in r.stderr and path.name in r.stderr and "Traceback" not in r.stderr
    assert path.read_bytes() == before
    assert sorted(p.name for p in runs.iterdir()) == [path.name]  # nothing written beside it
    assert not (isolated / "r.html").exists()


def test_resume_refuses_a_run_that_is_still_going(scripted, isolated) -> None:
    import subprocess as sp
    import sys as _sys
    import time as _time

    scripted.write([{"match": "Solution to review", "delay": 30}])
    proc = sp.Popen([_sys.executable, "-m", "deliberate", "run", "challenge", "x", "--quiet"],
                    stdout=sp.PIPE, stderr=sp.PIPE, text=True)
    try:
        runs = isolated / "runs"
        deadline = _time.time() + 60
        while _time.time() < deadline and not (runs.exists() and list(runs.glob("*.json"))):
            _time.sleep(0.1)
        record = next(runs.glob("*.json"))
        _time.sleep(0.5)
        r = cli("resume", str(record))
        assert r.returncode == 2 and "still running" in r.stderr, r.stderr
    finally:
        proc.kill()
        proc.wait()
    # once the process is gone (even killed), the same record resumes
    scripted.write([])
    r = cli("resume", str(record), "--json")
    assert r.returncode == 0, r.stderr
