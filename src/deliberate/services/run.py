"""The run service: one typed request in, one typed outcome out, the engine's events to whoever
subscribes. The CLI, and next the HTTP and MCP servers, eval and flow tests, are faces over it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..config import Settings, get_settings
from ..engine.events import Subscriber
from ..engine.executor import Engine, RunOptions, RunResult
from ..errors import InputError
from ..flows.loader import LoadedFlow, load_flow
from ..flows.spec import Flow
from ..gateway.gateway import Gateway
from ..gateway.layers import Budget, ResponseCache
from ..logs import EventLog
from ..records.recorder import Recorder
from ..records.schema import RunRecord
from ..records.store import is_run_id, recent_history
from ..registry import Registry, did_you_mean
from ..safetext import LONE_SURROGATE

#: No tokenizer packs more characters than this into one token on real text; an input longer than
#: the largest context window times this cannot fit any configured model.
CHARS_PER_TOKEN_MAX = 16


@dataclass
class OutputOptions:
    """Where the run goes: its record (``runs_dir``: default from settings) and the response
    cache (True/False; None follows ``DELIBERATE_CACHE``)."""

    record: bool = True
    runs_dir: Path | None = None
    cache: bool | None = None


@dataclass
class Lineage:
    """A run made from another (replay, resume): steps reused from a record (``preset``, step ->
    recorded value), the parent's id, the new run's id, and the records it continues or follows."""

    preset: dict[str, Any] = field(default_factory=dict)
    parent_run_id: str | None = None
    run_id: str | None = None
    base: RunRecord | None = None  # resume: the record continued in place
    parent: RunRecord | None = None  # replay: the record the new one is made from


@dataclass
class RunRequest:
    """Everything a run needs: the flow, its inputs, the user's options (models, strategy, limits),
    where the output goes, and, for replays and resumes, its lineage."""

    flow: str | Path | LoadedFlow
    inputs: dict[str, Any] = field(default_factory=dict)
    options: RunOptions = field(default_factory=RunOptions)
    output: OutputOptions = field(default_factory=OutputOptions)
    lineage: Lineage = field(default_factory=Lineage)


@dataclass
class Services:
    """What the services run with; every field has a default built from the settings. ``progress``
    takes human-readable notes (a model loading) for whoever shows them."""

    settings: Settings | None = None
    registry: Registry | None = None
    gateway: Gateway | None = None
    subscribers: list[Subscriber] = field(default_factory=list)
    progress: Callable[[str], None] | None = None


@dataclass
class RunOutcome:
    """How a run ended: the engine's result, the record on disk (or None) and the record itself."""

    result: RunResult
    record_path: Path | None
    recorder: Recorder

    @property
    def record(self) -> RunRecord | None:
        return self.recorder.record

    @property
    def status(self) -> str:
        return self.result.status

    @property
    def exit_code(self) -> int:
        return self.result.exit_code

    def to_json(self) -> dict[str, Any]:
        """The document ``deliberate run --json`` prints."""
        r, rec = self.result, self.record
        return {"run_id": r.run_id, "status": r.status, "output": r.output, "output_step": r.output_step,
                "record": str(self.record_path) if self.record_path else None, "error": r.error,
                "below_threshold": r.below_threshold, "summary": rec.summary() if rec is not None else None}


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
        _check_text(name, value)
        out[name] = value
    return out


def _check_text(name: str, value: Any) -> None:
    """Refuse an input no record, log or model request could carry: text holding a lone surrogate
    (Python's stand-in for a byte that was not UTF-8, as in a command-line argument, or a
    ``"\\ud800"`` escape from JSON). Caught here, it is one line naming the input; found later, it
    failed the run when the record could not be written."""
    texts = [value] if isinstance(value, str) else [v for v in value if isinstance(v, str)] \
        if isinstance(value, list) else []
    for text in texts:
        bad = LONE_SURROGATE.search(text)
        if bad is None:
            continue
        code = ord(bad.group())
        what = (f"a byte that is not UTF-8 (0x{code - 0xDC00:02x})" if 0xDC80 <= code <= 0xDCFF else
                f"a lone surrogate (U+{code:04X}), which is not Unicode")
        raise InputError(f"input {name!r} holds {what} at character {bad.start()}",
                         hint="pass UTF-8 text; a file given as --input NAME=@FILE must be UTF-8 too")


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


def check_models(loaded: LoadedFlow, options: RunOptions, registry: Registry) -> None:
    """Every model and strategy the options name exists, and none the flow names on its face comes
    from config that is not trusted with keys (refused here, before the record)."""
    for step, key in options.models.items():
        if step != "*" and step not in loaded.flow.steps:
            raise InputError(f"--model {step}={key}: flow {loaded.flow.name!r} has no step {step!r}",
                             hint=did_you_mean(step, list(loaded.flow.steps)))
        registry.model(key)
    if options.strategy:
        registry.strategy(options.strategy)
    if registry.untrusted:
        fallback = options.models.get("*") or loaded.flow.defaults.model or registry.default_model
        named = {*options.models.values(),
                 *(options.models.get(n) or s.model or fallback for n, s in loaded.flow.steps.items())}
        for key in named & set(registry.untrusted):
            registry.model(key)


def _gateway(env: Services, settings: Settings, registry: Registry, request: RunRequest) -> Gateway:
    options, cache = request.options, request.output.cache
    if env.gateway is not None:
        if options.max_cost is not None:
            env.gateway.budget = Budget(options.max_cost)
        return env.gateway
    use_cache = settings.cache if cache is None else cache
    return Gateway(registry, settings=settings, budget=Budget(options.max_cost), progress=env.progress,
                   cache=ResponseCache(settings.response_cache()) if use_cache else None)


async def run(request: RunRequest, env: Services | None = None) -> RunOutcome:
    """Validate and run a flow, recording it (unless ``request.output.record`` is False).

    Bad input (an unknown model, a missing input, an input no model could take, an untrusted
    config) raises :class:`InputError` before anything is recorded or called."""
    env = env or Services()
    settings = env.settings or get_settings()
    registry = env.registry or (env.gateway.registry if env.gateway else Registry.load(settings))
    loaded = request.flow if isinstance(request.flow, LoadedFlow) else load_flow(request.flow, registry)
    options, lineage = request.options.checked(), request.lineage
    if options is not request.options:
        request = replace(request, options=options)
    check_models(loaded, options, registry)
    if lineage.run_id is not None and not is_run_id(lineage.run_id):
        raise InputError(f"run id {lineage.run_id!r} is not a run id (26 characters: a ULID as deliberate "
                         "writes them)")
    values = resolve_inputs(loaded.flow, request.inputs)
    check_input_size(values, registry)
    gateway = _gateway(env, settings, registry, request)
    runs = request.output.runs_dir if request.output.runs_dir is not None else settings.runs_dir
    recorder = Recorder(runs if request.output.record else None, base=lineage.base, parent=lineage.parent,
                        durable=settings.record_fsync)
    event_log = [EventLog()] if EventLog.wanted() else []  # checked once a run, not once an event
    engine = Engine(gateway, [recorder, *event_log, *env.subscribers],
                    history=lambda f, n: recent_history(runs, f, n), judge_backoff_s=settings.judge_backoff_s)
    result = await engine.run(loaded, values, options, preset=lineage.preset,
                              parent_run_id=lineage.parent_run_id, run_id=lineage.run_id)
    return RunOutcome(result, recorder.path, recorder)
