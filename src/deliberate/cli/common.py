"""What every command shares: consoles, JSON output, clean errors."""

from __future__ import annotations

import json
import os
import sys
from typing import Any, NoReturn

import typer
from rich.console import Console


def err_console() -> Console:
    return Console(stderr=True, no_color=bool(os.environ.get("NO_COLOR")) or None, highlight=False)


def out_console() -> Console:
    return Console(no_color=bool(os.environ.get("NO_COLOR")) or None, highlight=False)


def print_json(data: Any) -> None:
    """One JSON document on stdout, nothing else there."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


def fail(message: str, code: int = 2) -> NoReturn:
    err_console().print(f"[bold red]error:[/] {message}", markup=True, soft_wrap=True)
    raise typer.Exit(code)


def registry() -> Any:
    from ..registry import Registry

    return Registry.load()
