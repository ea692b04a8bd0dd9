"""The run API: start a run, read its state, follow its events (SSE, resumable with
``Last-Event-ID``), cancel it (left resumable), resume it, read its HTML report; and the flows
with their inputs and graphs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Header
from starlette.requests import Request
from starlette.responses import HTMLResponse, StreamingResponse

from ..config import scrub
from ..engine.events import event_dict
from ..records.schema import RunRecord
from ..records.store import is_live, is_run_id, load, record_path
from ..services import ResumeRequest, RunRequest, resume, run
from ..services.live import LiveRun
from .catalog import flows_doc, live_record, run_doc
from .chat import find_flow
from .errors import APIError, JSONResponse, json_text
from .guard import RUN_HEADER
from .runtime import ServerState, start, state_of
from .schemas import RunBody

router = APIRouter(tags=["runs"])


def _record_file(state: ServerState, run_id: str) -> Path:
    if not is_run_id(run_id):
        raise APIError(404, "not a run id (26 characters, as deliberate writes them)", code="not_found")
    path = record_path(state.live.runs_dir, run_id)
    if not path.is_file():
        raise APIError(404, f"no run {run_id}", code="not_found")
    return path


def _record(state: ServerState, run_id: str) -> RunRecord:
    rec = live_record(state.live.get(run_id) if is_run_id(run_id) else None)
    return rec if rec is not None else load(_record_file(state, run_id))


@router.post("/v1/runs", status_code=202)
async def create_run(body: RunBody, request: Request) -> JSONResponse:
    """Start a flow; the run goes on without the client. Follow it at ``/v1/runs/{id}/events``."""
    state = state_of(request)
    loaded = find_flow(body.flow, state.live.registry)
    req = RunRequest(loaded, {**body.options.inputs, **body.inputs}, body.options.run_options())
    started = await start(request, lambda env: run(req, env), tokens=body.tokens, max_cost=req.options.max_cost)
    started.end()  # detached: the slot frees when the run ends
    rid = started.live.run_id
    return JSONResponse({"run_id": rid, "status": started.live.status, "events": f"/v1/runs/{rid}/events"},
                        status_code=202, headers={RUN_HEADER: str(rid)})


@router.get("/v1/runs/{run_id}")
async def get_run(run_id: str, request: Request) -> dict[str, Any]:
    """A run's state: live while it goes, then its record's summary and answer."""
    doc = run_doc(state_of(request).live, run_id)
    if doc is None:
        raise APIError(404, f"no run {run_id}" if is_run_id(run_id) else "not a run id", code="not_found")
    return doc


@router.get("/v1/runs/{run_id}/events")
async def run_events(run_id: str, request: Request, after: int = 0,
                     last_event_id: str | None = Header(None)) -> StreamingResponse:
    """The run's events as SSE (``id:`` numbers them); reconnect with ``Last-Event-ID`` to go on
    where the stream broke. Ends when the run ends."""
    state = state_of(request)
    live = state.live.get(run_id) if is_run_id(run_id) else None
    if live is None:
        _record_file(state, run_id)  # 404 unless recorded
        raise APIError(404, f"run {run_id} is not live in this server: GET /v1/runs/{run_id} reads its record",
                       code="not_live")
    if last_event_id is not None:
        try:
            after = int(last_event_id)
        except ValueError:
            raise APIError(400, "Last-Event-ID: not an event number", code="bad_event_id") from None
    return StreamingResponse(_events(live, max(0, after)), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", RUN_HEADER: run_id})


async def _events(live: LiveRun, after: int) -> AsyncIterator[str]:
    async for number, event in live.follow(after, idle_s=15.0):
        if event is None:
            yield ": keep-alive\n\n"
            continue
        data = scrub(json_text({"type": event.type, **event_dict(event)}, default=str))
        yield f"id: {number}\nevent: {event.type}\ndata: {data}\n\n"


@router.post("/v1/runs/{run_id}/cancel")
async def cancel_run(run_id: str, request: Request) -> dict[str, Any]:
    """Stop a live run: finished steps stay in its record, and ``resume`` finishes it."""
    state = state_of(request)
    live = state.live.get(run_id) if is_run_id(run_id) else None
    if live is None:
        _record_file(state, run_id)
        raise APIError(409, f"run {run_id} is not running in this server", code="not_running")
    cancelled = live.cancel()
    await live.ended.wait()
    return {"run_id": run_id, "cancelled": cancelled, "status": live.status,
            "resume": f"/v1/runs/{run_id}/resume"}


@router.post("/v1/runs/{run_id}/resume", status_code=202)
async def resume_run(run_id: str, request: Request) -> JSONResponse:
    """Finish an interrupted or failed run in place (same id, same record)."""
    state = state_of(request)
    path = _record_file(state, run_id)
    live = state.live.get(run_id)
    if (live is not None and not live.done) or is_live(path):
        raise APIError(409, f"run {run_id} is still running", code="still_running")
    if load(path).status == "succeeded":
        raise APIError(409, f"run {run_id} already succeeded: nothing to resume", code="finished")
    req = ResumeRequest(path, runs_dir=state.live.runs_dir)
    started = await start(request, lambda env: resume(req, env))
    started.end()
    return JSONResponse({"run_id": started.live.run_id, "status": started.live.status,
                         "events": f"/v1/runs/{run_id}/events"}, status_code=202, headers={RUN_HEADER: run_id})


@router.get("/v1/runs/{run_id}/report", response_class=HTMLResponse)
async def run_report(run_id: str, request: Request) -> HTMLResponse:
    """The run's HTML report (the same page ``deliberate runs report`` writes)."""
    from ..records.report import render_report

    page = render_report(_record(state_of(request), run_id))
    return HTMLResponse(page.encode("utf-8", "replace"))  # a lone surrogate from a model: "?"


@router.get("/v1/flows")
async def list_flows(request: Request) -> dict[str, Any]:
    """Every flow with its inputs and graph."""
    registry = state_of(request).live.registry
    return {"object": "list", "data": flows_doc(registry)}
