"""OpenTelemetry spans per run, step and model call, made from the engine's events, when the
OpenTelemetry API is installed (without an SDK configured, spans cost next to nothing and go
nowhere). The GenAI attribute names are kept here only: that convention is not stable yet.

Spans carry their real times (events say when things started and ended), so they are created
after the fact: a run span, a span per step (and fan-out branch) under it, a span per model call
under its step."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..engine.events import (
    CallFinished,
    Event,
    RunFinished,
    RunStarted,
    StepFailed,
    StepFinished,
    StepSkipped,
    StepStarted,
)

# -- attribute names (OpenTelemetry GenAI semantic conventions, development status) --------------
GEN_AI_OPERATION = "gen_ai.operation.name"
GEN_AI_PROVIDER = "gen_ai.provider.name"
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_RESPONSE_MODEL = "gen_ai.response.model"
GEN_AI_REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
GEN_AI_REQUEST_TEMPERATURE = "gen_ai.request.temperature"
GEN_AI_USAGE_INPUT = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT = "gen_ai.usage.output_tokens"
GEN_AI_RESPONSE_FINISH = "gen_ai.response.finish_reasons"
# deliberate's own
RUN_ID = "deliberate.run_id"
FLOW = "deliberate.flow"
STEP = "deliberate.step"
STEP_KIND = "deliberate.step.kind"
ROUND = "deliberate.round"
STATUS = "deliberate.status"
BRANCH = "deliberate.branch"
COST = "deliberate.cost_usd"
CACHE_HIT = "deliberate.cache_hit"


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def tracer() -> Any | None:
    """The ``deliberate`` tracer, or None when the OpenTelemetry API is not installed."""
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    return trace.get_tracer("deliberate")


def subscriber(tracer_: Any) -> Callable[[Event], None]:
    """One run's subscriber: spans for the run, its steps and their model calls."""
    from opentelemetry import trace

    run: dict[str, Any] = {}
    steps: dict[tuple[str, int, int | None], Any] = {}

    def under(span: Any) -> Any:
        return trace.set_span_in_context(span) if span is not None else None

    def step_span(name: str, rnd: int, branch: int | None) -> Any:
        return steps.get((name, rnd, branch)) or steps.get((name, rnd, None))

    def on(event: Event) -> None:
        if isinstance(event, RunStarted):
            run["span"] = tracer_.start_span(f"deliberate.run {event.flow_name}", start_time=_ns(event.at),
                                             attributes={RUN_ID: event.run_id, FLOW: event.flow_name})
        elif isinstance(event, StepStarted):
            attrs = {STEP: event.step, STEP_KIND: event.kind, ROUND: event.round}
            parent = run.get("span")
            if event.branch is not None:  # a fan-out branch: under its step
                attrs[BRANCH] = event.branch
                parent = steps.get((event.step, event.round, None)) or parent
            steps[(event.step, event.round, event.branch)] = tracer_.start_span(
                f"deliberate.step {event.step}", context=under(parent), start_time=_ns(event.at), attributes=attrs)
        elif isinstance(event, CallFinished):
            c = event.call
            attrs = {GEN_AI_OPERATION: "chat", GEN_AI_PROVIDER: c.source or "unknown",
                     GEN_AI_REQUEST_MODEL: c.model_key, GEN_AI_RESPONSE_MODEL: c.model_name or c.model_key,
                     GEN_AI_REQUEST_MAX_TOKENS: c.max_tokens, GEN_AI_USAGE_INPUT: c.prompt_tokens,
                     GEN_AI_USAGE_OUTPUT: c.completion_tokens, COST: c.cost_usd, CACHE_HIT: c.cache_hit}
            if c.sampling is not None and c.sampling.temperature is not None:
                attrs[GEN_AI_REQUEST_TEMPERATURE] = c.sampling.temperature
            if c.finish_reason:
                attrs[GEN_AI_RESPONSE_FINISH] = [c.finish_reason]
            parent = step_span(event.step, event.round, event.branch) or run.get("span")
            span = tracer_.start_span(f"chat {c.model_key}", context=under(parent),
                                      start_time=_ns(c.started_at or event.at), attributes=attrs)
            span.end(end_time=_ns(c.finished_at or event.at))
        elif isinstance(event, StepFinished | StepFailed | StepSkipped):
            for key in [k for k in steps if k[0] == event.step and k[1] == event.round]:
                span = steps.pop(key)
                if isinstance(event, StepFailed):
                    span.set_status(trace.Status(trace.StatusCode.ERROR, event.error_type))
                span.end(end_time=_ns(event.at))
        elif isinstance(event, RunFinished) and "span" in run:
            for span in steps.values():  # steps cut short by a failure or a cancel
                span.end(end_time=_ns(event.at))
            steps.clear()
            span = run.pop("span")
            span.set_attribute(STATUS, event.status)
            if event.status != "succeeded":
                span.set_status(trace.Status(trace.StatusCode.ERROR, event.error_type or event.status))
            span.end(end_time=_ns(event.at))

    on.wants_tokens = False  # type: ignore[attr-defined]
    return on
