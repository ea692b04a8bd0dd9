"""Runs a validated flow: ready steps start at once, fan-out branches run concurrently, rounds
repeat, judges score and re-run their target, votes pick. Every fact goes out as an event."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ulid import ULID

from ..errors import BudgetExceeded, DeliberateError, InputError, StepError, ValidationError
from ..flows.functions import function_kinds
from ..flows.graph import for_each_expression
from ..flows.loader import LoadedFlow
from ..flows.spec import Step
from ..flows.templates import TemplateProblem, evaluate, render
from ..gateway.contracts import GatewayEvent, GenerationRequest, GenerationResult, Message
from ..gateway.gateway import Gateway
from .builtins import FunctionContext
from .events import (
    CallFailed,
    CallFinished,
    CallInfo,
    Event,
    GatewayNotice,
    JudgeDecided,
    JudgeScored,
    RoundFinished,
    RunFinished,
    RunStarted,
    StepFailed,
    StepFinished,
    StepSkipped,
    StepStarted,
    Subscriber,
    Token,
    Totals,
    VoteDecided,
    is_critical,
    wants_tokens,
)
from .values import BranchText, Verdict, as_text, from_json, to_json

LOOP = "<rounds>"
log = logging.getLogger("deliberate.engine")

# The current round and the names it carries: per task (tasks copy the context when created), so
# a step running beside a rounds block never sees the loop's round or carried values.
_ROUND: contextvars.ContextVar[tuple[int, dict[str, Any]]] = contextvars.ContextVar(
    "deliberate_round", default=(1, {}))


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
        return {"models": dict(self.models), "strategy": self.strategy, "rounds": self.rounds,
                "seed": self.seed, "max_cost": self.max_cost, "temperature": self.temperature}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunOptions:
        return cls(**{k: d.get(k) for k in ("strategy", "rounds", "seed", "max_cost", "temperature")},
                   models=dict(d.get("models") or {}))


@dataclass
class RunResult:
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


class JudgeBelowThreshold(ValidationError):
    """A judge with ``on_fail: fail`` whose attempts all scored below its threshold."""


class _RecordFailed(Exception):
    """Raised where the run can stop cleanly (before a step, before a model call) once a critical
    subscriber (the run record) has failed. Never caught by a step, optional or not."""


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
        run = _Run(self, loaded, inputs, options or RunOptions(), run_id or str(ULID()),
                   preset or {}, parent_run_id)
        return await run.execute()


class _Run:
    def __init__(self, engine: Engine, loaded: LoadedFlow, inputs: dict[str, Any], options: RunOptions,
                 run_id: str, preset: dict[str, Any], parent: str | None) -> None:
        self.e, self.loaded, self.flow = engine, loaded, loaded.flow
        self.inputs, self.options, self.run_id, self.parent = inputs, options, run_id, parent
        self.preset = preset
        self.values: dict[str, Any] = {}
        self.last_messages: dict[str, list[Message]] = {}
        self.skipped: set[str] = set()
        self.counts = {"steps": 0, "calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0}
        self.totals = Totals()  # filled from the counts when the run finishes
        self.loop = set(self.flow.rounds.steps) if self.flow.rounds else set()
        # Stream only when a subscriber shows tokens; otherwise each call is one plain request.
        self.stream = any(wants_tokens(s) for s in engine.subscribers)
        self.subscribers = tuple(engine.subscribers)
        self.failing: set[int] = set()  # ids of subscribers that raised (each is logged once)
        self.fatal: Exception | None = None  # the first error of a critical subscriber (the record)
        self.verdicts: dict[str, bool] = {}  # judge -> passed (its latest run)

    @property
    def round(self) -> int:
        return _ROUND.get()[0]

    # -- events -------------------------------------------------------------------------------
    def emit(self, event: Event) -> None:
        for sub in self.subscribers:
            try:  # free unless it raises: this loop runs for every event, tokens included
                sub(event)
            except Exception as exc:
                self.subscriber_failed(sub, event, exc)

    def subscriber_failed(self, sub: Subscriber, event: Event, exc: Exception) -> None:
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

    def record_failure(self) -> str:
        exc = self.fatal
        return f"the run record failed: {type(exc).__name__}: {exc}"

    def context(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        rnd, carry = _ROUND.get()
        ctx: dict[str, Any] = dict(self.inputs)
        ctx.update(self.values)
        ctx.update(carry)
        ctx["round"] = rnd
        if extra:
            ctx.update(extra)
        return ctx

    # -- the run ------------------------------------------------------------------------------
    async def execute(self) -> RunResult:
        t0 = time.perf_counter()
        self.emit(RunStarted(run_id=self.run_id, flow_name=self.flow.name, flow_source=self.loaded.source,
                             flow_hash=self.loaded.hash, flow=self.loaded.data, inputs=self.inputs,
                             options=self.options.to_dict(), order=self.loaded.order,
                             output_step=self.loaded.output, parent_run_id=self.parent,
                             reused_steps=sorted(self.preset)))
        unsubscribe = self.e.gateway.subscribe(lambda ev: self.emit(GatewayNotice(event=ev)))
        status, error, etype, code = "succeeded", None, None, 0
        try:
            await self.schedule()
        except asyncio.CancelledError:
            status, error, etype, code = "interrupted", "interrupted by the user", "Interrupted", 130
            self.finish(status, error, etype, t0)
            raise
        except _RecordFailed:
            pass  # said below
        except StepError as exc:
            status, error, etype = "failed", exc.line(), type(exc.cause).__name__
            code = 1
        except Exception as exc:  # an engine bug must still close the record and release its lock
            status, error, etype, code = "failed", f"internal error: {type(exc).__name__}: {exc}", \
                "InternalError", 1
        finally:
            unsubscribe()
        if self.fatal is not None:  # the record failed: that is the run's error, whatever else did
            status, error, etype, code = "failed", self.record_failure(), "RecordFailed", 1
        out = self.finish(status, error, etype, t0)
        if self.fatal is not None and etype != "RecordFailed":
            # the record failed on RunFinished itself (its final write): the run did not succeed,
            # though the view was told it did; the answer, if any, stays in the result
            status, error, etype, code = "failed", self.record_failure(), "RecordFailed", 1
        below = [n for n in self.loaded.order if self.verdicts.get(n) is False]
        return RunResult(self.run_id, status, out, self.loaded.output, error, etype, self.totals,
                         self.values, code, below)

    def finish(self, status: str, error: str | None, etype: str | None, t0: float) -> str | None:
        self.totals = Totals(**self.counts, wall_s=time.perf_counter() - t0)
        out = None
        if status == "succeeded":
            out = as_text(self.values.get(self.loaded.output, ""))
        self.emit(RunFinished(status=status, output=out, output_step=self.loaded.output, error=error,  # type: ignore[arg-type]
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
                from ..flows.templates import expression_source, references

                nodes[LOOP] |= (references(expression_source(until)) & set(self.flow.steps)) - self.loop
        await self.run_graph(nodes, self.run_node)

    async def run_graph(self, nodes: dict[str, set[str]], runner: Any) -> None:
        done: set[str] = set()
        running: dict[asyncio.Task[None], str] = {}
        pending = dict(nodes)
        try:
            while pending or running:
                ready = [n for n, d in pending.items() if d <= done]
                if len(ready) == 1 and not running and ready[0] != LOOP:
                    # the only thing to do (a chain): run it here, without a task of its own; a
                    # rounds block always gets its own task, since it sets the round in its context
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
        spec = self.flow.rounds
        assert spec is not None
        max_rounds = self.options.rounds or spec.max
        sub = {s: {d for d in self.loaded.deps[s] if d in self.loop} for s in self.loaded.order if s in self.loop}
        if all(s in self.preset for s in sub):
            for s in sub:
                await self.run_step(s)
            return
        for r in range(1, max_rounds + 1):
            carry = {reader: self.values[writer] for reader, writer in spec.carry.items()} if r > 1 else {}
            _ROUND.set((r, carry))  # this task's context; the loop steps' tasks copy it
            stop = _EarlyStop()

            async def step_in_round(s: str, r: int = r, stop: _EarlyStop = stop) -> None:
                if stop.value is not None:
                    return
                await self.run_step(s, force=r > 1)
                if r > 1 and spec.until and stop.value is None:
                    try:
                        if evaluate(spec.until, self.context()):
                            stop.value = True
                    except TemplateProblem:
                        pass  # names not ready yet this round

            await self.run_graph(sub, step_in_round)
            until_value = None
            if spec.until:
                try:
                    until_value = bool(evaluate(spec.until, self.context()))
                except TemplateProblem as exc:
                    raise StepError("rounds", InputError(f"until: {exc.message}")) from None
            reason = "until" if until_value else "max" if r == max_rounds else None
            self.emit(RoundFinished(round=r, stop_reason=reason, until_value=until_value,  # type: ignore[arg-type]
                                    outputs={s: to_json(self.values[s]) for s in sub if s in self.values}))
            if reason:
                break
        _ROUND.set((1, {}))

    # -- one step -----------------------------------------------------------------------------
    async def run_step(self, name: str, force: bool = False) -> None:
        if self.fatal is not None:
            raise _RecordFailed
        step = self.flow.steps[name]
        if name in self.preset and not force:
            value = self.values[name] = from_json(self.preset[name])
            if isinstance(value, Verdict) and step.target is not None and step.threshold is not None:
                # a reused judge says how it ended, like one that ran (views have no parent record)
                self.verdicts[name] = value.passed
                self.emit(JudgeDecided(step=name, target=step.target, passed=value.passed, score=value.score,
                                       threshold=step.threshold, scale=value.scale, attempts=value.attempts,
                                       on_fail=step.on_fail))
            self.emit(StepFinished(step=name, kind=step.kind, round=self.round, value=self.preset[name],
                                   reused=True))
            return
        started = time.time()
        try:
            if step.when:
                decided = evaluate(step.when, self.context())
                if not decided:
                    self.values[name] = ""
                    self.skipped.add(name)
                    self.emit(StepSkipped(step=name, round=self.round, when=step.when, decided_by=_jsonable(decided)))
                    return
            self.emit(StepStarted(step=name, kind=step.kind, round=self.round))
            if step.kind == "judge" and step.target in self.skipped:
                self.values[name] = ""
                self.skipped.add(name)
                self.emit(StepSkipped(step=name, round=self.round, when=f"target {step.target} was skipped",
                                      decided_by=False))
                return
            if step.kind == "generate":
                value = await self.generate_step(name, step)
            elif step.kind == "judge":
                value = await self.judge_step(name, step)
            elif step.kind == "vote":
                value = self.vote_step(name, step)
            else:
                value = await self.function_step(name, step)
        except (asyncio.CancelledError, _RecordFailed):
            raise
        except (DeliberateError, TemplateProblem, Exception) as exc:
            # the flow validated, so a template failing now failed on a value: a flow failure (1)
            err = exc if isinstance(exc, DeliberateError) else (
                ValidationError(exc.message) if isinstance(exc, TemplateProblem) else exc)
            text = err.line() if isinstance(err, DeliberateError) else f"{type(err).__name__}: {err}"
            self.emit(StepFailed(step=name, round=self.round, error=text, error_type=type(err).__name__,
                                 optional=step.optional and not isinstance(err, BudgetExceeded)))
            if step.optional and not isinstance(err, BudgetExceeded):
                self.values[name] = ""
                return
            raise StepError(name, err) from None
        self.values[name] = value
        self.counts["steps"] += 1
        self.emit(StepFinished(step=name, kind=step.kind, round=self.round, value=to_json(value),
                               started_at=started))

    # -- generate -----------------------------------------------------------------------------
    def model_for(self, name: str, step: Step, extra: dict[str, Any] | None = None) -> str | None:
        o = self.options.models
        if name in o:
            return o[name]
        if step.model:
            key = render(step.model, self.context(extra)).strip() if "{{" in step.model else step.model
            if "*" in o and not (step.for_each is not None and "{{" in step.model):
                return o["*"]
            return key
        return o.get("*") or self.flow.defaults.model

    def request(self, name: str, step: Step, messages: list[Message], model: str | None,
                branch: int | None = None) -> GenerationRequest:
        d = self.flow.defaults
        seed = self.options.seed if self.options.seed is not None else (step.seed if step.seed is not None else d.seed)
        if seed is not None and branch is not None:
            seed += branch  # same prompt, different branch: different samples (self-consistency)
        temperature = self.options.temperature if self.options.temperature is not None else (
            step.temperature if step.temperature is not None else d.temperature)
        return GenerationRequest(
            messages=messages, model_key=model,
            strategy=self.options.strategy or step.strategy or d.strategy,
            max_tokens=step.max_tokens or d.max_tokens, temperature=temperature, seed=seed,
            context={"flow": self.flow.name, "step": name, "run_id": self.run_id},
        )

    def messages(self, step: Step, extra: dict[str, Any] | None = None) -> list[Message]:
        ctx = self.context(extra)
        msgs = []
        if step.system:
            msgs.append(Message(role="system", content=render(step.system, ctx)))
        msgs.append(Message(role="user", content=render(step.prompt or "", ctx)))
        return msgs

    async def call(self, name: str, request: GenerationRequest, *, branch: int | None = None,
                   item: Any = None, attempt: int = 1) -> GenerationResult:
        started = time.time()
        rnd = self.round

        def on_token(text: str) -> None:
            self.emit(Token(step=name, text=text, round=rnd, branch=branch))

        def on_event(ev: GatewayEvent) -> None:
            if ev.kind in ("retry", "fallback"):
                self.emit(Token(step=name, text="", round=rnd, branch=branch, reset=True))
            self.emit(GatewayNotice(step=name, event=ev))

        if self.fatal is not None:
            raise _RecordFailed
        try:
            result = await self.e.gateway.generate(request, on_token=on_token if self.stream else None,
                                                   on_event=on_event)
        except BudgetExceeded as exc:
            partial = getattr(exc, "result", None)
            if partial is not None:
                self.account(name, request, partial, started, branch, item, attempt)
            raise
        except DeliberateError as exc:
            self.emit(CallFailed(step=name, round=rnd, branch=branch, error=exc.line(),
                                 error_type=type(exc).__name__))
            raise
        self.account(name, request, result, started, branch, item, attempt)
        return result

    def account(self, name: str, request: GenerationRequest, result: GenerationResult, started: float,
                branch: int | None, item: Any, attempt: int) -> None:
        usage, timings, counts = result.usage, result.timings, self.counts
        counts["calls"] += 0 if result.cache_hit else 1
        counts["prompt_tokens"] += usage.prompt_tokens
        counts["completion_tokens"] += usage.completion_tokens
        counts["cost_usd"] += usage.cost_usd
        rnd, item = self.round, _jsonable(item)
        info = CallInfo(
            model_key=result.model_resolved, model_requested=request.model_key, model_name=result.model_name,
            source=result.source, strategy=result.strategy, sampling=result.sampling,
            max_tokens=result.max_tokens, messages=request.messages, text=result.text,
            prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
            cost_usd=usage.cost_usd, load_time=timings.load_time, inference_time=timings.inference_time,
            total_time=timings.total_time, cache_hit=result.cache_hit, finish_reason=result.finish_reason,
            attempts=result.attempts, started_at=started, finished_at=time.time(),
            round=rnd, branch=branch, item=item, attempt=attempt,
        )
        self.emit(CallFinished(step=name, round=rnd, branch=branch, item=item, attempt=attempt, call=info))

    async def generate_step(self, name: str, step: Step) -> Any:
        if step.for_each is None:
            msgs = self.messages(step)
            self.last_messages[name] = msgs
            result = await self.call(name, self.request(name, step, msgs, self.model_for(name, step)))
            return result.text
        items = self.for_each_items(name, step)

        async def branch(i: int, item: Any) -> BranchText:
            extra = {"item": item, "index": i}
            model = self.model_for(name, step, extra)
            self.emit(StepStarted(step=name, kind=step.kind, round=self.round, branch=i, item=_jsonable(item),
                                  model_key=model))
            req = self.request(name, step, self.messages(step, extra), model, branch=i)
            result = await self.call(name, req, branch=i, item=item)
            return BranchText(result.text, item, i, result.model_resolved)

        tasks = [asyncio.create_task(branch(i, it)) for i, it in enumerate(items)]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            # one branch failed (or we were cancelled): stop the others before they spend more
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    def for_each_items(self, name: str, step: Step) -> list[Any]:
        if isinstance(step.for_each, list):
            return list(step.for_each)
        value = evaluate(for_each_expression(str(step.for_each)), self.context())
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ValidationError(f"for_each of step {name!r} is a {type(value).__name__}, not a list")
        if not value:
            raise ValidationError(f"for_each of step {name!r} is empty")
        return list(value)

    # -- judge --------------------------------------------------------------------------------
    async def judge_step(self, name: str, step: Step) -> Verdict:
        assert step.target is not None and step.threshold is not None
        target = self.flow.steps[step.target]
        # the messages the target was last sent (after rounds they differ from a fresh render)
        target_msgs = self.last_messages.get(step.target) or self.messages(target)
        draft = str(self.values[step.target])
        best: tuple[float, str] = (-1.0, draft)
        score, feedback = 0.0, ""
        attempt = 0
        for attempt in range(1, step.retries + 2):
            rubric = render(step.rubric or "", self.context())
            msgs = [
                Message(role="system", content=render(step.system, self.context()) if step.system else
                        "You are a strict judge. Score the answer against the rubric."),
                Message(role="user", content=(
                    f"The request:\n{target_msgs[-1].content}\n\nThe answer:\n{draft}\n\n"
                    f"Rubric: {rubric}\n\nReply with 'SCORE: N' (N from 1 to {step.scale}) on the "
                    "first line, then one short paragraph of feedback.")),
            ]
            result = await self.call(name, self.request(name, step, msgs, self.model_for(name, step)),
                                     attempt=attempt)
            score, feedback = parse_score(result.text, step.scale)
            passed = score >= step.threshold
            self.emit(JudgeScored(step=name, target=step.target, attempt=attempt, score=score,
                                  threshold=step.threshold, passed=passed, feedback=feedback))
            if score > best[0]:
                best = (score, draft)
            if passed or attempt > step.retries:
                break
            await asyncio.sleep(min(30.0, self.e.judge_backoff_s * 2 ** (attempt - 1)))
            revise = target_msgs + [
                Message(role="assistant", content=draft),
                Message(role="user", content=(
                    f"A reviewer scored this answer {score:g}/{step.scale}. Feedback: {feedback}\n"
                    "Write the improved answer in full.")),
            ]
            self.emit(StepStarted(step=step.target, kind="generate", round=self.round, attempt=attempt + 1))
            req = self.request(step.target, target, revise, self.model_for(step.target, target))
            draft = (await self.call(step.target, req, attempt=attempt + 1)).text
            self.values[step.target] = draft
            self.emit(StepFinished(step=step.target, kind="generate", round=self.round, value=to_json(draft)))
        if best[0] > score:  # keep the best draft so far, not the last
            score = best[0]
        self.values[step.target] = best[1] if best[0] >= 0 else draft
        self.emit(StepFinished(step=step.target, kind="generate", round=self.round,
                               value=to_json(self.values[step.target])))
        passed = score >= step.threshold
        self.verdicts[name] = passed
        self.emit(JudgeDecided(step=name, target=step.target, passed=passed, score=score,
                               threshold=step.threshold, scale=step.scale, attempts=attempt,
                               on_fail=step.on_fail))
        if not passed and step.on_fail == "fail":
            raise JudgeBelowThreshold(f"judge score {score:g} below threshold {step.threshold:g} after "
                                      f"{attempt} attempt{'s' if attempt != 1 else ''}")
        return Verdict(score, passed, feedback, attempt, step.scale)

    # -- vote ---------------------------------------------------------------------------------
    def vote_step(self, name: str, step: Step) -> str:
        assert step.from_ is not None
        answers = [a for a in self.values[step.from_] if str(a).strip()]
        if not answers:
            raise ValidationError(f"vote {name!r}: step {step.from_!r} gave no answers")
        groups: dict[str, list[BranchText]] = {}
        for a in answers:
            groups.setdefault(normalise(str(a)), []).append(a)
        counts = Counter({k: len(v) for k, v in groups.items()})
        top = max(counts.values())
        tied = [k for k in groups if counts[k] == top]  # in branch order of first appearance
        rule = step.tie
        if rule == "first":
            winner = tied[0]
        elif rule == "last":
            winner = tied[-1]
        elif rule == "shortest":
            winner = min(tied, key=len)
        else:
            winner = max(tied, key=len)
        self.emit(VoteDecided(step=name, counts=dict(counts), winner=winner, tie=len(tied) > 1,
                              tie_rule=rule, tied=tied if len(tied) > 1 else []))
        return str(groups[winner][0])

    # -- function steps -----------------------------------------------------------------------
    async def function_step(self, name: str, step: Step) -> Any:
        fn = function_kinds()[step.kind]
        args = {k: (render(v, self.context()) if isinstance(v, str) and ("{{" in v or "{%" in v) else v)
                for k, v in step.with_.items()}
        params = fn.params.model_validate(args)
        ctx = FunctionContext(
            flow_name=self.flow.name, inputs=dict(self.inputs), outputs=dict(self.values),
            history=self.e.history or (lambda _f, _n: []),
            stats=lambda: dict(self.counts),
        )
        return await fn.run(ctx, params)


class _EarlyStop:
    value: bool | None = None


_SCORE = re.compile(r"score\s*[:=]?\s*\**\s*(\d+(?:\.\d+)?)", re.I)
_NUM = re.compile(r"(\d+(?:\.\d+)?)\s*(?:/\s*(\d+))?")


def parse_score(text: str, scale: int = 10) -> tuple[float, str]:
    """A judge's score and feedback. Small models ignore formats: an answer with no number scores
    0, so it never passes by accident."""
    m = _SCORE.search(text)
    value: float | None = float(m.group(1)) if m else None
    if value is None:
        m2 = _NUM.search(text)
        if m2:
            value = float(m2.group(1))
            if m2.group(2) and float(m2.group(2)) not in (0, scale):
                value = value * scale / float(m2.group(2))
    if value is None:
        return 0.0, text.strip()
    value = max(0.0, min(float(scale), value))
    feedback = _SCORE.sub("", text, count=1).strip(" \n:-*") if m else text.strip()
    return value, feedback


_PUNCT = re.compile(r"[\s\.\,\!\?\;\:\"\'\`\*\(\)\[\]]+")


def normalise(answer: str) -> str:
    """Answers that differ only in case, spacing, quotes or punctuation count as one."""
    a = answer.strip().lower()
    a = re.sub(r"^(the )?(final )?answer( is)?\s*[:\-]?\s*", "", a)
    return _PUNCT.sub(" ", a).strip()


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


__all__ = ["Engine", "JudgeBelowThreshold", "RunOptions", "RunResult", "normalise", "parse_score"]
