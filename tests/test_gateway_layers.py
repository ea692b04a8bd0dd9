"""The circuit breaker layer alone: pybreaker stays the state machine, including for the calls
that take the fast path (closed, no failures counted), which only skip bookkeeping that would
change nothing."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from deliberate.errors import ProviderError
from deliberate.gateway.contracts import GatewayEvent
from deliberate.gateway.layers import Breaker


def breaker(fail_max: int = 3) -> tuple[Breaker, list[GatewayEvent]]:
    events: list[GatewayEvent] = []
    return Breaker("test:endpoint", fail_max, 60, events.append), events


async def ok() -> str:
    return "ok"


async def outage() -> Any:
    raise ProviderError("500 from the server", transient=True)


async def bad_key() -> Any:
    raise ProviderError("401: bad key", trips_breaker=False)


async def fail(b: Breaker, make: Any = outage) -> None:
    with pytest.raises(ProviderError):
        await b.call(make)


async def test_consecutive_failures_open_it_and_it_refuses_calls() -> None:
    b, events = breaker(3)
    for _ in range(3):
        await fail(b)
    assert b.state == "open"
    assert [e.kind for e in events] == ["breaker_open"]
    with pytest.raises(ProviderError, match="circuit breaker for test:endpoint is open"):
        await b.call(ok)


async def test_a_success_between_failures_resets_the_count() -> None:
    b, _ = breaker(3)
    await fail(b)
    await fail(b)
    assert b.cb.fail_counter == 2
    assert await b.call(ok) == "ok"
    assert b.cb.fail_counter == 0
    await fail(b)
    await fail(b)
    assert b.state == "closed"


async def test_a_call_started_before_a_failure_still_resets_the_count_when_it_succeeds() -> None:
    b, _ = breaker(3)
    gate = asyncio.Event()

    async def slow() -> str:
        await gate.wait()
        return "late"

    started = asyncio.create_task(b.call(slow))  # closed and clean: the fast path
    await asyncio.sleep(0)
    await fail(b)
    assert b.cb.fail_counter == 1
    gate.set()
    assert await started == "late"
    assert b.cb.fail_counter == 0


async def test_bad_requests_and_cancellations_do_not_count() -> None:
    b, events = breaker(1)
    await fail(b, bad_key)
    task = asyncio.create_task(b.call(lambda: asyncio.sleep(10)))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert b.state == "closed" and b.cb.fail_counter == 0 and events == []
    await fail(b)
    assert b.state == "open"


async def test_a_backend_that_answers_no_reply_is_a_provider_error() -> None:
    from deliberate.config import Settings
    from deliberate.gateway import Gateway, GenerationRequest
    from deliberate.registry import Limits, ModelSpec, Registry, StrategySpec

    class Broken:
        name = "broken"

        async def generate(self, call: Any, on_token: Any = None) -> Any:
            return {"text": "a dict is not a Reply"}

    reg = Registry({"m": ModelSpec(key="m", provider="broken", context_window=1000)},
                   {"s": StrategySpec(name="s", limits=Limits(max_retries=0))}, default_model="m",
                   default_strategy="s")
    gw = Gateway(reg, settings=Settings(), backends={"broken": Broken()})
    with pytest.raises(ProviderError, match="backend broken answered dict, not a Reply"):
        await gw.generate(GenerationRequest.from_prompt("hi"))
