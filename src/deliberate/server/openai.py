"""The OpenAI-compatible face: ``GET /v1/models`` and ``POST /v1/chat/completions``. Every flow
is a model named ``flow:<name>``; every registry model key proxies one call through the gateway.
Each completion is a recorded run; its id comes back in the ``X-Deliberate-Run-Id`` header."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ..engine.events import CallFinished, RunFinished
from ..errors import DeliberateError
from ..flows.loader import available_flows
from .chat import FLOW_PREFIX, ChatStream, find_flow, flow_call, model_call, streams_answer
from .errors import APIError, JSONResponse, error_body, from_deliberate, json_text
from .guard import RUN_HEADER
from .runtime import Started, start, state_of, usage, wait_unless_gone
from .schemas import ChatRequest

router = APIRouter(tags=["openai"])
STATUS_GONE = 499  # the client closed the connection (nginx's convention; never seen by it)


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    """Every flow as ``flow:<name>`` and every registry model by its key."""
    registry = state_of(request).live.registry
    data = [{"id": f"{FLOW_PREFIX}{name}", "object": "model", "created": 0, "owned_by": "deliberate"}
            for name in sorted(available_flows())]
    data += [{"id": key, "object": "model", "created": 0, "owned_by": spec.provider}
             for key, spec in sorted(registry.models.items())]
    return {"object": "list", "data": data}


def run_error(finished: RunFinished | None, started: Started) -> APIError:
    """Why a run did not answer, as the HTTP error it is."""
    live = started.live
    if started.timed_out:
        return APIError(504, f"the run took longer than the server's limit; it is kept: resume it with "
                        f"'deliberate resume {live.run_id}'", "timeout", "run_timeout")
    if live.error is not None and finished is None:
        err = live.error
        return from_deliberate(err) if isinstance(err, DeliberateError) else APIError(
            500, "internal error (see the server log)", "server_error", "internal_error")
    if finished is not None and finished.error_type == "BudgetExceeded":
        return APIError(402, finished.error or "over budget", "budget_exceeded", "budget_exceeded")
    if finished is not None and finished.error_type == "CapacityError":
        # the gateway refused the call before sending it: a prompt over the model's window is the
        # request's fault (OpenAI's 400 context_length_exceeded); no room for the model is ours
        message = finished.error or "over capacity"
        if "context window" in message:
            return APIError(400, message, code="context_length_exceeded")
        return APIError(503, message, "server_error", "capacity", headers={"Retry-After": "30"})
    message = (finished.error if finished is not None else None) or f"the run ended {live.status}"
    return APIError(502, message, "run_failed", finished.error_type if finished else live.status)


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(body: ChatRequest, request: Request) -> Response:
    """Run a flow (``model: "flow:<name>"``) or proxy one call (a model key), streamed or not."""
    state = state_of(request)
    if len(body.messages) > state.config.max_messages:
        raise APIError(400, f"messages: {len(body.messages)} messages, at most {state.config.max_messages}",
                       code="too_many_messages")
    loaded = None
    if body.model.startswith(FLOW_PREFIX):
        loaded = find_flow(body.model[len(FLOW_PREFIX):], state.live.registry)
        call, max_cost = flow_call(body, loaded)
    else:
        if body.model not in state.live.registry.models:
            flow = f"; the flow of that name is {FLOW_PREFIX}{body.model}" if body.model in available_flows() else ""
            raise APIError(404, f"no model {body.model!r}{flow} (GET /v1/models lists them)", code="model_not_found")
        call, max_cost = model_call(body, body.model)
    started = await start(request, call, tokens=body.stream, max_cost=max_cost)
    headers = {RUN_HEADER: str(started.live.run_id)}
    stream = ChatStream(started.live.output_step, streams_answer(loaded))
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_sse(request, started, stream, (body.model, include_usage)),
                                 media_type="text/event-stream",
                                 headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    try:
        if not await wait_unless_gone(request, started):
            return Response(status_code=STATUS_GONE, headers=headers)
    finally:
        started.end()
    finished = started.live.finished_event()
    if finished is None or finished.status != "succeeded" or finished.output is None:
        err = run_error(finished, started)
        return JSONResponse(error_body(err.message, err.type, err.code), status_code=err.status, headers=headers)
    finish = finish_reason(started.live.events, started.live.output_step)
    return JSONResponse(_completion(started.live.run_id, body.model, finished, finish), headers=headers)


def finish_reason(events: list[Any], output_step: str | None) -> str:
    """``length`` when the answer's last call stopped at its max_tokens, else ``stop``."""
    for event in reversed(events):
        if isinstance(event, CallFinished) and event.step == output_step:
            return "length" if event.call.finish_reason == "length" else "stop"
    return "stop"


def _completion(run_id: str | None, model: str, finished: RunFinished, finish: str) -> dict[str, Any]:
    return {"id": f"chatcmpl-{run_id}", "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": finished.output},
                         "finish_reason": finish, "logprobs": None}],
            "usage": usage(finished.totals),
            "deliberate": {"run_id": run_id, "cost_usd": finished.totals.cost_usd, "calls": finished.totals.calls}}


def _data(obj: Any) -> str:
    return f"data: {json_text(obj)}\n\n"


async def _watch(request: Request, started: Started) -> None:
    """Cancel the run when the client hangs up. A streamed response under ASGI 2.4 only learns of
    it on its next write, and a step may run for minutes without one."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            started.live.cancel()
            return


async def _sse(request: Request, started: Started, stream: ChatStream,
               what: tuple[str, bool]) -> AsyncIterator[str]:
    """The completion as SSE chunks; a client that goes away stops the run (left resumable)."""
    live, (model, include_usage) = started.live, what
    watcher = asyncio.create_task(_watch(request, started))
    cid, created = f"chatcmpl-{live.run_id}", int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    try:
        yield _data(chunk({"role": "assistant", "content": ""}))
        async for _, event in live.follow(idle_s=15.0):
            if event is None:
                yield ": keep-alive\n\n"
                continue
            for delta in stream.feed(event):
                yield _data(chunk(delta))
        finished = stream.finished
        if finished is None or finished.status != "succeeded":
            err = run_error(finished, started)
            yield _data({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                         "choices": [], **error_body(err.message, err.type, err.code)})
        else:
            yield _data(chunk({}, finish_reason(live.events, live.output_step)))
            if include_usage:
                yield _data({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                             "choices": [], "usage": usage(finished.totals)})
        yield "data: [DONE]\n\n"
    finally:
        watcher.cancel()
        live.cancel()  # no-op once ended: only a client gone mid-stream stops the run here
        started.end()
