"""The library's first entry points, ``run_flow`` and ``run_flow_async``, over the run service
(:mod:`deliberate.services`), which takes one typed request."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from .engine.executor import RunOptions, RunResult
from .flows.loader import LoadedFlow
from .services.run import (
    OutputOptions,
    RunOutcome,
    RunRequest,
    Services,
    check_input_size,
    input_limit,
    prompt_input,
    resolve_inputs,
    run,
)

__all__ = ["RunOutcome", "check_input_size", "input_limit", "prompt_input", "resolve_inputs",
           "run_flow", "run_flow_async"]


async def run_flow_async(
    flow: str | Path | LoadedFlow,
    inputs: dict[str, Any] | None = None,
    options: RunOptions | None = None,
    *,
    runs_dir: Path | None = None,
    record: bool = True,
    **services: Any,
) -> RunOutcome:
    """Validate and run a flow, recording it under ``runs_dir`` (default: settings).

    ``services`` are :class:`~deliberate.services.run.Services` fields, each optional:
    ``registry``, ``gateway``, ``settings`` and ``subscribers`` (a list of event callbacks).
    """
    subscribers = list(services.pop("subscribers", None) or [])
    request = RunRequest(flow, inputs or {}, options or RunOptions(), OutputOptions(record, runs_dir))
    return await run(request, Services(subscribers=subscribers, **services))


def run_flow(flow: str | Path | LoadedFlow, inputs: dict[str, Any] | None = None,
             options: RunOptions | None = None, **kw: Any) -> RunResult:
    """Synchronous convenience wrapper: run a flow and return its result."""
    return asyncio.run(run_flow_async(flow, inputs, options, **kw)).result
