"""What every face of the server tells about flows and runs, in one JSON shape: a flow's inputs
and graph, a run's state (live while it goes, then its record). Free of HTTP, so that the MCP
server says the same as the run API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import DeliberateError
from ..flows.loader import available_flows, load_flow
from ..records.schema import RunRecord
from ..records.store import is_run_id, load, record_path
from ..services.live import LiveRun, LiveRuns
from .errors import safe_message


def flow_path(name: str) -> Path | None:
    """The file of the flow named ``name`` in the lookup order; None for anything else (a client
    names flows, never files)."""
    return available_flows().get(name)


def flow_doc(name: str, path: Path, registry: Any) -> dict[str, Any]:
    """A flow's name, inputs and graph (or why it does not load)."""
    try:
        loaded = load_flow(path, registry)
    except DeliberateError as exc:
        return {"name": name, "error": safe_message(exc.line())}
    f = loaded.flow
    return {"name": name, "model": f"flow:{name}", "description": f.description,
            "inputs": {n: {"description": i.description, "type": i.type, "default": i.default,
                           "required": i.is_required} for n, i in f.inputs.items()},
            "steps": [{"name": n, "kind": f.steps[n].kind, "needs": sorted(loaded.deps[n])} for n in loaded.order],
            "output": loaded.output,
            "rounds": f.rounds.model_dump() if f.rounds is not None else None}


def flows_doc(registry: Any) -> list[dict[str, Any]]:
    return [flow_doc(n, p, registry) for n, p in sorted(available_flows().items())]


def live_doc(live: LiveRun) -> dict[str, Any]:
    doc: dict[str, Any] = {"run_id": live.run_id, "status": live.status, "flow": live.flow_name,
                           "live": not live.done, "steps_done": live.steps_done(), "events": len(live.events)}
    fin = live.finished_event()
    if fin is not None:
        doc.update(output=fin.output, error=fin.error and safe_message(fin.error), error_type=fin.error_type,
                   totals=fin.totals.to_dict())
    return doc


def record_file(runs: LiveRuns, run_id: str) -> Path | None:
    """The record of ``run_id`` in runs/, or None (anything but a run id is None, never a path)."""
    if not is_run_id(run_id):
        return None
    path = record_path(runs.runs_dir, run_id)
    return path if path.is_file() else None


def live_record(live: LiveRun | None) -> RunRecord | None:
    """The record of a run that ended in this process, or None: none was made, or it cannot be
    (a model's reply held what JSON cannot carry, so the run record failed)."""
    if live is None or live.outcome is None:
        return None
    try:
        return live.outcome.record
    except ValueError:
        return None


def run_doc(runs: LiveRuns, run_id: str) -> dict[str, Any] | None:
    """A run's state: live while it goes, then its record's summary and answer; None if unknown."""
    live = runs.get(run_id) if is_run_id(run_id) else None
    if live is not None and not live.done:
        return live_doc(live)
    rec = live_record(live)
    if rec is None and live is not None and record_file(runs, run_id) is None:
        return live_doc(live)  # ended here without a record: what its events tell
    if rec is None:
        path = record_file(runs, run_id)
        if path is None:
            return None
        rec = load(path)
    return {**rec.summary(), "output": rec.output, "live": False, "error": rec.error and safe_message(rec.error)}
