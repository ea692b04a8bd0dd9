"""``deliberate run`` and ``deliberate generate``."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from ..safetext import markup
from .common import err_console, error_markup, fail, out_console, print_json

if TYPE_CHECKING:
    from rich.console import Console

    from ..services import RunOutcome, Services
    from ..ui.live import LiveView


def read_stdin(limit: int) -> str:
    """stdin as text, refusing (without reading on) more than ``limit`` characters."""
    text = sys.stdin.read(limit + 1)
    if len(text) > limit:
        fail(f"PROMPT '-': stdin holds more than {limit:,} characters, more than any configured "
             "model's context window could take (pass a smaller input, or add a model with a larger "
             "context_window to models.yaml)")
    return text


def parse_inputs(pairs: list[str], limit: int | None = None) -> dict[str, Any]:
    """``k=v`` and ``k=@file`` pairs; a file over ``limit`` bytes is refused unread."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            fail(f"--input {pair!r}: expected NAME=VALUE or NAME=@FILE")
        name, value = pair.split("=", 1)
        if value.startswith("@"):
            path = Path(value[1:])
            if not path.is_file():
                fail(f"--input {name}: no such file {str(path)!r}")
            if limit is not None and path.stat().st_size > limit * 4:  # 4: the most bytes a character takes
                fail(f"--input {name}: {str(path)!r} is {path.stat().st_size:,} bytes, more than any "
                     "configured model's context window could take (pass a smaller file)")
            try:
                value = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                fail(f"--input {name}: {str(path)!r} is not UTF-8 text")
        out[name.strip()] = value
    return out


def parse_models(values: list[str]) -> dict[str, str]:
    """``--model KEY`` (every step) or ``--model STEP=KEY``."""
    out: dict[str, str] = {}
    for v in values:
        if "=" in v:
            step, key = v.split("=", 1)
            out[step.strip()] = key.strip()
        else:
            out["*"] = v.strip()
    return out


def run(
    flow: str = typer.Argument(..., help="A packaged or user flow name, or a flow file."),
    prompt: str = typer.Argument(None, help="The prompt (fills the 'prompt' input); '-' reads stdin."),
    input: list[str] = typer.Option([], "--input", "-i", help="NAME=VALUE or NAME=@FILE (repeatable)."),
    model: list[str] = typer.Option([], "--model", "-m", help="KEY for every step, or STEP=KEY."),
    strategy: str = typer.Option(None, "--strategy", "-s", help="Strategy for every step."),
    rounds: int = typer.Option(None, "--rounds", min=1, max=20, help="Override the flow's rounds max."),
    max_cost: float = typer.Option(None, "--max-cost", min=0, help="Stop before spending more (USD)."),
    seed: int = typer.Option(None, "--seed", help="Sampling seed (reproducible local runs)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No live view; only the answer."),
    no_record: bool = typer.Option(False, "--no-record", help="Do not write the run record."),
    cache: bool = typer.Option(False, "--cache", help="Reuse cached answers of deterministic calls."),
) -> None:
    """Run a flow on a prompt, live, and record it under runs/."""
    from ..engine.executor import RunOptions
    from ..flows.loader import load_flow
    from ..registry import Registry
    from ..services import OutputOptions, RunRequest, input_limit, prompt_input
    from ..services import run as run_service

    registry = Registry.load()
    loaded = load_flow(flow, registry)
    inputs = parse_inputs(input, input_limit(registry))
    if prompt is not None:
        name = prompt_input(loaded.flow)
        if name is None:
            fail(f"flow {loaded.flow.name!r} takes no inputs; drop the PROMPT argument")
        if prompt == "-":
            prompt = read_stdin(input_limit(registry))
            if not prompt.strip():
                fail("PROMPT '-': stdin was empty")
        if name in inputs:
            fail(f"input {name!r} given twice (as PROMPT and as --input)")
        inputs[name] = prompt
    options = RunOptions(models=parse_models(model), strategy=strategy, rounds=rounds, seed=seed,
                         max_cost=max_cost)
    request = RunRequest(loaded, inputs, options, OutputOptions(record=not no_record, cache=True if cache else None))
    view = Presenter(json_out, quiet)
    outcome = view.call(lambda env: run_service(request, env), registry)
    raise typer.Exit(view.show(outcome))


class Presenter:
    """The CLI's face over a service: a live view of the events (unless --json or --quiet), notes
    and loading progress on stderr, and the outcome: the answer on stdout, or one JSON document."""

    def __init__(self, json_out: bool, quiet: bool) -> None:
        self.json_out, self.quiet = json_out, quiet
        self.console: Console = err_console()
        self.view: LiveView | None = None

    def progress(self, message: str) -> None:
        if not self.json_out:
            self.console.print(f"[dim]{markup(message)}[/]", highlight=False)

    def services(self, registry: Any) -> Services:
        from ..config import get_settings
        from ..logs import configure
        from ..services import Services
        from ..ui.live import LiveView

        settings = get_settings()
        configure(settings)  # the CLI owns logging; the library never configures it
        subscribers: list[Any] = []
        if not self.json_out and not self.quiet:
            self.view = LiveView(self.console)
            subscribers.append(self.view)
        return Services(settings=settings, registry=registry, subscribers=subscribers, progress=self.progress)

    def call(self, service: Callable[[Services], Coroutine[Any, Any, Any]], registry: Any) -> Any:
        """Run ``service`` with the live view; Ctrl-C leaves the record resumable and exits 130."""
        env = self.services(registry)
        try:
            return asyncio.run(service(env))
        except KeyboardInterrupt:
            self.stop()
            self.console.print("[yellow]interrupted[/]: finished steps are kept in the record; "
                               "continue with 'deliberate resume runs/<id>.json'")
            raise typer.Exit(130) from None
        finally:
            self.stop()

    def stop(self) -> None:
        if self.view is not None:
            self.view.stop()

    def show(self, outcome: RunOutcome, doc: dict[str, Any] | None = None) -> int:
        """Render a run's outcome; return its exit code. ``doc``: the JSON document, when the
        caller has more to say than the run itself (replay)."""
        from ..ui.render import answer

        result, rec = outcome.result, outcome.record
        if self.json_out:
            print_json(doc if doc is not None else outcome.to_json())
            return result.exit_code
        if result.status == "succeeded" and rec is not None:
            out_console().print(answer(rec))
        else:
            self.console.print(error_markup(result.error), soft_wrap=True)
        if outcome.record_path and not self.quiet:
            self.console.print(f"[dim]record: {markup(outcome.record_path)}[/]")
        return result.exit_code


def generate(
    prompt: str = typer.Argument(..., help="The prompt; '-' reads stdin."),
    model: str = typer.Option(None, "--model", "-m", help="Model key (default: the registry default)."),
    strategy: str = typer.Option(None, "--strategy", "-s", help="Strategy name."),
    system: str = typer.Option(None, "--system", help="A system message."),
    max_tokens: int = typer.Option(None, "--max-tokens", min=1, help="Longest answer, in tokens (default: the "
                                   "strategy's, else MAX_TOKENS_DEFAULT)."),
    seed: int = typer.Option(None, "--seed", help="Sampling seed (reproducible local runs)."),
    max_cost: float = typer.Option(None, "--max-cost", min=0, help="Refuse the call if it could cost more (USD)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No live view; only the answer."),
    no_record: bool = typer.Option(False, "--no-record", help="Do not write the run record."),
) -> None:
    """Direct mode: one gateway call, recorded as a one-step run."""
    from ..registry import Registry
    from ..services import GenerateRequest, input_limit
    from ..services import generate as generate_service

    registry = Registry.load()
    if prompt == "-":
        prompt = read_stdin(input_limit(registry))
    request = GenerateRequest(prompt, model=model, strategy=strategy, system=system, max_tokens=max_tokens,
                              seed=seed, max_cost=max_cost, record=not no_record)
    view = Presenter(json_out, quiet)
    raise typer.Exit(view.show(view.call(lambda env: generate_service(request, env), registry)))
