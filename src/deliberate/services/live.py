"""Live runs: runs started by a long-lived face (the HTTP server, the MCP server) and followed
while they go. Each :class:`LiveRun` takes the engine's events as a subscriber, keeps them in
order for any number of followers (an SSE stream, a chat completion, MCP progress), and can be
cancelled, which leaves its record ``interrupted`` and resumable, as Ctrl-C does at the CLI.

:class:`LiveRuns` holds the process's live runs by id, builds each run's :class:`Services` (one
shared gateway, so breakers, rate limits and loaded models serve every run), and drains them on
shutdown. Faces stay thin: they parse a request, ``start`` a service here and render events."""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from ..config import Settings, get_settings
from ..engine.events import Event, RunFinished, RunStarted, StepFinished, Subscriber, Token
from ..errors import DeliberateError
from ..gateway.gateway import Gateway
from ..gateway.state import Budget
from ..registry import Registry
from .run import RunOutcome, Services

#: A service call made with the run's services: ``lambda env: run(request, env)``.
ServiceCall = Callable[[Services], Awaitable[Any]]

#: Events kept per run; past this a run keeps its step events but drops further tokens.
MAX_EVENTS = 50_000


class LiveRun:
    """One run in flight (or just ended): its events so far, its outcome, and a way to stop it."""

    def __init__(self, tokens: bool = False) -> None:
        self.run_id: str | None = None
        self.flow_name = ""
        self.output_step = ""
        self.status = "starting"
        self.events: list[Event] = []
        self.outcome: RunOutcome | None = None
        self.error: BaseException | None = None  # refused before it started, or an internal error
        self.task: asyncio.Task[None] | None = None
        self.started = asyncio.Event()  # set on RunStarted, or when the run ended without one
        self.ended = asyncio.Event()
        self.tokens = tokens
        self._wake = asyncio.Event()
        self._on_end: list[Callable[[], None]] = []

    # -- the subscriber -----------------------------------------------------------------------
    @property
    def wants_tokens(self) -> bool:
        return self.tokens

    def __call__(self, event: Event) -> None:
        if isinstance(event, Token):
            if not self.tokens or len(self.events) >= MAX_EVENTS:
                return
        elif isinstance(event, RunStarted):
            self.run_id, self.flow_name, self.output_step = event.run_id, event.flow_name, event.output_step
            self.status = "running"
            self.started.set()
        elif isinstance(event, RunFinished):
            self.status = event.status
        self.events.append(event)
        self._notify()

    def _notify(self) -> None:
        self._wake.set()
        self._wake = asyncio.Event()

    # -- following ----------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.ended.is_set()

    async def follow(self, after: int = 0, idle_s: float | None = None) -> AsyncIterator[tuple[int, Event | None]]:
        """Every event after the ``after``-th (1-based numbering), as ``(number, event)``, until the
        run ends; ``(number, None)`` when ``idle_s`` passes without one (a keep-alive)."""
        i = max(0, after)
        while True:
            while i < len(self.events):
                i += 1
                yield i, self.events[i - 1]
            if self.done:
                return
            wake = self._wake
            try:
                await asyncio.wait_for(wake.wait(), idle_s)
            except TimeoutError:
                yield i, None

    def cancel(self) -> bool:
        """Stop the run: its record says ``interrupted`` and ``deliberate resume`` finishes it.
        False when it had already ended."""
        if self.task is None or self.task.done():
            return False
        self.task.cancel()
        return True

    async def wait(self, timeout: float | None = None) -> None:
        """Until the run ends; on ``timeout`` the run is cancelled (and this raises TimeoutError)."""
        try:
            await asyncio.wait_for(asyncio.shield(self.ended.wait()), timeout)
        except TimeoutError:
            self.cancel()
            await self.ended.wait()
            raise

    def ended_callback(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` once the run has ended (now, if it has)."""
        if self.done:
            fn()
        else:
            self._on_end.append(fn)

    def record_path(self, runs_dir: Path) -> Path | None:
        if self.outcome is not None:
            return self.outcome.record_path
        if self.run_id is None:
            return None
        from ..records.store import record_path

        path = record_path(runs_dir, self.run_id)
        return path if path.exists() else None

    def steps_done(self) -> list[str]:
        return [e.step for e in self.events if isinstance(e, StepFinished)]

    def finished_event(self) -> RunFinished | None:
        last = self.events[-1] if self.events else None
        return last if isinstance(last, RunFinished) else None

    async def _drive(self, call: Awaitable[Any]) -> None:
        try:
            result = await call
            outcome = getattr(result, "run", result)  # a ReplayOutcome holds its RunOutcome
            self.outcome = outcome if isinstance(outcome, RunOutcome) else None
            if self.outcome is not None:
                self.status = self.outcome.status
        except asyncio.CancelledError:
            self.status = "interrupted"
        except DeliberateError as exc:
            self.error = exc
            self.status = "refused" if self.run_id is None else "failed"
        except Exception as exc:  # a bug must not leave followers waiting
            self.error = exc
            self.status = "failed"
        finally:
            self._close()

    def _close(self) -> None:
        """Mark the run ended, once (also for a task cancelled before it ever ran)."""
        if self.ended.is_set():
            return
        if self.status in ("starting", "running"):
            self.status = "interrupted"
        self.started.set()
        self.ended.set()
        self._notify()
        for fn in self._on_end:
            fn()


class LiveRuns:
    """The process's live runs by id, each with its services; ``keep`` ended runs are kept for
    followers that come late (older ones are read from runs/)."""

    def __init__(self, settings: Settings | None = None, registry: Registry | None = None,
                 gateway: Gateway | None = None, keep: int = 256) -> None:
        self.settings = settings or get_settings()
        self.registry = registry or Registry.load(self.settings)
        self.gateway = gateway or Gateway(self.registry, settings=self.settings)
        self.keep = keep
        self.runs: OrderedDict[str, LiveRun] = OrderedDict()
        self._unnamed: set[LiveRun] = set()

    @property
    def runs_dir(self) -> Path:
        return self.settings.runs_dir

    def services(self, subscribers: list[Subscriber], max_cost: float | None = None) -> Services:
        """A run's services: the shared gateway, or, with a cost limit, one of its own that shares
        its backends, breakers and rate limits (the budget is the gateway's, and runs side by side
        must not share one)."""
        gateway = self.gateway if max_cost is None else self.gateway.with_budget(Budget(max_cost))
        return Services(settings=self.settings, registry=self.registry, gateway=gateway,
                        subscribers=subscribers)

    def start(self, call: ServiceCall, *, tokens: bool = False, max_cost: float | None = None,
              subscribers: list[Subscriber] | None = None) -> LiveRun:
        """Start ``call`` as a task; the run is known by id once it started (see :meth:`begin`)."""
        live = LiveRun(tokens)
        env = self.services([live, *(subscribers or [])], max_cost)
        self._unnamed.add(live)
        live.task = asyncio.create_task(live._drive(call(env)))
        live.task.add_done_callback(lambda _t: self._ended(live))
        return live

    def _ended(self, live: LiveRun) -> None:
        self._unnamed.discard(live)
        live._close()  # a task cancelled before it ran never reached its own finally

    async def begin(self, call: ServiceCall, *, tokens: bool = False, max_cost: float | None = None,
                    subscribers: list[Subscriber] | None = None) -> LiveRun:
        """Start a run and wait until it has an id; a request refused before the run started
        (bad input, an unknown flow or model) raises its error here."""
        live = self.start(call, tokens=tokens, max_cost=max_cost, subscribers=subscribers)
        try:
            await live.started.wait()
        except asyncio.CancelledError:
            live.cancel()
            raise
        if live.run_id is None:
            await live.ended.wait()
            raise live.error if live.error is not None else RuntimeError("the run ended before it started")
        self.runs[live.run_id] = live
        self._trim()
        return live

    def _trim(self) -> None:
        ended = [k for k, r in self.runs.items() if r.done]
        for key in ended[: max(0, len(self.runs) - self.keep)]:
            del self.runs[key]

    def get(self, run_id: str) -> LiveRun | None:
        return self.runs.get(run_id)

    def in_flight(self) -> int:
        return sum(1 for r in self.runs.values() if not r.done) + sum(1 for r in self._unnamed if r.run_id is None)

    async def drain(self, timeout_s: float) -> list[str]:
        """Wait up to ``timeout_s`` for the runs in flight; cancel the rest (their records stay
        resumable). Returns the ids cancelled."""
        going = [r for r in [*self.runs.values(), *self._unnamed] if not r.done]
        if going:
            await asyncio.wait([asyncio.ensure_future(r.ended.wait()) for r in going], timeout=timeout_s)
        cancelled = [r.run_id or "" for r in going if r.cancel()]
        for r in going:
            with contextlib.suppress(Exception):
                await r.ended.wait()
        return cancelled

    async def aclose(self) -> None:
        await self.gateway.aclose()


__all__ = ["LiveRun", "LiveRuns", "ServiceCall"]
