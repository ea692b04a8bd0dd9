"""The arms of an eval: the flow under test and its baselines, each run on every item as a normal,
recorded run (the baselines as small generated flows, so they are records like any other).

- ``single``: one call to the flow's main model with the task as the prompt;
- ``self_consistency``: k samples of that call (a fan-out) and a majority vote over the scorer's
  normalised answers (the number for ``numeric``, the letter for ``choice``...);
- ``best_of_judge``: k samples, then the judge model picks one (k + 1 calls);
- ``flow:OTHER``: another flow on the same items.

k is matched on compute (:func:`matched_k`): the flow's mean calls per item in this eval, or with
``--match tokens`` its mean tokens over the single arm's.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import InputError
from ..flows.loader import LoadedFlow, load_flow_data
from ..flows.spec import Flow
from ..records.schema import RunRecord
from ..registry import Registry

KINDS = ("single", "self_consistency", "best_of_judge")
SAMPLE_TEMPERATURE = 0.7  # samples must differ for a vote to mean anything
ArmKind = Literal["flow", "single", "self_consistency", "best_of_judge", "other_flow"]


@dataclass
class ArmPlan:
    """One arm: its name (``flow``, ``single``, ``flow:OTHER``...), its kind, the flow it runs
    (for ``other_flow``) and whether its k follows the matched compute."""

    name: str
    kind: ArmKind
    flow: str | None = None

    @property
    def sampled(self) -> bool:
        return self.kind in ("self_consistency", "best_of_judge")


def parse_baselines(values: list[str]) -> list[ArmPlan]:
    """``--baseline`` values in order, each once."""
    arms: list[ArmPlan] = []
    for v in values:
        v = v.strip()
        if v in KINDS:
            arm = ArmPlan(v, v)  # type: ignore[arg-type]
        elif v.startswith("flow:") and v[5:].strip():
            arm = ArmPlan(v, "other_flow", v[5:].strip())
        else:
            from ..registry import did_you_mean

            raise InputError(f"unknown baseline {v!r}",
                             hint=did_you_mean(v, list(KINDS)) or
                             "baselines: single, self_consistency, best_of_judge, flow:OTHER")
        if any(a.name == arm.name for a in arms):
            raise InputError(f"--baseline {v} given twice")
        arms.append(arm)
    return arms


def task_input(flow: Flow) -> str | None:
    """The flow input that holds the task: ``prompt``, else the first required one."""
    if "prompt" in flow.inputs:
        return "prompt"
    required = [n for n, i in flow.inputs.items() if i.is_required]
    return required[0] if required else next(iter(flow.inputs), None)


def task_text(flow: Flow, inputs: dict[str, Any]) -> str:
    """The task as one prompt: the task input's text, and any other inputs given as 'name: value'."""
    main = task_input(flow)
    parts = [str(inputs.get(main, ""))] if main else []
    parts += [f"{n}: {v}" for n, v in inputs.items() if n != main and v not in ("", None)]
    return "\n\n".join(p for p in parts if p)


def main_model(loaded: LoadedFlow, models: dict[str, str], registry: Registry) -> str:
    """The flow's main model: the one its output step runs on (after ``--model``), else the
    flow's default, else the registry's."""
    flow = loaded.flow
    out = flow.steps.get(loaded.output)
    step_model = getattr(out, "model", None) if out is not None else None
    if step_model and "{" in str(step_model):
        step_model = None  # a templated model (a fan-out over keys) has no single main model
    return (models.get(loaded.output) or models.get("*") or step_model or flow.defaults.model
            or registry.default_model)


def flow_judge(loaded: LoadedFlow, models: dict[str, str]) -> str | None:
    """The model of the flow's own judge step, if it has one (best-of-judge's picker)."""
    for name, step in loaded.flow.steps.items():
        if step.kind == "judge":
            model = models.get(name) or getattr(step, "model", None)
            if model and "{" not in str(model):
                return str(model)
    return None


def baseline_flow(kind: ArmKind, k: int, registry: Registry) -> LoadedFlow:
    """The generated flow of a baseline arm (k: samples)."""
    inputs: dict[str, Any] = {"task": {"description": "the task"}}
    steps: dict[str, Any]
    if kind == "single":
        steps, output = {"answer": {"prompt": "{{ task }}"}}, "answer"
    else:
        inputs["sample_ids"] = {"description": "one branch per sample", "type": "list",
                                "default": [str(i + 1) for i in range(k)]}
        steps = {"samples": {"for_each": "sample_ids", "prompt": "{{ task }}"}}
        output = "samples"
        if kind == "best_of_judge":
            steps["pick"] = {"prompt": (
                "Task:\n{{ task }}\n\n{% for s in samples %}Answer {{ loop.index }}:\n{{ s }}\n\n{% endfor %}"
                "Which answer is the best for the task? Reply with its number only."), "max_tokens": 16}
            output = "pick"
    data = {"name": f"eval-{kind}", "description": f"deliberate eval baseline: {kind} (k={k})",
            "inputs": inputs, "steps": steps, "output": output}
    return load_flow_data(data, f"eval-{kind}", registry)


def samples_of(record: RunRecord) -> list[str]:
    """The sampled answers of a self-consistency or best-of-judge run, in branch order."""
    step = record.steps.get("samples")
    value = step.value if step is not None else None
    if isinstance(value, dict) and value.get("type") == "branches":
        return [str(b.get("text", "")) for b in value.get("branches", [])]
    return []


def majority(answers: list[str], key: Any) -> tuple[str, dict[str, int]]:
    """The first answer of the largest group of equal keys (ties: the group seen first), and the
    vote counts. Empty keys (no number, no letter) only win when nothing else was said."""
    keys = [key(a) for a in answers]
    counts = Counter(k for k in keys if k)
    if not counts:
        return (answers[0] if answers else ""), {}
    top = max(counts.values())
    winner = next(k for k in keys if k and counts[k] == top)
    return answers[keys.index(winner)], dict(counts)


def judge_pick(record: RunRecord) -> tuple[str, int | None]:
    """The sample the judge picked (its number, 1-based), or the first when it named none."""
    answers = samples_of(record)
    pick = record.steps.get("pick")
    text = str(pick.output or "") if pick is not None else ""
    m = re.search(r"\d+", text)
    if m and 1 <= int(m.group()) <= len(answers):
        return answers[int(m.group()) - 1], int(m.group())
    return (answers[0] if answers else ""), None


def matched_k(flow_calls: list[int], flow_tokens: list[int], single_tokens: list[int],
              match: str) -> int:
    """k for the sampled arms: max(1, round(mean calls per item of the flow)); with ``tokens``,
    round(mean tokens per item of the flow / mean tokens of a single call)."""
    if match == "tokens":
        if not flow_tokens or not single_tokens or sum(single_tokens) == 0:
            return 1
        per_single = sum(single_tokens) / len(single_tokens)
        return max(1, round(sum(flow_tokens) / len(flow_tokens) / per_single))
    if not flow_calls:
        return 1
    return max(1, round(sum(flow_calls) / len(flow_calls)))
