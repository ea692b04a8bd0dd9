"""What the routes share: the server's state (live runs, metrics, limits) and starting a run under
the caller's concurrency slot and the server's timeout."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

from ..services.live import LiveRun, LiveRuns, ServiceCall
from .config import ServerConfig
from .errors import APIError
from .metrics import Metrics


class Slots:
    """Runs in flight per key: past ``limit``, a new run is refused with 429 and Retry-After."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used: dict[str, int] = defaultdict(int)

    def acquire(self, key: str) -> Callable[[], None]:
        if self.used[key] >= self.limit:
            raise APIError(429, f"{self.limit} runs in flight for this key: wait for one to end",
                           "rate_limit_error", "too_many_runs", headers={"Retry-After": "1"})
        self.used[key] += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.used[key] -= 1

        return release


@dataclass
class ServerState:
    config: ServerConfig
    live: LiveRuns
    keys: list[str] = field(default_factory=list)
    metrics: Metrics = field(default_factory=Metrics)
    slots: Slots | None = None
    ready: bool = False
    warm_error: str | None = None
    tracer: Any = None  # OpenTelemetry's, when its API is installed

    def subscribers(self) -> list[Any]:
        """What every served run reports to: the metrics, and the spans when there is a tracer."""
        subs: list[Any] = [self.metrics.subscriber()]
        if self.tracer is not None:
            from .telemetry import subscriber

            subs.append(subscriber(self.tracer))
        return subs

    def __post_init__(self) -> None:
        if self.slots is None:
            self.slots = Slots(self.config.max_concurrent)


def state_of(request: Request) -> ServerState:
    return request.app.state.deliberate  # type: ignore[no-any-return]


@dataclass
class Started:
    """A run started for a request: the run, its slot's release, and whether it timed out."""

    live: LiveRun
    release: Callable[[], None]
    timer: asyncio.TimerHandle | None = None
    timed_out: bool = False

    def end(self) -> None:
        """The request is done with the run: stop the timer, free the slot (once the run ends)."""
        if self.timer is not None:
            self.timer.cancel()
        if self.live.done:
            self.release()
        else:
            self.live.ended_callback(self.release)


async def start(request: Request, call: ServiceCall, *, tokens: bool = False,
                max_cost: float | None = None) -> Started:
    """Start a run for ``request`` in the caller's slot; it is cancelled (left resumable) when it
    runs past the server's timeout."""
    state = state_of(request)
    assert state.slots is not None
    release = state.slots.acquire(request.scope.get("state", {}).get("key_id", "local"))
    try:
        live = await state.live.begin(call, tokens=tokens, max_cost=max_cost, subscribers=state.subscribers())
    except BaseException:
        release()
        raise
    started = Started(live, release)

    def expire() -> None:
        if live.cancel():
            started.timed_out = True

    started.timer = asyncio.get_running_loop().call_later(state.config.run_timeout_s, expire)
    return started


async def wait_unless_gone(request: Request, started: Started, poll_s: float = 0.5) -> bool:
    """Wait for the run; if the client goes away first, cancel it (left resumable). Returns
    whether the client is still there."""
    live = started.live
    while not live.done:
        try:
            await asyncio.wait_for(asyncio.shield(live.ended.wait()), poll_s)
        except TimeoutError:
            if await request.is_disconnected():
                live.cancel()
                await live.ended.wait()
                return False
    return True


def usage(totals: Any) -> dict[str, int]:
    p, c = int(totals.prompt_tokens), int(totals.completion_tokens)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
