"""The ``deliberate`` command. Heavy imports happen inside commands, so ``--help`` is fast."""

from __future__ import annotations

import os
import sys

import typer

from .._version import __version__
from . import config as config_cmd
from . import eval as eval_cmd
from . import evals as evals_cmd
from . import flows as flows_cmd
from . import flowtest as flowtest_cmd
from . import models as models_cmd
from . import run as run_cmd
from . import runs as runs_cmd
from . import serve as serve_cmd

app = typer.Typer(
    name="deliberate",
    help="Run LLM deliberation workflows declared in YAML: drafts and critiques, experts and "
    "synthesis, votes, debates. Every run is recorded under runs/ and can be replayed or resumed.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"deliberate {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """deliberate: several model calls reason together instead of one."""


app.command("run")(run_cmd.run)
app.command("generate")(run_cmd.generate)
app.command("replay")(runs_cmd.replay)
app.command("resume")(runs_cmd.resume)
app.command("doctor")(models_cmd.doctor)
app.command("serve")(serve_cmd.serve)
app.command("mcp")(serve_cmd.mcp)
app.command("test")(flowtest_cmd.test)
app.add_typer(flows_cmd.app, name="flows")
app.add_typer(models_cmd.models_app, name="models")
app.add_typer(models_cmd.strategies_app, name="strategies")
app.add_typer(runs_cmd.runs_app, name="runs")
app.add_typer(runs_cmd.cache_app, name="cache")
app.add_typer(config_cmd.config_app, name="config")
app.command("eval")(eval_cmd.eval_command)
app.add_typer(evals_cmd.evals_app, name="evals")


def main() -> None:
    """Entry point: every deliberate error becomes one clean line and its exit code."""
    from ..errors import DeliberateError, FlowError

    try:
        rc = app(standalone_mode=False)
        sys.exit(rc if isinstance(rc, int) else 0)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except FlowError as exc:
        from .common import err_console, error_markup

        con = err_console()
        for p in exc.problems:
            con.print(error_markup(p), soft_wrap=True)
        sys.exit(2)
    except DeliberateError as exc:
        from .common import err_console, error_markup

        err_console().print(error_markup(exc.line()), soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    except Exception as exc:  # click usage errors and the like
        # typer vendors click; match its exceptions by shape, not by import path
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):
            exc.show()
            sys.exit(exc.exit_code or 2)
        if isinstance(exc, typer.Abort):
            sys.stderr.write("aborted\n")
            sys.exit(130)
        if os.environ.get("DELIBERATE_DEBUG"):
            raise
        from ..config import scrub
        from ..safetext import clean

        sys.stderr.write(clean(scrub(f"internal error: {type(exc).__name__}: {exc} "))
                         + "(set DELIBERATE_DEBUG=1 for the traceback, and please report it)\n")
        sys.exit(1)
