"""The FastAPI app of ``deliberate serve``: routes from :mod:`.openai`, :mod:`.runs` and
:mod:`.seed`, the door of :mod:`.guard`, and the operations endpoints (``/healthz``, ``/readyz``,
``/metrics``). A face over the services: it holds a :class:`~deliberate.services.live.LiveRuns`
and nothing of its own beyond limits and counters."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import PlainTextResponse

from .._version import __version__
from ..services.live import LiveRuns
from . import errors, openai, runs, seed, telemetry
from .config import ServerConfig, api_keys
from .errors import JSONResponse
from .guard import Guard
from .metrics import breaker_states
from .runtime import ServerState, state_of

log = logging.getLogger("deliberate.server")


async def _warm(state: ServerState) -> None:
    """Load the ``--warm`` model (a tiny greedy call) so the first request does not wait for it."""
    key = state.config.warm
    try:
        if key is not None:
            spec = state.live.registry.model(key)
            await state.live.gateway.backend(spec.provider).check(spec)
        state.ready = True
    except Exception as exc:
        state.warm_error = errors.safe_message(f"{type(exc).__name__}: {exc}")
        log.error("warm-up of %s failed: %s", key, state.warm_error)


def create_app(config: ServerConfig | None = None, live: LiveRuns | None = None) -> FastAPI:
    """The app. Raises :class:`~deliberate.errors.InputError` for a configuration it refuses (no
    key off loopback, an unset key variable)."""
    config = config or ServerConfig()
    keys = api_keys(config)
    state = ServerState(config, live or LiveRuns(), keys)
    state.tracer = telemetry.tracer()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        warm = asyncio.create_task(_warm(state))
        try:
            yield
        finally:
            warm.cancel()
            cancelled = await state.live.drain(config.drain_s)
            if cancelled:
                log.warning("stopped %d run(s) still going at shutdown; resume them with deliberate resume: %s",
                            len(cancelled), ", ".join(cancelled))
            await state.live.aclose()

    app = FastAPI(title="deliberate", version=__version__, lifespan=lifespan, default_response_class=JSONResponse,
                  description="Flows as OpenAI-compatible models, a run API and metrics.")
    app.state.deliberate = state
    errors.install(app)
    app.include_router(openai.router)
    app.include_router(runs.router)
    app.include_router(seed.router)
    _operations(app)
    if config.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=config.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
                           expose_headers=["X-Deliberate-Run-Id"])
    app.add_middleware(Guard, keys=keys, max_body_bytes=config.max_body_bytes, log_access=config.access_log)
    return app


def _operations(app: FastAPI) -> None:
    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, str]:
        """The process is alive."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], response_model=None)
    async def readyz(request: Request) -> Any:
        """Registries loaded and the ``--warm`` model (if any) loaded."""
        state = state_of(request)
        reg = state.live.registry
        doc = {"ready": state.ready, "models": len(reg.models), "warm": state.config.warm,
               "in_flight": state.live.in_flight()}
        if state.warm_error:
            doc["error"] = state.warm_error
        return JSONResponse(doc, status_code=200 if state.ready else 503)

    @app.get("/metrics", tags=["operations"], response_class=PlainTextResponse)
    async def metrics(request: Request) -> PlainTextResponse:
        """Prometheus text format."""
        state = state_of(request)
        text = state.metrics.render(breaker_states(state.live.gateway, state.live.registry), state.live.in_flight())
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

