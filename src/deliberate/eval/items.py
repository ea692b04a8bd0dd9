"""One arm on one item: run it through the run service (a normal, recorded run), pick its answer
(the flow's output, the self-consistency majority, the judge's pick), score it, and read what the
run spent and what deliberation did from its record."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..engine.context import RunOptions
from ..flows.loader import LoadedFlow
from ..services.run import OutputOptions, RunOutcome, RunRequest, Services, run
from .arms import SAMPLE_TEMPERATURE, ArmPlan, judge_pick, majority, samples_of, task_text
from .datasets import Item
from .deliberation import flips, stages
from .judge import pairwise
from .record import ArmResult, PairRecord, StageScore
from .scorers import JudgeReply, ScoreContext, Scorer

#: the run's error types that stop the eval instead of failing the item
STOPS = ("BudgetExceeded",)


class Stop(Exception):
    """The eval must stop (the cost limit); the item is not done and stays to be run."""


@dataclass
class ArmRuntime:
    """What running arms needs, shared by every item: the loaded flows by arm, the options by arm,
    the scorer and its context, where records go, the services (one gateway for the eval)."""

    flows: dict[str, LoadedFlow]
    options: dict[str, RunOptions]
    scorer: Scorer
    score_ctx: ScoreContext
    env: Services
    runs_dir: Path | None = None
    main: LoadedFlow | None = None
    inputs: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # arm -> item -> inputs


async def run_flow(rt: ArmRuntime, loaded: LoadedFlow, inputs: dict[str, Any], options: RunOptions) -> RunOutcome:
    request = RunRequest(loaded, inputs, options, OutputOptions(record=True, runs_dir=rt.runs_dir))
    return await run(request, rt.env)


async def run_arm(rt: ArmRuntime, arm: ArmPlan, item: Item, k: int | None) -> ArmResult:
    """Run ``arm`` on ``item`` (k: its samples) and score it."""
    assert rt.main is not None
    if arm.kind == "flow" or arm.kind == "other_flow":
        inputs = rt.inputs.get(arm.name, {}).get(item.id, item.inputs)
    else:
        inputs = {"task": task_text(rt.main.flow, item.inputs)}
    started = time.perf_counter()
    outcome = await run_flow(rt, rt.flows[arm.name], inputs, rt.options[arm.name])
    latency = time.perf_counter() - started
    rec = outcome.record
    if outcome.result.error_type in STOPS:
        raise Stop(outcome.result.error or "the cost limit was reached")
    totals = rec.totals if rec is not None else outcome.result.totals
    result = ArmResult(status="succeeded" if outcome.status == "succeeded" else "failed",
                       run_ids=[outcome.result.run_id], k=k, calls=totals.calls,
                       tokens=totals.prompt_tokens + totals.completion_tokens, cost_usd=totals.cost_usd,
                       latency_s=round(latency, 4))
    if outcome.status != "succeeded" or rec is None:
        result.error = outcome.result.error or outcome.status
        return result
    answer = outcome.result.output or ""
    if arm.kind == "self_consistency":
        answer, result.votes = majority(samples_of(rec), rt.scorer.key)
    elif arm.kind == "best_of_judge":
        answer, picked = judge_pick(rec)
        result.detail = f"judge picked {picked}" if picked else "the judge named no sample: the first kept"
    result.answer = answer
    await _score(rt, result, answer, item)
    if arm.kind == "flow" and rt.scorer.name != "judge":
        await _stages(rt, result, rec, item)
    return result


async def _score(rt: ArmRuntime, result: ArmResult, answer: str, item: Item) -> None:
    try:
        score = await rt.scorer.score(answer, item, rt.score_ctx)
    except Stop:
        raise
    except Exception as exc:  # a scorer that breaks on one answer fails that item, with why
        if type(exc).__name__ in STOPS:
            raise Stop(str(exc)) from None
        result.status, result.error = "failed", f"the scorer failed: {type(exc).__name__}: {exc}"
        return
    result.value, result.passed = score.value, score.passed
    result.detail = "; ".join(d for d in (result.detail, score.detail) if d)
    result.run_ids += score.run_ids
    result.scoring_cost_usd += score.cost_usd


async def _stages(rt: ArmRuntime, result: ArmResult, rec: Any, item: Item) -> None:
    """Score the answer at every stage of the flow's rounds (per-round ablation) and count flips."""
    found = stages(rec)
    if not found:
        return
    right: list[list[bool]] = []
    for stage in found:
        scores = []
        for text in stage.answers:
            try:
                scores.append(await rt.scorer.score(text, item, rt.score_ctx))
            except Exception:  # an ablation stage the scorer cannot read counts as wrong
                from .scorers import Score

                scores.append(Score(0.0, False))
        value = sum(s.value for s in scores) / len(scores) if scores else 0.0
        passed = sum(s.passed for s in scores) * 2 > len(scores)
        result.stages.append(StageScore(stage=stage.label, value=round(value, 6), passed=passed))
        right.append([s.passed for s in scores])
    result.flips = flips(right)


async def judge_pairs(rt: ArmRuntime, item: Item, flow: ArmResult, others: dict[str, ArmResult]) -> None:
    """The judge audit: the flow's answer against each baseline's, asked in both orders. Kept only
    when every pair of the item is judged (a stop half-way leaves the item to judge again)."""
    pairs: dict[str, PairRecord] = {}
    cost = 0.0
    for name, other in others.items():
        if flow.answer is None or other.answer is None or rt.score_ctx.judge is None:
            continue
        v = await pairwise(rt.score_ctx, item, flow.answer, other.answer)
        winner = {"x": "flow", "y": "baseline"}.get(v.winner, "tie")
        pairs[name] = PairRecord(winner=winner, flipped=v.flipped,  # type: ignore[arg-type]
                                 picks=v.picks, run_ids=v.run_ids)
        cost += v.cost_usd
    flow.pairs.update(pairs)
    flow.scoring_cost_usd += cost


def judge_caller(rt_env: Services, model: str) -> Any:
    """One prompt -> one recorded call to the judge model (through the generate service)."""
    from ..services.generate import GenerateRequest, generate

    async def ask(prompt: str) -> JudgeReply:
        rt_env.registry = rt_env.registry or (rt_env.gateway.registry if rt_env.gateway else None)
        outcome = await generate(GenerateRequest(prompt, model=model, max_tokens=64), rt_env)
        if outcome.result.error_type in STOPS:
            raise Stop(outcome.result.error or "the cost limit was reached")
        rec = outcome.record
        return JudgeReply(outcome.result.output or "", outcome.result.run_id,
                          rec.totals.cost_usd if rec is not None else 0.0)

    return ask


def sample_options(base: RunOptions, main: str, judge: str | None) -> RunOptions:
    """Options of a sampled arm: the main model on every step (the judge's on ``pick``), sampling
    warm enough for samples to differ."""
    models = {"*": main}
    if judge:
        models["pick"] = judge
    return RunOptions(models=models, strategy=base.strategy, seed=base.seed, temperature=SAMPLE_TEMPERATURE)
