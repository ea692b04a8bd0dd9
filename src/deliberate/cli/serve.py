"""``deliberate serve`` (flows as an OpenAI-compatible API, a run API, metrics) and ``deliberate
mcp`` (flows as MCP tools). Both are faces over the services; this module only parses options,
checks them, configures logging (the library never does) and starts the server."""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

import typer

from .common import err_console, fail


def _port_free(host: str, port: int) -> None:
    """Refuse a port another process holds, with one line, before the server starts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            fail(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc})")


def _logging() -> None:
    from ..config import get_settings
    from ..logs import configure

    configure(get_settings())
    logging.getLogger("deliberate.server.access").setLevel(logging.INFO)  # one JSON line per request


def _need(module: str, extra: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        fail(f"this command needs the '{extra}' extra: pip install 'deliberate[{extra}]'")


def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (beyond loopback needs a key)."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="Port to listen on."),
    api_key_env: str = typer.Option(None, "--api-key-env", metavar="NAME",
                                    help="Environment variable holding the API key (several: NAME1,NAME2)."),
    workers: int = typer.Option(1, "--workers", min=1, max=64, help="Worker processes."),
    max_concurrent: int = typer.Option(64, "--max-concurrent", min=1, help="Runs in flight per key."),
    timeout: float = typer.Option(900.0, "--timeout", min=1, help="Longest a served run may take (s)."),
    max_body: int = typer.Option(1_048_576, "--max-body", min=1024, help="Largest request body (bytes)."),
    cors_origin: list[str] = typer.Option([], "--cors-origin", help="Allow browser calls from ORIGIN (repeatable)."),
    warm: str = typer.Option(None, "--warm", metavar="MODEL", help="Load this model at start; /readyz waits."),
) -> None:
    """Serve every flow as an OpenAI-compatible model, plus a run API, /healthz, /readyz, /metrics."""
    _need("fastapi", "serve")
    _need("uvicorn", "serve")
    from ..errors import InputError
    from ..server.config import CONFIG_ENV, ServerConfig, api_keys

    config = ServerConfig(host=host, port=port, api_key_env=api_key_env, max_concurrent=max_concurrent,
                          run_timeout_s=timeout, max_body_bytes=max_body, cors_origins=list(cors_origin), warm=warm)
    try:
        api_keys(config)
    except InputError as exc:
        fail(exc.line())
    if port:
        _port_free(host, port)
    _logging()
    import uvicorn

    shown = f"[{host}]" if ":" in host else host
    err_console().print(f"deliberate serve: http://{shown}:{port}/v1 (flows as flow:<name>; "
                        f"{'API key required' if api_key_env else 'no API key: loopback only'})", highlight=False)
    common: dict[str, Any] = {"host": host, "port": port, "log_level": "warning", "access_log": False,
                              "timeout_graceful_shutdown": int(config.drain_s), "server_header": False}
    if workers > 1:
        os.environ[CONFIG_ENV] = config.to_env()  # no key inside: each worker reads the variable
        uvicorn.run("deliberate.cli.serve:worker_app", factory=True, workers=workers, **common)
        return
    from ..server.app import create_app

    uvicorn.Server(uvicorn.Config(create_app(config), **common)).run()


def worker_app() -> Any:
    """The app of one ``--workers`` process (uvicorn imports it there): its logging, then the app
    from the configuration the parent left in the environment."""
    from ..server.app import create_app
    from ..server.config import ServerConfig

    _logging()
    return create_app(ServerConfig.from_env())


def mcp(
    transport: str = typer.Option("stdio", "--transport", help="stdio (desktop agents, editors) or http."),
    host: str = typer.Option("127.0.0.1", "--host", help="http: address to listen on (loopback only)."),
    port: int = typer.Option(8765, "--port", min=1, max=65535, help="http: port to listen on."),
    directory: str = typer.Option(None, "--dir", help="The project folder (models.yaml, flows/, runs/, .env); "
                                  "default: the current one. For clients that cannot set a working directory."),
) -> None:
    """Serve every flow as an MCP tool (list_flows, run_flow, get_run, resume_run)."""
    _need("mcp", "mcp")
    if transport not in ("stdio", "http"):
        fail(f"--transport {transport!r}: expected stdio or http")
    if directory is not None:
        if not os.path.isdir(directory):
            fail(f"--dir {directory!r}: no such folder")
        os.chdir(directory)
    from ..server.config import is_loopback

    if transport == "http":
        if not is_loopback(host):
            fail(f"--host {host}: the MCP server has no auth of its own; it listens on loopback only")
        _port_free(host, port)
    from ..config import get_settings
    from ..logs import configure

    configure(get_settings())  # JSON lines to stderr or the log file: stdout is the protocol's
    from ..server.mcp import build

    server = build()
    if transport == "stdio":
        server.run("stdio")
    else:
        server.run("streamable-http", host=host, port=port)
