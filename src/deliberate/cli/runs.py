"""``deliberate runs``, ``replay``, ``resume`` and ``cache``."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import err_console, fail, out_console, print_json

runs_app = typer.Typer(help="Recorded runs under runs/.", invoke_without_command=True)
cache_app = typer.Typer(help="The response cache of deterministic calls.", invoke_without_command=True)


def _runs_dir() -> Path:
    from ..config import get_settings

    return get_settings().runs_dir


@runs_app.callback()
def _runs_default(ctx: typer.Context) -> None:
    if ctx.invoked_subcommand is None:
        list_runs(limit=20, json_out=False)


@runs_app.command("list")
def list_runs(limit: int = typer.Option(20, "--limit", "-n", min=1),
              json_out: bool = typer.Option(False, "--json")) -> None:
    """Recent runs, newest first."""
    import datetime as dt

    from rich.table import Table

    from ..records.store import list_records

    recs = list_records(_runs_dir(), limit)
    if json_out:
        print_json([r.summary() for r in recs])
        return
    if not recs:
        err_console().print(f"no runs in {_runs_dir()}")
        return
    table = Table(title=f"runs in {_runs_dir()}")
    for col in ("run id", "when", "flow", "status", "calls", "tokens", "cost", "wall"):
        table.add_column(col)
    for r in recs:
        t = r.totals
        when = dt.datetime.fromtimestamp(r.created_at).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(r.run_id, when, r.flow_name, r.status, str(t.calls),
                      str(t.prompt_tokens + t.completion_tokens), f"${t.cost_usd:.4f}", f"{t.wall_s:.1f}s")
    out_console().print(table)


@runs_app.command("show")
def show_run(run: str = typer.Argument(..., help="Run id, id prefix or record path."),
             json_out: bool = typer.Option(False, "--json")) -> None:
    """One run: every step with its output, model, tokens and cost."""
    _show(run, json_out)


def _show(run: str, json_out: bool) -> None:
    from ..records.store import find, load
    from ..ui.render import answer, full_view

    rec = load(find(run, _runs_dir()))
    if json_out:
        print_json({**rec.summary(), "output": rec.output})
        return
    err_console().print(full_view(rec, verbose=True))
    if rec.output is not None:
        out_console().print(answer(rec))
    elif rec.error:
        err_console().print(f"[red]{rec.error}[/]")


@runs_app.command("diff")
def diff_runs(a: str, b: str, json_out: bool = typer.Option(False, "--json")) -> None:
    """Compare two runs step by step (outputs, models, tokens, cost)."""
    from rich.table import Table

    from ..records.replay import compare
    from ..records.store import find, load

    ra, rb = load(find(a, _runs_dir())), load(find(b, _runs_dir()))
    rows = compare(ra, rb)
    if json_out:
        print_json({"a": ra.run_id, "b": rb.run_id, "steps": rows})
        return
    table = Table(title=f"{ra.run_id} vs {rb.run_id}")
    for col in ("step", "output", "status", "models", "tokens", "cost"):
        table.add_column(col)
    for r in rows:
        fa, fb = r["a"], r["b"]
        table.add_row(r["step"], "same" if r["same_output"] else "[yellow]differs[/]",
                      f"{fa['status']} / {fb['status']}", f"{','.join(fa['models'])} / {','.join(fb['models'])}",
                      f"{fa['tokens']} / {fb['tokens']}", f"${fa['cost_usd']:.4f} / ${fb['cost_usd']:.4f}")
    out_console().print(table)


def replay(
    record: str = typer.Argument(..., help="A run record (runs/<id>.json) or run id."),
    from_step: str = typer.Option(None, "--from", help="Re-run this step and everything downstream."),
    rerun: bool = typer.Option(False, "--rerun", help="Run the whole flow again with the same inputs."),
    verify: bool = typer.Option(False, "--verify", help="With --rerun: report steps whose output differs."),
    flow_file: Path = typer.Option(None, "--flow", help="With --from: an edited flow file to use."),
    model: list[str] = typer.Option([], "--model", "-m", help="KEY or STEP=KEY for the re-run steps."),
    html: Path = typer.Option(None, "--html", help="Write a self-contained HTML report of the run."),
    json_out: bool = typer.Option(False, "--json"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Show a recorded run without calling any model, or re-run it (all of it, or from a step)."""
    from ..engine.executor import RunOptions
    from ..flows.loader import load_flow
    from ..records.replay import plan_from, recorded_flow
    from ..records.store import find, load
    from ..registry import Registry
    from .run import execute, parse_models

    path = find(record, _runs_dir())
    rec = load(path)
    if html is not None:
        from ..records.report import write_report

        write_report(rec, html)
        err_console().print(f"report: {html}")
        if not (from_step or rerun):
            return
    if not (from_step or rerun):
        _show(str(path), json_out)
        return
    if from_step and rerun:
        fail("--from and --rerun exclude each other")
    if verify and not rerun:
        fail("--verify goes with --rerun")
    if flow_file and not from_step:
        fail("--flow goes with --from")
    registry = Registry.load()
    if rerun:
        loaded = recorded_flow(rec, registry)
        preset: dict[str, object] = {}
        notes = [f"re-running {rec.run_id} ({rec.flow_name}) with the same inputs and settings"]
        options_d = dict(rec.options)
    else:
        new_flow = load_flow(flow_file, registry) if flow_file else None
        plan = plan_from(rec, from_step, registry, new_flow)
        loaded, preset, notes, options_d = plan.loaded, plan.preset, plan.notes, plan.options
        notes.append(f"reusing {len(preset)} recorded step(s); re-running: {', '.join(plan.rerun)}")
    options = RunOptions.from_dict(options_d)
    options.models.update(parse_models(model))
    if not json_out:
        for n in notes:
            err_console().print(f"[dim]{n}[/]")
    code = execute(loaded, dict(rec.inputs), options, registry, json_out=json_out and not verify, quiet=quiet,
                   record=True, preset=preset, parent_run_id=rec.run_id)
    if verify:
        from ..records.replay import compare
        from ..records.store import list_records

        child = next((r for r in list_records(_runs_dir(), 50) if r.parent_run_id == rec.run_id), None)
        if child is None:
            fail("the re-run left no record to compare", 1)
        rows = [r for r in compare(rec, child) if not r["same_output"]]
        if json_out:
            print_json({"run_id": child.run_id, "parent_run_id": rec.run_id, "identical": not rows,
                        "differs": [r["step"] for r in rows]})
        else:
            con = err_console()
            if rows:
                con.print(f"[yellow]outputs differ[/] in: {', '.join(r['step'] for r in rows)}")
            else:
                con.print("[green]every step's output is identical to the recorded run[/]")
        if rows and code == 0:
            code = 1
    raise typer.Exit(code)


def resume(
    record: str = typer.Argument(..., help="A run record (runs/<id>.json) or run id."),
    json_out: bool = typer.Option(False, "--json"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Finish a run that crashed or was interrupted; finished steps are not called again."""
    from ..engine.executor import RunOptions
    from ..records.replay import plan_resume
    from ..records.store import find, load
    from ..registry import Registry
    from .run import execute

    rec = load(find(record, _runs_dir()))
    registry = Registry.load()
    plan = plan_resume(rec, registry)
    notes = [f"resuming {rec.run_id}: {len(plan.preset)} finished step(s) kept; running: {', '.join(plan.rerun)}"]
    if not json_out:
        for n in notes:
            err_console().print(f"[dim]{n}[/]")
    code = execute(plan.loaded, plan.inputs, RunOptions.from_dict(plan.options), registry, json_out=json_out,
                   quiet=quiet, record=True, preset=plan.preset, run_id=rec.run_id, resume_from=rec)
    raise typer.Exit(code)


@cache_app.callback()
def _cache_default(ctx: typer.Context) -> None:
    if ctx.invoked_subcommand is None:
        cache_list(json_out=False)


@cache_app.command("list")
def cache_list(json_out: bool = typer.Option(False, "--json")) -> None:
    """Cached answers (deterministic calls only)."""
    from ..config import get_settings
    from ..gateway.layers import ResponseCache

    cache = ResponseCache(get_settings().response_cache())
    entries = cache.entries()
    size = sum(p.stat().st_size for p in entries)
    if json_out:
        print_json({"dir": str(cache.directory), "entries": len(entries), "bytes": size})
        return
    out_console().print(f"{len(entries)} cached answers, {size} bytes, in {cache.directory}")


@cache_app.command("clear")
def cache_clear(json_out: bool = typer.Option(False, "--json")) -> None:
    """Delete every cached answer."""
    from ..config import get_settings
    from ..gateway.layers import ResponseCache

    n = ResponseCache(get_settings().response_cache()).clear()
    if json_out:
        print_json({"removed": n})
        return
    out_console().print(f"removed {n} cached answers")
