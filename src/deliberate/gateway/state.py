"""The state the gateway's layers share across calls: per-endpoint circuit breakers and rate
limits, the run's cost budget, the on-disk response cache, and the backoff formula.

One :class:`Breaker` or :class:`RateLimit` serves every model behind its endpoint, so these live
in the gateway (``Gateway.breaker``, ``Gateway.rate_limit``) and the per-model layers of
:mod:`deliberate.gateway.layers` hold a reference to them.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import os
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pybreaker

from ..errors import BudgetExceeded, ProviderError
from .contracts import GatewayEvent, GenerationResult


class Breaker:
    """A pybreaker circuit breaker around async calls, turning state changes into events.

    pybreaker does not count failures of a decorated ``async def``; ``calling()`` around the await
    does. Errors marked ``trips_breaker=False`` (bad request, authentication) are not outages.
    """

    def __init__(self, endpoint: str, fail_max: int, reset_timeout: float,
                 emit: Callable[[GatewayEvent], None]) -> None:
        self.endpoint = endpoint
        self._emit = emit
        self.fail_max, self.reset_timeout = fail_max, reset_timeout
        # pybreaker's breaker and its state object refer to each other (a reference cycle, freed
        # only by the garbage collector): made on the first failure, not for every endpoint of
        # every run. A gateway whose calls all succeed is then freed by reference counting,
        # which keeps the collector out of runs (bench/overhead.py: fan-out 62 -> 51 us a step
        # beside LangGraph's garbage)
        self._cb: pybreaker.CircuitBreaker | None = None

    @property
    def cb(self) -> pybreaker.CircuitBreaker:
        """pybreaker's breaker, the one state machine (made when first needed)."""
        if self._cb is None:
            exclude: list[Any] = [lambda e: isinstance(e, ProviderError) and not e.trips_breaker, _Cancelled]
            self._cb = pybreaker.CircuitBreaker(
                fail_max=self.fail_max,
                reset_timeout=self.reset_timeout,
                exclude=exclude,
                listeners=[_Listener(self.endpoint, self._emit)],
                name=self.endpoint,
                throw_new_error_on_trip=False,
            )
        return self._cb

    @property
    def state(self) -> str:
        return "closed" if self._cb is None else str(self._cb.current_state)

    def _count(self, exc: BaseException | None) -> None:
        _count(self.cb, exc)

    async def call(self, make: Callable[..., Any], *args: Any) -> Any:
        """``await make(*args)`` through the breaker: refused while open, its outcome counted."""
        cb = self._cb
        if cb is None or (cb.current_state == "closed" and cb.fail_counter == 0):
            # The common case. A success here would change nothing in pybreaker (no failures to
            # forget), so the call skips its bookkeeping; anything else goes through pybreaker as
            # usual, which stays the one state machine. Saves 2.4 us of a 9.4 us gateway call
            # (bench/overhead.py's zero backend, measured alone).
            try:
                result = await make(*args)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._count(exc)
                raise
            if self._cb is not None and self._cb.fail_counter:  # a concurrent call failed meanwhile:
                self._count(None)  # this success resets the count
            return result
        try:
            with cb.calling():
                try:
                    return await make(*args)
                except asyncio.CancelledError:
                    # a cancelled call says nothing about the endpoint: not a failure
                    raise _Cancelled() from None
        except _Cancelled:
            raise asyncio.CancelledError() from None
        except pybreaker.CircuitBreakerError:
            raise ProviderError(
                f"circuit breaker for {self.endpoint} is open",
                hint=f"it retries after {self.cb.reset_timeout:g}s",
                transient=False,
                trips_breaker=False,
            ) from None


def _count(cb: pybreaker.CircuitBreaker, exc: BaseException | None) -> None:
    """Report the outcome of a call made outside ``calling()`` to pybreaker: an error counts as a
    failure (unless excluded) and may open the breaker; ``None`` counts as a success."""
    try:
        with cb.calling():
            if exc is not None:
                raise exc
    except BaseException:  # noqa: S110 - the caller raises the call's own error
        pass


class _Listener(pybreaker.CircuitBreakerListener):
    """Turns pybreaker's state changes into gateway events."""

    _KINDS = {"open": "breaker_open", "half-open": "breaker_half_open", "closed": "breaker_closed"}

    def __init__(self, endpoint: str, emit: Callable[[GatewayEvent], None]) -> None:
        self.endpoint, self.emit = endpoint, emit

    def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
        self.emit(GatewayEvent(kind=self._KINDS[new_state.name], endpoint=self.endpoint,  # type: ignore[arg-type]
                               at=time.time(), detail=f"{old_state.name} -> {new_state.name}"))


class _Cancelled(Exception):
    """Carries a cancellation through pybreaker, which excludes it from the failure count."""


class RateLimit:
    """Requests per minute (aiolimiter) and a cap on concurrent requests, per endpoint."""

    def __init__(self, rpm: float | None, max_concurrent: int | None) -> None:
        from aiolimiter import AsyncLimiter

        self.limiter = AsyncLimiter(rpm, 60) if rpm else None
        self.sem = asyncio.Semaphore(max_concurrent) if max_concurrent else None
        self.in_flight = 0
        self.peak = 0

    async def __aenter__(self) -> RateLimit:
        if self.sem:
            await self.sem.acquire()
        if self.limiter:
            try:
                await self.limiter.acquire()
            except BaseException:
                if self.sem:
                    self.sem.release()  # cancelled while waiting: give the slot back
                raise
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.in_flight -= 1
        if self.sem:
            self.sem.release()


def backoff_delay(attempt: int, base: float = 0.5, cap: float = 20.0,
                  retry_after: float | None = None, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter; a server's Retry-After wins when it is longer."""
    source: Any = rng or random
    delay = source.uniform(0, min(cap, base * (2 ** attempt)))
    if retry_after is not None:
        delay = max(delay, min(retry_after, cap * 3))
    return delay


class Budget:
    """A run's cost budget, enforced before a call (estimate) and after it (real usage)."""

    def __init__(self, max_cost_usd: float | None) -> None:
        self.max_cost_usd = max_cost_usd
        self.spent_usd = 0.0
        self.reserved_usd = 0.0  # estimates of calls in flight: concurrent calls cannot overspend

    def check(self, estimate_usd: float, what: str) -> None:
        """Refuse a call whose estimate does not fit; else reserve it (see :meth:`release`)."""
        if self.max_cost_usd is None:
            return
        if self.spent_usd + self.reserved_usd + estimate_usd > self.max_cost_usd + 1e-12:
            raise BudgetExceeded(
                f"{what} would cost up to ${estimate_usd:.6f}; ${self.spent_usd:.6f} of the "
                f"${self.max_cost_usd:.6f} budget is spent"
                + (f" and ${self.reserved_usd:.6f} is reserved by calls in flight" if self.reserved_usd else ""),
                hint="raise --max-cost or use cheaper models",
            )
        self.reserved_usd += estimate_usd

    def release(self, estimate_usd: float) -> None:
        if self.max_cost_usd is not None:
            self.reserved_usd = max(0.0, self.reserved_usd - estimate_usd)

    def charge(self, cost_usd: float) -> None:
        self.spent_usd += cost_usd
        if self.max_cost_usd is not None and self.spent_usd > self.max_cost_usd + 1e-12:
            raise BudgetExceeded(
                f"spent ${self.spent_usd:.6f}, over the ${self.max_cost_usd:.6f} budget",
                hint="raise --max-cost or use cheaper models",
            )


@functools.cache
def _result_adapter() -> Any:
    from pydantic import TypeAdapter

    return TypeAdapter(GenerationResult)


class ResponseCache:
    """An on-disk cache of answers to deterministic calls (temperature 0 or a fixed seed)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @staticmethod
    def key(parts: dict[str, Any]) -> str:
        blob = json.dumps(parts, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str) -> GenerationResult | None:
        path = self._path(key)
        try:
            return _result_adapter().validate_json(path.read_bytes())
        except (OSError, ValueError):
            return None

    def put(self, key: str, result: GenerationResult) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            fh.write(_result_adapter().dump_json(result).decode())
        os.replace(tmp, path)

    def entries(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted(self.directory.glob("*/*.json"))

    def clear(self) -> int:
        n = 0
        for p in self.entries():
            p.unlink(missing_ok=True)
            n += 1
        return n
