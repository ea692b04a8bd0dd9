"""The seed's own paths, kept as thin aliases over the same services: ``POST /api/orchestrate``
(a flow on a task), ``POST /api/inference`` (one call to one model), ``GET /api/health``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from ..services import GenerateRequest, RunRequest, generate, prompt_input, run
from .chat import find_flow
from .errors import APIError, JSONResponse, error_body
from .guard import RUN_HEADER
from .openai import STATUS_GONE, run_error
from .runtime import Started, start, state_of, usage, wait_unless_gone
from .schemas import InferenceBody, OrchestrateBody

router = APIRouter(tags=["seed"])


@router.get("/api/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


async def _answer(request: Request, started: Started, extra: dict[str, Any]) -> Response:
    headers = {RUN_HEADER: str(started.live.run_id)}
    try:
        if not await wait_unless_gone(request, started):
            return Response(status_code=STATUS_GONE, headers=headers)
    finally:
        started.end()
    fin = started.live.finished_event()
    if fin is None or fin.status != "succeeded":
        err = run_error(fin, started)
        return JSONResponse(error_body(err.message, err.type, err.code), status_code=err.status, headers=headers)
    return JSONResponse({"run_id": started.live.run_id, "status": fin.status, "output": fin.output,
                         "usage": usage(fin.totals), "cost_usd": fin.totals.cost_usd, **extra}, headers=headers)


@router.post("/api/orchestrate", response_model=None)
async def orchestrate(body: OrchestrateBody, request: Request) -> Response:
    """Run a flow (default ``linear``) on ``prompt`` (or ``task``); answer when it ends."""
    loaded = find_flow(body.flow, state_of(request).live.registry)
    inputs: dict[str, Any] = {**body.options.inputs, **body.inputs}
    if body.prompt is not None:
        name = prompt_input(loaded.flow)
        if name is None:
            raise APIError(400, f"flow {loaded.flow.name!r} takes no inputs", code="bad_input")
        inputs[name] = body.prompt
    req = RunRequest(loaded, inputs, body.options.run_options())
    started = await start(request, lambda env: run(req, env), max_cost=req.options.max_cost)
    return await _answer(request, started, {"flow": loaded.flow.name})


@router.post("/api/inference", response_model=None)
async def inference(body: InferenceBody, request: Request) -> Response:
    """One prompt to one model (default: the registry's), recorded as a one-step run."""
    registry = state_of(request).live.registry
    if body.model is not None and body.model not in registry.models:
        raise APIError(404, f"no model {body.model!r} (GET /v1/models lists the model keys)", code="model_not_found")
    req = GenerateRequest(body.prompt, model=body.model, strategy=body.strategy, system=body.system,
                          max_tokens=body.max_tokens, seed=body.seed)
    started = await start(request, lambda env: generate(req, env))
    return await _answer(request, started, {"model": body.model or registry.default_model})
