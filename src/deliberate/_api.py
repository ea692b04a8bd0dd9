"""The library API behind the CLI: resolve inputs, wire gateway, engine and recorder, run."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import Settings, get_settings
from .engine.events import Subscriber
from .engine.executor import Engine, RunOptions, RunResult
from .errors import InputError
from .flows.loader import LoadedFlow, load_flow
from .flows.spec import Flow
from .gateway.gateway import Gateway
from .gateway.layers import Budget
from .records.recorder import Recorder
from .records.store import is_run_id, recent_history
from .registry import Registry, did_you_mean


@dataclass
class RunOutcome:
    result: RunResult
    record_path: Path | None
    recorder: Recorder


def prompt_input(flow: Flow) -> str | None:
    """The input the positional PROMPT fills: ``prompt``, else the first required input."""
    if "prompt" in flow.inputs:
        return "prompt"
    required = [n for n, i in flow.inputs.items() if i.is_required]
    return required[0] if required else (next(iter(flow.inputs), None))


def resolve_inputs(flow: Flow, given: dict[str, Any]) -> dict[str, Any]:
    """Apply defaults and types; refuse unknown and missing inputs with a clear line."""
    out: dict[str, Any] = {}
    for name in given:
        if name not in flow.inputs:
            raise InputError(f"flow {flow.name!r} has no input {name!r}",
                             hint=did_you_mean(name, list(flow.inputs)) or
                             f"inputs: {', '.join(flow.inputs) or 'none'}")
    for name, spec in flow.inputs.items():
        if name in given:
            value = given[name]
        elif spec.default is not None:
            value = spec.default
        elif spec.is_required:
            raise InputError(f"missing input {name!r} ({spec.description or 'no description'})",
                             hint=f"pass it as the PROMPT argument or --input {name}=...")
        else:
            value = ""
        if spec.type == "list" and isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if spec.type == "number" and isinstance(value, str):
            try:
                value = float(value) if "." in value else int(value)
            except ValueError:
                raise InputError(f"input {name!r} must be a number, got {value!r}") from None
        out[name] = value
    return out


#: No tokenizer packs more characters than this into one token on real text; an input longer than
#: the largest context window times this cannot fit any configured model.
CHARS_PER_TOKEN_MAX = 16


def input_limit(registry: Registry) -> int:
    """The most characters an input may hold: the largest context window of any model, as text."""
    largest = max((m.context_window for m in registry.models.values()), default=4096)
    return largest * CHARS_PER_TOKEN_MAX


def check_input_size(values: dict[str, Any], registry: Registry) -> None:
    """Refuse, before any record or call, an input no configured model could take."""
    limit = input_limit(registry)
    for name, value in values.items():
        size = len(value) if isinstance(value, str) else sum(len(str(v)) for v in value) \
            if isinstance(value, list) else 0
        if size > limit:
            raise InputError(
                f"input {name!r} is {size:,} characters: more than any configured model's context "
                f"window could take ({limit // CHARS_PER_TOKEN_MAX:,} tokens, at most {limit:,} characters)",
                hint="pass a smaller input, or add a model with a larger context_window to models.yaml")


async def run_flow_async(
    flow: str | Path | LoadedFlow,
    inputs: dict[str, Any] | None = None,
    options: RunOptions | None = None,
    *,
    registry: Registry | None = None,
    gateway: Gateway | None = None,
    settings: Settings | None = None,
    subscribers: list[Subscriber] | None = None,
    runs_dir: Path | None = None,
    record: bool = True,
    preset: dict[str, Any] | None = None,
    parent_run_id: str | None = None,
    run_id: str | None = None,
    base_record: Any = None,
    parent_record: Any = None,
) -> RunOutcome:
    """Validate and run a flow, recording it under ``runs_dir`` (default: settings)."""
    settings = settings or get_settings()
    registry = registry or (gateway.registry if gateway else Registry.load(settings))
    loaded = flow if isinstance(flow, LoadedFlow) else load_flow(flow, registry)
    options = options or RunOptions()
    for step, key in options.models.items():
        if step != "*" and step not in loaded.flow.steps:
            raise InputError(f"--model {step}={key}: flow {loaded.flow.name!r} has no step {step!r}",
                             hint=did_you_mean(step, list(loaded.flow.steps)))
        registry.model(key)
    if registry.untrusted:  # refuse before the record: the keys the flow names on its face
        fallback = options.models.get("*") or loaded.flow.defaults.model or registry.default_model
        named = {*options.models.values(),
                 *(options.models.get(n) or s.model or fallback for n, s in loaded.flow.steps.items())}
        for key in named & set(registry.untrusted):
            registry.model(key)
    if options.strategy:
        registry.strategy(options.strategy)
    if run_id is not None and not is_run_id(run_id):
        raise InputError(f"run id {run_id!r} is not a run id (26 characters: a ULID as deliberate writes them)")
    values = resolve_inputs(loaded.flow, inputs or {})
    check_input_size(values, registry)
    if gateway is None:
        gateway = Gateway(registry, settings=settings, budget=Budget(options.max_cost))
    elif options.max_cost is not None:
        gateway.budget = Budget(options.max_cost)
    runs = runs_dir if runs_dir is not None else settings.runs_dir
    recorder = Recorder(runs if record else None, base=base_record, parent=parent_record,
                        durable=settings.record_fsync)
    from .logs import EventLog, configure

    configure(settings)
    event_log = [EventLog()] if EventLog.wanted() else []  # checked once a run, not once an event
    engine = Engine(gateway, [recorder, *event_log, *(subscribers or [])],
                    history=lambda f, n: recent_history(runs, f, n))
    result = await engine.run(loaded, values, options, preset=preset, parent_run_id=parent_run_id, run_id=run_id)
    return RunOutcome(result, recorder.path, recorder)


def run_flow(flow: str | Path | LoadedFlow, inputs: dict[str, Any] | None = None,
             options: RunOptions | None = None, **kw: Any) -> RunResult:
    """Synchronous convenience wrapper: run a flow and return its result."""
    return asyncio.run(run_flow_async(flow, inputs, options, **kw)).result
