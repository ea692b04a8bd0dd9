"""The gateway's contracts: what a caller asks for, what it gets back, and the backend seam.

The seam is as small as httpx's transport: a :class:`Model` is one async method,
``generate(call, on_token) -> Reply``; streaming is the same method with an ``on_token`` callback.
Every backend is one (subclassing :class:`Backend`, whose optional hooks have defaults), and so is
every gateway layer around a backend (:mod:`deliberate.gateway.layers`). The layers of one
request share its :class:`CallContext` (attempts, events), which travels on the call. A test
backend is therefore a few lines (see tests/plugins/deliberate_scripted).

What callers hand in (``GenerationRequest``, ``Message``) is validated by pydantic. What the gateway
and backends build themselves (``BackendCall``, ``Reply``, ``GenerationResult`` and its parts) are
slotted dataclasses: a model call builds six of them, and validating facts we just computed would
cost more than the engine's whole orchestration (``bench/overhead.py``). Their JSON form comes from
:func:`pydantic_core.to_jsonable_python`; the response cache reads them back with a TypeAdapter.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from ..registry import Sampling


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


_M = TypeVar("_M", bound=BaseModel)
_new, _set = object.__new__, object.__setattr__


def _checked(cls: type[_M], values: dict[str, Any], defaulted: frozenset[str] = frozenset()) -> _M:
    """An instance of ``cls`` holding ``values`` (every field, each already valid), without
    pydantic's validation: what ``model_construct`` builds, at a seventh of its cost and half of
    validating (a request 2.1 -> 1.1 us, a message 0.85 -> 0.6 us; together 3% of a fan-out step
    in bench/overhead.py). Only for values the caller has checked itself. ``values`` holds every
    field, in the model's order; those in ``defaulted`` count as not set, as pydantic's defaults."""
    obj = _new(cls)
    _set(obj, "__dict__", values)
    _set(obj, "__pydantic_fields_set__", set(values) - defaulted)
    _set(obj, "__pydantic_extra__", None)
    _set(obj, "__pydantic_private__", None)
    return obj


class Message(_Model):
    """One chat message."""

    role: Literal["system", "user", "assistant"]
    content: str

    @classmethod
    def checked(cls, role: Literal["system", "user", "assistant"], content: str) -> Message:
        """A message the caller has checked (a role from its own code, a rendered ``str``)."""
        return _checked(cls, {"role": role, "content": content})


class Constraints(_Model):
    """Limits a caller puts on one call. Frozen, so requests share the empty default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_vram_gb: float | None = None
    latency_budget_s: float | None = None
    max_cost_usd: float | None = None


_NO_CONSTRAINTS = Constraints()
_DEFAULTED = frozenset({"task_type", "constraints"})  # what GenerationRequest.checked leaves unset


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

    @classmethod
    def checked(cls, messages: list[Message], *, model_key: str | None, strategy: str | None,
                max_tokens: int | None, temperature: float | None, seed: int | None,
                context: dict[str, Any]) -> GenerationRequest:
        """A request from values the caller has checked against this model's rules (the engine:
        each comes from a validated flow or validated run options)."""
        return _checked(cls, {"messages": messages, "model_key": model_key, "strategy": strategy,
                              "max_tokens": max_tokens, "temperature": temperature, "seed": seed,
                              "task_type": None, "context": context, "constraints": _NO_CONSTRAINTS},
                        _DEFAULTED)

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


TokenCallback = Callable[[str], None]
EventCallback = Callable[[GatewayEvent], None]


@dataclass(slots=True, kw_only=True)
class CallContext:
    """What the layers of one request share: its attempts and events so far, when it began, its
    strategy and constraints. The gateway makes one per request, and every model it tries
    (fallbacks included) writes to it, so the result carries the whole request. Backends may
    ignore it."""

    attempts: list[Attempt] = field(default_factory=list)
    events: list[GatewayEvent] = field(default_factory=list)
    listeners: tuple[EventCallback, ...] = ()  # who hears this request's events besides ``events``
    started: float = 0.0  # time.perf_counter() when the request began
    strategy: str = ""
    constraints: Constraints = Constraints()
    cached: GenerationResult | None = None  # set by the response cache when it answered
    tags: dict[str, Any] = field(default_factory=dict)  # the caller's opaque request.context; layers ignore it

    def emit(self, event: GatewayEvent) -> None:
        """Record a retry or fallback of this request and tell its listeners. Not broadcast:
        concurrent requests must not see each other's."""
        self.events.append(event)
        for listener in self.listeners:
            listener(event)


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
    context: CallContext = field(default_factory=CallContext)


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


class Model(Protocol):
    """Anything that answers a call: a backend, or a gateway layer around one (pydantic-ai's
    WrapperModel, httpx's transports). A layer holds ``inner`` and calls it."""

    async def generate(self, call: BackendCall, on_token: TokenCallback | None = None) -> Reply:
        """Answer ``call``, streaming text pieces through ``on_token`` when given."""
        ...


class Backend(abc.ABC):
    """The one seam between the gateway and a model runtime: subclass it and implement
    :meth:`generate`; the hooks below have defaults that do nothing.

    A plugin registered under ``deliberate.backends`` that does not subclass it still works:
    :func:`deliberate.gateway.plugins.as_backend` wraps it once, at load time.
    """

    name: str = "backend"

    @abc.abstractmethod
    async def generate(self, call: BackendCall, on_token: TokenCallback | None = None) -> Reply:
        """Answer one call. Stream text pieces through ``on_token`` when given.

        Raise :class:`deliberate.errors.ProviderError` (``transient=True`` for errors worth a
        retry), :class:`deliberate.errors.CapacityError` or
        :class:`deliberate.errors.ValidationError`; never return partial text as an answer.
        """

    async def prepare(self, spec: Any) -> None:
        """One-time set-up the gateway awaits before a call's timeout, breaker and rate limit
        start (the remote backend imports litellm here). Must not raise for what
        :meth:`generate` reports (a missing key)."""
        return None

    def prepares(self) -> bool:
        """Whether :meth:`prepare` does anything (a subclass overrides it): the gateway leaves
        its prepare layer out otherwise."""
        return type(self).prepare is not Backend.prepare

    async def estimate_cost(self, spec: Any, prompt_tokens: int, max_tokens: int) -> float:
        """An upper bound of one call's cost for the budget, asked only for models without a
        ``cost_profile``. A backend that reads price tables should do so off the event loop."""
        return 0.0

    async def check(self, spec: Any) -> dict[str, Any]:
        """Reach the model now with a tiny greedy request, for ``deliberate models check``."""
        started = time.perf_counter()
        reply = await self.generate(BackendCall(
            model_key=spec.key or "check", spec=spec, messages=[Message(role="user", content="Say OK.")],
            sampling=Sampling(temperature=0), max_tokens=8))
        return {"source": reply.source, "model": reply.model_name, "text": reply.text,
                "tokens": reply.completion_tokens, "seconds": time.perf_counter() - started}

    async def aclose(self) -> None:
        """Release what the backend holds (loaded models, connections); see Gateway.aclose."""
        return None


__all__ = [
    "Attempt",
    "Backend",
    "BackendCall",
    "CallContext",
    "Constraints",
    "EventCallback",
    "GatewayEvent",
    "GenerationRequest",
    "GenerationResult",
    "Message",
    "Model",
    "Reply",
    "Sampling",
    "Timings",
    "TokenCallback",
    "Usage",
]
