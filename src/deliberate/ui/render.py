"""Rendering a run (live or recorded) with rich: the step tree, the summary line, the answer.

Every piece of text that did not come from our code (flow, step and model names, run ids, errors
from providers, streamed tokens, model output, expressions from flow files) goes through
:func:`deliberate.safetext.clean` and into ``Text`` (never a markup string): a model or a file
cannot move the cursor, retitle or clear the terminal, nor be read as Rich markup. The record
keeps the raw text."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Group, RenderableType
from rich.markdown import Markdown
from rich.text import Text
from rich.tree import Tree

from ..records.schema import RunRecord, StepRecord, VerdictRecord
from ..safetext import clean

ICONS = {"pending": ("·", "dim"), "running": ("◐", "yellow"), "succeeded": ("✓", "green"),
         "failed": ("✗", "red"), "skipped": ("↷", "dim"), "reused": ("↺", "cyan")}


def step_stats(step: StepRecord) -> str:
    """``3.1s · 3 calls · 580 tok · smollm2-135m``: a step's time, calls, tokens, cost, models."""
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
        parts.append(clean(", ".join(models)))
    return " · ".join(parts)


def attempts_text(v: VerdictRecord) -> str:
    """``best 3/10 after 3 attempts``: a judge's best score and how many attempts it took."""
    return f"best {v.score:g}/{v.scale} after {v.attempts} attempt{'s' if v.attempts != 1 else ''}"


def below_threshold(step: StepRecord) -> VerdictRecord | None:
    """The step's verdict if it is a judge that ended below its threshold."""
    v = step.judge_verdict() if step.kind == "judge" else None
    return v if v is not None and v.outcome == "below_threshold" else None


def step_tree(record: RunRecord, streaming: dict[str, str] | None = None, *, width: int = 100,
              verbose: bool = False) -> Tree:
    """The flow's steps as a tree with their state."""
    rounds = f" · round {len(record.rounds)}" if record.rounds else ""
    tree = Tree(Text.assemble((clean(record.flow_name), "bold"), (f"  {clean(record.run_id)}{rounds}", "dim")))
    for name in record.order:
        step = record.steps[name]
        icon, style = ICONS.get(step.status, ("?", ""))
        below = below_threshold(step)
        if below is not None and step.status != "failed":
            icon, style = "!", "yellow"  # it ran, but its judge was never satisfied: not a plain ✓
        kind = "" if step.kind == "generate" else f" [{clean(step.kind)}]"
        label = Text.assemble((f"{icon} ", style), (clean(name), "bold" if step.status == "running" else ""),
                              (kind, "magenta"), ("  " + step_stats(step), "dim"))
        if below is not None:
            label.append(f"  below threshold: {attempts_text(below)} (threshold {below.threshold:g})",
                         style="yellow")
        node = tree.add(label)
        if step.status == "skipped":
            decided = clean(step.decided_by) if isinstance(step.decided_by, str) else step.decided_by
            node.add(Text(clean(f"skipped: when {step.skipped_when} -> {decided!r}"), style="dim"))
        if step.error:
            node.add(Text(clean(step.error), style="red"))
        for j in step.judge:
            node.add(Text(f"attempt {j.attempt}: score {j.score:g} (threshold {j.threshold:g})"
                          f" {'passed' if j.passed else 'below'}", style="green" if j.passed else "yellow"))
        if step.vote:
            v = step.vote
            # answers are model text: cleaned before repr() (repr would spell an ESC out, not drop it)
            counts = ", ".join(f"{clean(k)!r}: {n}" for k, n in v.counts.items())
            tie = f" · tie broken by '{clean(v.tie_rule)}'" if v.tie else ""
            node.add(Text(f"votes {counts} -> {clean(v.winner)!r}{tie}", style="cyan"))
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
            tree.add(Text(clean(f"⚡ {ev.kind.replace('_', ' ')}: {ev.endpoint} {ev.detail}"), style="yellow"))
    return tree


def _tail(text: str, n: int) -> str:
    """The last ``n`` characters of ``text`` on one line, cleaned. Only a window of the end is
    cleaned (streamed text grows with every token and is drawn 8 times a second); a sequence cut
    by the window loses its ESC there and the rest of it is removed or harmless."""
    text = " ".join(clean(text[-(2 * n + 256):]).split())
    return text if len(text) <= n else "…" + text[-n:]


def summary_line(record: RunRecord) -> Text:
    t = record.totals
    wall = t.wall_s or ((record.finished_at or time.time()) - record.created_at)
    status_style = {"succeeded": "green", "failed": "red", "interrupted": "yellow"}.get(record.status, "")
    steps_done = sum(1 for s in record.steps.values() if s.status in ("succeeded", "reused"))
    line = Text.assemble(
        (record.status, f"bold {status_style}"),
        f"  {steps_done}/{len(record.steps)} steps · {t.calls} calls · "
        f"{t.prompt_tokens + t.completion_tokens} tokens · ${t.cost_usd:.4f} · {wall:.1f}s",
    )
    below = [n for n in record.order if n in record.steps and below_threshold(record.steps[n]) is not None]
    if below:
        judges = "judges" if len(below) > 1 else "judge"
        line.append(f" · {judges} below threshold: {clean(', '.join(below))}", style="bold yellow")
    return line


def answer(record: RunRecord) -> RenderableType:
    if record.output is None:
        return Text(clean(record.error or "no answer"), style="red")
    return Markdown(clean(record.output))


def full_view(record: RunRecord, verbose: bool = True) -> RenderableType:
    parts: list[Any] = [step_tree(record, verbose=verbose), summary_line(record)]
    return Group(*parts)
