"""``deliberate eval`` and ``deliberate evals list | show | diff | merge``: parse, call the eval
service, render. The live progress bar lives here, never in the service."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from ..safetext import markup
from .common import err_console, fail, print_json

if TYPE_CHECKING:
    from ..eval.runner import EvalProgress

def parse_fail_under(values: list[str], baselines: list[str]) -> list[tuple[str, float]]:
    """``METRIC=VALUE`` pairs; the metric must be one the report has."""
    out = []
    arms = {"flow", *baselines}
    for v in values:
        name, sep, raw = v.partition("=")
        name = name.strip()
        try:
            value = float(raw)
        except ValueError:
            value = float("nan")
        if not sep or value != value:
            fail(f"--fail-under {v!r}: expected METRIC=NUMBER, like pass_rate=0.8 or delta_vs_single=0")
        arm, _, field = name.rpartition(".")
        ok = (name.startswith("delta_vs_") and name.removeprefix("delta_vs_") in baselines) or \
             (field in ("pass_rate", "score") and (not arm or arm in arms))
        if not ok:
            fail(f"--fail-under {v!r}: unknown metric {name!r} (use pass_rate, score, ARM.pass_rate or "
                 f"delta_vs_BASELINE with a baseline of this eval: {', '.join(baselines) or 'none'})")
        out.append((name, value))
    return out


class Bar:
    """The live progress bar on stderr: items done, pass rate so far per arm, cost, ETA."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("[bold]eval[/]"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                                 TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                 TextColumn("{task.description}"), console=err_console(), transient=False)
        self.task: Any = None

    def __call__(self, ev: EvalProgress) -> None:
        if self.task is None:
            self.progress.start()
            self.task = self.progress.add_task("", total=ev.total)
        rates = "  ".join(f"{a} {ev.passed.get(a, 0)}/{n}" for a, n in ev.scored.items())
        self.progress.update(self.task, completed=ev.done,
                             description=markup(f"{rates}  ${ev.cost_usd:.4f}"))
        if ev.kind == "finished":
            self.stop()

    def note(self, message: str) -> None:
        """A line above the bar (a model loading), through the bar's own console."""
        self.progress.console.print(f"[dim]{markup(message)}[/]", highlight=False)

    def stop(self) -> None:
        if self.task is not None:
            self.progress.stop()
            self.task = None


def eval_command(
    flow: str = typer.Argument(..., help="The flow under test: a packaged or user flow name, or a flow file."),
    dataset: str = typer.Argument(..., help="A .jsonl or .csv file, 'humaneval' or 'reasoning-gym:TASK?n=&seed='."),
    scorer: str = typer.Option(None, "--scorer", help="exact, includes, regex:PATTERN, numeric[:TOL], choice, "
                               "python:MOD:FUNC, code, judge[:RUBRIC], checker, or a plugin's."),
    baseline: list[str] = typer.Option([], "--baseline", "-b",
                                       help="single, self_consistency, best_of_judge or flow:OTHER (repeatable)."),
    match: str = typer.Option("calls", "--match", help="Match the sampled baselines' k on calls or tokens."),
    model: list[str] = typer.Option([], "--model", "-m", help="KEY for every step, or STEP=KEY."),
    strategy: str = typer.Option(None, "--strategy", "-s", help="Strategy for every call of every arm."),
    judge_model: str = typer.Option(None, "--judge-model", help="The judge's model (judge scorer, "
                                    "best_of_judge's pick, the pairwise audit)."),
    input: list[str] = typer.Option([], "--input", "-i", help="NAME=COLUMN: fill flow input NAME from COLUMN."),
    target: str = typer.Option(None, "--target", help="The column holding the reference (default: target)."),
    limit: int = typer.Option(None, "--limit", min=1, help="Run the first N items."),
    seed: int = typer.Option(None, "--seed", help="Sampling seed."),
    concurrency: int = typer.Option(4, "--concurrency", "-j", min=1, max=256, help="Items run at once."),
    shard: str = typer.Option(None, "--shard", help="i/N: run every N-th item from the i-th (join with evals merge)."),
    resume: str = typer.Option(None, "--resume", help="EVAL_ID: continue an interrupted eval."),
    max_cost: float = typer.Option(None, "--max-cost", min=0, help="Stop cleanly before spending more (USD)."),
    fail_under: list[str] = typer.Option([], "--fail-under", help="METRIC=VALUE: exit 1 when missed "
                                         "(pass_rate=0.8, delta_vs_single=0)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document on stdout."),
    html: Path = typer.Option(None, "--html", help="Write a self-contained HTML report here."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    allow_network_code: bool = typer.Option(False, "--allow-network-code",
                                            help="Let the code scorer run code where no network namespace is available."),
) -> None:
    """Was deliberating worth it? Run a flow on a dataset against compute-matched baselines."""
    from ..eval.datasets import parse_columns, parse_shard
    from ..eval.runner import EvalControl, EvalRequest
    from ..services.run import RunOptions
    from .run import parse_models

    thresholds = parse_fail_under(fail_under, [b.strip() for b in baseline])
    request = EvalRequest(flow, dataset, scorer=scorer, baselines=baseline, match=match,  # type: ignore[arg-type]
                          options=RunOptions(models=parse_models(model), strategy=strategy, seed=seed),
                          judge_model=judge_model, columns=parse_columns(input, target),
                          control=EvalControl(limit=limit, concurrency=concurrency, shard=parse_shard(shard),
                                              resume=resume, max_cost=max_cost),
                          allow_network_code=allow_network_code)
    outcome = _run(request, json_out or quiet)
    report = outcome.report
    if html is not None:
        from ..eval.report import write_report

        write_report(outcome.record, report, html)
    missed = _missed(report, thresholds)
    report["fail_under"] = [{"metric": m, "threshold": t, "value": v, "passed": v is not None and v >= t}
                            for m, t, v in _measured(report, thresholds)]
    if json_out:
        print_json({**report, "record": str(outcome.path)})
    else:
        show_report(report)
        err_console().print(f"[dim]eval record: {markup(outcome.path)}[/]")
    code = 1 if missed else outcome.exit_code
    if outcome.record.status == "stopped" and not json_out:
        err_console().print(f"[yellow]stopped[/]: {markup(outcome.record.stop_reason)}; finished items are "
                            f"kept: continue with --resume {outcome.record.eval_id}", soft_wrap=True)
    for m in missed:
        err_console().print(f"[red]fail-under[/]: {markup(m)}", soft_wrap=True)
    raise typer.Exit(code)


def _run(request: Any, silent: bool) -> Any:
    from ..config import get_settings
    from ..eval.runner import run_eval
    from ..logs import configure
    from ..services import Services

    settings = get_settings()
    configure(settings)
    con = err_console()
    bar = None if silent else Bar()
    env = Services(settings=settings, progress=bar.note if bar is not None else None)
    try:
        return asyncio.run(run_eval(request, env, bar))
    except KeyboardInterrupt:
        if bar is not None:
            bar.stop()
        con.print("[yellow]interrupted[/]: finished items are kept in the eval record; continue with "
                  "'deliberate eval ... --resume EVAL_ID' (see 'deliberate evals list')")
        raise typer.Exit(130) from None
    finally:
        if bar is not None:
            bar.stop()


def _measured(report: dict[str, Any], thresholds: list[tuple[str, float]]) -> list[tuple[str, float, float | None]]:
    from ..eval.analysis import metric

    return [(m, t, metric(report, m)) for m, t in thresholds]


def _missed(report: dict[str, Any], thresholds: list[tuple[str, float]]) -> list[str]:
    return [f"{m} is {'not measured' if v is None else f'{v:.4f}'}, under {t:g}"
            for m, t, v in _measured(report, thresholds) if v is None or v < t]


def show_report(report: dict[str, Any]) -> None:
    """The report as tables and plain sentences on stdout."""
    from .evals import render

    render(report)
