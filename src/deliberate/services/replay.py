"""The replay and resume services: a new run made from a recorded one (re-run from a step, or
the whole flow, optionally verified against the record), or a crashed run finished in place."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..engine.executor import RunOptions
from ..errors import RecordError
from ..flows.loader import LoadedFlow
from ..records.replay import Plan, compare, plan_from, plan_rerun, plan_resume
from ..records.schema import RunRecord
from ..registry import Registry
from .run import Lineage, OutputOptions, RunOutcome, RunRequest, Services, run


@dataclass
class ReplayRequest:
    """Re-run ``record`` from ``from_step`` (or whole, ``rerun``), with an edited ``flow`` and
    other ``models`` if given; ``verify`` compares every step's output with the record (and never
    lets the response cache answer). ``run_id``: the new run's id (default: a fresh one)."""

    record: RunRecord
    from_step: str | None = None
    rerun: bool = False
    verify: bool = False
    flow: LoadedFlow | None = None
    models: dict[str, str] = field(default_factory=dict)
    run_id: str | None = None


@dataclass
class Verification:
    """How a verified re-run compares with its record."""

    differs: list[str]
    cache_hits: int
    hints: list[str]

    @property
    def identical(self) -> bool:
        return not self.differs


@dataclass
class ReplayOutcome:
    """The new run, what it reused and re-ran, and (``--verify``) how it compares."""

    plan: Plan
    run: RunOutcome
    parent: RunRecord
    verification: Verification | None = None

    @property
    def exit_code(self) -> int:
        code = self.run.exit_code
        if self.verification is not None and self.verification.differs and code == 0:
            return 1
        return code

    def to_json(self) -> dict[str, Any]:
        doc = {**self.run.to_json(), **plan_json(self.plan)}
        v = self.verification
        if v is not None:
            doc.update(parent_run_id=self.parent.run_id, identical=v.identical, differs=v.differs,
                       cache_hits=v.cache_hits, hints=v.hints)
        return doc


def plan_json(plan: Plan) -> dict[str, Any]:
    """What a plan reuses and re-runs, for ``--json`` documents."""
    return {"reused": sorted(plan.preset, key=plan.loaded.order.index), "rerun": plan.rerun,
            "notes": plan.notes}


def plan_replay(request: ReplayRequest, registry: Registry) -> Plan:
    """What a replay will reuse and re-run (no model call)."""
    if request.rerun:
        return plan_rerun(request.record, registry, request.flow, request.models)
    if request.from_step is None:
        raise RecordError("a replay re-runs from a step (--from) or whole (--rerun)")
    plan = plan_from(request.record, request.from_step, registry, request.flow, request.models)
    plan.notes.append(f"reusing {len(plan.preset)} recorded step(s); re-running: {', '.join(plan.rerun)}")
    return plan


def _note(env: Services, plan: Plan) -> None:
    if env.progress is not None:
        for n in plan.notes:
            env.progress(n)


async def _run_plan(plan: Plan, env: Services, lineage: Lineage, cache: bool | None) -> RunOutcome:
    request = RunRequest(plan.loaded, plan.inputs, RunOptions.from_dict(plan.options),
                         OutputOptions(record=True, cache=cache), lineage)
    return await run(request, env)


async def replay(request: ReplayRequest, env: Services | None = None) -> ReplayOutcome:
    """Run the new run a replay asks for, recorded with the old one as its parent."""
    env = env or Services()
    registry = env.registry or Registry.load(env.settings)
    env.registry = registry
    plan = plan_replay(request, registry)
    _note(env, plan)
    lineage = Lineage(preset=plan.preset, parent_run_id=request.record.run_id, run_id=request.run_id,
                      base=plan.base, parent=request.record)
    outcome = await _run_plan(plan, env, lineage, cache=False if request.verify else None)
    verification = verify(request.record, outcome.record) if request.verify else None
    return ReplayOutcome(plan, outcome, request.record, verification)


def verify(parent: RunRecord, child: RunRecord | None) -> Verification:
    """Compare a re-run with the record it re-ran, step by step."""
    if child is None:
        raise RecordError("the re-run left no record to compare")
    differs = [r["step"] for r in compare(parent, child) if not r["same_output"]]
    cached = sum(1 for s in child.steps.values() for c in s.calls if c.cache_hit)
    hints = []
    if cached:
        hints.append(f"{cached} call(s) were answered from the response cache, not by the model; "
                     "unset DELIBERATE_CACHE for a real check")
    if differs and parent.options.get("seed") is None:
        hints.append("the run had no seed: sampled outputs differ from run to run; record it with --seed N "
                     "(and a temperature-0 strategy such as 'precise') for a reproducible check")
    return Verification(differs, cached, hints)


@dataclass
class ResumeRequest:
    """A crashed or interrupted run's record (a path in runs/ or elsewhere) to finish in place."""

    path: Path
    runs_dir: Path | None = None


async def resume(request: ResumeRequest, env: Services | None = None) -> ReplayOutcome:
    """Finish a run: its finished steps are kept, the rest run; same run id, same file in runs/.

    A run still going in another process, or a record from elsewhere whose id runs/ already
    holds, is refused (:class:`RecordError`) before anything runs."""
    from ..config import get_settings
    from ..records.store import is_live, load, record_path

    env = env or Services()
    runs = request.runs_dir or (env.settings or get_settings()).runs_dir
    rec = load(request.path)  # checks the run id, so the target below is a file in runs/
    if is_live(request.path):
        raise RecordError(f"run {rec.run_id} is still running in another process", where=str(request.path),
                          hint="wait for it, or stop it (Ctrl-C) and resume then")
    target = record_path(runs, rec.run_id)
    elsewhere = request.path.resolve() != target.resolve()
    if elsewhere and target.exists():
        # a record from elsewhere never overwrites the one runs/ holds under the same id
        raise RecordError(f"{target} already holds run {rec.run_id}", where=str(request.path),
                          hint=f"resume that one: deliberate resume {rec.run_id}")
    registry = env.registry or Registry.load(env.settings)
    env.registry = registry
    plan = plan_resume(rec, registry)
    plan.notes.insert(0, f"resuming {rec.run_id}: {len(plan.preset)} finished step(s) kept; "
                      f"running: {', '.join(plan.rerun) or 'nothing'}")
    if elsewhere:
        plan.notes.append(f"the resumed run is recorded in {target}; {request.path} is left as it is")
    _note(env, plan)
    lineage = Lineage(preset=plan.preset, parent_run_id=rec.parent_run_id, run_id=rec.run_id, base=plan.base)
    return ReplayOutcome(plan, await _run_plan(plan, env, lineage, cache=None), rec)
