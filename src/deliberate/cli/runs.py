"""``deliberate runs``, ``replay``, ``resume`` and ``cache``.

A record is untrusted input: whatever of it reaches the terminal goes through
:mod:`deliberate.safetext` (``markup`` inside a Rich markup string, ``clean`` in a ``Text``), and
a path is made from a run id only by :func:`deliberate.records.store.record_path`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..safetext import clean, markup
from .common import PLAIN_BELOW, err_console, fail, list_console, out_console, print_json

if TYPE_CHECKING:
    from ..records.schema import RunRecord
    from ..services import ReplayOutcome

runs_app = typer.Typer(help="Recorded runs under runs/.", invoke_without_command=True)
cache_app = typer.Typer(help="The response cache of deterministic calls.", invoke_without_command=True)


def _runs_dir() -> Path:
    from ..config import get_settings

    return get_settings().runs_dir


def _when(ts: float, seconds: bool = True) -> str:
    import datetime as dt

    try:
        return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S" if seconds else "%m-%d %H:%M")
    except (OverflowError, ValueError, OSError):  # a time no clock shows (a hand-edited record)
        return "-"


def _cell(value: object) -> Any:
    """A table cell of record text: Rich reads a plain string cell as markup, never a ``Text``."""
    from rich.text import Text

    return Text(clean(value))


@runs_app.callback()
def _runs_default(ctx: typer.Context) -> None:
    if ctx.invoked_subcommand is None:
        list_runs(limit=20, json_out=False)


@runs_app.command("list")
def list_runs(limit: int = typer.Option(20, "--limit", "-n", min=1, help="Show the newest N runs."),
              json_out: bool = typer.Option(False, "--json", help="Print one JSON document on stdout.")) -> None:
    """Recent runs, newest first."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    from ..records.store import list_records

    recs = list_records(_runs_dir(), limit)
    if json_out:
        print_json([r.summary() for r in recs])
        return
    if not recs:
        err_console().print(f"no runs in {markup(_runs_dir())}")
        return
    con = list_console()
    if con.width < PLAIN_BELOW:  # no room for a table: the id, status and flow of each run, a line each
        for r in recs:
            con.print(Text("  ").join([_cell(r.run_id), _cell(r.status), _cell(r.flow_name)]), soft_wrap=True)
        return
    wide = con.width >= 125  # room for every column; a narrower one keeps the id whole and drops three
    table = Table(title=f"runs in {markup(_runs_dir())}", box=box.HEAVY_HEAD if wide else box.SIMPLE_HEAD,
                  caption=None if wide else "calls, tokens, wall time: runs show, --json or a wider terminal")
    columns = ("run id", "when", "flow", "status") + (("calls", "cost", "tokens", "wall") if wide else ("cost",))
    for col in columns:
        # the id whole whatever the width (it is what replay, resume and show take); the rest fold
        table.add_column(col, overflow="fold", no_wrap=col == "run id", min_width=26 if col == "run id" else None)
    for r in recs:
        t = r.totals
        cells = [_cell(r.run_id), _when(r.created_at, seconds=wide), _cell(r.flow_name), _cell(r.status)]
        if wide:
            cells += [str(t.calls), f"${t.cost_usd:.4f}", str(t.prompt_tokens + t.completion_tokens),
                      f"{t.wall_s:.1f}s"]
        else:
            cells.append(f"${t.cost_usd:.4f}")
        table.add_row(*cells)
    con.print(table)


@runs_app.command("show")
def show_run(run: str = typer.Argument(..., help="Run id, id prefix or record path."),
             json_out: bool = typer.Option(False, "--json", help="Print one JSON document on stdout.")) -> None:
    """One run: every step with its output, model, tokens and cost."""
    _show(run, json_out)


def _show(run: str, json_out: bool) -> None:
    from ..records.store import find, load
    from ..ui.render import answer, full_view

    rec = load(find(run, _runs_dir()))
    if json_out:
        print_json({**rec.summary(), "output": rec.output})
        return
    err_console().print(full_view(rec, verbose=True))  # ui.render cleans what it shows
    if rec.output is not None:
        out_console().print(answer(rec))
    elif rec.error:
        err_console().print(f"[red]{markup(rec.error)}[/]")


@runs_app.command("diff")
def diff_runs(a: str = typer.Argument(..., help="Run id, id prefix or record path."),
              b: str = typer.Argument(..., help="Run id, id prefix or record path."),
              json_out: bool = typer.Option(False, "--json", help="Print one JSON document on stdout.")) -> None:
    """Compare two runs step by step (outputs, models, tokens, cost)."""
    import difflib

    from rich.table import Table
    from rich.text import Text

    from ..records.replay import compare
    from ..records.store import find, load

    ra, rb = load(find(a, _runs_dir())), load(find(b, _runs_dir()))
    rows = compare(ra, rb)
    if json_out:
        print_json({"a": ra.run_id, "b": rb.run_id, "same_output": ra.output == rb.output, "steps": rows,
                    "totals": {"a": ra.totals.to_dict(), "b": rb.totals.to_dict()}})
        return
    table = Table(title=f"{markup(ra.run_id)} ({markup(ra.flow_name)}) vs {markup(rb.run_id)} ({markup(rb.flow_name)})")
    for col in ("step", "output", "status", "models", "tokens", "cost"):
        table.add_column(col, overflow="fold")  # a model key cut short names no model
    for r in rows:
        fa, fb = r["a"], r["b"]
        table.add_row(_cell(r["step"]), "same" if r["same_output"] else "[yellow]differs[/]",
                      f"{fa['status']} / {fb['status']}",
                      _cell(f"{','.join(fa['models']) or '-'} / {','.join(fb['models']) or '-'}"),
                      f"{fa['tokens']} / {fb['tokens']}", f"${fa['cost_usd']:.4f} / ${fb['cost_usd']:.4f}")
    ta, tb = ra.totals, rb.totals
    table.add_section()
    table.add_row("[bold]total[/]", "same" if ra.output == rb.output else "[yellow]differs[/]",
                  f"{ra.status} / {rb.status}", "",
                  f"{ta.prompt_tokens + ta.completion_tokens} / {tb.prompt_tokens + tb.completion_tokens}",
                  f"${ta.cost_usd:.4f} / ${tb.cost_usd:.4f}")
    con = out_console()
    con.print(table)
    for r in rows:
        if r["same_output"]:
            continue
        lines = difflib.unified_diff((r["a"]["output"] or "").splitlines(), (r["b"]["output"] or "").splitlines(),
                                     f"{ra.run_id}:{r['step']}", f"{rb.run_id}:{r['step']}", lineterm="", n=2)
        text = "\n".join(list(lines)[:60])
        con.print(Text(clean(text or f"{r['step']}: outputs differ only in whitespace"), style="dim"))


def replay(
    record: str = typer.Argument(..., help="A run record (runs/<id>.json) or run id."),
    from_step: str = typer.Option(None, "--from", help="Re-run this step and everything downstream."),
    rerun: bool = typer.Option(False, "--rerun", help="Run the whole flow again with the same inputs."),
    verify: bool = typer.Option(False, "--verify", help="With --rerun: report steps whose output differs."),
    flow_file: Annotated[Path | None, typer.Option(
        "--flow", help="An edited flow file to use (with --from or --rerun).")] = None,
    model: Annotated[list[str] | None, typer.Option(
        "--model", "-m", help="KEY or STEP=KEY for the re-run steps.")] = None,
    html: Annotated[Path | None, typer.Option(
        "--html", help="Write a self-contained HTML report of the run (of the new run, with --from "
        "or --rerun).")] = None,
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="With --from or --rerun: no live view; only the answer."),
) -> None:
    """Show a recorded run without calling any model, or re-run it (all of it, or from a step)."""
    from ulid import ULID

    from ..flows.loader import load_flow
    from ..records.store import find, load
    from ..registry import Registry
    from ..services import ReplayRequest
    from ..services import replay as replay_service
    from .run import Presenter, parse_models

    if from_step and rerun:
        fail("--from and --rerun exclude each other")
    if verify and not rerun:
        fail("--verify goes with --rerun")
    if (flow_file or model) and not (from_step or rerun):
        fail("--flow and --model go with --from or --rerun")
    path = find(record, _runs_dir())
    rec = load(path)
    if not (from_step or rerun):
        if html is None:
            _show(str(path), json_out)
            return
        _write_report(rec, html)
        if json_out:
            print_json({"run_id": rec.run_id, "report": str(html)})
        else:
            err_console().print(f"report: {markup(html)}")
        return
    registry = Registry.load()
    request = ReplayRequest(rec, from_step=from_step, rerun=rerun, verify=verify,
                            flow=load_flow(flow_file, registry) if flow_file else None,
                            models=parse_models(model or []), run_id=str(ULID()))
    view = Presenter(json_out, quiet)
    try:
        outcome = view.call(lambda env: replay_service(request, env), registry)
    except typer.Exit as exc:  # Ctrl-C: say what the record says
        _interrupted(request.run_id, json_out)
        raise exc
    child = outcome.run.record
    doc = outcome.to_json()
    if html is not None and child is not None:
        _write_report(child, html)
        doc["report"] = str(html)
        if not json_out:
            err_console().print(f"report: {markup(html)}")
    view.show(outcome.run, doc)
    if outcome.verification is not None and not json_out:
        _say_verification(outcome)
    raise typer.Exit(outcome.exit_code)


def _interrupted(run_id: str | None, json_out: bool) -> None:
    """After Ctrl-C, the --json document from what the record holds."""
    from ..errors import RecordError
    from ..records.store import load, record_path

    if not json_out or run_id is None:
        return
    path = record_path(_runs_dir(), run_id)
    try:
        child = load(path)
    except RecordError:
        child = None
    print_json({"run_id": run_id, "status": child.status if child else "interrupted", "output": None,
                "record": str(path) if child else None, "error": child.error if child else "interrupted"})


def _say_verification(outcome: ReplayOutcome) -> None:
    v, parent = outcome.verification, outcome.parent.run_id
    assert v is not None
    con = err_console()
    if v.differs:
        con.print(f"[yellow]outputs differ[/] from {markup(parent)} in: {markup(', '.join(v.differs))}")
    else:
        con.print(f"[green]identical[/]: every step's output matches {markup(parent)}")
    for h in v.hints:
        con.print(f"[dim]{markup(h)}[/]")


def _write_report(rec: RunRecord, html: Path) -> None:
    from ..errors import InputError
    from ..records.report import write_report

    try:
        write_report(rec, html)
    except OSError as exc:
        raise InputError(f"cannot write the report: {exc.strerror or exc}", where=f"--html {html}") from None


def resume(
    record: str = typer.Argument(..., help="A run record (runs/<id>.json) or run id."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No live view; only the answer."),
) -> None:
    """Finish a run that crashed or was interrupted; finished steps are not called again."""
    from ..records.store import find
    from ..registry import Registry
    from ..services import ResumeRequest
    from ..services import resume as resume_service
    from .run import Presenter

    request = ResumeRequest(find(record, _runs_dir()), _runs_dir())
    view = Presenter(json_out, quiet)
    try:
        outcome = view.call(lambda env: resume_service(request, env), Registry.load())
    except typer.Exit:
        from ..records.store import load

        _interrupted(load(request.path).run_id, json_out)
        raise
    raise typer.Exit(view.show(outcome.run, outcome.to_json()))


@cache_app.callback()
def _cache_default(ctx: typer.Context) -> None:
    if ctx.invoked_subcommand is None:
        cache_list(json_out=False)


@cache_app.command("list")
def cache_list(json_out: bool = typer.Option(False, "--json", help="Print one JSON document on stdout.")) -> None:
    """Cached answers (deterministic calls only)."""
    from ..config import get_settings
    from ..gateway.layers import ResponseCache

    cache = ResponseCache(get_settings().response_cache())
    entries = cache.entries()
    size = sum(p.stat().st_size for p in entries)
    if json_out:
        print_json({"dir": str(cache.directory), "entries": len(entries), "bytes": size})
        return
    out_console().print(f"{len(entries)} cached answers, {size} bytes, in {markup(cache.directory)}")


@cache_app.command("clear")
def cache_clear(json_out: bool = typer.Option(False, "--json", help="Print one JSON document on stdout.")) -> None:
    """Delete every cached answer."""
    from ..config import get_settings
    from ..gateway.layers import ResponseCache

    n = ResponseCache(get_settings().response_cache()).clear()
    if json_out:
        print_json({"removed": n})
        return
    out_console().print(f"removed {n} cached answers")
