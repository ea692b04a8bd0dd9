"""The run context: what a step handler is given. It holds the run's values and counts, sends
events to the subscribers, renders templates in the run's names, and calls the gateway (every
call streamed to the views, accounted and recorded as an event). The scheduler
(:mod:`.executor`) owns one per run; handlers (:mod:`.steps`) see only this."""

from __future__ import annotations

import contextvars
import logging
import numbers
import time
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from ..errors import BudgetExceeded, DeliberateError, InputError
from ..flows.loader import LoadedFlow
from ..flows.spec import ModelStep
from ..flows.templates import evaluate, render
from ..gateway.contracts import GatewayEvent, GenerationRequest, GenerationResult, Message
from ..gateway.gateway import Gateway
from .events import (
    CallFailed,
    CallFinished,
    CallInfo,
    Event,
    GatewayNotice,
    Subscriber,
    Token,
    is_critical,
    wants_tokens,
)

log = logging.getLogger("deliberate.engine")

# The current round and the names it carries: per task (tasks copy the context when created), so
# a step running beside a rounds block never sees the loop's round or carried values.
ROUND: contextvars.ContextVar[tuple[int, dict[str, Any]]] = contextvars.ContextVar(
    "deliberate_round", default=(1, {}))


class RecordFailed(Exception):
    """Raised where the run can stop cleanly (before a step, before a model call) once a critical
    subscriber (the run record) has failed. Never caught by a step, optional or not."""


@dataclass
class RunOptions:
    """What the user set for this run on top of the flow (CLI overrides win)."""

    models: dict[str, str] = field(default_factory=dict)  # step -> key; "*" -> every step
    strategy: str | None = None
    rounds: int | None = None
    seed: int | None = None
    max_cost: float | None = None
    temperature: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The options as JSON data (as the run record keeps them)."""
        return {"models": dict(self.models), "strategy": self.strategy, "rounds": self.rounds,
                "seed": self.seed, "max_cost": self.max_cost, "temperature": self.temperature}

    def checked(self) -> RunOptions:
        """These options, each number as the type a model call takes (a whole temperature a
        float, a numpy integer seed an int); :class:`InputError` names the first value no call
        could take. The engine builds its requests from them without validating each again
        (``GenerationRequest.checked``): every run starts here."""
        t, seed, rounds, cost = self.temperature, self.seed, self.rounds, self.max_cost
        if t is None and seed is None and rounds is None and cost is None:
            return self  # nothing set: the common case, at no cost (each run checks, Engine.run too)
        if t is not None and not (_real(t) and 0 <= t <= 2):
            raise InputError(f"temperature {t!r} is not a number from 0 to 2")
        if seed is not None and not _whole(seed):
            raise InputError(f"seed {seed!r} is not an integer")
        if rounds is not None and not (_whole(rounds) and rounds >= 1):
            raise InputError(f"rounds {rounds!r} is not a whole number of at least 1")
        if cost is not None and not (_real(cost) and cost >= 0):
            raise InputError(f"max_cost {cost!r} is not an amount of US dollars (0 or more)")
        if all(v is None or type(v) is kind for v, kind in ((t, float), (seed, int), (rounds, int), (cost, float))):
            return self
        return replace(self, temperature=None if t is None else float(t), seed=None if seed is None else int(seed),
                       rounds=None if rounds is None else int(rounds), max_cost=None if cost is None else float(cost))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunOptions:
        """The inverse of :meth:`to_dict` (replay and resume)."""
        return cls(**{k: d.get(k) for k in ("strategy", "rounds", "seed", "max_cost", "temperature")},
                   models=dict(d.get("models") or {}))


def _real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _whole(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


class EngineParts(Protocol):
    """What a run takes from its :class:`~.executor.Engine`."""

    gateway: Gateway
    subscribers: list[Subscriber]
    history: Any
    judge_backoff_s: float


@dataclass(slots=True)
class _Where:
    """A call's place in its step, as its events say it."""

    step: str
    round: int
    branch: int | None
    item: Any
    attempt: int


class RunContext:
    """One run's state and services, as step handlers use them.

    ``values`` maps each finished step to its value (a handler may rewrite another step's value, as
    a judge does its target's); ``last_messages`` the messages a step was last sent; ``skipped``
    the steps skipped so far; ``verdicts`` a step with a threshold to whether its latest run
    reached it (``RunResult.below_threshold`` lists those that did not)."""

    def __init__(self, engine: EngineParts, loaded: LoadedFlow, inputs: dict[str, Any], options: RunOptions,
                 run_id: str) -> None:
        self.loaded, self.flow = loaded, loaded.flow
        self.inputs, self.options, self.run_id = inputs, options, run_id
        self.gateway, self.history, self.judge_backoff_s = engine.gateway, engine.history, engine.judge_backoff_s
        self.values: dict[str, Any] = {}
        self.last_messages: dict[str, list[Message]] = {}
        self.skipped: set[str] = set()
        self.verdicts: dict[str, bool] = {}
        self.counts = {"steps": 0, "calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0}
        self.subscribers = tuple(engine.subscribers)
        # Stream only when a subscriber shows tokens; otherwise each call is one plain request.
        self.stream = any(wants_tokens(s) for s in self.subscribers)
        self.failing: set[int] = set()  # ids of subscribers that raised (each is logged once)
        self.fatal: Exception | None = None  # the first error of a critical subscriber (the record)

    @property
    def round(self) -> int:
        """The current round (1 outside a rounds block)."""
        return ROUND.get()[0]

    # -- events -------------------------------------------------------------------------------
    def emit(self, event: Event) -> None:
        """Send one event to every subscriber."""
        for sub in self.subscribers:
            try:  # free unless it raises: this loop runs for every event, tokens included
                sub(event)
            except Exception as exc:
                self._subscriber_failed(sub, event, exc)

    def _subscriber_failed(self, sub: Subscriber, event: Event, exc: Exception) -> None:
        """A subscriber raised. A view or a plugin that breaks must not cost the run: its first
        error is logged and the run goes on (it still gets every event; it may recover). The run
        record is different: the record is the product, and a run whose record is wrong or not on
        disk must not end "succeeded". So a critical subscriber's failure is kept in ``fatal``, the
        run stops at the next clean point (before a step, before a model call: no more is spent
        on a run that is not being recorded), and it ends failed with one line saying why. The
        recorder still gets every event up to RunFinished, so the record on disk, if it can be
        written at all, says "failed" and why."""
        critical = is_critical(sub)
        if critical and self.fatal is None:
            self.fatal = exc
        if id(sub) in self.failing:
            return
        self.failing.add(id(sub))
        if critical:
            log.error("the run record %r failed on %s: %s: %s; the run fails", sub, event.type,
                      type(exc).__name__, exc, exc_info=exc)
        else:
            log.warning("event subscriber %r failed on %s: %s: %s; the run goes on (later errors of "
                        "this subscriber are not logged)", sub, event.type, type(exc).__name__, exc,
                        exc_info=exc)

    # -- templates ----------------------------------------------------------------------------
    def scope(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """The names a template sees now: inputs, step values, carried names, ``round``, extra."""
        rnd, carry = ROUND.get()
        ctx: dict[str, Any] = dict(self.inputs)
        ctx.update(self.values)
        ctx.update(carry)
        ctx["round"] = rnd
        if extra:
            ctx.update(extra)
        return ctx

    def render(self, template: str, extra: dict[str, Any] | None = None) -> str:
        """A template rendered in :meth:`scope`."""
        return render(template, self.scope(extra))

    def evaluate(self, expression: str, extra: dict[str, Any] | None = None) -> Any:
        """An expression's value in :meth:`scope`."""
        return evaluate(expression, self.scope(extra))

    def stats(self) -> dict[str, Any]:
        """Steps, calls, tokens and cost so far."""
        return dict(self.counts)

    # -- model calls --------------------------------------------------------------------------
    def model_for(self, name: str, step: ModelStep, extra: dict[str, Any] | None = None) -> str | None:
        """The model key a step calls: --model for the step, its own, --model '*', the default."""
        o = self.options.models
        if name in o:
            return o[name]
        if step.model:
            # only a model holding a template tag is a template (the checks look up the others as keys)
            key = self.render(step.model, extra).strip() if "{{" in step.model else step.model
            if "*" in o and not (getattr(step, "for_each", None) is not None and "{{" in step.model):
                return o["*"]
            return key
        return o.get("*") or self.flow.defaults.model

    def request(self, name: str, step: ModelStep, messages: list[Message], model: str | None,
                branch: int | None = None) -> GenerationRequest:
        """The gateway request of a step's call: options over the step over the flow's defaults."""
        d, opts = self.flow.defaults, self.options
        seed = opts.seed if opts.seed is not None else (step.seed if step.seed is not None else d.seed)
        if seed is not None and branch is not None:
            seed += branch  # same prompt, different branch: different samples (self-consistency)
        temperature = opts.temperature if opts.temperature is not None else (
            step.temperature if step.temperature is not None else d.temperature)
        return GenerationRequest.checked(
            messages, model_key=model,
            strategy=opts.strategy or step.strategy or d.strategy,
            max_tokens=step.max_tokens or d.max_tokens, temperature=temperature, seed=seed,
            context={"flow": self.flow.name, "step": name, "run_id": self.run_id, "round": self.round,
                     "branch": branch},
        )

    async def call(self, name: str, request: GenerationRequest, *, branch: int | None = None,
                   item: Any = None, attempt: int = 1) -> GenerationResult:
        """Call the gateway for step ``name``: tokens stream to the views when one shows them, the
        answer is counted and recorded (``CallFinished``), a failure is told (``CallFailed``)."""
        started = time.time()
        where = _Where(name, self.round, branch, jsonable(item), attempt)

        def on_token(text: str) -> None:
            self.emit(Token(step=name, text=text, round=where.round, branch=branch))

        def on_event(ev: GatewayEvent) -> None:
            if ev.kind in ("retry", "fallback"):
                self.emit(Token(step=name, text="", round=where.round, branch=branch, reset=True))
            self.emit(GatewayNotice(step=name, event=ev))

        if self.fatal is not None:
            raise RecordFailed
        try:
            result = await self.gateway.generate(request, on_token=on_token if self.stream else None,
                                                 on_event=on_event)
        except BudgetExceeded as exc:
            partial = getattr(exc, "result", None)
            if partial is not None:
                self._account(where, request, partial, started)
            raise
        except DeliberateError as exc:
            self.emit(CallFailed(step=name, round=where.round, branch=branch, error=exc.line(),
                                 error_type=type(exc).__name__, model_key=request.model_key))
            raise
        self._account(where, request, result, started)
        return result

    def _account(self, where: _Where, request: GenerationRequest, result: GenerationResult,
                 started: float) -> None:
        usage, timings, counts = result.usage, result.timings, self.counts
        counts["calls"] += 0 if result.cache_hit else 1
        counts["prompt_tokens"] += usage.prompt_tokens
        counts["completion_tokens"] += usage.completion_tokens
        counts["cost_usd"] += usage.cost_usd
        info = CallInfo(
            model_key=result.model_resolved, model_requested=request.model_key, model_name=result.model_name,
            source=result.source, strategy=result.strategy, sampling=result.sampling,
            max_tokens=result.max_tokens, messages=request.messages, text=result.text,
            prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
            cost_usd=usage.cost_usd, load_time=timings.load_time, inference_time=timings.inference_time,
            total_time=timings.total_time, cache_hit=result.cache_hit, finish_reason=result.finish_reason,
            attempts=result.attempts, started_at=started, finished_at=time.time(),
            round=where.round, branch=where.branch, item=where.item, attempt=where.attempt,
        )
        self.emit(CallFinished(step=where.step, round=where.round, branch=where.branch, item=where.item,
                               attempt=where.attempt, call=info))


def jsonable(value: Any) -> Any:
    """A value as JSON data for an event (anything else as its text)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return str(value)
