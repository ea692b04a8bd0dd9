"""The gateway's layers: each is a :class:`~deliberate.gateway.contracts.Model` that holds the
``inner`` model it wraps and calls it, as pydantic-ai's WrapperModel and httpx's transports do.
``Gateway`` stacks them per model and strategy (outermost first)::

    FallbackLayer            the strategy's fallbacks in order; one error listing every failure
      ContextWindowLayer     a prompt that cannot fit, a model over the request's VRAM: refused
      CacheLayer             deterministic calls answered from disk (no prepare, no budget)
      PrepareLayer           the backend's one-time set-up, outside the timeout and breaker
      BudgetLayer            reserve an estimate, price the reply, charge it
      RetryLayer             attempts, backoff with jitter (Retry-After honoured), retry events
      ScrubLayer             secrets out of errors; a backend's stray exception typed; reply checked
      RateLimitLayer         requests per minute and concurrency of the endpoint
      BreakerLayer           the endpoint's circuit breaker
      TimeoutLayer           the strategy's timeout_s and the request's latency budget
        backend

Every layer works alone around any model (tests/test_gateway_layers.py drives each against a
scripted one). What a request's layers share travels on ``call.context``; what calls share (a
breaker, a rate limit, the budget, the cache) lives in :mod:`deliberate.gateway.state`, whose
names are re-exported here.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from ..config import scrub
from ..errors import (
    BudgetExceeded,
    CapacityError,
    DeliberateError,
    InputError,
    ProviderError,
    ValidationError,
)
from ..safetext import valid_text
from .contracts import Attempt, BackendCall, GatewayEvent, Model, Reply, TokenCallback
from .results import cached_result, prompt_tokens, reply_of, result_of
from .state import Breaker, Budget, RateLimit, ResponseCache, backoff_delay

#: What a model may fail with and still leave the request to a retry or a fallback.
MODEL_ERRORS = (ProviderError, CapacityError, ValidationError)


class Layer:
    """Base of the layers: holds ``inner``. A subclass overrides :meth:`generate`."""

    __slots__ = ("inner",)

    def __init__(self, inner: Model) -> None:
        self.inner = inner

    async def generate(self, call: BackendCall, on_token: TokenCallback | None = None) -> Reply:
        """Pass the call through unchanged."""
        return await self.inner.generate(call, on_token)


class EveryModelFailed(ProviderError):
    """Every candidate of a request failed; ``failures`` holds each model's error, in order, and
    ``group`` (also the ``__cause__``) the same errors as an :class:`ExceptionGroup`, for
    ``except*``."""

    def __init__(self, failures: list[tuple[str, DeliberateError]]) -> None:
        self.failures = failures
        self.group = ExceptionGroup("every model failed", [exc for _, exc in failures])
        self.__cause__ = self.group
        super().__init__("every model failed: " + "; ".join(f"{key}: {exc.line()}" for key, exc in failures),
                         hint="see the run record for each attempt")


class FallbackLayer:
    """Tries ``keys`` in order until one answers; ``stack_of(key)`` gives a key's spec and model,
    resolved only when reached (an unknown fallback does not fail a call its primary answers).

    A lone candidate's error is re-raised as it is (transient, retry_after, trips_breaker intact,
    so callers can tell a bad key from an outage); several failures raise
    :class:`EveryModelFailed`. A budget refusal is never a reason to try another model.
    """

    __slots__ = ("keys", "stack_of", "stacks")

    def __init__(self, keys: list[str], stack_of: Callable[[str], tuple[Any, Model]]) -> None:
        self.keys, self.stack_of = keys, stack_of
        # each candidate's (spec, layers), kept once found: ``stack_of`` refuses an untrusted
        # entry by raising, so only entries it accepted are kept, and the gateway drops this
        # layer (and these) when its budget or cache changes
        self.stacks: dict[str, tuple[Any, Model]] = {}

    async def generate(self, call: BackendCall, on_token: TokenCallback | None = None) -> Reply:
        """Answer with the first model that can."""
        failures: list[tuple[str, DeliberateError]] = []
        for key in self.keys:
            found = self.stacks.get(key)
            if found is None:
                found = self.stacks[key] = self.stack_of(key)
            spec, model = found
            if failures:
                call.context.emit(GatewayEvent(kind="fallback", endpoint=spec.endpoint, model_key=key,
                                               detail=f"after: {failures[-1][0]}: {failures[-1][1].line()}",
                                               at=time.time()))
            try:
                return await model.generate(call if call.model_key == key else
                                            replace(call, model_key=key, spec=spec), on_token)
            except MODEL_ERRORS as exc:
                failures.append((key, exc))
        if len(failures) == 1:
            err = failures[0][1]
            err.where = err.where or f"model {self.keys[0]!r}"
            raise err
        raise EveryModelFailed(failures)


class ContextWindowLayer(Layer):
    """Refuses, before anything else, a prompt (estimated) plus ``max_tokens`` that exceeds the
    model's context window, and a model that needs more VRAM than the request allows."""

    __slots__ = ()

    async def generate(self, call: BackendCall, on_token: TokenCallback | None = None) -> Reply:
        """Check the call, then pass it on."""
        spec, prompt = call.spec, prompt_tokens(call)
        if prompt + call.max_tokens > spec.context_window:
            raise CapacityError(
                f"prompt (~{prompt} tokens) + max_tokens {call.max_tokens} exceed the context window "
                f"of {spec.key} ({spec.context_window})",
                hint="shorten the inputs, lower max_tokens or pick a model with a larger window",
            )
        limit = call.context.constraints.max_vram_gb
        if limit is not None and spec.min_vram_gb and spec.min_vram_gb > limit:
            raise CapacityError(f"{spec.key} needs {spec.min_vram_gb} GB VRAM, the request allows {limit} GB")
        return await self.inner.generate(call, on_token)


class CacheLayer(Layer):
    """Answers deterministic calls (temperature 0 or a fixed seed) from ``store``: a hit is one
    free attempt of 0 s, its text handed to ``on_token`` in one piece, and nothing below runs."""

    __slots__ = ("store",)

    def __init__(self, inner: Model, store: ResponseCache) -> None:
        super().__init__(inner)
        self.store = store

    @staticmethod
    def key(call: BackendCall) -> str:
        """What makes two calls the same: the model's identity (not its key), messages, sampling."""
        identity = call.spec.model_dump(include={"provider", "source", "litellm_model", "api_base",
                                                 "quantization", "dtype"})
        return ResponseCache.key({"model": identity, "messages": [m.model_dump() for m in call.messages],
                                  "sampling": call.sampling.model_dump(), "max_tokens": call.max_tokens})

    async def generate(self, call: BackendCall, on_token: TokenCallback | None = None) -> Reply:
        """The cached answer, else the inner model's (then cached)."""
        if not call.sampling.deterministic:
            return await self.inner.generate(call, on_token)
        key = self.key(call)
        hit = self.store.get(key)
        if hit is not None:
            call.context.attempts.append(Attempt(model_key=call.model_key, ok=True, seconds=0.0))
            if on_token:
                on_token(hit.text)
            call.context.cached = cached_result(hit, call)
            return reply_of(hit)
        try:
            reply = await self.inner.generate(call, on_token)
        except BudgetExceeded as exc:
            answered = getattr(exc, "result", None)
            if answered is not None:  # answered, then over budget: the answer is still worth keeping
                self.store.put(key, answered)
            raise
        self.store.put(key, result_of(reply, call))
        return reply


class PrepareLayer(Layer):
    """Awaits the backend's one-time set-up (litellm's import: seconds) before the layers that
    time a call, so a short ``timeout_s`` does not fail the first call of a process."""

    __slots__ = ("prepare",)

    def __init__(self, inner: Model, prepare: Callable[[Any], Awaitable[None]]) -> None:
        super().__init__(inner)
        self.prepare = prepare

    async def generate(self, call: BackendCall, on_token: TokenCallback | None = None) -> Reply:
        """Prepare, then pass the call on."""
        await self.prepare(call.spec)
        return await self.inner.generate(call, on_token)


class BudgetLayer(Layer):
    """Keeps a run within ``budget``: reserves the call's estimated cost before it (refusing it
    when spent + reserved + estimate would exceed the budget), prices the reply (the backend's
    figure, else the model's ``cost_profile``) and charges it after. An answer that goes over is
    attached to the :class:`BudgetExceeded` as ``result``, for the record."""

    __slots__ = ("budget", "estimate")

    def __init__(self, inner: Model, budget: Budget,
                 estimate: Callable[[Any, int, int], Awaitable[float]]) -> None:
        super().__init__(inner)
        self.budget, self.estimate = budget, estimate

    async def generate(self, call: BackendCall, on_token: TokenCallback | None = None) -> Reply:
        """Reserve, call, price, charge."""
        budget, spec = self.budget, call.spec
        reserved = 0.0
        if budget.max_cost_usd is not None:
            prompt = prompt_tokens(call)
            if spec.cost_profile is not None:
                reserved = spec.cost_profile.cost(prompt, call.max_tokens)
            else:
                reserved = float(await self.estimate(spec, prompt, call.max_tokens))
            budget.check(reserved, f"a call to {spec.key}")
        try:
            reply = await self.inner.generate(call, on_token)
            if reply.cost_usd is None:
                # priced once, here: the result, the cache and the budget read the same figure
                reply.cost_usd = (spec.cost_profile.cost(reply.prompt_tokens, reply.completion_tokens)
                                  if spec.cost_profile else 0.0)
            try:
                budget.charge(reply.cost_usd)
            except BudgetExceeded as exc:
                exc.result = result_of(reply, call)  # type: ignore[attr-defined]
                raise
            return reply
        finally:
            budget.release(reserved)


def _never() -> bool:
    return False


class RetryLayer(Layer):
    """Tries a call up to ``1 + max_retries`` times while it fails transiently, waiting
    :func:`backoff_delay` between tries (a server's Retry-After wins when longer), unless
    ``give_up()`` says the endpoint stopped taking calls (its breaker opened). Every try is an
    :class:`Attempt` of the request; every retry a ``retry`` event. ``sleep`` and ``rng`` are
    injectable, so tests need no real waiting."""

    __slots__ = ("max_retries", "base_s", "give_up", "sleep", "rng")

    def __init__(self, inner: Model, max_retries: int, base_s: float = 0.5, *,
                 give_up: Callable[[], bool] = _never,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
                 rng: random.Random | None = None) -> None:
        super().__init__(inner)
        self.max_retries, self.base_s, self.give_up, self.sleep, self.rng = max_retries, base_s, give_up, sleep, rng

    async def generate(self, call: BackendCall, on_token: TokenCallback | None = None) -> Reply:
        """The first answer of up to ``1 + max_retries`` tries."""
        attempts, spec = call.context.attempts, call.spec
        attempt = 0
        while True:
            t0 = time.perf_counter()
            try:
                reply = await self.inner.generate(call, on_token)
            except MODEL_ERRORS as exc:
                attempts.append(Attempt(model_key=call.model_key, ok=False, error=exc.line(),
                                        error_type=type(exc).__name__, seconds=time.perf_counter() - t0))
                if not (isinstance(exc, ProviderError) and exc.transient and attempt < self.max_retries
                        and not self.give_up()):
                    raise
                delay = backoff_delay(attempt, self.base_s, retry_after=exc.retry_after, rng=self.rng)
                call.context.emit(GatewayEvent(kind="retry", endpoint=spec.endpoint, model_key=call.model_key,
                                               detail=f"attempt {attempt + 1} failed ({exc.message}); "
                                                      f"retrying in {delay:.2f}s", at=time.time()))
                await self.sleep(delay)
                attempt += 1
                continue
            attempts.append(Attempt(model_key=call.model_key, ok=True, seconds=time.perf_counter() - t0))
            return reply


def _clean_tokens(on_token: TokenCallback) -> TokenCallback:
    """``on_token`` given streamed text with any lone surrogate replaced, as the reply's is."""
    def clean(token: str) -> None:
        on_token(valid_text(token))
    return clean


class ScrubLayer(Layer):
    """Makes what comes up from a backend safe to record and retry on: known secrets scrubbed
    from error messages (:func:`deliberate.config.scrub`), any other exception (a backend bug)
    turned into a scrubbed, non-transient :class:`ProviderError` instead of a traceback, a reply
    without text refused, and a lone surrogate in a reply's text (a broken decode; no UTF-8 can
    hold it) replaced by U+FFFD."""

    __slots__ = ("backend_name",)

    def __init__(self, inner: Model, backend_name: str) -> None:
        super().__init__(inner)
        self.backend_name = backend_name

    async def generate(self, call: BackendCall, on_token: TokenCallback | None = None) -> Reply:
        """The inner answer, checked; its errors scrubbed."""
        if on_token is not None:
            on_token = _clean_tokens(on_token)
        try:
            reply = await self.inner.generate(call, on_token)
        except MODEL_ERRORS as exc:
            exc.message = scrub(exc.message)
            raise
        except InputError:
            raise
        except Exception as exc:
            raise ProviderError(scrub(f"{type(exc).__name__}: {exc}"), where=f"backend {self.backend_name}") from exc
        if not isinstance(getattr(reply, "text", None), str):
            raise ProviderError(f"backend {self.backend_name} answered {type(reply).__name__}, not a Reply with "
                                "text", where=f"backend {self.backend_name}")
        text = valid_text(reply.text)  # no UTF-8 for a lone surrogate: a record, a log or a response could not hold it
        if text is not reply.text:
            reply = replace(reply, text=text)
        return reply


class RateLimitLayer(Layer):
    """Waits for the endpoint's :class:`RateLimit` (requests per minute, concurrent requests)."""

    __slots__ = ("limit",)

    def __init__(self, inner: Model, limit: RateLimit) -> None:
        super().__init__(inner)
        self.limit = limit

    async def generate(self, call: BackendCall, on_token: TokenCallback | None = None) -> Reply:
        """Call within the limit."""
        async with self.limit:
            return await self.inner.generate(call, on_token)


class BreakerLayer(Layer):
    """Calls through the endpoint's :class:`Breaker`: refused at once while it is open, every
    outcome counted (bad requests and cancellations excepted)."""

    __slots__ = ("breaker",)

    def __init__(self, inner: Model, breaker: Breaker) -> None:
        super().__init__(inner)
        self.breaker = breaker

    async def generate(self, call: BackendCall, on_token: TokenCallback | None = None) -> Reply:
        """Call through the breaker."""
        reply: Reply = await self.breaker.call(self.inner.generate, call, on_token)
        return reply


class TimeoutLayer(Layer):
    """Gives up on an answer after ``timeout_s`` (the strategy's) or the request's latency budget,
    whichever is shorter, with a transient :class:`ProviderError`."""

    __slots__ = ("timeout_s",)

    def __init__(self, inner: Model, timeout_s: float | None) -> None:
        super().__init__(inner)
        self.timeout_s = timeout_s

    async def generate(self, call: BackendCall, on_token: TokenCallback | None = None) -> Reply:
        """The inner answer, if it comes in time."""
        timeout = self.timeout_s
        budget = call.context.constraints.latency_budget_s
        if budget is not None:
            timeout = min(timeout or budget, budget)
        if timeout is None:
            return await self.inner.generate(call, on_token)
        try:
            async with asyncio.timeout(timeout):  # unlike wait_for (3.11), no task of its own
                return await self.inner.generate(call, on_token)
        except TimeoutError:
            raise ProviderError(f"no answer from {call.model_key} within {timeout:g}s", transient=True) from None


__all__ = [
    "MODEL_ERRORS",
    "Breaker",
    "BreakerLayer",
    "Budget",
    "BudgetLayer",
    "CacheLayer",
    "ContextWindowLayer",
    "EveryModelFailed",
    "FallbackLayer",
    "Layer",
    "PrepareLayer",
    "RateLimit",
    "RateLimitLayer",
    "ResponseCache",
    "RetryLayer",
    "ScrubLayer",
    "TimeoutLayer",
    "backoff_delay",
]
