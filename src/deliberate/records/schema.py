"""The run record: one JSON document per run under ``runs/<id>.json``.

Fields added after version 1 was first written are optional with defaults (``StepRecord.verdict``,
``RunRecord.below_threshold``), so older records load as they are: an optional field does not
change the version. Bump ``SCHEMA_VERSION`` only for a change older readers would misread."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..engine.events import CallInfo, Totals
from ..gateway.contracts import GatewayEvent

SCHEMA_VERSION = 1
RECORD_KIND = "deliberate.run"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


# One answered model call: the engine's CallInfo is what the record keeps, and pydantic reads the
# dataclass back from JSON like any model.
CallRecord = CallInfo


class FailureRecord(_Model):
    round: int = 1
    branch: int | None = None
    error: str
    error_type: str


class JudgeRecord(_Model):
    attempt: int
    score: float
    threshold: float
    passed: bool
    feedback: str


class VerdictRecord(_Model):
    """How a judge step ended (its latest run): ``passed``, or ``below_threshold`` after every
    attempt. ``score`` is the best score of the attempts, whose draft the target kept."""

    outcome: Literal["passed", "below_threshold"]
    score: float
    threshold: float
    scale: int = 10
    attempts: int = 1
    on_fail: Literal["keep_best", "fail"] = "keep_best"


class VoteRecord(_Model):
    counts: dict[str, int]
    winner: str
    tie: bool
    tie_rule: str
    tied: list[str] = Field(default_factory=list)


class StepRecord(_Model):
    name: str
    kind: str
    status: Literal["pending", "running", "succeeded", "failed", "skipped", "reused"] = "pending"
    round: int = 1
    started_at: float | None = None
    finished_at: float | None = None
    value: Any = None
    output: str | None = None
    skipped_when: str | None = None
    decided_by: Any = None
    error: str | None = None
    error_type: str | None = None
    calls: list[CallRecord] = Field(default_factory=list)
    failures: list[FailureRecord] = Field(default_factory=list)
    judge: list[JudgeRecord] = Field(default_factory=list)
    vote: VoteRecord | None = None
    rounds: list[dict[str, Any]] = Field(default_factory=list)  # value per finished round
    verdict: VerdictRecord | None = None  # judges: how the judge ended (absent in older records)

    def judge_verdict(self) -> VerdictRecord | None:
        """The judge's verdict: as recorded, or, for a record written before verdicts were, read
        from its attempts (the entries since the last attempt 1: a judge in a rounds block is
        scored again each round)."""
        if self.status in ("pending", "skipped"):
            return None
        if self.verdict is not None:
            return self.verdict
        if self.kind != "judge" or not self.judge or self.status not in ("succeeded", "reused"):
            return None
        start = max((i for i, j in enumerate(self.judge) if j.attempt == 1), default=0)
        latest = self.judge[start:]
        passed = any(j.passed for j in latest)
        scale = self.value.get("scale", 10) if isinstance(self.value, dict) else 10
        return VerdictRecord(outcome="passed" if passed else "below_threshold",
                             score=max(j.score for j in latest), threshold=latest[-1].threshold,
                             scale=scale if isinstance(scale, int) else 10, attempts=len(latest))


class RoundRecord(_Model):
    round: int
    stop_reason: str | None = None
    until_value: Any = None
    at: float = 0.0


class RunRecord(_Model):
    schema_version: int = SCHEMA_VERSION
    kind: Literal["deliberate.run"] = "deliberate.run"
    run_id: str
    parent_run_id: str | None = None
    status: Literal["running", "succeeded", "failed", "interrupted"] = "running"
    created_at: float
    finished_at: float | None = None
    flow_name: str
    flow_source: str
    flow_hash: str
    flow: dict[str, Any]
    inputs: dict[str, Any]
    options: dict[str, Any]
    order: list[str]
    output_step: str
    reused_steps: list[str] = Field(default_factory=list)
    steps: dict[str, StepRecord] = Field(default_factory=dict)
    rounds: list[RoundRecord] = Field(default_factory=list)
    events: list[GatewayEvent] = Field(default_factory=list)
    output: str | None = None
    error: str | None = None
    error_type: str | None = None
    totals: Totals = Field(default_factory=Totals)
    deliberate_version: str = ""
    # judge steps whose verdict is below threshold (kept their best draft, or failed with on_fail: fail)
    below_threshold: list[str] = Field(default_factory=list)

    def judges_below_threshold(self) -> list[str]:
        """The judge steps below threshold, in flow order (read from the attempts for records
        written before ``below_threshold`` was)."""
        return [n for n, s in self.steps.items()
                if (v := s.judge_verdict()) is not None and v.outcome == "below_threshold"]

    def summary(self) -> dict[str, Any]:
        """The short form for ``--json`` and ``runs list``."""
        steps: dict[str, Any] = {}
        for n, s in self.steps.items():
            steps[n] = {"status": s.status, "calls": len(s.calls),
                        "tokens": sum(c.prompt_tokens + c.completion_tokens for c in s.calls),
                        "cost_usd": sum(c.cost_usd for c in s.calls),
                        "models": sorted({c.model_key for c in s.calls})}
            verdict = s.judge_verdict()
            if verdict is not None:
                steps[n]["verdict"] = verdict.model_dump()
        return {
            "run_id": self.run_id, "status": self.status, "flow": self.flow_name,
            "parent_run_id": self.parent_run_id, "created_at": self.created_at,
            "finished_at": self.finished_at, "output_step": self.output_step,
            "error": self.error, "error_type": self.error_type, "totals": self.totals.to_dict(),
            "below_threshold": self.judges_below_threshold(),
            "steps": steps,
        }
