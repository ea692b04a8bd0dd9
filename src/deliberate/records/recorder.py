"""The run record as a subscriber of the engine's event stream, written after every step."""

from __future__ import annotations

import threading
from pathlib import Path

from .. import __version__
from ..config import scrub, secret_values
from ..engine.events import (
    CallFailed,
    CallFinished,
    Event,
    GatewayNotice,
    JudgeScored,
    RoundFinished,
    RunFinished,
    RunStarted,
    StepFailed,
    StepFinished,
    StepSkipped,
    StepStarted,
    VoteDecided,
)
from ..engine.values import as_text, from_json
from .schema import CallRecord, FailureRecord, JudgeRecord, RoundRecord, RunRecord, StepRecord, VoteRecord
from .store import LiveLock, record_path, write_atomic


class Recorder:
    """Builds the :class:`RunRecord` from events; writes it atomically unless ``runs_dir`` is None."""

    def __init__(self, runs_dir: Path | None, base: RunRecord | None = None,
                 parent: RunRecord | None = None) -> None:
        self.runs_dir = runs_dir
        self.base = base  # resume: continue this record instead of starting a new one
        self.parent = parent  # replay --from: where reused steps' judge scores and votes come from
        self._secrets: list[str] | None = None  # read on the first write (scanning env costs)
        self.writer: _Writer | None = None
        self.lock: LiveLock | None = None
        self.record: RunRecord | None = None
        self.path: Path | None = None

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self.record = RunRecord(
                run_id=event.run_id, parent_run_id=event.parent_run_id, created_at=event.at,
                flow_name=event.flow_name, flow_source=event.flow_source, flow_hash=event.flow_hash,
                flow=event.flow, inputs=event.inputs, options=event.options, order=event.order,
                output_step=event.output_step, reused_steps=event.reused_steps,
                deliberate_version=__version__,
                steps={n: StepRecord(name=n, kind=event.flow["steps"][n].get("kind", "generate"))
                       for n in event.order},
            )
            if self.base is not None and self.base.run_id == event.run_id:
                self.record = self.base.model_copy(deep=True)
                self.record.status, self.record.error, self.record.error_type = "running", None, None
                self.record.finished_at = None
                for s in self.record.steps.values():
                    if s.status in ("running", "failed"):
                        s.status = "pending"
            if self.runs_dir is not None:
                self.path = record_path(self.runs_dir, event.run_id)
                self.writer = _Writer(self.path)
                self.lock = LiveLock(self.path)
                try:
                    self.lock.acquire()
                except OSError:
                    self.lock = None  # another process holds it: resume refuses that case earlier
            self.save()
            return
        rec = self.record
        if rec is None:
            return
        step = rec.steps.get(getattr(event, "step", "") or "")
        if isinstance(event, StepStarted) and step is not None:
            if step.started_at is None or event.round > step.round:
                step.started_at = event.at
            step.status, step.round = "running", event.round
        elif isinstance(event, CallFinished) and step is not None:
            step.calls.append(CallRecord(**dict(event.call), round=event.round, branch=event.branch,
                                         item=event.item, attempt=event.attempt))
        elif isinstance(event, CallFailed) and step is not None:
            step.failures.append(FailureRecord(round=event.round, branch=event.branch, error=event.error,
                                               error_type=event.error_type))
        elif isinstance(event, StepFinished) and step is not None:
            if event.reused and self.base is not None and step.status in ("succeeded", "skipped"):
                return  # resume: the finished step stays as it was recorded
            step.status = "reused" if event.reused else "succeeded"
            if event.reused and self.parent is not None and event.step in self.parent.steps:
                before = self.parent.steps[event.step]
                step.judge, step.vote, step.rounds = list(before.judge), before.vote, list(before.rounds)
                if before.status == "skipped":
                    step.status, step.skipped_when, step.decided_by = "skipped", before.skipped_when, before.decided_by
            step.value, step.round = event.value, event.round
            step.output = as_text(from_json(event.value))
            step.finished_at = event.at
            step.error = step.error_type = None
            if step.started_at is None:
                step.started_at = event.started_at or event.at
            self.save()
        elif isinstance(event, StepSkipped) and step is not None:
            step.status, step.skipped_when, step.decided_by = "skipped", event.when, event.decided_by
            step.value, step.output, step.finished_at = {"type": "text", "text": ""}, "", event.at
            self.save()
        elif isinstance(event, StepFailed) and step is not None:
            step.status, step.error, step.error_type = "failed", event.error, event.error_type
            step.finished_at = event.at
            self.save()
        elif isinstance(event, JudgeScored) and step is not None:
            step.judge.append(JudgeRecord(attempt=event.attempt, score=event.score, threshold=event.threshold,
                                          passed=event.passed, feedback=event.feedback))
        elif isinstance(event, VoteDecided) and step is not None:
            step.vote = VoteRecord(counts=event.counts, winner=event.winner, tie=event.tie,
                                   tie_rule=event.tie_rule, tied=event.tied)
        elif isinstance(event, RoundFinished):
            rec.rounds.append(RoundRecord(round=event.round, stop_reason=event.stop_reason,
                                          until_value=event.until_value, at=event.at))
            for name, value in event.outputs.items():
                rec.steps[name].rounds.append({"round": event.round, "value": value})
            self.save()
        elif isinstance(event, GatewayNotice):
            rec.events.append(event.event)
        elif isinstance(event, RunFinished):
            rec.status, rec.output, rec.error = event.status, event.output, event.error
            rec.error_type, rec.finished_at = event.error_type, event.at
            # Totals from the recorded calls: a resumed run counts what it did before, too.
            calls = [c for s in rec.steps.values() for c in s.calls]
            rec.totals = event.totals.model_copy(update={
                "steps": sum(1 for s in rec.steps.values() if s.status in ("succeeded", "reused")),
                "calls": sum(1 for c in calls if not c.cache_hit),
                "prompt_tokens": sum(c.prompt_tokens for c in calls),
                "completion_tokens": sum(c.completion_tokens for c in calls),
                "cost_usd": sum(c.cost_usd for c in calls),
            })
            if self.base is not None:
                rec.totals.wall_s += self.base.totals.wall_s
            for s in rec.steps.values():
                if s.status == "running":
                    s.status = "failed" if event.status == "failed" else "pending"
            self.save(durable=True)
            if self.lock is not None:
                self.lock.release()
                self.lock = None

    def save(self, durable: bool = False, now: bool = False) -> None:
        """Snapshot the record. Snapshots go to a writer thread (the event loop never waits for the
        disk; a burst of steps coalesces into the latest snapshot); the final one is written
        synchronously, after any write in progress, and fsync'd."""
        if self.record is None or self.path is None or self.writer is None:
            return
        # Secrets never reach a record: scrub the text as written, whatever field held them.
        if self._secrets is None:
            self._secrets = secret_values()
        text = scrub(self.record.model_dump_json(indent=1), self._secrets)
        if durable or now:
            self.writer.write_now(text, durable=durable)
        else:
            self.writer.submit(text)


class _Writer:
    """Writes the latest submitted snapshot of one record file, atomically, in a thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.cond = threading.Condition()
        self.pending: str | None = None
        self.busy = False
        self.thread: threading.Thread | None = None

    def submit(self, text: str) -> None:
        with self.cond:
            self.pending = text
            self.cond.notify()
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="deliberate-record", daemon=True)
                self.thread.start()

    def _run(self) -> None:
        while True:
            with self.cond:
                while self.pending is None:
                    self.cond.wait()
                text, self.pending = self.pending, None
                self.busy = True
            try:
                write_atomic(self.path, text, durable=False)
            finally:
                with self.cond:
                    self.busy = False
                    self.cond.notify_all()

    def write_now(self, text: str, durable: bool = True) -> None:
        """Drop any queued snapshot, wait for a write in progress, then write this one."""
        with self.cond:
            self.pending = None
            while self.busy:
                self.cond.wait()
            write_atomic(self.path, text, durable=durable)
