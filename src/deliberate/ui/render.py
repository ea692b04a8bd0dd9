"""Rendering a run (live or recorded) with rich: the step tree, the summary line, the answer."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Group, RenderableType
from rich.markdown import Markdown
from rich.text import Text
from rich.tree import Tree

from ..records.schema import RunRecord, StepRecord

ICONS = {"pending": ("·", "dim"), "running": ("◐", "yellow"), "succeeded": ("✓", "green"),
         "failed": ("✗", "red"), "skipped": ("↷", "dim"), "reused": ("↺", "cyan")}


def _step_stats(step: StepRecord) -> str:
    tokens = sum(c.prompt_tokens + c.completion_tokens for c in step.calls)
    cost = sum(c.cost_usd for c in step.calls)
    parts = []
    if step.started_at:
        end = step.finished_at or time.time()
        parts.append(f"{end - step.started_at:.1f}s")
    if step.calls:
        parts.append(f"{len(step.calls)} call{'s' if len(step.calls) != 1 else ''}")
        parts.append(f"{tokens} tok")
        if cost:
            parts.append(f"${cost:.4f}")
        models = sorted({c.model_key for c in step.calls})
        parts.append(", ".join(models))
    return " · ".join(parts)


def step_tree(record: RunRecord, streaming: dict[str, str] | None = None, *, width: int = 100,
              verbose: bool = False) -> Tree:
    """The flow's steps as a tree with their state."""
    rounds = f" · round {len(record.rounds)}" if record.rounds else ""
    tree = Tree(Text.assemble((record.flow_name, "bold"), (f"  {record.run_id}{rounds}", "dim")))
    for name in record.order:
        step = record.steps[name]
        icon, style = ICONS.get(step.status, ("?", ""))
        kind = "" if step.kind == "generate" else f" [{step.kind}]"
        label = Text.assemble((f"{icon} ", style), (name, "bold" if step.status == "running" else ""),
                              (kind, "magenta"), ("  " + _step_stats(step), "dim"))
        node = tree.add(label)
        if step.status == "skipped":
            node.add(Text(f"skipped: when {step.skipped_when} -> {step.decided_by!r}", style="dim"))
        if step.error:
            node.add(Text(step.error, style="red"))
        for j in step.judge:
            node.add(Text(f"attempt {j.attempt}: score {j.score:g} (threshold {j.threshold:g})"
                          f" {'passed' if j.passed else 'below'}", style="green" if j.passed else "yellow"))
        if step.vote:
            v = step.vote
            counts = ", ".join(f"{k!r}: {n}" for k, n in v.counts.items())
            tie = f" · tie broken by '{v.tie_rule}'" if v.tie else ""
            node.add(Text(f"votes {counts} -> {v.winner!r}{tie}", style="cyan"))
        if step.status == "running" and streaming:
            for key, text in streaming.items():
                sname, _, branch = key.partition("\x00")
                if sname == name and text:
                    prefix = f"[{branch}] " if branch else ""
                    node.add(Text(prefix + _tail(text, width - len(prefix) - 8), style="italic"))
        elif verbose and step.output:
            node.add(Text(_tail(step.output, width * 3)))
    for ev in record.events:
        if ev.kind.startswith("breaker"):
            tree.add(Text(f"⚡ {ev.kind.replace('_', ' ')}: {ev.endpoint} {ev.detail}", style="yellow"))
    return tree


def _tail(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else "…" + text[-n:]


def summary_line(record: RunRecord) -> Text:
    t = record.totals
    wall = t.wall_s or ((record.finished_at or time.time()) - record.created_at)
    status_style = {"succeeded": "green", "failed": "red", "interrupted": "yellow"}.get(record.status, "")
    steps_done = sum(1 for s in record.steps.values() if s.status in ("succeeded", "reused"))
    return Text.assemble(
        (record.status, f"bold {status_style}"),
        f"  {steps_done}/{len(record.steps)} steps · {t.calls} calls · "
        f"{t.prompt_tokens + t.completion_tokens} tokens · ${t.cost_usd:.4f} · {wall:.1f}s",
    )


def answer(record: RunRecord) -> RenderableType:
    if record.output is None:
        return Text(record.error or "no answer", style="red")
    return Markdown(record.output)


def full_view(record: RunRecord, verbose: bool = True) -> RenderableType:
    parts: list[Any] = [step_tree(record, verbose=verbose), summary_line(record)]
    return Group(*parts)
