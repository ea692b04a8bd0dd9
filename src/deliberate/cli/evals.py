"""``deliberate evals list | show | diff | merge``, and the rendering of an eval's report (tables
and plain sentences) that ``deliberate eval`` shares."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from ..safetext import markup
from .common import PLAIN_BELOW, err_console, fail, list_console, out_console, print_json

evals_app = typer.Typer(help="Evals recorded under evals/: list, show, diff, merge.", invoke_without_command=True)


@evals_app.callback()
def _evals_default(ctx: typer.Context) -> None:
    if ctx.invoked_subcommand is None:
        list_evals(limit=20, json_out=False)


@evals_app.command("list")
def list_evals(
    limit: int = typer.Option(20, "--limit", "-n", min=1, help="Show the newest N evals."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document on stdout."),
) -> None:
    """Recorded evals, newest first."""
    from ..eval.analysis import arm_rows
    from ..eval.record import evals_dir, list_records

    rows = []
    for rec in list_records(evals_dir(), limit):
        flow = next((r for r in arm_rows(rec) if r["arm"] == "flow"), None)
        rows.append({"eval_id": rec.eval_id, "created_at": rec.created_at, "status": rec.status, "flow": rec.flow,
                     "dataset": rec.dataset, "scorer": rec.scorer, "arms": [a.name for a in rec.arms],
                     "items": len(rec.item_ids), "done": sum(len(i.arms) == len(rec.arms) for i in rec.items.values()),
                     "flow_pass_rate": flow["pass_rate"] if flow else None})
    if json_out:
        print_json(rows)
        return
    list_table(rows)


@evals_app.command("show")
def show(
    eval_id: str = typer.Argument(..., help="An eval id (or unique prefix), or a path."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document on stdout."),
    html: Path = typer.Option(None, "--html", help="Write a self-contained HTML report here."),
) -> None:
    """An eval's report: arms, paired comparisons, rounds, judge audit."""
    from ..eval.analysis import analyse
    from ..eval.record import evals_dir, find, load

    rec = load(find(eval_id, evals_dir()))
    report = analyse(rec)
    if html is not None:
        from ..eval.report import write_report

        write_report(rec, report, html)
    if json_out:
        print_json(report)
    else:
        render(report)


@evals_app.command("diff")
def diff(
    a: str = typer.Argument(..., help="The first eval."),
    b: str = typer.Argument(..., help="The second eval."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document on stdout."),
) -> None:
    """Two evals on their common items: each arm's pass rate in both, and A's flow against B's
    (paired, McNemar)."""
    from ..eval.compare import diff_evals
    from ..eval.record import evals_dir, find, load

    doc = diff_evals(load(find(a, evals_dir())), load(find(b, evals_dir())))
    if json_out:
        print_json(doc)
        return
    diff_table(doc)


@evals_app.command("merge")
def merge(
    eval_ids: list[str] = typer.Argument(..., help="The shards to join (two or more)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document on stdout."),
) -> None:
    """Join the shards of one eval (run with --shard i/N) into a new eval record."""
    from ..eval import record as store
    from ..eval.analysis import analyse

    if len(eval_ids) < 2:
        fail("evals merge needs two or more eval ids")
    records = [store.load(store.find(e, store.evals_dir())) for e in eval_ids]
    merged = store.merge(records, store.new_id())
    path = store.save(merged, store.evals_dir())
    report = analyse(merged)
    if json_out:
        print_json({**report, "record": str(path)})
    else:
        render(report)
        err_console().print(f"[dim]merged eval record: {markup(path)}[/]")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def render(report: dict[str, Any]) -> None:
    """An eval's report on stdout: arms with intervals and compute, comparisons, verdict lines,
    per-round scores, flips and the judge audit."""
    from rich import box
    from rich.table import Table

    con = out_console()
    status = report["status"] + (f" ({report['stop_reason']})" if report.get("stop_reason") else "")
    con.print(f"[bold]eval {markup(report['eval_id'])}[/]: flow {markup(report['flow'])} on "
              f"{markup(report['dataset'])}, scorer {markup(report['scorer'])}, {report['done']}/{report['items']} "
              f"items, {markup(status)}", soft_wrap=True)
    # compact, so an 80-column terminal shows every column whole; the verdict lines below spell it out
    graded = any(r["pass_rate"] is None or abs(r["score"] - r["pass_rate"]) > 1e-9 for r in report["arms"])
    t = Table("arm", "k", "n", "pass", "95% CI", *(["score"] if graded else []), "calls", "tokens", "$",
              "s", title="arms (calls, tokens, $ and s per item)", box=box.SIMPLE_HEAD, pad_edge=False)
    for r in report["arms"]:
        t.add_row(markup(r["flow"] if r["arm"] == "flow" else r["arm"]), str(r["k"] or ""), str(r["n"]),
                  _pct(r["pass_rate"]), f"{100 * r['wilson'][0]:.0f}-{100 * r['wilson'][1]:.0f}%",
                  *([f"{r['score']:.3f}"] if graded else []), f"{r['calls_per_item']:.2f}",
                  f"{r['tokens_per_item']:.0f}", f"{r['cost_usd']:.4f}", f"{r['latency_s_per_item']:.1f}")
    con.print(t)
    if report["comparisons"]:
        c = Table("flow vs", "n", "won", "lost", "diff", "95% CI", "test", "p", "p Holm",
                  title="paired comparisons (won/lost: items only one side got right)", box=box.SIMPLE_HEAD,
                  pad_edge=False)
        for x in report["comparisons"]:
            c.add_row(markup(x["baseline"]), str(x["n"]), str(x["flow_wins"]), str(x["baseline_wins"]),
                      f"{x['difference']:+.3f}", f"{x['interval'][0]:+.2f}..{x['interval'][1]:+.2f}", x["test"],
                      f"{x['p_value']:.3g}", f"{x['p_holm']:.3g}")
        con.print(c)
    for line in report["verdict"]:
        con.print(f"- {markup(line)}", soft_wrap=True)
    for x in report["comparisons"]:
        ids = [str(d["id"]) for d in x["disagreements"]]
        if ids:
            more = f" and {len(ids) - 20} more" if len(ids) > 20 else ""
            con.print(f"  flow and {markup(x['baseline'])} disagree on item ids: {markup(', '.join(ids[:20]))}{more}",
                      soft_wrap=True)
    rounds = report["rounds"]
    if rounds["stages"]:
        s = Table("stage", "n", "score", "pass rate", title="the flow's answer at each stage", box=box.SIMPLE_HEAD,
                  pad_edge=False)
        for st in rounds["stages"]:
            s.add_row(markup(st["stage"]), str(st["n"]), f"{st['score']:.3f}", _pct(st["pass_rate"]))
        con.print(s)
        f = rounds["flips"]
        rate = rounds.get("abandoned_right_rate")
        con.print(f"flips across rounds: right->wrong {f.get('right_to_wrong', 0)}, "
                  f"wrong->right {f.get('wrong_to_right', 0)}; right answers abandoned: {_pct(rate)}", soft_wrap=True)
    judge = report.get("judge")
    if judge:
        agree = _pct(judge["scorer_agreement"])
        con.print(f"judge audit: {judge['pairs']} pairwise verdicts asked in both orders, "
                  f"{judge['position_flips']} flipped with the order ({_pct(judge['flip_rate'])}, counted as ties); "
                  f"agreement with the scorer {agree} of {judge['scorer_comparable']}", soft_wrap=True)


def list_table(rows: list[dict[str, Any]]) -> None:
    from rich import box
    from rich.table import Table

    if not rows:
        err_console().print("no evals yet under evals/ (run 'deliberate eval FLOW DATASET')")
        return
    con = list_console()
    if con.width < PLAIN_BELOW:  # no room for a table: the id, status and flow of each eval, a line each
        for r in rows:
            con.print(f"{r['eval_id']}  {r['status']}  {markup(r['flow'])}", soft_wrap=True)
        return
    wide = con.width >= 130  # room for every column; a narrower one keeps the id whole and drops three
    t = Table(box=box.HEAVY_HEAD if wide else box.SIMPLE_HEAD,
              caption=None if wide else "dataset, scorer, arms: evals show, --json or a wider terminal")
    columns = ["id", "status", "flow"] + (["dataset", "scorer", "arms"] if wide else []) + ["done", "flow pass rate"]
    for col in columns:
        # the id whole whatever the width (what show, diff and merge take); the rest fold
        t.add_column(col, overflow="fold", no_wrap=col == "id", min_width=26 if col == "id" else None)
    for r in rows:
        cells = [r["eval_id"], r["status"], markup(r["flow"])]
        if wide:
            cells += [markup(r["dataset"]), markup(r["scorer"]), markup(", ".join(r["arms"]))]
        t.add_row(*cells, f"{r['done']}/{r['items']}", _pct(r["flow_pass_rate"]))
    con.print(t)


def diff_table(doc: dict[str, Any]) -> None:
    from rich.table import Table

    con = out_console()
    con.print(f"[bold]{markup(doc['a'])}[/] vs [bold]{markup(doc['b'])}[/] on {doc['common']} common items")
    t = Table("arm", "pass rate A", "pass rate B", "change")
    for r in doc["arms"]:
        t.add_row(markup(r["arm"]), _pct(r["a"]), _pct(r["b"]),
                  "-" if r["a"] is None or r["b"] is None else f"{100 * (r['b'] - r['a']):+.1f} pts")
    con.print(t)
    if doc.get("flow"):
        f = doc["flow"]
        con.print(f"flow B vs flow A: {f['difference']:+.3f} [{f['interval'][0]:+.3f}, {f['interval'][1]:+.3f}], "
                  f"{f['test']} p={f['p_value']:.4g}: {markup(f['verdict'])}", soft_wrap=True)
