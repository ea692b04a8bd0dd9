"""The engine's one stream of typed events. The terminal view, the run record and the log each
subscribe to it; the engine imports no terminal code."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..gateway.contracts import Attempt, GatewayEvent, Message, Sampling


class Event(BaseModel):
    model_config = ConfigDict(extra="forbid")
    at: float = Field(default_factory=time.time)

    @property
    def type(self) -> str:
        return type(self).__name__


class RunStarted(Event):
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
    reused_steps: list[str] = Field(default_factory=list)


class CallInfo(BaseModel):
    """One answered model call, as the record keeps it."""

    model_config = ConfigDict(extra="forbid")
    model_key: str
    model_requested: str | None = None
    model_name: str = ""
    source: str = ""
    strategy: str = ""
    sampling: Sampling | None = None
    max_tokens: int = 0
    messages: list[Message] = Field(default_factory=list)
    text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    load_time: float = 0.0
    inference_time: float = 0.0
    total_time: float = 0.0
    cache_hit: bool = False
    finish_reason: str | None = None
    attempts: list[Attempt] = Field(default_factory=list)
    started_at: float = 0.0
    finished_at: float = 0.0


class StepStarted(Event):
    step: str
    kind: str
    round: int = 1
    branch: int | None = None
    item: Any = None
    attempt: int = 1
    model_key: str | None = None


class Token(Event):
    """Streamed text of a running call. ``reset``: the attempt so far was dropped (a retry or a
    fallback follows); forget the text streamed for this step and branch."""

    step: str
    text: str
    round: int = 1
    branch: int | None = None
    reset: bool = False


class CallFinished(Event):
    """A model call inside a step answered (a branch, a judge, a judge's re-run of its target)."""

    step: str
    round: int = 1
    branch: int | None = None
    item: Any = None
    attempt: int = 1
    call: CallInfo


class CallFailed(Event):
    step: str
    round: int = 1
    branch: int | None = None
    error: str
    error_type: str
    attempts: list[Attempt] = Field(default_factory=list)


class StepFinished(Event):
    step: str
    kind: str
    round: int = 1
    value: Any  # values.to_json form
    started_at: float = 0.0
    reused: bool = False


class StepSkipped(Event):
    step: str
    round: int = 1
    when: str
    decided_by: Any


class StepFailed(Event):
    step: str
    round: int = 1
    error: str
    error_type: str
    optional: bool = False


class JudgeScored(Event):
    step: str
    target: str
    attempt: int
    score: float
    threshold: float
    passed: bool
    feedback: str


class VoteDecided(Event):
    step: str
    counts: dict[str, int]
    winner: str
    tie: bool
    tie_rule: str
    tied: list[str] = Field(default_factory=list)


class RoundFinished(Event):
    round: int
    stop_reason: Literal["until", "max"] | None = None
    until_value: Any = None
    outputs: dict[str, Any] = Field(default_factory=dict)


class GatewayNotice(Event):
    step: str | None = None
    event: GatewayEvent


class Totals(BaseModel):
    model_config = ConfigDict(extra="forbid")
    steps: int = 0
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    wall_s: float = 0.0


class RunFinished(Event):
    status: Literal["succeeded", "failed", "interrupted"]
    output: str | None = None
    output_step: str = ""
    error: str | None = None
    error_type: str | None = None
    totals: Totals = Field(default_factory=Totals)


Subscriber = Callable[[Event], None]

__all__ = [
    "CallFailed", "CallFinished", "CallInfo", "Event", "GatewayNotice", "JudgeScored", "RoundFinished",
    "RunFinished", "RunStarted", "StepFailed", "StepFinished", "StepSkipped", "StepStarted", "Subscriber",
    "Token", "Totals", "VoteDecided",
]
