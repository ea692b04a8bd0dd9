"""The live view: a subscriber that keeps its own record of the run and redraws the tree."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.live import Live
from rich.text import Text

from ..engine.events import (
    Event,
    GatewayNotice,
    RunFinished,
    StepFailed,
    StepFinished,
    StepSkipped,
    Token,
)
from ..records.recorder import Recorder
from ..safetext import clean
from .render import attempts_text, below_threshold, step_stats, step_tree, summary_line


class LiveView:
    """Shows the steps as a tree with state, streaming tokens, time, tokens and cost per step.

    On a terminal it redraws in place (rich Live); elsewhere it prints one line per finished step,
    so logs of CI runs stay readable. Names, errors and model text are cleaned and printed as
    ``Text``, never as markup (see ``render``)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.recorder = Recorder(None)
        self.streaming: dict[str, str] = {}
        self.live: Live | None = None
        self.interactive = console.is_terminal

    @property
    def wants_tokens(self) -> bool:
        """Only the redrawn tree shows streaming text; the plain lines do not."""
        return self.interactive

    def __call__(self, event: Event) -> None:
        self.recorder(event)
        rec = self.recorder.record
        if rec is None:
            return
        if isinstance(event, Token):
            key = event.step if event.branch is None else f"{event.step}\x00{event.branch}"
            self.streaming[key] = ("" if event.reset else self.streaming.get(key, "")) + event.text
        elif isinstance(event, (StepFinished, StepFailed, StepSkipped)):
            for key in [k for k in self.streaming if k.split("\x00")[0] == event.step]:
                del self.streaming[key]
            if not self.interactive:
                self.console.print(self.plain_line(event.step), highlight=False, soft_wrap=True)
        elif isinstance(event, GatewayNotice) and not self.interactive:
            ev = event.event
            self.console.print(Text(f"  {ev.kind:8} {clean(ev.endpoint)} {clean(ev.detail)}", style="yellow"),
                               highlight=False, soft_wrap=True)
        if self.interactive:
            if self.live is None:
                # get_renderable: every refresh re-renders, so running steps' clocks keep moving
                self.live = Live(console=self.console, refresh_per_second=8, transient=False,
                                 get_renderable=self.render)
                self.live.start()
            elif isinstance(event, RunFinished):
                self.live.refresh()
        if isinstance(event, RunFinished):
            self.stop()
            if not self.interactive:
                self.console.print(summary_line(rec), soft_wrap=True)  # one line each: greppable logs

    def plain_line(self, name: str) -> Text:
        """One finished step, as printed when stderr is not a terminal."""
        rec = self.recorder.record
        assert rec is not None
        step = rec.steps[name]
        icon = {"succeeded": "ok", "reused": "reused", "failed": "FAILED", "skipped": "skipped"}.get(
            step.status, step.status)
        extra = f" ({clean(step.error)})" if step.error else ""
        if step.status == "succeeded" and step.calls:
            extra = f"  {step_stats(step)}"  # already cleaned
        below = below_threshold(step)
        if below is not None and step.status != "failed":
            icon, extra = "below", f" ({attempts_text(below)}, threshold {below.threshold:g})"
        return Text(f"  {icon:8} {clean(name)}{extra}", style="yellow" if icon == "below" else "")

    def render(self) -> Any:
        from rich.console import Group

        rec = self.recorder.record
        assert rec is not None
        return Group(step_tree(rec, self.streaming, width=max(40, self.console.width - 10)), summary_line(rec))

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    def note(self, text: str) -> None:
        self.console.print(Text(clean(text), style="dim"))
