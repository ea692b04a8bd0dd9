"""The scheduler: runs a validated flow. Ready steps start at once, rounds repeat, ``when``
skips, a failure stops what runs beside it, and every fact goes out as an event. It knows no
step kind: each step runs through its kind's handler (``kinds.kind_for``), given the run's
:class:`~.context.RunContext`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from ulid import ULID

from ..errors import BudgetExceeded, DeliberateError, InputError, StepError, ValidationError
from ..flows.loader import LoadedFlow
from ..flows.templates import TemplateProblem, expression_source, references
from ..gateway.gateway import Gateway
from .context import ROUND, RecordFailed, RunContext, RunOptions, jsonable
from .events import (
    GatewayNotice,
    RoundFinished,
    RunFinished,
    RunStarted,
    StepFailed,
    StepFinished,
    StepSkipped,
    StepStarted,
    Subscriber,
    Totals,
)
from .kinds import kind_for
from .steps import SkipStep, StepKind
from .steps.judge import JudgeBelowThreshold, parse_score
from .steps.vote import normalise
from .values import as_text, from_json, to_json

LOOP = "<rounds>"


@dataclass
class RunResult:
    """How a run ended: its status and answer, the totals, every step's value."""

    run_id: str
    status: str
    output: str | None
    output_step: str
    error: str | None
    error_type: str | None
    totals: Totals
    values: dict[str, Any]
    exit_code: int = 0
    below_threshold: list[str] = field(default_factory=list)  # judges that kept a draft below threshold


class Engine:
    """``await Engine(gateway).run(loaded_flow, inputs)``."""

    def __init__(self, gateway: Gateway, subscribers: list[Subscriber] | None = None, *,
                 history: Any = None, judge_backoff_s: float = 0.5) -> None:
        self.gateway = gateway
        self.subscribers = list(subscribers or [])
        self.history = history
        self.judge_backoff_s = judge_backoff_s

    async def run(self, loaded: LoadedFlow, inputs: dict[str, Any], options: RunOptions | None = None, *,
                  run_id: str | None = None, preset: dict[str, Any] | None = None,
                  parent_run_id: str | None = None) -> RunResult:
        """Run a flow. ``preset`` maps step -> recorded JSON value: those steps are reused, not
        called (resume and replay --from)."""
        ctx = RunContext(self, loaded, inputs, (options or RunOptions()).checked(), run_id or str(ULID()))
        return await _Run(ctx, preset or {}, parent_run_id).execute()


class _Run:
    def __init__(self, ctx: RunContext, preset: dict[str, Any], parent: str | None) -> None:
        self.ctx, self.loaded, self.flow = ctx, ctx.loaded, ctx.flow
        self.preset, self.parent = preset, parent
        self.kinds: dict[str, StepKind[Any]] = {n: kind_for(s.kind) for n, s in self.flow.steps.items()}
        self.loop = set(self.flow.rounds.steps) if self.flow.rounds else set()
        self.totals = Totals()  # filled from the counts when the run finishes

    def record_failure(self) -> str:
        exc = self.ctx.fatal
        return f"the run record failed: {type(exc).__name__}: {exc}"

    # -- the run ------------------------------------------------------------------------------
    async def execute(self) -> RunResult:
        ctx, loaded = self.ctx, self.loaded
        t0 = time.perf_counter()
        ctx.emit(RunStarted(run_id=ctx.run_id, flow_name=self.flow.name, flow_source=loaded.source,
                            flow_hash=loaded.hash, flow=loaded.data, inputs=ctx.inputs,
                            options=ctx.options.to_dict(), order=loaded.order, output_step=loaded.output,
                            parent_run_id=self.parent, reused_steps=sorted(self.preset)))
        unsubscribe = ctx.gateway.subscribe(lambda ev: ctx.emit(GatewayNotice(event=ev)))
        status, error, etype, code = "succeeded", None, None, 0
        try:
            await self.schedule()
        except asyncio.CancelledError:
            status, error, etype, code = "interrupted", "interrupted by the user", "Interrupted", 130
            self.finish(status, error, etype, t0)
            raise
        except RecordFailed:
            pass  # said below
        except StepError as exc:
            status, error, etype = "failed", exc.line(), type(exc.cause).__name__
            code = 1
        except Exception as exc:  # an engine bug must still close the record and release its lock
            status, error, etype, code = "failed", f"internal error: {type(exc).__name__}: {exc}", \
                "InternalError", 1
        finally:
            unsubscribe()
        if ctx.fatal is not None:  # the record failed: that is the run's error, whatever else did
            status, error, etype, code = "failed", self.record_failure(), "RecordFailed", 1
        out = self.finish(status, error, etype, t0)
        if ctx.fatal is not None and etype != "RecordFailed":
            # the record failed on RunFinished itself (its final write): the run did not succeed,
            # though the view was told it did; the answer, if any, stays in the result
            status, error, etype, code = "failed", self.record_failure(), "RecordFailed", 1
        below = [n for n in loaded.order if ctx.verdicts.get(n) is False]
        return RunResult(ctx.run_id, status, out, loaded.output, error, etype, self.totals,
                         ctx.values, code, below)

    def finish(self, status: str, error: str | None, etype: str | None, t0: float) -> str | None:
        c = self.ctx.counts
        self.totals = Totals(steps=int(c["steps"]), calls=int(c["calls"]), prompt_tokens=int(c["prompt_tokens"]),
                             completion_tokens=int(c["completion_tokens"]), cost_usd=c["cost_usd"],
                             wall_s=time.perf_counter() - t0)
        out = None
        if status == "succeeded":
            out = as_text(self.ctx.values.get(self.loaded.output, ""))
        self.ctx.emit(RunFinished(status=status, output=out, output_step=self.loaded.output, error=error,  # type: ignore[arg-type]
                                  error_type=etype, totals=self.totals))
        return out

    async def schedule(self) -> None:
        deps = self.loaded.deps
        nodes: dict[str, set[str]] = {}
        for name in self.loaded.order:
            if name in self.loop:
                continue
            nodes[name] = {LOOP if d in self.loop else d for d in deps[name]}
        if self.loop:
            nodes[LOOP] = {d for s in self.loop for d in deps[s] if d not in self.loop}
            until = self.flow.rounds.until if self.flow.rounds else None
            if until:  # steps named in `until` (checked: upstream of the loop) finish first
                nodes[LOOP] |= (references(expression_source(until)) & set(self.flow.steps)) - self.loop
        await self.run_graph(nodes, self.run_node)

    async def run_graph(self, nodes: dict[str, set[str]], runner: Callable[[str], Coroutine[Any, Any, None]]) -> None:
        """Run every node once its dependencies are done; the first failure cancels the rest."""
        done: set[str] = set()
        running: dict[asyncio.Task[None], str] = {}
        pending = dict(nodes)
        try:
            while pending or running:
                ready = [n for n, d in pending.items() if d <= done]
                if len(ready) == 1 and not running and ready[0] != LOOP:
                    # the only thing to do (a chain): run it here, without a task of its own (on
                    # bench/overhead.py's chain, 42 us a step instead of 59); a rounds block always
                    # gets its own task, since it sets the round in its context
                    del pending[ready[0]]
                    await runner(ready[0])
                    done.add(ready[0])
                    continue
                for name in ready:
                    del pending[name]
                    running[asyncio.create_task(runner(name), name=name)] = name
                if not running:
                    raise RuntimeError(f"unschedulable steps: {sorted(pending)}")
                finished, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in finished:
                    name = running.pop(task)
                    task.result()  # raises StepError
                    done.add(name)
        finally:
            for task in running:
                task.cancel()
            if running:
                await asyncio.gather(*running, return_exceptions=True)

    async def run_node(self, name: str) -> None:
        if name == LOOP:
            await self.run_rounds()
        else:
            await self.run_step(name)

    # -- rounds -------------------------------------------------------------------------------
    async def run_rounds(self) -> None:
        spec, ctx = self.flow.rounds, self.ctx
        assert spec is not None
        max_rounds = ctx.options.rounds or spec.max
        sub = {s: {d for d in self.loaded.deps[s] if d in self.loop} for s in self.loaded.order if s in self.loop}
        if all(s in self.preset for s in sub):
            for s in sub:
                await self.run_step(s)
            return
        for r in range(1, max_rounds + 1):
            carry = {reader: ctx.values[writer] for reader, writer in spec.carry.items()} if r > 1 else {}
            ROUND.set((r, carry))  # this task's context; the loop steps' tasks copy it
            stop = _EarlyStop()

            async def step_in_round(s: str, r: int = r, stop: _EarlyStop = stop) -> None:
                if stop.value is not None:
                    return
                await self.run_step(s, force=r > 1)
                if r > 1 and spec.until and stop.value is None:
                    try:
                        if ctx.evaluate(spec.until):
                            stop.value = True
                    except TemplateProblem:
                        pass  # names not ready yet this round

            await self.run_graph(sub, step_in_round)
            until_value = None
            if spec.until:
                try:
                    until_value = bool(ctx.evaluate(spec.until))
                except TemplateProblem as exc:
                    raise StepError("rounds", InputError(f"until: {exc.message}")) from None
            reason = "until" if until_value else "max" if r == max_rounds else None
            ctx.emit(RoundFinished(round=r, stop_reason=reason, until_value=until_value,  # type: ignore[arg-type]
                                   outputs={s: to_json(ctx.values[s]) for s in sub if s in ctx.values}))
            if reason:
                break
        ROUND.set((1, {}))

    # -- one step -----------------------------------------------------------------------------
    async def run_step(self, name: str, force: bool = False) -> None:
        ctx = self.ctx
        if ctx.fatal is not None:
            raise RecordFailed
        step, kind = self.flow.steps[name], self.kinds[name]
        if name in self.preset and not force:
            value = ctx.values[name] = from_json(self.preset[name])
            if kind.reused is not None:
                kind.reused(ctx, name, step, value)
            ctx.emit(StepFinished(step=name, kind=step.kind, round=ctx.round, value=self.preset[name],
                                  reused=True))
            return
        started = time.time()
        try:
            if step.when:
                decided = ctx.evaluate(step.when)
                if not decided:
                    raise SkipStep(step.when, jsonable(decided))
            ctx.emit(StepStarted(step=name, kind=step.kind, round=ctx.round))
            value = await kind.run(ctx, name, step)
        except SkipStep as skip:
            ctx.values[name] = ""
            ctx.skipped.add(name)
            ctx.emit(StepSkipped(step=name, round=ctx.round, when=skip.reason, decided_by=skip.decided_by))
            return
        except (asyncio.CancelledError, RecordFailed):
            raise
        except (DeliberateError, TemplateProblem, Exception) as exc:
            # the flow validated, so a template failing now failed on a value: a flow failure (1)
            err = exc if isinstance(exc, DeliberateError) else (
                ValidationError(exc.message) if isinstance(exc, TemplateProblem) else exc)
            text = err.line() if isinstance(err, DeliberateError) else f"{type(err).__name__}: {err}"
            optional = step.optional and not isinstance(err, BudgetExceeded)
            ctx.emit(StepFailed(step=name, round=ctx.round, error=text, error_type=type(err).__name__,
                                optional=optional))
            if optional:
                ctx.values[name] = ""
                return
            raise StepError(name, err) from None
        ctx.values[name] = value
        ctx.counts["steps"] += 1
        ctx.emit(StepFinished(step=name, kind=step.kind, round=ctx.round, value=to_json(value),
                              started_at=started))


class _EarlyStop:
    value: bool | None = None


__all__ = ["Engine", "JudgeBelowThreshold", "RunOptions", "RunResult", "normalise", "parse_score"]
