"""``deliberate test``: flow tests with scripted replies (docs/testing.md)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from ..safetext import markup
from .common import err_console, error_markup, fail, print_json

if TYPE_CHECKING:
    from rich.console import Console

    from ..testing.api import TestRun


def test(
    paths: list[Path] = typer.Argument(None, help="Test files or folders (default: ./flows and ./*.test.yaml)."),
    keyword: str = typer.Option(None, "-k", help="Only cases whose file, flow or name holds these words "
                                                 "(and / or / not)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document on stdout."),
    junit: Path = typer.Option(None, "--junit", help="Write JUnit XML (one testcase per case) to FILE."),
    update: bool = typer.Option(False, "--update", help="Rewrite failing pinned values (output, calls, "
                                                        "rounds, status...) with what the run did."),
    record: Path = typer.Option(None, "--record", help="Turn a recorded run (runs/<id>.json) into a test "
                                                       "case, then run it."),
    out: Path = typer.Option(None, "--out", "-o", help="With --record: the test file to write or append "
                                                       "to (default: flows/tests/<flow>.yaml)."),
    name: str = typer.Option(None, "--name", help="With --record: the case's name."),
) -> None:
    """Run flow tests: each case runs its flow on scripted replies (no model is called).

    Checks the answer, calls, rounds, prompts, judges and votes. Exit 0 all pass, 1 a case
    failed, 2 a bad test file.
    """
    from ..testing.api import run_tests
    from ..testing.report import discover, junit_xml

    if record is not None:
        paths = [_record_case(record, out, name, json_out)]
    elif out is not None or name is not None:
        fail("--out and --name go with --record")
    files = discover(list(paths or []))
    if not files:
        fail("no test files under the paths given" if paths else
             "no test files found (looked for flows/tests/*.yaml and *.test.yaml)")
    outcome = asyncio.run(run_tests(files, keyword))
    if keyword and not outcome.problems and not outcome.results:
        fail(f"-k {keyword!r}: no case matches (it is matched against each case's file, flow and name)")
    if update and outcome.results and _update(outcome, json_out):
        outcome = asyncio.run(run_tests(files, keyword))  # the updated files, checked again
    if junit is not None and outcome.results:
        junit_xml(outcome.results, junit)
    if json_out:
        print_json(outcome.to_json())
    else:
        _render(outcome, err_console(), junit)
    raise typer.Exit(outcome.exit_code)


def _record_case(record: Path, out: Path | None, name: str | None, quiet: bool) -> Path:
    from ..config import get_settings
    from ..records.store import find, load
    from ..testing.record import write_case

    rec = load(find(str(record), get_settings().runs_dir))
    target = out or Path("flows") / "tests" / f"{rec.flow_name}.yaml"
    write_case(rec, target, name)
    if not quiet:
        err_console().print(f"wrote a case replaying run {markup(rec.run_id)} to {markup(str(target))}")
    return target


def _update(outcome: TestRun, quiet: bool) -> bool:
    from ..testing.update import update_files

    changed = update_files(outcome.results)
    for path, n in changed.items():
        if not quiet:
            err_console().print(f"updated {n} expectation(s) in {markup(path)} (its comments were not kept); "
                                "checking again")
    return bool(changed)


def _render(outcome: TestRun, con: Console, junit: Path | None) -> None:
    from ..testing.report import diff_text

    for p in outcome.problems:
        loc, hint = p.location(), f" ({p.hint})" if p.hint else ""
        con.print(error_markup(f"{loc}: {p.message}{hint}"), soft_wrap=True)
    if outcome.problems:
        return
    current = None
    for r in outcome.results:
        if r.file != current:
            current = r.file
            con.print(f"[bold]{markup(r.file)}[/] [dim]({markup(r.flow)})[/]")
        mark = "[green]PASS[/]" if r.passed else "[red]FAIL[/]"
        where = "" if r.passed or r.line is None else f" [dim]({markup(r.file)}:{r.line})[/]"
        con.print(f"  {mark} {markup(r.case)} [dim]{r.seconds * 1000:.0f} ms[/]{where}", soft_wrap=True)
        for f in r.failures:
            con.print(f"       [red]{markup(f.what)}[/]: {markup(f.message)}", soft_wrap=True)
            for line in diff_text(f):
                style = "red" if line.startswith("-") else "green" if line.startswith("+") else "dim"
                con.print(f"         [{style}]{markup(line)}[/]", soft_wrap=True)
    for u in outcome.unused:
        con.print(error_markup(u), soft_wrap=True)
    passed = sum(r.passed for r in outcome.results)
    failed = len(outcome.results) - passed
    summary = f"{passed} passed" + (f", [red]{failed} failed[/]" if failed else "")
    seconds = sum(r.seconds for r in outcome.results)
    con.print(f"[bold]{summary}[/] in {len(outcome.files)} file(s), {seconds:.2f}s of runs; no model was called"
              + (f"; JUnit XML in {markup(str(junit))}" if junit else ""))
