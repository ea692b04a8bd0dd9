"""The gateway's contracts: what a caller asks for, what it gets back, and the backend seam.

The seam is as small as httpx's transport: a backend is one async method,
``generate(call, on_token) -> Reply``. Streaming is the same method with an ``on_token`` callback.
A test backend is therefore a few lines (see tests/plugins/deliberate_scripted).

What callers hand in (``GenerationRequest``, ``Message``) is validated by pydantic. What the gateway
and backends build themselves (``BackendCall``, ``Reply``, ``GenerationResult`` and its parts) are
slotted dataclasses: a model call builds six of them, and validating facts we just computed would
cost more than the engine's whole orchestration (``bench/overhead.py``). Their JSON form comes from
:func:`pydantic_core.to_jsonable_python`; the response cache reads them back with a TypeAdapter.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from ..registry import Sampling


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Message(_Model):
    """One chat message."""

    role: Literal["system", "user", "assistant"]
    content: str


class Constraints(_Model):
    """Limits a caller puts on one call. Frozen, so requests share the empty default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_vram_gb: float | None = None
    latency_budget_s: float | None = None
    max_cost_usd: float | None = None


class GenerationRequest(_Model):
    """What a caller asks the gateway for (the seed's contract)."""

    messages: list[Message]
    model_key: str | None = None
    strategy: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    seed: int | None = None
    task_type: str | None = None
    context: dict[str, Any] = Field(default_factory=dict)
    constraints: Constraints = Constraints()

    @classmethod
    def from_prompt(cls, prompt: str, *, system: str | None = None, **kw: Any) -> GenerationRequest:
        msgs = [Message(role="system", content=system)] if system else []
        msgs.append(Message(role="user", content=prompt))
        return cls(messages=msgs, **kw)

    @property
    def prompt(self) -> str:
        """The last user message."""
        return next((m.content for m in reversed(self.messages) if m.role == "user"), "")


@dataclass(slots=True, kw_only=True)
class Timings:
    """Seconds spent: loading the model, generating, and in all (retries included)."""

    load_time: float = 0.0
    inference_time: float = 0.0
    total_time: float = 0.0


@dataclass(slots=True, kw_only=True)
class Usage:
    """Tokens and cost of one answered call."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0


@dataclass(slots=True, kw_only=True)
class Attempt:
    """One try at one model: which model, how it ended, how long it took."""

    model_key: str
    ok: bool
    error: str | None = None
    error_type: str | None = None
    seconds: float = 0.0


class GatewayEvent(_Model):
    """Something the gateway saw that belongs in the record: breaker state, retries, fallbacks."""

    kind: Literal["breaker_open", "breaker_half_open", "breaker_closed", "retry", "fallback"]
    endpoint: str
    model_key: str | None = None
    detail: str = ""
    at: float = 0.0


@dataclass(slots=True, kw_only=True)
class GenerationResult:
    """What the gateway returns (the seed's contract)."""

    text: str
    tokens_generated: int
    timings: Timings
    usage: Usage
    source: str
    cache_hit: bool = False
    model_resolved: str
    model_name: str = ""
    strategy: str = ""
    sampling: Sampling = field(default_factory=Sampling)
    max_tokens: int = 0
    finish_reason: str | None = None
    attempts: list[Attempt] = field(default_factory=list)
    events: list[GatewayEvent] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# The backend seam


@dataclass(slots=True, kw_only=True)
class BackendCall:
    """A call resolved by the gateway and handed to one backend: everything it needs, nothing
    about flows or other backends."""

    model_key: str
    spec: Any  # deliberate.registry.ModelSpec (kept Any so contracts import no registry)
    messages: list[Message]
    sampling: Sampling
    max_tokens: int
    timeout_s: float | None = None


@dataclass(slots=True, kw_only=True)
class Reply:
    """What a backend answers (the gateway checks that ``text`` is a string)."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None  # None: the gateway prices it from the registry's cost_profile
    load_time: float = 0.0
    inference_time: float = 0.0
    model_cache_hit: bool = False  # the model was already loaded (local) / n.a. (remote)
    source: str = "unknown"
    model_name: str = ""
    finish_reason: str | None = None


TokenCallback = Callable[[str], None]
EventCallback = Callable[[GatewayEvent], None]


@runtime_checkable
class Backend(Protocol):
    """The one seam between the gateway and a model runtime."""

    name: str

    async def generate(self, call: BackendCall, on_token: TokenCallback | None = None) -> Reply:
        """Answer one call. Stream text pieces through ``on_token`` when given.

        Raise :class:`deliberate.errors.ProviderError` (``transient=True`` for errors worth a
        retry), :class:`deliberate.errors.CapacityError` or
        :class:`deliberate.errors.ValidationError`; never return partial text as an answer.

        A backend may also define ``async def prepare(spec) -> None``: one-time set-up the gateway
        awaits before a call's timeout, breaker and rate limit start (the remote backend imports
        litellm there). It must not raise for what ``generate`` reports (a missing key).
        """
        ...


__all__ = [
    "Attempt",
    "Backend",
    "BackendCall",
    "Constraints",
    "EventCallback",
    "GatewayEvent",
    "GenerationRequest",
    "GenerationResult",
    "Message",
    "Reply",
    "Sampling",
    "Timings",
    "TokenCallback",
    "Usage",
]
