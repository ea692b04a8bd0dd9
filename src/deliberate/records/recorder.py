"""The run record as a subscriber of the engine's event stream, written after every step.

While a run goes, the record is kept as JSON-ready dicts, and its JSON text is kept in pieces: the
part fixed at the start (the flow, inputs, options) is encoded once, each step is encoded again
only when it changes, and the small rest every time. A snapshot after a step therefore costs the
encoding of that step, not of the whole record. :attr:`Recorder.record` validates the same text
into a :class:`RunRecord` for readers (the live view, ``--json``), once per change.

The recorder is a projection of the event stream: the record is a function of the events it
received (and, for resume and replay, of the records it was given to continue or reuse). It reads
the engine only through its events (``engine.events``, their values' text from ``engine.values``),
sets up no logging and writes to no terminal; the secret values it scrubs from the encoded text are
read once, when the run starts, and touch only the JSON, never the record's data."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from pydantic_core import PydanticSerializationError, to_json, to_jsonable_python

from .._version import __version__
from ..config import scrub, secret_values
from ..engine.events import (
    CallFailed,
    CallFinished,
    Event,
    GatewayNotice,
    JudgeDecided,
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
from ..safetext import valid_text
from .schema import RECORD_KIND, SCHEMA_VERSION, RunRecord
from .store import LiveLock, RecordWriter, record_path

_TOTALLED = ("cache_hit", "prompt_tokens", "completion_tokens", "cost_usd")
# fixed once the run has started; everything else is the "tail", encoded on every snapshot
_HEAD = ("schema_version", "kind", "run_id", "parent_run_id", "created_at", "flow_name", "flow_source",
         "flow_hash", "flow", "inputs", "options", "order", "output_step", "reused_steps",
         "deliberate_version")
_TAIL = ("status", "finished_at", "rounds", "events", "output", "error", "error_type", "totals",
         "below_threshold")


def _now() -> float:
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return time.monotonic()  # the loop's clock, too


def _new_step(name: str, kind: str) -> dict[str, Any]:
    return {"name": name, "kind": kind, "status": "pending", "round": 1, "started_at": None,
            "finished_at": None, "value": None, "output": None, "skipped_when": None, "decided_by": None,
            "error": None, "error_type": None, "calls": [], "failures": [], "judge": [], "vote": None,
            "rounds": [], "verdict": None}


def _valid_text(value: Any) -> Any:
    """JSON data with every lone surrogate in its text (keys too) replaced by U+FFFD."""
    if isinstance(value, str):
        return valid_text(value)
    if isinstance(value, list):
        return [_valid_text(v) for v in value]
    if isinstance(value, dict):
        return {_valid_text(k): _valid_text(v) for k, v in value.items()}
    return value


class Recorder:
    """Builds the run record from events; writes it atomically unless ``runs_dir`` is None."""

    def __init__(self, runs_dir: Path | None, base: RunRecord | None = None,
                 parent: RunRecord | None = None, durable: bool = False) -> None:
        self.runs_dir = runs_dir
        self.durable = durable  # fsync the final write
        self.base = base  # resume: continue this record instead of starting a new one
        self.parent = parent  # replay --from: where reused steps' judge scores and votes come from
        self.lock: LiveLock | None = None
        self.path: Path | None = None
        self._data: dict[str, Any] | None = None  # the record, JSON-ready (steps: see _new_step)
        self._secrets: list[str] = []
        self._head = b""
        self._steps: dict[str, bytes] = {}  # name -> encoded step, dropped when the step changes
        self._version = 0
        self._validated: tuple[int, RunRecord] | None = None
        self._first_write = 0.0  # loop time before which no snapshot is written
        self._flush: asyncio.TimerHandle | asyncio.Handle | None = None  # a snapshot to come
        # With no file to write, events are kept and projected when the record is first read:
        # a library caller that never reads it pays nothing for it (bench/overhead.py: 6-7 us of
        # 38-44 a step), the live view (which reads it after every event) the same as before.
        self._pending: deque[Event] | None = deque() if runs_dir is None else None
        # the live view reads the record on its refresh thread while the loop's events arrive:
        # projecting and encoding take turns; keeping an event needs no turn (a lock there cost
        # 5 us a run of bench/overhead.py's fan-out, 17 events)
        self._turn = threading.RLock()

    @property
    def data(self) -> dict[str, Any] | None:
        """The record so far as JSON-ready data (steps: see ``_new_step``), or None before the run
        started."""
        self._catch_up()
        return self._data

    @property
    def record(self) -> RunRecord | None:
        """The record so far, validated (once per change)."""
        with self._turn:
            self._catch_up()
            if self._data is None:
                return None
            if self._validated is None or self._validated[0] != self._version:
                self._validated = (self._version, RunRecord.model_validate_json(self.text()))
            return self._validated[1]

    # -- events -------------------------------------------------------------------------------
    wants_tokens = False  # streamed text is not recorded; each call's whole answer is
    # The record is the product: if this subscriber raises, the engine fails the run instead of
    # logging and going on as it does for a view or a plugin (see Engine: subscriber_failed).
    critical = True

    def __call__(self, event: Event) -> None:
        pending = self._pending
        if pending is not None:
            pending.append(event)  # a deque: appending while another thread takes is safe, no lock
            return
        self._project(event)

    def _catch_up(self) -> None:
        """Project the events kept so far (see ``_pending``), in order, oldest first; one that
        fails to project raises, and those after it stay kept."""
        pending = self._pending
        if not pending:
            return
        with self._turn:
            while pending:
                self._project(pending.popleft())

    def _project(self, event: Event) -> None:
        handler = _STEP_HANDLERS.get(type(event))
        if handler is not None:
            if self._data is not None:
                step = self._data["steps"].get(event.step)  # type: ignore[attr-defined]
                if step is not None:
                    handler(self, event, step)
            return
        if isinstance(event, RunStarted):
            self._start(event)
        elif self._data is None:
            return
        elif isinstance(event, RoundFinished):
            self._data["rounds"].append({"round": event.round, "stop_reason": event.stop_reason,
                                        "until_value": event.until_value, "at": event.at})
            for name, value in event.outputs.items():
                self._data["steps"][name]["rounds"].append({"round": event.round, "value": value})
                self._changed(self._data["steps"][name])
            self._changed(None, save=True)
        elif isinstance(event, GatewayNotice):
            self._data["events"].append(event.event)
            self._changed(None)
        elif isinstance(event, RunFinished):
            self._finish(event)

    def _step_started(self, event: StepStarted, step: dict[str, Any]) -> None:
        if step["started_at"] is None or event.round > step["round"]:
            step["started_at"] = event.at
        step["status"], step["round"] = "running", event.round
        self._changed(step)

    def _call_finished(self, event: CallFinished, step: dict[str, Any]) -> None:
        step["calls"].append(event.call)  # encoded as it is; read back as one
        # the totals so far, for whoever reads a running (or crashed) run; the end recounts them
        call, totals = event.call, self._data["totals"]  # type: ignore[index]
        totals["calls"] += 0 if call.cache_hit else 1
        totals["prompt_tokens"] += call.prompt_tokens
        totals["completion_tokens"] += call.completion_tokens
        totals["cost_usd"] += call.cost_usd
        self._changed(step)

    def _call_failed(self, event: CallFailed, step: dict[str, Any]) -> None:
        step["failures"].append({"round": event.round, "branch": event.branch, "error": event.error,
                                 "error_type": event.error_type})
        self._changed(step)

    def _step_skipped(self, event: StepSkipped, step: dict[str, Any]) -> None:
        step.update(status="skipped", skipped_when=event.when, decided_by=event.decided_by,
                    value={"type": "text", "text": ""}, output="", finished_at=event.at)
        self._changed(step, save=True)

    def _step_failed(self, event: StepFailed, step: dict[str, Any]) -> None:
        step.update(status="failed", error=event.error, error_type=event.error_type, finished_at=event.at)
        self._changed(step, save=True)

    def _judge_scored(self, event: JudgeScored, step: dict[str, Any]) -> None:
        step["judge"].append({"attempt": event.attempt, "score": event.score, "threshold": event.threshold,
                              "passed": event.passed, "feedback": event.feedback})
        self._changed(step)

    def _judge_decided(self, event: JudgeDecided, step: dict[str, Any]) -> None:
        step["verdict"] = {"outcome": "passed" if event.passed else "below_threshold", "score": event.score,
                           "threshold": event.threshold, "scale": event.scale, "attempts": event.attempts,
                           "on_fail": event.on_fail}
        self._changed(step)
        self._judges_below()

    def _judges_below(self) -> None:
        assert self._data is not None
        self._data["below_threshold"] = [
            n for n, s in self._data["steps"].items()
            if s["status"] not in ("pending", "skipped") and (s.get("verdict") or {}).get("outcome") == "below_threshold"]

    def _vote_decided(self, event: VoteDecided, step: dict[str, Any]) -> None:
        step["vote"] = {"counts": event.counts, "winner": event.winner, "tie": event.tie,
                        "tie_rule": event.tie_rule, "tied": event.tied}
        self._changed(step)

    def _start(self, event: RunStarted) -> None:
        if self.base is not None and self.base.run_id == event.run_id:
            rec = self.base.model_dump(mode="json")
            rec.update(status="running", error=None, error_type=None, finished_at=None)
            for s in rec["steps"].values():
                if s["status"] in ("running", "failed"):
                    s.update(status="pending", verdict=None)
        else:
            rec = {
                "schema_version": SCHEMA_VERSION, "kind": RECORD_KIND, "run_id": event.run_id,
                "parent_run_id": event.parent_run_id, "created_at": event.at, "flow_name": event.flow_name,
                "flow_source": event.flow_source, "flow_hash": event.flow_hash, "flow": event.flow,
                "inputs": event.inputs, "options": event.options, "order": event.order,
                "output_step": event.output_step, "reused_steps": event.reused_steps,
                "deliberate_version": __version__, "status": "running", "finished_at": None,
                "steps": {n: _new_step(n, event.flow["steps"][n].get("kind", "generate")) for n in event.order},
                "rounds": [], "events": [], "output": None, "error": None, "error_type": None,
                "totals": {"steps": 0, "calls": 0, "prompt_tokens": 0, "completion_tokens": 0,
                           "cost_usd": 0.0, "wall_s": 0.0},
                "below_threshold": [],
            }
        self._data = rec
        # Secrets never reach a record: every piece is scrubbed as encoded, whatever field held them.
        self._secrets = secret_values() if self.runs_dir is not None else []
        self._head = b""  # encoded on first use
        if self.runs_dir is not None:
            self.path = record_path(self.runs_dir, event.run_id)
            self.lock = LiveLock(self.path)  # taken by the first snapshot written (see _Writer)
            self._first_write = _now() + (0.0 if self.base is not None else FIRST_WRITE_DELAY_S)
        self._changed(None, save=True)

    def _step_finished(self, event: StepFinished, step: dict[str, Any]) -> None:
        if event.reused and self.base is not None and step["status"] in ("succeeded", "skipped"):
            return  # resume: the finished step stays as it was recorded
        step["status"] = "reused" if event.reused else "succeeded"
        if event.reused and self.parent is not None and event.step in self.parent.steps:
            before = self.parent.steps[event.step].model_dump(mode="json")
            step.update(judge=before["judge"], vote=before["vote"], rounds=before["rounds"])
            if before["status"] == "skipped":
                step.update(status="skipped", skipped_when=before["skipped_when"],
                            decided_by=before["decided_by"])
        step.update(value=event.value, round=event.round, output=as_text(from_json(event.value)),
                    finished_at=event.at, error=None, error_type=None)
        if step["started_at"] is None:
            step["started_at"] = event.started_at or event.at
        self._changed(step, save=True)

    def _finish(self, event: RunFinished) -> None:
        rec = self._data
        assert rec is not None
        rec.update(status=event.status, output=event.output, error=event.error, error_type=event.error_type,
                   finished_at=event.at)
        # Totals from the recorded calls: a resumed run counts what it did before, too.
        steps = rec["steps"].values()
        # calls of this run are CallInfo objects; a resumed record's earlier ones are dicts
        calls = [c if isinstance(c, dict) else {f: getattr(c, f) for f in _TOTALLED}
                 for s in steps for c in s["calls"]]
        totals = event.totals.to_dict()
        totals.update(
            steps=sum(1 for s in steps if s["status"] in ("succeeded", "reused")),
            calls=sum(1 for c in calls if not c["cache_hit"]),
            prompt_tokens=sum(c["prompt_tokens"] for c in calls),
            completion_tokens=sum(c["completion_tokens"] for c in calls),
            cost_usd=sum(c["cost_usd"] for c in calls),
        )
        if self.base is not None:
            totals["wall_s"] += self.base.totals.wall_s
        rec["totals"] = totals
        for s in steps:
            if s["status"] == "running":
                s["status"] = "failed" if event.status == "failed" else "pending"
                self._steps.pop(s["name"], None)
        self._judges_below()  # reused judges too
        self._changed(None)
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        try:
            if self.path is not None:
                _WRITER.write_now(self.path, self.encoded(), durable=self.durable)
        finally:  # a final write that fails (the engine then fails the run) still frees the lock
            if self.lock is not None:
                self.lock.release()

    # -- encoding -----------------------------------------------------------------------------
    def _changed(self, step: dict[str, Any] | None, save: bool = False) -> None:
        self._version += 1
        if step is not None:
            self._steps.pop(step["name"], None)
        if save and self.path is not None and self._flush is None:
            # Encoded on the loop, once per turn at most: steps finishing together make one
            # snapshot, and a run that ends before its first write is due encodes only its last.
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self._snapshot()
                return
            delay = self._first_write - loop.time()
            self._flush = loop.call_later(delay, self._snapshot) if delay > 0 else loop.call_soon(self._snapshot)

    def _snapshot(self) -> None:
        self._flush = None
        if self.path is not None and self._data is not None and self._data["status"] == "running":
            _WRITER.submit(self.path, self.encoded(), self.lock)

    def _encode(self, value: Any) -> bytes:
        try:
            data = to_json(value)
        except PydanticSerializationError:
            # text no UTF-8 can hold (a lone surrogate: a file name's byte that was not UTF-8, a
            # function step's value): the record keeps U+FFFD in its place, as a reply's text does
            data = to_json(_valid_text(to_jsonable_python(value)))
        if self._secrets:
            data = scrub(data.decode(), self._secrets).encode()
        return data

    def encoded(self) -> bytes:
        """The record's JSON text as it stands (compact, UTF-8)."""
        self._catch_up()
        rec = self._data
        assert rec is not None
        if not self._head:
            self._head = self._encode({k: rec[k] for k in _HEAD})[1:-1]
        parts = [b"{", self._head, b',"steps":{']
        for i, (name, step) in enumerate(rec["steps"].items()):
            piece = self._steps.get(name)
            if piece is None:
                piece = self._steps[name] = self._encode(step)
            if i:
                parts.append(b",")
            parts += (to_json(name), b":", piece)
        parts += (b"},", self._encode({k: rec[k] for k in _TAIL})[1:])
        return b"".join(parts)

    def text(self) -> str:
        """The record's JSON text as it stands (see :meth:`encoded`)."""
        return self.encoded().decode()


_STEP_HANDLERS: dict[type, Any] = {
    StepStarted: Recorder._step_started, CallFinished: Recorder._call_finished,
    CallFailed: Recorder._call_failed, StepFinished: Recorder._step_finished,
    StepSkipped: Recorder._step_skipped, StepFailed: Recorder._step_failed,
    JudgeScored: Recorder._judge_scored, JudgeDecided: Recorder._judge_decided,
    VoteDecided: Recorder._vote_decided,
}


# A record's first snapshot waits this long: a run that ends sooner is written once, by its
# final write, as a new file. Renaming over an existing file is what costs on ext4 (about 1 ms
# here: it flushes the new file's blocks first); creating one costs a tenth of that.
FIRST_WRITE_DELAY_S = 0.05
_WRITER = RecordWriter()
