"""``deliberate flows list | show | validate | schema``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from ..safetext import markup
from .common import err_console, error_markup, out_console, print_json

app = typer.Typer(help="List, show and validate flows.", no_args_is_help=False, invoke_without_command=True)


@app.callback()
def _default(ctx: typer.Context) -> None:
    if ctx.invoked_subcommand is None:
        list_flows(json_out=False)


@app.command("list")
def list_flows(json_out: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """The flows in the lookup order (current dir, $DELIBERATE_HOME, packaged)."""
    from rich.table import Table

    from ..flows.loader import available_flows, origin_of
    from ..yamlio import load_yaml_file

    rows: list[dict[str, Any]] = []
    for name, path in sorted(available_flows().items()):
        try:
            data, _ = load_yaml_file(path)
            desc = data.get("description", "") if isinstance(data, dict) else ""
            steps = len(data.get("steps") or {}) if isinstance(data, dict) else 0
        except Exception:
            desc, steps = "(unreadable)", 0
        rows.append({"name": name, "origin": origin_of(path), "path": str(path), "steps": steps,
                     "description": desc})
    if json_out:
        print_json(rows)
        return
    table = Table(title="flows")
    for col in ("name", "origin", "steps", "description"):
        table.add_column(col, overflow="fold", no_wrap=col != "description")
    for r in rows:
        table.add_row(*(markup(c) for c in (r["name"], r["origin"], r["steps"], r["description"])))
    out_console().print(table)


@app.command("show")
def show(
    flow: str = typer.Argument(..., help="Flow name or file."),
    mermaid: bool = typer.Option(False, "--mermaid", help="Print the graph as Mermaid."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document on stdout."),
) -> None:
    """A flow's inputs, steps, edges and output."""
    from rich.table import Table

    from ..flows.graph import mermaid as to_mermaid
    from ..flows.loader import load_flow
    from ..registry import Registry

    loaded = load_flow(flow, Registry.load())
    f = loaded.flow
    if mermaid:
        typer.echo(to_mermaid(f))
        return
    if json_out:
        print_json({"name": f.name, "source": loaded.source, "hash": loaded.hash, "order": loaded.order,
                    "output": loaded.output, "deps": {k: sorted(v) for k, v in loaded.deps.items()},
                    "flow": loaded.data})
        return
    con = out_console()
    con.print(f"[bold]{markup(f.name)}[/]  [dim]{markup(loaded.source)}[/]\n{markup(f.description)}\n")
    if f.inputs:
        con.print("[bold]inputs[/]")
        for n, i in f.inputs.items():
            dflt = f" (default: {i.default})" if i.default is not None else " (required)" if i.is_required else ""
            con.print(f"  {markup(n)}: {markup(i.description)}{markup(dflt)}")
    table = Table(title="steps (in order)")
    for col in ("step", "kind", "after", "model", "notes"):
        table.add_column(col)
    for n in loaded.order:
        s = f.steps[n]
        notes = []
        if s.for_each is not None:
            notes.append(f"for_each {s.for_each}")
        if s.when:
            notes.append(f"when {s.when}")
        if f.rounds and n in f.rounds.steps:
            notes.append("in rounds")
        if s.kind == "judge":
            notes.append(f"judges {s.target} >= {s.threshold:g}, retries {s.retries}")
        if s.kind == "vote":
            notes.append(f"votes over {s.from_}, tie: {s.tie}")
        table.add_row(*(markup(c) for c in (n, s.kind, ", ".join(sorted(loaded.deps[n])) or "-",
                                            s.model or f.defaults.model or "(default)", "; ".join(notes))))
    con.print(table)
    if f.rounds:
        r = f.rounds
        con.print(markup(f"rounds: {', '.join(r.steps)}, max {r.max}" + (f", until {r.until}" if r.until else "")
                         + (f", carry {r.carry}" if r.carry else "")))
    con.print(f"output: [bold]{markup(loaded.output)}[/]")


@app.command("validate")
def validate(
    files: list[Path] = typer.Argument(..., help="Flow files (or names) to check."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document on stdout."),
) -> None:
    """Check flow files without calling any model: schema, references, cycles, keys, templates."""
    from ..flows.loader import resolve_flow_path, validate_file
    from ..registry import Registry

    registry = Registry.load()
    report: list[dict[str, Any]] = []
    for f in files:
        path = resolve_flow_path(str(f)) if not f.exists() and f.suffix == "" else f
        problems = validate_file(path, registry)
        report.append({"file": str(path), "ok": not problems, "problems": [p.to_dict() for p in problems]})
    bad = sum(1 for r in report if not r["ok"])
    if json_out:
        print_json({"ok": bad == 0, "files": report})
    else:
        con = err_console()
        for r in report:
            if r["ok"]:
                con.print(f"[green]ok[/]    {markup(r['file'])}")
            for p in r["problems"]:
                loc = ":".join(str(x) for x in (p["file"], p["line"], p["column"]) if x is not None)
                hint = f" ({p['hint']})" if p["hint"] else ""
                con.print(error_markup(f"{loc}: {p['message']}{hint}"), soft_wrap=True)
    if bad:
        raise typer.Exit(2)


@app.command("schema")
def schema() -> None:
    """A JSON Schema of the flow format (for editors: yaml-language-server)."""
    from ..flows.spec import flow_json_schema

    print_json(flow_json_schema())
