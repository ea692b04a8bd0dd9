"""The CLI run in the test's own process: the same entry point a subprocess would run
(``deliberate.cli.app.main``), with its environment, stdin, stdout and stderr, and its exit code,
at a fraction of the cost (no interpreter start, no re-import of litellm or torch per call).

Tests that need a real process (signals, kill -9, an address-space limit, the install itself)
start one themselves; everything else goes through here via ``conftest.cli``."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

_LOCK = threading.Lock()  # one in-process CLI at a time: it swaps process-wide state


class _Stdin(io.StringIO):
    """stdin from a string; ``buffer`` for code that reads bytes."""

    @property
    def buffer(self) -> io.BytesIO:  # pragma: no cover - no command reads bytes today
        return io.BytesIO(self.getvalue().encode())


@contextlib.contextmanager
def _environ(env: dict[str, str] | None) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.update(env or {})
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _reset_process_state() -> None:
    """What a fresh process would not carry over from the previous command."""
    from deliberate.config import get_settings

    get_settings.cache_clear()
    import logging

    root = logging.getLogger("deliberate")
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.setLevel(logging.NOTSET)
    root.propagate = True
    if hasattr(root, "_deliberate_configured"):
        del root._deliberate_configured


def run_cli(*args: str, input: str | None = None, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``deliberate ARGS`` in-process; the result looks like ``subprocess.run``'s."""
    from deliberate.cli.app import main

    out, err = io.StringIO(), io.StringIO()
    with _LOCK, _environ(env):
        _reset_process_state()
        argv, stdin = sys.argv, sys.stdin
        sys.argv, sys.stdin = ["deliberate", *args], _Stdin(input or "")
        code: Any = 0
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                main()
        except SystemExit as exc:
            code = exc.code
        finally:
            sys.argv, sys.stdin = argv, stdin
            _reset_process_state()
    rc = code if isinstance(code, int) else (0 if code is None else 1)
    return subprocess.CompletedProcess(["deliberate", *args], rc, out.getvalue(), err.getvalue())
