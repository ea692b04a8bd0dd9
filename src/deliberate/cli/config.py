"""``deliberate config trust | trusted``: trust for project-local config (see deliberate.trust)."""

from __future__ import annotations

from pathlib import Path

import typer

from ..safetext import markup
from .common import err_console, fail, out_console, print_json

config_app = typer.Typer(help="Trust project-local config (models.yaml in the current directory).",
                         no_args_is_help=True)


@config_app.command("trust")
def trust_file(
    file: Path = typer.Argument(Path("models.yaml"), help="The config file to trust (default ./models.yaml)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document on stdout."),
) -> None:
    """Trust a models.yaml as it is now: its models may use your API keys with any api_base.
    An edit to the file needs trusting again."""
    from ..config import get_settings
    from ..trust import trust

    if not file.is_file():
        fail(f"{file}: no such file (pass the models.yaml to trust)")
    digest = trust(file, get_settings().home_dir())
    if json_out:
        print_json({"trusted": str(file.resolve()), "sha256": digest})
        return
    err_console().print(f"trusted {markup(file.resolve())} (sha256 {digest[:12]}…)")


@config_app.command("trusted")
def list_trusted(json_out: bool = typer.Option(False, "--json", help="Print one JSON document on stdout.")) -> None:
    """The files you trust, with the hash of the content you trusted."""
    from ..config import get_settings
    from ..trust import trusted_files

    known = trusted_files(get_settings().home_dir())
    if json_out:
        print_json(known)
        return
    if not known:
        err_console().print("no trusted files")
    for path, digest in sorted(known.items()):
        out_console().print(f"{markup(path)}  [dim]{digest[:12]}[/]")
