"""The built-in function steps: the seed's linear flow (task analysis, resource snapshot, recent
history, summary). They register through the ``deliberate.steps`` entry point group like any
plugin (see pyproject.toml)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..flows.functions import FunctionStep, NoParams


class Data(dict):  # type: ignore[type-arg]
    """A function step's value: fields in templates (``analysis.task_type``), readable text when
    rendered whole."""

    def __str__(self) -> str:
        return "\n".join(f"{k}: {v}" for k, v in self.items())


@dataclass
class FunctionContext:
    """What a function step may see: the run's inputs and outputs so far, and two services."""

    flow_name: str
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    history: Callable[[str, int], list[dict[str, Any]]] = lambda _flow, _limit: []
    stats: Callable[[], dict[str, Any]] = dict
    extra: dict[str, Any] = field(default_factory=dict)


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextParams(_Params):
    text: str = Field(description="the text to analyse, usually '{{ prompt }}'")


_KINDS = {
    "technical": r"\b(code|python|function|bug|api|sql|algorithm|implement|class|error|regex|test|compile|debug)\b",
    "creative": r"\b(story|poem|write a|slogan|creative|imagine|name ideas|lyrics|fiction)\b",
    "analytical": r"\b(compare|analy[sz]e|evaluate|pros|cons|why|explain|trade-?offs?|assess)\b",
}


async def _task_analysis(ctx: FunctionContext, params: TextParams) -> Data:
    text = params.text
    lowered = text.lower()
    scores = {k: len(re.findall(p, lowered)) for k, p in _KINDS.items()}
    kind = max(scores, key=lambda k: scores[k]) if any(scores.values()) else "general"
    words = len(text.split())
    clauses = len(re.findall(r"[,;:]|\band\b", lowered))
    complexity = "high" if words > 120 or clauses > 8 else "medium" if words > 25 or clauses > 3 else "low"
    return Data(task_type=kind, complexity=complexity, words=words,
                needs_code=scores["technical"] > 0)


async def _resources(ctx: FunctionContext, params: NoParams) -> Data:
    out = Data(cpu_count=os.cpu_count() or 1)
    try:
        import psutil

        vm = psutil.virtual_memory()
        out["ram_total_gb"] = round(vm.total / 2**30, 1)
        out["ram_free_gb"] = round(vm.available / 2**30, 1)
    except ImportError:
        pass
    try:
        from ..gateway.backends.resources import gpu_snapshot

        out["gpu"] = gpu_snapshot() or "none"
    except Exception:
        out["gpu"] = "unknown"
    return out


class HistoryParams(_Params):
    limit: int = Field(3, ge=1, le=50)


async def _history(ctx: FunctionContext, params: HistoryParams) -> list[Data]:
    return [Data(r) for r in ctx.history(ctx.flow_name, params.limit)]


async def _summary(ctx: FunctionContext, params: NoParams) -> Data:
    stats = ctx.stats()
    outputs = {k: (str(v)[:160] + ("..." if len(str(v)) > 160 else "")) for k, v in ctx.outputs.items()}
    return Data(flow=ctx.flow_name, **stats, outputs=outputs)


task_analysis = FunctionStep("task_analysis", "Classify the task (type, complexity) from its text.",
                             TextParams, _task_analysis)
resources = FunctionStep("resources", "Snapshot of CPU, RAM and GPU memory.", NoParams, _resources)
history = FunctionStep("history", "Recent runs of this flow from runs/.", HistoryParams, _history)
summary = FunctionStep("summary", "Steps, calls, tokens and cost so far, with each output's start.",
                       NoParams, _summary)
