"""The engine's one stream of typed events. The terminal view, the run record and the log each
subscribe to it; the engine imports no terminal code.

Events are plain slotted dataclasses, not pydantic models: the engine builds about four of them per
step, and they are facts it already checked, so validating them again would only cost time (see
``bench/overhead.py``). :func:`event_dict` gives the JSON form."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import ConfigDict

from ..gateway.contracts import Attempt, GatewayEvent, Message, Sampling


@dataclass(slots=True, kw_only=True)
class Event:
    """Something that happened in a run; ``at`` is when (epoch seconds)."""

    at: float = field(default_factory=time.time)

    @property
    def type(self) -> str:
        """The event's class name (its ``type`` in logs and records)."""
        return type(self).__name__


@dataclass(slots=True, kw_only=True)
class RunStarted(Event):
    """A run began: its flow (as written and as ordered), inputs and options."""

    run_id: str
    flow_name: str
    flow_source: str
    flow_hash: str
    flow: dict[str, Any]
    inputs: dict[str, Any]
    options: dict[str, Any]
    order: list[str]
    output_step: str
    parent_run_id: str | None = None
    reused_steps: list[str] = field(default_factory=list)


@dataclass(slots=True, kw_only=True)
class CallInfo:
    """One answered model call, as the record keeps it (``records.schema.CallRecord`` is this
    class): what was asked and answered, and its place in the step (round, fan-out branch and item,
    judge attempt)."""

    model_key: str
    model_requested: str | None = None
    model_name: str = ""
    source: str = ""
    strategy: str = ""
    sampling: Sampling | None = None
    max_tokens: int = 0
    messages: list[Message] = field(default_factory=list)
    text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    load_time: float = 0.0
    inference_time: float = 0.0
    total_time: float = 0.0
    cache_hit: bool = False
    finish_reason: str | None = None
    attempts: list[Attempt] = field(default_factory=list)
    started_at: float = 0.0
    finished_at: float = 0.0
    round: int = 1
    branch: int | None = None
    item: Any = None
    attempt: int = 1


@dataclass(slots=True, kw_only=True)
class StepStarted(Event):
    """A step (or one fan-out branch, or a judge's re-run of its target) started."""

    step: str
    kind: str
    round: int = 1
    branch: int | None = None
    item: Any = None
    attempt: int = 1
    model_key: str | None = None


@dataclass(slots=True, kw_only=True)
class Token(Event):
    """Streamed text of a running call. ``reset``: the attempt so far was dropped (a retry or a
    fallback follows); forget the text streamed for this step and branch."""

    step: str
    text: str
    round: int = 1
    branch: int | None = None
    reset: bool = False


@dataclass(slots=True, kw_only=True)
class CallFinished(Event):
    """A model call inside a step answered (a branch, a judge, a judge's re-run of its target)."""

    step: str
    call: CallInfo
    round: int = 1
    branch: int | None = None
    item: Any = None
    attempt: int = 1


@dataclass(slots=True, kw_only=True)
class CallFailed(Event):
    """A model call inside a step failed after the gateway's retries and fallbacks (``model_key``:
    the model the step asked for; None when it left the choice to the gateway's router)."""

    step: str
    error: str
    error_type: str
    round: int = 1
    branch: int | None = None
    attempts: list[Attempt] = field(default_factory=list)
    model_key: str | None = None


@dataclass(slots=True, kw_only=True)
class StepFinished(Event):
    """A step ended with its value (``reused``: taken from a parent record, not run)."""

    step: str
    kind: str
    value: Any  # values.to_json form
    round: int = 1
    started_at: float = 0.0
    reused: bool = False


@dataclass(slots=True, kw_only=True)
class StepSkipped(Event):
    """A step did not run: its ``when`` was false (``decided_by``), or its kind skipped it (a judge
    whose target was skipped)."""

    step: str
    when: str
    decided_by: Any
    round: int = 1


@dataclass(slots=True, kw_only=True)
class StepFailed(Event):
    """A step failed (``optional``: the run goes on without it)."""

    step: str
    error: str
    error_type: str
    round: int = 1
    optional: bool = False


@dataclass(slots=True, kw_only=True)
class JudgeScored(Event):
    """One scoring attempt of a judge."""

    step: str
    target: str
    attempt: int
    score: float
    threshold: float
    passed: bool
    feedback: str


@dataclass(slots=True, kw_only=True)
class JudgeDecided(Event):
    """A judge's outcome once its attempts are done: ``passed``, or below its threshold after every
    attempt. ``score`` is the best score of the attempts (the target keeps that draft); with
    ``on_fail == "fail"`` a judge below threshold fails its step next."""

    step: str
    target: str
    passed: bool
    score: float
    threshold: float
    scale: int
    attempts: int
    on_fail: Literal["keep_best", "fail"] = "keep_best"


@dataclass(slots=True, kw_only=True)
class VoteDecided(Event):
    """A vote's outcome: the counts per normalised answer and how a tie was broken."""

    step: str
    counts: dict[str, int]
    winner: str
    tie: bool
    tie_rule: str
    tied: list[str] = field(default_factory=list)


@dataclass(slots=True, kw_only=True)
class RoundFinished(Event):
    """A round of a rounds block ended; ``stop_reason`` says whether it was the last."""

    round: int
    stop_reason: Literal["until", "max"] | None = None
    until_value: Any = None
    outputs: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True, kw_only=True)
class GatewayNotice(Event):
    """Something the gateway did on its own (a retry, a fallback, a breaker, a model load)."""

    event: GatewayEvent
    step: str | None = None


@dataclass(slots=True, kw_only=True)
class Totals:
    """What a run spent: steps, model calls, tokens and cost, wall time. A slotted dataclass like
    the events that carry it (two a run; as a pydantic model they cost 3.7 us of a run's 39 us of
    fixed work in bench/overhead.py, now 0.8); the record reads it back with pydantic."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # a record with an unknown total is refused

    steps: int = 0
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    wall_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The totals as JSON data."""
        return {"steps": self.steps, "calls": self.calls, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "cost_usd": self.cost_usd, "wall_s": self.wall_s}


@dataclass(slots=True, kw_only=True)
class RunFinished(Event):
    """A run ended: its status, answer or error, and totals."""

    status: Literal["succeeded", "failed", "interrupted"]
    output: str | None = None
    output_step: str = ""
    error: str | None = None
    error_type: str | None = None
    totals: Totals = field(default_factory=Totals)


def event_dict(event: Event | CallInfo) -> dict[str, Any]:
    """The JSON-ready form of an event (nested models and dataclasses included)."""
    from pydantic_core import to_jsonable_python

    return to_jsonable_python(event)  # type: ignore[no-any-return]


Subscriber = Callable[[Event], None]
"""Takes every event of a run. One with ``wants_tokens = False`` (the run record, the plain
progress lines) tells the engine it ignores :class:`Token` events; when no subscriber wants them,
nothing streams: remote models answer in one plain request, which costs less CPU.

A subscriber that raises does not stop the run: the engine logs its first error and goes on
(a broken view or plugin must not cost the run). One with ``critical = True`` (the run record) is
the exception: its failure fails the run (see ``engine.executor``)."""


def wants_tokens(subscriber: Subscriber) -> bool:
    """Whether a subscriber takes :class:`Token` events (yes unless its ``wants_tokens``
    attribute, property or method says otherwise)."""
    says = getattr(subscriber, "wants_tokens", True)
    return bool(says() if callable(says) else says)


def is_critical(subscriber: Subscriber) -> bool:
    """Whether a subscriber's failure fails the run (its ``critical`` attribute; default no)."""
    return getattr(subscriber, "critical", False) is True


__all__ = [
    "CallFailed", "CallFinished", "CallInfo", "Event", "GatewayNotice", "JudgeDecided", "JudgeScored",
    "RoundFinished", "RunFinished", "RunStarted", "StepFailed", "StepFinished", "StepSkipped", "StepStarted",
    "Subscriber", "Token", "Totals", "VoteDecided", "event_dict", "is_critical", "wants_tokens",
]
