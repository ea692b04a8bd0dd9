"""The recorder keeps the record's JSON in pieces (the flow once, each step again only when it
changed): after every event the pieces must equal a fresh encoding of the whole record, and the
file reads back without losing anything. The record is a function of the events (fed again, they
give it again) and the recorder imports only the event contract. Also: a short run is written
once and leaves no lock file, and DELIBERATE_RECORD_FSYNC fsyncs the final write."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from deliberate_scripted import ScriptedBackend
from pydantic_core import to_json

from deliberate._api import run_flow_async
from deliberate.config import Settings
from deliberate.engine.events import Event
from deliberate.flows import load_flow_text
from deliberate.gateway import Gateway
from deliberate.records.recorder import Recorder
from deliberate.records.schema import RunRecord
from test_engine import FANOUT, JUDGED, ROUNDS, registry

RULES = [
    {"match": "SCORE: N", "reply": "SCORE: 3\nToo vague.", "times": 1},
    {"match": "SCORE: N", "reply": "SCORE: 9\nGood now."},
    {"match": "^review: R", "reply": "NO ISSUES"},
    {"match": "^refine:", "reply": "R1"},
]


@pytest.mark.parametrize("flow", [FANOUT, ROUNDS, JUDGED], ids=["fanout", "rounds", "judge"])
async def test_pieced_encoding_equals_a_fresh_encoding_after_every_event(flow: str) -> None:
    recorder = Recorder(Path("runs"))
    seen: list[str] = []

    def check(event: Event) -> None:
        recorder(event)
        if recorder.data is not None:
            assert json.loads(recorder.text()) == json.loads(to_json(recorder.data)), type(event).__name__
            seen.append(type(event).__name__)

    reg = registry()
    gw = Gateway(reg, settings=Settings(), backends={"scripted": ScriptedBackend(rules=RULES)})
    from deliberate.engine.executor import Engine

    engine = Engine(gw, [check], judge_backoff_s=0)
    result = await engine.run(load_flow_text(flow, "t.yaml", reg), {"prompt": "q"})
    assert result.status == "succeeded"
    assert {"StepFinished", "CallFinished", "RunFinished"} <= set(seen)
    on_disk = json.loads(Path("runs", f"{result.run_id}.json").read_text())
    assert on_disk == json.loads(to_json(recorder.data))
    assert RunRecord.model_validate(on_disk).model_dump(mode="json") == on_disk  # read back whole


async def test_short_run_is_written_once_and_leaves_no_lock(monkeypatch: pytest.MonkeyPatch) -> None:
    from deliberate.records import store

    writes: list[Path] = []
    real = store.write_atomic

    def counting(path: Path, data: Any, durable: bool = False) -> None:
        writes.append(path)
        real(path, data, durable)

    monkeypatch.setattr("deliberate.records.store.write_atomic", counting)
    reg = registry()
    gw = Gateway(reg, settings=Settings(), backends={"scripted": ScriptedBackend(rules=[])})
    outcome = await run_flow_async(load_flow_text(FANOUT, "t.yaml", reg), {"prompt": "q"}, registry=reg,
                                   gateway=gw, runs_dir=Path("runs"))
    assert writes == [outcome.record_path]
    assert sorted(p.name for p in Path("runs").iterdir()) == [outcome.record_path.name]  # no temp, no lock
    assert json.loads(outcome.record_path.read_text())["status"] == "succeeded"


@pytest.mark.parametrize("env, expected", [("1", 1), ("0", 0)])
async def test_record_fsync_setting(monkeypatch: pytest.MonkeyPatch, env: str, expected: int) -> None:
    monkeypatch.setenv("DELIBERATE_RECORD_FSYNC", env)
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
    from deliberate.config import get_settings

    get_settings.cache_clear()  # the run reads the setting from the environment just set
    reg = registry()
    gw = Gateway(reg, settings=Settings(), backends={"scripted": ScriptedBackend(rules=[])})
    await run_flow_async(load_flow_text(FANOUT, "t.yaml", reg), {"prompt": "q"}, registry=reg, gateway=gw,
                         runs_dir=Path("runs"))
    assert len(synced) == expected


@pytest.mark.parametrize("flow", [FANOUT, ROUNDS, JUDGED], ids=["fanout", "rounds", "judge"])
async def test_the_record_is_a_function_of_the_events(flow: str) -> None:
    """The recorder is a projection: the events of a run, fed again to a fresh recorder that
    writes nothing, give the same record as the one written while the run went."""
    from deliberate.engine.executor import Engine

    events: list[Event] = []
    live = Recorder(Path("runs"))
    reg = registry()
    gw = Gateway(reg, settings=Settings(), backends={"scripted": ScriptedBackend(rules=RULES)})
    result = await Engine(gw, [live, events.append], judge_backoff_s=0).run(
        load_flow_text(flow, "t.yaml", reg), {"prompt": "q"})
    assert result.status == "succeeded"
    again = Recorder(None)
    for event in events:
        again(event)
    assert json.loads(to_json(again.data)) == json.loads(to_json(live.data))
    assert json.loads(Path("runs", f"{result.run_id}.json").read_text()) == json.loads(to_json(again.data))


def test_the_recorder_reads_only_the_event_contract() -> None:
    """What the recorder module imports of the package: the events and their values, the record's
    schema and store, the secret scrub and the version; never the engine's workings, the UI, the
    CLI, logging or a terminal."""
    import ast

    import deliberate.records.recorder as module

    imported = set()
    for node in ast.walk(ast.parse(Path(module.__file__).read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add("." * node.level + (node.module or ""))
    ours = {m for m in imported if m.startswith(".")}
    assert ours == {"..config", "..engine.events", "..engine.values", "..safetext", ".schema", ".store",
                    ".._version"}, ours
    assert not imported & {"logging", "sys", "rich", "typer", "click"}, imported


async def test_a_recorder_read_on_another_thread_while_events_arrive_misses_none() -> None:
    """A recorder with no file keeps events and projects them when read; the live view reads it
    from its refresh thread while the loop keeps events. Read as fast as a thread can while every
    event of a judged run arrives (ten times over, in fresh recorders), each ends with the
    record a recorder fed alone makes; an event that fails to project raises on the read that
    meets it, and the events after it are still projected."""
    import threading

    from deliberate.engine.executor import Engine

    events: list[Event] = []
    reg = registry()
    gw = Gateway(reg, settings=Settings(), backends={"scripted": ScriptedBackend(rules=RULES)})
    await Engine(gw, [events.append], judge_backoff_s=0).run(load_flow_text(JUDGED, "t.yaml", reg),
                                                             {"prompt": "q"})
    alone = Recorder(None)
    for event in events:
        alone(event)
    expected = json.loads(to_json(alone.data))

    overlapped = 0  # reads that met a record still being fed: without them this tests nothing
    for _ in range(10):
        rec, feeding, done = Recorder(None), threading.Event(), threading.Event()

        def read(rec: Recorder = rec, feeding: threading.Event = feeding, done: threading.Event = done) -> None:
            nonlocal overlapped
            while not done.is_set():
                rec.data  # noqa: B018 (projects what has arrived)
                overlapped += feeding.is_set()

        reader = threading.Thread(target=read)
        reader.start()
        try:
            feeding.set()
            for i, event in enumerate(events):
                rec(event)
                if i % 4 == 0:
                    time.sleep(0)  # let the reader in between some of the events
            feeding.clear()
        finally:
            done.set()
            reader.join()
        assert json.loads(to_json(rec.data)) == expected
    assert overlapped > 0

    bad = events[1]

    class Flaky(Recorder):
        def _project(self, event: Event) -> None:
            if event is bad:
                raise RuntimeError("cannot project this one")
            super()._project(event)

    flaky = Flaky(None)
    for event in events:
        flaky(event)
    with pytest.raises(RuntimeError, match="cannot project this one"):
        flaky.data  # noqa: B018
    without_bad = Recorder(None)
    for event in events:
        if event is not bad:
            without_bad(event)
    assert json.loads(to_json(flaky.data)) == json.loads(to_json(without_bad.data))
