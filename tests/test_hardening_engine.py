"""Hardening of the engine's event stream and of what reaches the terminal: a failing subscriber
does not kill the run (but a failing run record fails it, loudly); a judge whose threshold is
never met says so everywhere (record, ``--json`` summary, live view, summary line) and can fail
the run (``on_fail: fail``); text that did not come from our code reaches the terminal without
control sequences and is never parsed as Rich markup. SCRIPTED test backend throughout."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from deliberate_scripted import ScriptedBackend
from rich.console import Console

from deliberate.config import Settings
from deliberate.engine.events import Event, RunFinished
from deliberate.errors import FlowError
from deliberate.flows import load_flow_text
from deliberate.gateway import Gateway
from deliberate.records.schema import RunRecord
from test_engine import JUDGED, registry


async def run_with(flow: str, backend: ScriptedBackend, subscribers: list[Any],
                   inputs: dict[str, Any] | None = None, *, preset: dict[str, Any] | None = None,
                   parent_record: RunRecord | None = None, parent_run_id: str | None = None,
                   settings: Settings | None = None) -> Any:
    """Run a flow on the scripted backend; with ``preset``, as a replay of ``parent_record``."""
    from deliberate.services.run import Lineage, OutputOptions, RunRequest, Services, run

    reg = registry()
    settings = settings or Settings()
    gw = Gateway(reg, settings=settings, backends={"scripted": backend}, retry_base_s=0.001)
    request = RunRequest(load_flow_text(flow, "test.yaml", reg), inputs or {"prompt": "q"},
                         output=OutputOptions(record=True, runs_dir=Path("runs")),
                         lineage=Lineage(preset=preset or {}, parent_run_id=parent_run_id, parent=parent_record))
    outcome = await run(request, Services(settings=settings, registry=reg, gateway=gw,
                                          subscribers=list(subscribers)))
    path = outcome.record_path
    rec = json.loads(path.read_text()) if path and path.exists() else None
    return outcome, rec


class Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def about(self, needle: str) -> list[str]:
        return [m for m in (r.getMessage() for r in self.records) if needle in m]


@pytest.fixture
def logged() -> Iterator[Captured]:
    """What the engine logs (the ``deliberate`` logger does not propagate to the root, so pytest's
    caplog does not see it)."""
    handler = Captured()
    logger = logging.getLogger("deliberate")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


# -- 1. a failing subscriber ------------------------------------------------------------------

PASSING_JUDGE = [
    {"match": "SCORE: N", "reply": "SCORE: 3\nToo vague.", "times": 1},
    {"match": "SCORE: N", "reply": "SCORE: 9\nGood now."},
    {"match": "^answer", "reply": "v1"},
    {"match": "Too vague", "reply": "v2"},
    {"match": "^final", "reply": "FINAL"},
]


class Boom(Exception):
    pass


class RaisesOnEvery:
    def __init__(self) -> None:
        self.seen = 0

    def __call__(self, event: Event) -> None:
        self.seen += 1
        raise Boom(f"view broke on {event.type}")

    def __repr__(self) -> str:
        return "<RaisesOnEvery>"


class RaisesOnRunFinished:
    def __call__(self, event: Event) -> None:
        if isinstance(event, RunFinished):
            raise Boom("view broke at the end")

    def __repr__(self) -> str:
        return "<RaisesOnRunFinished>"


@pytest.mark.parametrize("bad", [RaisesOnEvery, RaisesOnRunFinished], ids=["every-event", "run-finished"])
async def test_a_raising_subscriber_changes_nothing_and_is_logged_once(bad: type, logged: Captured) -> None:
    clean, clean_rec = await run_with(JUDGED, ScriptedBackend(rules=PASSING_JUDGE), [])
    sub = bad()
    seen: list[Event] = []
    outcome, rec = await run_with(JUDGED, ScriptedBackend(rules=PASSING_JUDGE), [sub, seen.append])
    r = outcome.result
    assert (r.status, r.output, r.exit_code, r.error) == ("succeeded", "FINAL", 0, None)
    assert (r.status, r.output) == (clean.result.status, clean.result.output)
    # the record on disk is whole: finished, every step as in a clean run, the totals counted
    assert rec["status"] == "succeeded" and rec["finished_at"] and rec["output"] == "FINAL"
    assert {n: s["status"] for n, s in rec["steps"].items()} == {
        n: s["status"] for n, s in clean_rec["steps"].items()}
    assert rec["totals"]["calls"] == clean_rec["totals"]["calls"] == 5
    assert RunRecord.model_validate(rec).status == "succeeded"
    # the subscriber after the broken one still saw every event, the last included
    assert type(seen[-1]).__name__ == "RunFinished"
    if isinstance(sub, RaisesOnEvery):
        assert sub.seen == len(seen) > 10  # it kept being called; it was logged once
    warnings = logged.about(repr(sub))
    assert len(warnings) == 1, warnings
    assert "view broke on RunStarted" in warnings[0] or "view broke at the end" in warnings[0]
    assert [r.levelno for r in logged.records if repr(sub) in r.getMessage()] == [logging.WARNING]


async def test_a_run_record_that_cannot_be_written_fails_the_run(monkeypatch: pytest.MonkeyPatch,
                                                                 logged: Captured) -> None:
    """The record is the product: a recorder that fails is not a view that failed. The run ends
    failed, with one line saying why, instead of a traceback or a silent success."""
    def disk_full(*_a: Any, **_k: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("deliberate.records.store.write_atomic", disk_full)
    outcome, rec = await run_with(JUDGED, ScriptedBackend(rules=PASSING_JUDGE), [])
    r = outcome.result
    assert r.status == "failed" and r.exit_code == 1
    assert r.error_type == "RecordFailed"
    assert r.error and r.error.startswith("the run record failed: OSError") and "No space left" in r.error
    assert rec is None and r.output == "FINAL"  # nothing on disk; the answer is not thrown away
    assert len(logged.about("No space left")) == 1
    assert outcome.recorder.lock is not None and not outcome.recorder.lock.held  # the lock is freed
    assert not list(Path("runs").glob(".*.lock"))


async def test_a_recorder_failing_mid_run_stops_the_run_and_the_record_says_so(
        monkeypatch: pytest.MonkeyPatch, logged: Captured) -> None:
    """Even under an optional step (whose own failures are let go), a recorder that lost a call
    stops the run: no later step calls a model, and the record written at the end says failed."""
    from deliberate.engine.events import CallFinished
    from deliberate.records import recorder as recorder_module

    real = recorder_module._STEP_HANDLERS[CallFinished]

    def lose_extra(self: Any, event: CallFinished, step: dict[str, Any]) -> None:
        if event.step == "extra":
            raise Boom("recorder bug")
        real(self, event, step)

    monkeypatch.setitem(recorder_module._STEP_HANDLERS, CallFinished, lose_extra)
    flow = """
name: opt
inputs: {prompt: {}}
steps:
  extra: {optional: true, prompt: "extra {{ prompt }}"}
  main: {prompt: "main [{{ extra }}]"}
"""
    backend = ScriptedBackend()
    outcome, rec = await run_with(flow, backend, [])
    r = outcome.result
    assert r.status == "failed" and r.exit_code == 1 and r.error_type == "RecordFailed"
    assert r.error == "the run record failed: Boom: recorder bug"
    assert [c["prompt"] for c in backend.calls] == ["extra q"]  # main never ran
    assert rec["status"] == "failed" and rec["error"] == r.error
    assert rec["steps"]["main"]["status"] == "pending"
    assert len(logged.about("recorder bug")) == 1
    assert logged.records[0].levelno == logging.ERROR


# -- 2. a judge below its threshold -----------------------------------------------------------

NEVER_GOOD = [
    {"match": "The answer:\nv1", "reply": "SCORE: 3 meh"},
    {"match": "SCORE: N", "reply": "SCORE: 0 worse"},
    {"match": "^answer", "reply": "v1"},
    {"match": "reviewer scored", "reply": "v-worse"},
    {"match": "^final", "reply": "FINAL"},
]


async def test_judge_below_threshold_is_in_the_record_and_the_summary() -> None:
    outcome, rec = await run_with(JUDGED, ScriptedBackend(rules=NEVER_GOOD), [])
    r = outcome.result
    assert (r.status, r.exit_code, r.output) == ("succeeded", 0, "FINAL")  # keep_best: the run goes on
    assert r.below_threshold == ["gate"]
    gate = rec["steps"]["gate"]
    assert gate["status"] == "succeeded"
    assert gate["verdict"] == {"outcome": "below_threshold", "score": 3, "threshold": 7, "scale": 10,
                               "attempts": 3, "on_fail": "keep_best"}
    assert rec["below_threshold"] == ["gate"]
    assert rec["steps"]["answer"]["output"] == "v1"  # the best draft is kept
    summary = RunRecord.model_validate(rec).summary()
    assert summary["below_threshold"] == ["gate"]
    assert summary["steps"]["gate"]["verdict"]["outcome"] == "below_threshold"
    assert "verdict" not in summary["steps"]["answer"]


async def test_a_judge_waits_its_backoff_before_each_re_draft(monkeypatch: pytest.MonkeyPatch) -> None:
    import deliberate.engine.steps.judge as judge

    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr(judge.asyncio, "sleep", sleep)
    await run_with(JUDGED, ScriptedBackend(rules=NEVER_GOOD), [], settings=Settings(judge_backoff_s=0.25))
    assert waits == [0.25, 0.5]  # retries: 2, so two re-drafts, the wait doubling
    assert Settings().judge_backoff_s == 0  # the suite's own setting (conftest)
    monkeypatch.delenv("DELIBERATE_JUDGE_BACKOFF_S")
    assert Settings().judge_backoff_s == 0.5  # what users get


async def test_a_passing_judge_says_passed_and_nothing_is_below() -> None:
    outcome, rec = await run_with(JUDGED, ScriptedBackend(rules=PASSING_JUDGE), [])
    assert outcome.result.below_threshold == []
    assert rec["steps"]["gate"]["verdict"] == {"outcome": "passed", "score": 9, "threshold": 7, "scale": 10,
                                               "attempts": 2, "on_fail": "keep_best"}
    assert rec["below_threshold"] == []
    assert RunRecord.model_validate(rec).summary()["below_threshold"] == []


async def test_on_fail_fail_fails_the_run_with_one_line() -> None:
    flow = JUDGED.replace("retries: 2}", "retries: 2, on_fail: fail}")
    assert "on_fail: fail" in flow
    backend = ScriptedBackend(rules=NEVER_GOOD)
    outcome, rec = await run_with(flow, backend, [])
    r = outcome.result
    assert (r.status, r.exit_code) == ("failed", 1)
    assert r.error == "step 'gate': judge score 3 below threshold 7 after 3 attempts"
    assert r.error_type == "JudgeBelowThreshold"
    assert rec["steps"]["gate"]["status"] == "failed"
    assert rec["steps"]["gate"]["verdict"]["outcome"] == "below_threshold"
    assert rec["steps"]["gate"]["verdict"]["on_fail"] == "fail"
    assert rec["below_threshold"] == ["gate"]
    assert rec["steps"]["after"]["status"] == "pending"
    assert not [c for c in backend.calls if c["prompt"].startswith("final")]


@pytest.mark.parametrize("parent_from", ["now", "before-verdicts"])
async def test_a_reused_judge_keeps_its_verdict(parent_from: str) -> None:
    """replay --from a step after the judge: the judge is reused, and so is its verdict (read
    from the attempts when the parent record was written before verdicts were)."""
    _first, rec = await run_with(JUDGED, ScriptedBackend(rules=NEVER_GOOD), [])
    if parent_from == "before-verdicts":
        del rec["below_threshold"]
        for s in rec["steps"].values():
            del s["verdict"]
    parent = RunRecord.model_validate(rec)
    preset = {n: s["value"] for n, s in rec["steps"].items() if n != "after"}
    backend = ScriptedBackend(rules=NEVER_GOOD)
    outcome, again = await run_with(JUDGED, backend, [], preset=preset, parent_record=parent,
                                    parent_run_id=parent.run_id)
    assert [c["prompt"] for c in backend.calls] == ["final v1"]
    assert again["steps"]["gate"]["status"] == "reused"
    assert again["steps"]["gate"]["verdict"]["outcome"] == "below_threshold"
    assert again["steps"]["gate"]["verdict"]["score"] == 3
    assert again["below_threshold"] == ["gate"] and outcome.result.below_threshold == ["gate"]


@pytest.mark.parametrize("step,needle", [
    ("{prompt: hi, on_fail: fail}", "'on_fail' is not allowed on a generate step"),
    ("{kind: vote, from: a, on_fail: keep_best}", "'on_fail' is not allowed on a vote step"),
    ("{kind: judge, target: a, rubric: r, threshold: 5, on_fail: retry}", "on_fail"),
])
def test_on_fail_is_a_judge_field_with_two_values(step: str, needle: str) -> None:
    text = f"name: t\nsteps:\n  a: {{for_each: [x, y], prompt: '{{{{ item }}}}'}}\n  b: {step}\n"
    with pytest.raises(FlowError) as exc:
        load_flow_text(text, "t.yaml", registry())
    assert needle in exc.value.line()
    ok = "name: t\nsteps:\n  a: {prompt: hi}\n  b: {kind: judge, target: a, rubric: r, threshold: 5, on_fail: fail}\n"
    assert load_flow_text(ok, "t.yaml", registry()).flow.steps["b"].on_fail == "fail"


def old_record(score: float = 3) -> dict[str, Any]:
    """A record as written before verdicts existed (no `verdict`, no `below_threshold`)."""
    judge = [{"attempt": i, "score": s, "threshold": 7.0, "passed": s >= 7, "feedback": "f"}
             for i, s in enumerate([score, 1, 2], 1)]
    step = {"name": "gate", "kind": "judge", "status": "succeeded", "round": 1, "started_at": 1.0,
            "finished_at": 2.0, "value": {"type": "verdict", "score": score, "passed": False, "feedback": "f",
                                          "attempts": 3, "scale": 10},
            "output": "score", "skipped_when": None, "decided_by": None, "error": None, "error_type": None,
            "calls": [], "failures": [], "judge": judge, "vote": None, "rounds": []}
    return {"schema_version": 1, "kind": "deliberate.run", "run_id": "01J9Z3QK8M7T2V4X6Y8Z0A1B2C", "parent_run_id": None,
            "status": "succeeded", "created_at": 1.0, "finished_at": 2.0, "flow_name": "old",
            "flow_source": "old.yaml", "flow_hash": "h", "flow": {}, "inputs": {}, "options": {},
            "order": ["gate"], "output_step": "gate", "reused_steps": [], "steps": {"gate": step},
            "rounds": [], "events": [], "output": "x", "error": None, "error_type": None,
            "totals": {"steps": 1, "calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0,
                       "wall_s": 1.0}, "deliberate_version": "0.1.0"}


def test_records_from_before_verdicts_load_and_show_their_judges(tmp_path: Path) -> None:
    from deliberate.records.store import load
    from deliberate.ui.render import full_view

    path = tmp_path / "old.json"
    path.write_text(json.dumps(old_record()))
    rec = load(path)
    assert rec.steps["gate"].verdict is None and rec.below_threshold == []
    summary = rec.summary()
    assert summary["below_threshold"] == ["gate"]  # derived from the judge's attempts
    assert summary["steps"]["gate"]["verdict"]["score"] == 3
    shown = show(full_view(rec), terminal=False)
    assert "best 3/10 after 3 attempts" in shown


def show(renderable: Any, terminal: bool, width: int = 120) -> str:
    out = io.StringIO()
    Console(file=out, force_terminal=terminal, width=width, color_system="standard" if terminal else None,
            legacy_windows=False).print(renderable)
    return out.getvalue()


async def test_live_view_shows_a_judge_below_threshold() -> None:
    from deliberate.ui.live import LiveView
    from deliberate.ui.render import step_tree, summary_line

    out = io.StringIO()
    view = LiveView(Console(file=out, force_terminal=False, width=120))
    outcome, _rec = await run_with(JUDGED, ScriptedBackend(rules=NEVER_GOOD), [view])
    lines = out.getvalue().splitlines()
    assert "  below    gate (best 3/10 after 3 attempts, threshold 7)" in lines
    assert not [ln for ln in lines if re.match(r"\s+ok\s+gate\b", ln)]
    assert "below threshold: gate" in lines[-1] and lines[-1].startswith("succeeded")
    rec = outcome.recorder.record
    tree = show(step_tree(rec), terminal=False)
    gate_line = next(ln for ln in tree.splitlines() if " gate" in ln)
    assert "✓" not in gate_line and "below threshold: best 3/10 after 3 attempts (threshold 7)" in gate_line
    assert "below threshold: gate" in show(summary_line(rec), terminal=False)


async def test_the_summary_line_counts_the_calls_made_while_the_run_goes() -> None:
    """A running record's totals count the calls made so far (the live view's last line, `runs
    show` of a run that crashed), and the end's recount agrees."""
    from deliberate.engine.events import CallFinished
    from deliberate.records.recorder import Recorder
    from deliberate.ui.render import summary_line
    from test_engine import FANOUT

    events: list[Event] = []
    outcome, _rec = await run_with(FANOUT, ScriptedBackend(rules=[]), [events.append], {"prompt": "q"})
    finished = [i for i, e in enumerate(events) if isinstance(e, CallFinished)]
    assert len(finished) == 6  # five branches and the merge
    mid = Recorder(None)
    for event in events[:finished[2] + 1]:  # three branches answered
        mid(event)
    made = [e.call for e in events[:finished[2] + 1] if isinstance(e, CallFinished)]
    tokens = sum(c.prompt_tokens + c.completion_tokens for c in made)
    assert mid.record.totals.calls == 3 and mid.record.totals.prompt_tokens + mid.record.totals.completion_tokens == tokens
    line = show(summary_line(mid.record), terminal=False)
    assert line.startswith("running") and f"3 calls · {tokens} tokens" in line and tokens > 0
    t = outcome.recorder.record.totals
    every = [e.call for e in events if isinstance(e, CallFinished)]
    assert (t.calls, t.prompt_tokens) == (6, sum(c.prompt_tokens for c in every))
    end = show(summary_line(outcome.recorder.record), terminal=False)
    assert end.startswith("succeeded") and "6 calls" in end


async def test_plain_lines_give_each_finished_step_its_time_calls_tokens_and_models() -> None:
    """Where stderr is no terminal (CI logs), a finished step is one greppable line with what
    the live tree shows beside it."""
    from deliberate.ui.live import LiveView
    from test_engine import FANOUT

    out = io.StringIO()
    await run_with(FANOUT, ScriptedBackend(rules=[]), [LiveView(Console(file=out, force_terminal=False, width=120))],
                   {"prompt": "q"})
    lines = out.getvalue().splitlines()
    assert [ln for ln in lines if re.fullmatch(r"  ok +experts  \d+\.\ds · 5 calls · [1-9]\d* tok · m1", ln)], lines
    assert [ln for ln in lines if re.fullmatch(r"  ok +merge  \d+\.\ds · 1 call · [1-9]\d* tok · m1", ln)], lines


# -- 3. terminal safety -----------------------------------------------------------------------

HOSTILE_OUTPUT = "The answer \x1b]0;PWNED\x07\x1b[2J is **42**\x1bc\x9b31m."
# what Rich itself writes on a terminal: SGR styles, cursor moves and line erases of the live
# view, cursor show/hide, OSC 8 links
RICH_OWN = re.compile(r"\x1b\[[0-9;]*m|\x1b\[\d*[ABCDGK]|\x1b\[\?25[lh]|\r|\x1b\]8;[^\x07\x1b]*\x1b\\")


def hostile_record() -> RunRecord:
    from deliberate.engine.events import CallInfo

    call = CallInfo(model_key="m[/]\x1b]0;PWNED\x07", text=HOSTILE_OUTPUT)
    steps = {
        "[bold]x": {"name": "[bold]x", "kind": "generate", "status": "failed",
                    "error": "provider said [/ nope \x1b[2J\x1b]0;PWNED\x07", "calls": [call],
                    "output": HOSTILE_OUTPUT},
        "pick": {"name": "pick", "kind": "vote", "status": "succeeded", "output": HOSTILE_OUTPUT,
                 "vote": {"counts": {"[/]\x1b[2J": 2}, "winner": "[/]\x1b]0;PWNED\x07", "tie": False,
                          "tie_rule": "first"}},
        "skip": {"name": "skip", "kind": "generate", "status": "skipped", "skipped_when": "'[/' in x\x1b[2J",
                 "decided_by": "\x1b]0;PWNED\x07"},
    }
    return RunRecord.model_validate({
        "run_id": "01[/]\x1b[2J", "status": "failed", "created_at": 1.0, "finished_at": 2.0,
        "flow_name": "[red]f\x1b]0;PWNED\x07", "flow_source": "f.yaml", "flow_hash": "h", "flow": {}, "inputs": {},
        "options": {}, "order": list(steps), "output_step": "pick", "steps": steps,
        "events": [{"kind": "breaker_open", "endpoint": "[/]ep\x1b[2J", "detail": "\x1b]0;PWNED\x07[bold]"}],
        "output": HOSTILE_OUTPUT, "error": "step '[bold]x': [/ \x1b[2J",
        "rounds": [{"round": 1}],
    })


def assert_safe(text: str, terminal: bool) -> None:
    assert "PWNED" not in text and "\x07" not in text and "\x9b" not in text
    assert "\x1b[2J" not in text and "\x1bc" not in text
    if terminal:
        assert "\x1b" not in RICH_OWN.sub("", text), repr(RICH_OWN.sub("", text))
    else:
        assert "\x1b" not in text, repr(text)


@pytest.mark.parametrize("terminal", [False, True], ids=["pipe", "terminal"])
def test_rendered_records_carry_no_control_sequences_and_no_markup(terminal: bool) -> None:
    from deliberate.ui.render import answer, full_view, step_tree, summary_line

    rec = hostile_record()
    streaming = {"[bold]x": "tok \x1b]0;PWNED\x07 [/] more \x1b[2J"}
    running = rec.model_copy(deep=True)
    running.steps["[bold]x"].status = "running"
    failed_answer = rec.model_copy(update={"output": None})
    for renderable in (full_view(rec, verbose=True), step_tree(running, streaming), summary_line(rec),
                       answer(rec), answer(failed_answer)):
        text = show(renderable, terminal)
        assert_safe(text, terminal)
    tree = show(full_view(rec, verbose=True), terminal=False)
    assert "[bold]x" in tree and "provider said [/ nope" in tree and "[red]f" in tree  # shown as written
    assert "The answer  is 42" in show(answer(rec), terminal=False)
    assert rec.output == HOSTILE_OUTPUT  # the record keeps the raw text


@pytest.mark.parametrize("terminal", [False, True], ids=["pipe", "terminal"])
def test_live_view_lines_carry_no_control_sequences_and_no_markup(terminal: bool) -> None:
    from deliberate.engine.events import (
        GatewayNotice,
        RunStarted,
        StepFailed,
        StepFinished,
        StepStarted,
        Token,
    )
    from deliberate.gateway.contracts import GatewayEvent
    from deliberate.ui.live import LiveView

    out = io.StringIO()
    view = LiveView(Console(file=out, force_terminal=terminal, width=120))
    name, ok = "[bold]x", "y\x1b]0;PWNED\x07"
    events: list[Event] = [
        RunStarted(run_id="01[/]\x1b[2J", flow_name="[red]f\x1b]0;PWNED\x07", flow_source="f", flow_hash="h",
                   flow={"steps": {name: {}, ok: {}}}, inputs={}, options={}, order=[name, ok],
                   output_step=ok),
        StepStarted(step=name, kind="generate", model_key="m[/]"),
        Token(step=name, text="tok \x1b]0;PWN"), Token(step=name, text="ED\x07 [/]"),
        GatewayNotice(step=name, event=GatewayEvent(kind="retry", endpoint="[/]e\x1b[2J",
                                                    detail="\x1b]0;PWNED\x07 [bold]")),
        StepFailed(step=name, error="provider said [/ nope \x1b[2J", error_type="ProviderError", optional=True),
        StepStarted(step=ok, kind="generate"),
        StepFinished(step=ok, kind="generate", value={"type": "text", "text": HOSTILE_OUTPUT}),
        RunFinished(status="succeeded", output=HOSTILE_OUTPUT, output_step=ok),
    ]
    try:
        for ev in events:
            view(ev)
            if terminal:
                out.write(show(view.render(), terminal=True))  # what each refresh draws
    finally:
        view.stop()
    text = out.getvalue()
    assert_safe(text, terminal)
    if not terminal:
        assert "  FAILED   [bold]x (provider said [/ nope )" in text.splitlines()
        assert "  retry    [/]e  [bold]" in text.splitlines()


def test_cli_says_below_threshold_and_on_fail_fails_with_one_line(scripted, isolated: Path) -> None:
    from conftest import cli

    scripted.write(NEVER_GOOD)
    flow = isolated / "gated.yaml"
    flow.write_text(JUDGED)
    r = cli("run", str(flow), "q")  # stderr is a pipe: one plain line per step
    assert r.returncode == 0, r.stderr
    assert "  below    gate (best 3/10 after 3 attempts, threshold 7)" in r.stderr.splitlines()
    assert "judge below threshold: gate" in r.stderr
    r = cli("run", str(flow), "q", "--json")
    doc = json.loads(r.stdout)
    assert doc["status"] == "succeeded" and doc["summary"]["below_threshold"] == ["gate"]
    flow.write_text(JUDGED.replace("retries: 2}", "retries: 2, on_fail: fail}"))
    r = cli("run", str(flow), "q")
    assert r.returncode == 1
    assert "error: step 'gate': judge score 3 below threshold 7 after 3 attempts" in r.stderr.splitlines()


async def test_the_live_view_shows_a_reused_judge_below_threshold() -> None:
    from deliberate.ui.live import LiveView

    _first, rec = await run_with(JUDGED, ScriptedBackend(rules=NEVER_GOOD), [])
    preset = {n: s["value"] for n, s in rec["steps"].items() if n != "after"}
    out = io.StringIO()
    view = LiveView(Console(file=out, force_terminal=False, width=200))
    await run_with(JUDGED, ScriptedBackend(rules=NEVER_GOOD), [view], preset=preset,
                   parent_record=RunRecord.model_validate(rec))
    assert "  below    gate (best 3/10 after 3 attempts, threshold 7)" in out.getvalue().splitlines()
