"""The eval service: one :class:`EvalRequest` in, one :class:`EvalOutcome` out, progress events to
whoever listens. Faces (the CLI) parse into a request and render the outcome; this module never
touches a terminal.

Order of work: everything is validated first (flow, other flows, models, scorer, baselines,
every dataset row): bad input raises :class:`InputError` before any model call. Then the flow arm
runs on every item, k is matched to the compute it used, and the baselines run. Each finished
(item, arm) is written to the eval record at once (atomically), so ``--resume`` redoes nothing
finished, after a crash or kill -9 too. The cost limit stops the eval cleanly between items."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..config import get_settings
from ..engine.context import RunOptions
from ..errors import InputError
from ..flows.loader import LoadedFlow, load_flow
from ..gateway.gateway import Gateway
from ..gateway.layers import Budget, ResponseCache
from ..registry import Registry
from ..services.run import Services, check_input_size, check_models, resolve_inputs
from . import record as store
from .arms import ArmPlan, baseline_flow, flow_judge, main_model, matched_k, parse_baselines
from .datasets import Columns, Dataset, Item, read_rows, select, to_items
from .items import ArmRuntime, Stop, judge_caller, judge_pairs, run_arm, sample_options
from .record import ArmRecord, EvalRecord, ItemRecord
from .scorers import ScoreContext, Scorer, resolve


@dataclass
class EvalControl:
    """How the eval runs: which items (``limit``, ``shard`` i of N), how many at once, whether it
    continues an earlier eval, its cost limit, where records go."""

    limit: int | None = None
    concurrency: int = 4
    shard: tuple[int, int] | None = None
    resume: str | None = None
    max_cost: float | None = None
    evals_dir: Path | None = None
    runs_dir: Path | None = None


@dataclass
class EvalRequest:
    """An eval: a flow on a dataset, scored, against baselines matched on ``match``."""

    flow: str | Path
    dataset: str
    scorer: str | None = None
    baselines: list[str] = field(default_factory=list)
    match: Literal["calls", "tokens"] = "calls"
    options: RunOptions = field(default_factory=RunOptions)  # models, strategy, seed of the flow
    judge_model: str | None = None
    columns: Columns = field(default_factory=Columns)
    control: EvalControl = field(default_factory=EvalControl)
    allow_network_code: bool = False


@dataclass
class EvalProgress:
    """A progress event: what just happened (``started``, ``item``, ``phase``, ``finished``) and
    the counts so far."""

    kind: Literal["started", "item", "phase", "finished"]
    eval_id: str
    total: int
    done: int
    arm: str | None = None
    passed: dict[str, int] = field(default_factory=dict)
    scored: dict[str, int] = field(default_factory=dict)
    cost_usd: float = 0.0
    note: str = ""


@dataclass
class EvalOutcome:
    """How the eval ended: its record, where it is, and its analysis (:mod:`.analysis`)."""

    record: EvalRecord
    path: Path
    report: dict[str, Any]

    @property
    def exit_code(self) -> int:
        """0 finished; 1 stopped early (the cost limit) or failed."""
        return 0 if self.record.status == "finished" else 1


Listener = Callable[[EvalProgress], None]


@dataclass
class _Plan:
    """The validated eval: flows by arm, the items, the scorer."""

    loaded: LoadedFlow
    arms: list[ArmPlan]
    dataset: Dataset
    items: list[Item]
    scorer: Scorer
    scorer_spec: str
    flows: dict[str, LoadedFlow]
    inputs: dict[str, dict[str, dict[str, Any]]]
    main: str


def _prepare(request: EvalRequest, registry: Registry) -> _Plan:
    """Validate everything; no model is called here."""
    loaded = load_flow(request.flow, registry)
    arms = [ArmPlan("flow", "flow", loaded.flow.name), *parse_baselines(request.baselines)]
    if request.match not in ("calls", "tokens"):
        raise InputError(f"--match {request.match!r}: expected calls or tokens")
    if request.match == "tokens" and any(a.sampled for a in arms) and all(a.name != "single" for a in arms):
        arms.insert(1, ArmPlan("single", "single"))  # matching on tokens measures a single call
    check_models(loaded, request.options, registry)
    if request.judge_model:
        registry.model(request.judge_model)
    rows = read_rows(request.dataset)
    spec = request.scorer or rows.default_scorer or "exact"
    scorer = resolve(spec)
    if scorer.name == "checker" and rows.checker is None:
        raise InputError("--scorer checker: this dataset has no checker of its own",
                         hint="use exact, includes, numeric, ... or a reasoning-gym dataset")
    if scorer.name == "code" and not request.allow_network_code:
        from .sandbox import isolation_problem

        problem = isolation_problem()
        if problem:
            raise InputError(f"--scorer code: no network isolation for model-written code on this machine "
                             f"({problem})", hint="pass --allow-network-code to run it anyway, with the network")
    required = {n: i.is_required for n, i in loaded.flow.inputs.items()}
    dataset = to_items(rows, required, request.columns, scorer.needs_target)
    items = select(dataset, request.control.limit, request.control.shard)
    if not items:
        raise InputError("no items to run", where=request.dataset, hint="check --limit and --shard")
    main = main_model(loaded, request.options.models, registry)
    registry.model(main)
    for arm in arms:  # the generated flows load (k is set later), so none fails after calls began
        if arm.kind in ("single", "self_consistency", "best_of_judge"):
            baseline_flow(arm.kind, 2, registry)
    flows: dict[str, LoadedFlow] = {"flow": loaded}
    inputs: dict[str, dict[str, dict[str, Any]]] = {"flow": {}}
    for arm in arms[1:]:
        if arm.kind == "other_flow":
            assert arm.flow is not None
            other = load_flow(arm.flow, registry)
            flows[arm.name] = other
            check_models(other, _other_options(request.options), registry)
            names = {n: i.is_required for n, i in other.flow.inputs.items()}
            cols = Columns({n: c for n, c in request.columns.inputs.items() if n in names}, request.columns.target)
            mapped = {it.id: it.inputs for it in to_items(rows, names, cols, False).items}
            inputs[arm.name] = {it.id: _checked(other, mapped[it.id], it, registry) for it in items}
    for it in items:
        inputs["flow"][it.id] = _checked(loaded, it.inputs, it, registry)
    return _Plan(loaded, arms, dataset, items, scorer, spec, flows, inputs, main)


def _checked(loaded: LoadedFlow, given: dict[str, Any], item: Item, registry: Registry) -> dict[str, Any]:
    """The item's inputs as the flow takes them; a bad one names the dataset line."""
    try:
        values = resolve_inputs(loaded.flow, given)
        check_input_size(values, registry)
    except InputError as exc:
        raise InputError(exc.message, where=f"item {item.id} (line {item.line})", hint=exc.hint) from None
    return given


def _other_options(options: RunOptions) -> RunOptions:
    models = {"*": options.models["*"]} if "*" in options.models else {}
    return RunOptions(models=models, strategy=options.strategy, seed=options.seed)


def _new_record(request: EvalRequest, plan: _Plan) -> EvalRecord:
    c = request.control
    arms = [ArmRecord(name=a.name, kind=a.kind, flow=a.flow,
                      model=None if a.kind in ("flow", "other_flow") else plan.main) for a in plan.arms]
    return EvalRecord(
        eval_id=store.new_id(), created_at=store.now(), flow=plan.loaded.flow.name, flow_hash=plan.loaded.hash,
        dataset=plan.dataset.name, dataset_digest=plan.dataset.digest, scorer=plan.scorer_spec,
        match=request.match, arms=arms, item_ids=[it.id for it in plan.items],
        options={"models": request.options.models, "strategy": request.options.strategy,
                 "seed": request.options.seed, "judge_model": request.judge_model, "limit": c.limit,
                 "shard": list(c.shard) if c.shard else None, "max_cost": c.max_cost,
                 "columns": {"inputs": request.columns.inputs, "target": request.columns.target}})


def _resumed(request: EvalRequest, plan: _Plan, directory: Path) -> EvalRecord:
    assert request.control.resume is not None
    path = store.find(request.control.resume, directory)
    rec = store.load(path)
    fresh = _new_record(request, plan)
    for f in ("flow_hash", "dataset_digest", "scorer", "match", "item_ids"):
        if getattr(rec, f) != getattr(fresh, f):
            raise InputError(f"--resume {rec.eval_id}: its {f.replace('_', ' ')} differs from this command's",
                             where=str(path), hint="resume with the same flow, dataset, scorer and options")
    if [a.name for a in rec.arms] != [a.name for a in fresh.arms]:
        raise InputError(f"--resume {rec.eval_id}: its arms differ from this command's baselines", where=str(path))
    return rec.model_copy(update={"status": "running", "stop_reason": None, "finished_at": None})


class _Eval:
    """One eval in progress: schedules (item, arm) tasks, saves each result, reports progress."""

    def __init__(self, rec: EvalRecord, rt: ArmRuntime, plan: _Plan, directory: Path,
                 listen: Listener | None) -> None:
        self.rec, self.rt, self.plan, self.dir, self.listen = rec, rt, plan, directory, listen
        self.total = len(plan.items) * len(plan.arms)
        self.stop_reason: str | None = None
        self.lock = asyncio.Lock()
        self.path = store.save(rec, directory)

    def emit(self, kind: Any, arm: str | None = None, note: str = "") -> None:
        if self.listen is None:
            return
        passed: dict[str, int] = {}
        scored: dict[str, int] = {}
        cost = 0.0
        for item in self.rec.items.values():
            for name, r in item.arms.items():
                scored[name] = scored.get(name, 0) + 1
                passed[name] = passed.get(name, 0) + int(r.passed)
                cost += r.cost_usd + r.scoring_cost_usd
        self.listen(EvalProgress(kind, self.rec.eval_id, self.total, sum(scored.values()), arm, passed,
                                 scored, cost, note))

    async def phase(self, arms: list[ArmPlan], concurrency: int) -> None:
        gate = asyncio.Semaphore(max(1, concurrency))
        todo = [(it, a) for it in self.plan.items for a in arms if not self.rec.done(it.id, a.name)]

        async def one(item: Item, arm: ArmPlan) -> None:
            async with gate:
                if self.stop_reason is not None:
                    return
                k = self.rec.arm(arm.name).k
                try:
                    result = await run_arm(self.rt, arm, item, k)
                except Stop as exc:
                    self.stop_reason = f"the cost limit was reached ({exc})"
                    return
                async with self.lock:
                    entry = self.rec.items.setdefault(item.id, ItemRecord(id=item.id, line=item.line,
                                                                          target=item.target))
                    entry.arms[arm.name] = result
                    store.append(self.dir, self.rec, entry, arm.name)
                self.emit("item", arm.name)

        await asyncio.gather(*(one(it, a) for it, a in todo))

    def match(self, request: EvalRequest) -> None:
        """Set k of the sampled arms from the flow's measured compute (kept when resumed)."""
        flow = [i.arms["flow"] for i in self.rec.items.values() if "flow" in i.arms
                and i.arms["flow"].status == "succeeded"]
        single = [i.arms["single"].tokens for i in self.rec.items.values() if "single" in i.arms]
        k = matched_k([r.calls for r in flow], [r.tokens for r in flow], single, request.match)
        for arm in self.rec.arms:
            if arm.kind in ("self_consistency", "best_of_judge") and arm.k is None:
                arm.k = k if arm.kind == "self_consistency" else max(1, k - 1)  # + 1 call: the judge's pick
        store.save(self.rec, self.dir)


async def run_eval(request: EvalRequest, env: Services | None = None, listen: Listener | None = None) -> EvalOutcome:
    """Run (or resume) an eval; see the module docstring."""
    from .analysis import analyse

    env = env or Services()
    settings = env.settings or get_settings()
    registry = env.registry or (env.gateway.registry if env.gateway else Registry.load(settings))
    plan = _prepare(request, registry)
    directory = store.evals_dir(request.control.evals_dir)
    rec = _resumed(request, plan, directory) if request.control.resume else _new_record(request, plan)
    budget = Budget(request.control.max_cost)
    if env.gateway is not None:
        env.gateway.budget = budget
        gateway = env.gateway
    else:
        gateway = Gateway(registry, settings=settings, budget=budget, progress=env.progress,
                          cache=ResponseCache(settings.response_cache()) if settings.cache else None)
    item_env = Services(settings=settings, registry=registry, gateway=gateway, progress=env.progress)
    judge = request.judge_model or (plan.main if plan.scorer.name == "judge" else None)
    ctx = ScoreContext(checker=plan.dataset.checker, allow_network_code=request.allow_network_code,
                       judge=judge_caller(item_env, judge) if judge else None)
    options = {"flow": request.options}
    options.update({a.name: _other_options(request.options) for a in plan.arms if a.kind == "other_flow"})
    rt = ArmRuntime(dict(plan.flows), options, plan.scorer, ctx, item_env, request.control.runs_dir,
                    plan.loaded, plan.inputs)
    ev = _Eval(rec, rt, plan, directory, listen)
    ev.emit("started")
    await _execute(ev, request, plan, registry)
    rec.status = "stopped" if ev.stop_reason else "finished"
    rec.stop_reason, rec.finished_at = ev.stop_reason, store.now()
    path = store.save(rec, directory)
    ev.emit("finished", note=ev.stop_reason or "")
    return EvalOutcome(rec, path, analyse(rec))


async def _execute(ev: _Eval, request: EvalRequest, plan: _Plan, registry: Registry) -> None:
    conc = request.control.concurrency
    first = [a for a in plan.arms if a.kind == "flow" or (a.kind == "single" and request.match == "tokens")]
    _baselines(ev, request, plan, registry, sampled=False)
    await ev.phase(first, conc)
    if ev.stop_reason:
        return
    ev.match(request)
    _baselines(ev, request, plan, registry, sampled=True)
    ev.emit("phase", note="baselines")
    await ev.phase([a for a in plan.arms if a not in first], conc)
    if ev.stop_reason or ev.rt.score_ctx.judge is None or len(plan.arms) < 2:
        return
    await _audit(ev, plan, conc)


def _baselines(ev: _Eval, request: EvalRequest, plan: _Plan, registry: Registry, sampled: bool) -> None:
    """The generated flows and options of the baseline arms (the sampled ones once k is known)."""
    for arm in plan.arms:
        if arm.kind in ("single", "self_consistency", "best_of_judge") and arm.sampled == sampled:
            k = ev.rec.arm(arm.name).k or 1
            ev.rt.flows[arm.name] = baseline_flow(arm.kind, k, registry)
            judge = request.judge_model or flow_judge(plan.loaded, request.options.models)
            ev.rt.options[arm.name] = sample_options(request.options, plan.main, judge) \
                if arm.sampled else RunOptions(models={"*": plan.main}, strategy=request.options.strategy,
                                               seed=request.options.seed)


async def _audit(ev: _Eval, plan: _Plan, concurrency: int) -> None:
    """Pairwise judging of the flow against each baseline (both orders), items at once, each saved
    when judged. A judge that spends past the cost limit stops it like any call."""
    gate = asyncio.Semaphore(max(1, concurrency))

    async def one(item: Item) -> None:
        entry = ev.rec.items.get(item.id)
        if entry is None or "flow" not in entry.arms or entry.arms["flow"].pairs:
            return
        others = {n: r for n, r in entry.arms.items() if n != "flow"}
        async with gate:
            if ev.stop_reason is not None:
                return
            try:
                await judge_pairs(ev.rt, item, entry.arms["flow"], others)
            except Stop as exc:
                ev.stop_reason = f"the cost limit was reached ({exc})"
                return
        async with ev.lock:
            store.append(ev.dir, ev.rec, entry, "flow")

    await asyncio.gather(*(one(it) for it in plan.items))
