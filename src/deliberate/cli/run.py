"""``deliberate run`` and ``deliberate generate``."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import typer

from ..safetext import markup
from .common import err_console, error_markup, fail, out_console, print_json


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
    no_record: bool = typer.Option(False, "--no-record", help="Do not write runs/<id>.json."),
    cache: bool = typer.Option(False, "--cache", help="Reuse cached answers of deterministic calls."),
) -> None:
    """Run a flow on a prompt, live, and record it under runs/."""
    from .._api import input_limit
    from ..engine.executor import RunOptions
    from ..flows.loader import load_flow
    from ..registry import Registry

    registry = Registry.load()
    loaded = load_flow(flow, registry)
    inputs = parse_inputs(input, input_limit(registry))
    if prompt is not None:
        from .._api import prompt_input

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
    code = execute(loaded, inputs, options, registry, json_out=json_out, quiet=quiet,
                   record=not no_record, cache=True if cache else None)
    raise typer.Exit(code)


def execute(loaded: Any, inputs: dict[str, Any], options: Any, registry: Any, *, json_out: bool,
            quiet: bool, record: bool, cache: bool | None = None, preset: dict[str, Any] | None = None,
            parent_run_id: str | None = None, run_id: str | None = None, notes: list[str] | None = None,
            resume_from: Any = None, parent_record: Any = None) -> int:
    """Run with the live view (or JSON) and return the exit code."""
    from .._api import run_flow_async
    from ..config import get_settings
    from ..gateway.gateway import Gateway
    from ..gateway.layers import ResponseCache
    from ..ui.live import LiveView
    from ..ui.render import answer

    settings = get_settings()
    console = err_console()

    def progress(message: str) -> None:
        if not json_out:
            console.print(f"[dim]{markup(message)}[/]", highlight=False)

    gateway = Gateway(registry, settings=settings,  # run_flow_async sets the budget from options
                      # cache: True/False from the caller wins; None follows DELIBERATE_CACHE
                      cache=ResponseCache(settings.response_cache())
                      if (settings.cache if cache is None else cache) else None,
                      progress=progress)
    subscribers: list[Any] = []
    view = None
    if not json_out and not quiet:
        view = LiveView(console)
        subscribers.append(view)
        for n in notes or []:
            view.note(n)
    try:
        outcome = asyncio.run(run_flow_async(loaded, inputs, options, registry=registry, gateway=gateway,
                                             subscribers=subscribers, record=record, preset=preset,
                                             parent_run_id=parent_run_id, run_id=run_id,
                                             base_record=resume_from, parent_record=parent_record))
    except KeyboardInterrupt:
        if view:
            view.stop()
        console.print("[yellow]interrupted[/]: finished steps are kept in the record; "
                      "continue with 'deliberate resume runs/<id>.json'")
        return 130
    finally:
        if view:
            view.stop()
    result, rec = outcome.result, outcome.recorder.record
    if json_out:
        print_json({"run_id": result.run_id, "status": result.status, "output": result.output,
                    "output_step": result.output_step, "record": str(outcome.record_path) if outcome.record_path else None,
                    "error": result.error, "below_threshold": result.below_threshold,
                    "summary": rec.summary() if rec is not None else None})
        return result.exit_code
    if result.status == "succeeded" and rec is not None:
        out_console().print(answer(rec))
    else:
        console.print(error_markup(result.error), soft_wrap=True)
    if outcome.record_path and not quiet:
        console.print(f"[dim]record: {markup(outcome.record_path)}[/]")
    return result.exit_code


def generate(
    prompt: str = typer.Argument(..., help="The prompt; '-' reads stdin."),
    model: str = typer.Option(None, "--model", "-m", help="Model key (default: the registry default)."),
    strategy: str = typer.Option(None, "--strategy", "-s", help="Strategy name."),
    system: str = typer.Option(None, "--system", help="A system message."),
    max_tokens: int = typer.Option(None, "--max-tokens", min=1),
    seed: int = typer.Option(None, "--seed"),
    max_cost: float = typer.Option(None, "--max-cost", min=0),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    no_record: bool = typer.Option(False, "--no-record"),
) -> None:
    """Direct mode: one gateway call, recorded as a one-step run."""
    from .._api import input_limit
    from ..engine.executor import RunOptions
    from ..flows.loader import load_flow_data
    from ..registry import Registry

    registry = Registry.load()
    if prompt == "-":
        prompt = read_stdin(input_limit(registry))
    # The prompt and the system text are data, not templates: they go in as inputs, so braces in
    # them ("{{", "{%") are sent as written.
    step: dict[str, Any] = {"prompt": "{{ prompt }}"}
    inputs: dict[str, Any] = {"prompt": {"description": "the prompt"}}
    values = {"prompt": prompt}
    if system:
        step["system"] = "{{ system }}"
        inputs["system"] = {"description": "the system message"}
        values["system"] = system
    if max_tokens:
        step["max_tokens"] = max_tokens
    data = {"name": "generate", "description": "Direct mode: one call.",
            "inputs": inputs, "steps": {"answer": step}, "output": "answer"}
    loaded = load_flow_data(data, "generate", registry)
    options = RunOptions(models={"*": model} if model else {}, strategy=strategy, seed=seed, max_cost=max_cost)
    raise typer.Exit(execute(loaded, values, options, registry, json_out=json_out,
                             quiet=quiet, record=not no_record))
