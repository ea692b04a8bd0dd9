"""What every command shares: consoles, JSON output, clean errors."""

from __future__ import annotations

import json
import os
import sys
from typing import Any, NoReturn

import typer
from rich.console import Console

from ..safetext import markup


def err_console() -> Console:
    return Console(stderr=True, no_color=bool(os.environ.get("NO_COLOR")) or None, highlight=False)


def out_console() -> Console:
    return Console(no_color=bool(os.environ.get("NO_COLOR")) or None, highlight=False)


#: A list too narrow for a table below this width prints one plain line an entry.
PLAIN_BELOW = 60


def list_console() -> Console:
    """The console a list of runs or evals prints to. Piped to a file or a pager with no COLUMNS
    set, it is wide enough for every column (Rich would assume 80 and drop or wrap them)."""
    con = out_console()
    if not con.is_terminal and "COLUMNS" not in os.environ:
        con.width = 200
    return con


def print_json(data: Any) -> None:
    """One JSON document on stdout, nothing else there; secret values never reach it."""
    from ..config import scrub

    sys.stdout.write(scrub(json.dumps(data, indent=2, default=str)) + "\n")
    sys.stdout.flush()


def error_markup(text: object) -> str:
    """``error: <text>`` for a Rich console: the text scrubbed of secrets, cleaned and escaped
    (file names, step names and provider errors are not ours to let Rich interpret)."""
    from ..config import scrub

    return f"[bold red]error:[/] {markup(scrub(str(text)))}"


def fail(message: str, code: int = 2) -> NoReturn:
    err_console().print(error_markup(message), soft_wrap=True)
    raise typer.Exit(code)


def registry() -> Any:
    from ..registry import Registry

    return Registry.load()
