"""The CLI run in the test's own process: the same entry point ``python -m deliberate`` runs
(``deliberate.cli.app.main``), with its own argv, environment, working directory, stdin, stdout
and stderr, and its exit code, at a fraction of the cost (no interpreter start, no re-import of
litellm or torch per call). ``conftest.cli`` uses it by default.

What a child process would have and this gives it too:

* stdout and stderr are separate byte streams behind text layers, as on a pipe: UTF-8, ``strict``
  on stdout and ``backslashreplace`` on stderr, not a terminal, with ``.buffer``; they are decoded
  the way ``subprocess.run(text=True)`` decodes a pipe (universal newlines).
* stdin is the given text (empty when none: a closed pipe), with ``.buffer``.
* the exit code is the process's: ``sys.exit(n)`` gives ``n & 0xFF``, ``sys.exit("text")``
  writes the text to stderr and gives 1, an exception that escapes ``main`` prints its traceback
  and gives 1, and a ``KeyboardInterrupt`` that escapes gives ``-SIGINT``.
* the environment is ``os.environ`` plus ``env``; what the command changes in it, in the working
  directory, in ``sys.argv``, ``sys.modules["__main__"]`` and the ``deliberate`` logger is put back.
* click names the program ``python -m deliberate``, as in a child started that way.
* called from a running event loop (an async test), the command runs on a thread of its own, as
  it would in its own process; ``timeout`` then raises ``subprocess.TimeoutExpired``. Called
  from plain code it runs on the caller's thread, and pytest-timeout bounds a command that hangs.

An ``env`` that changes a variable only a starting interpreter reads (``PYTHON*``) cannot be
honoured in-process: ``conftest.cli`` runs such a command in a subprocess (:func:`needs_process`).
Tests that need a real process (signals, kill -9, an address-space limit, imports a fresh
interpreter would not have, the install itself) use ``conftest.cli_process``."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import subprocess
import sys
import threading
import traceback
import types
from collections.abc import Iterator
from typing import Any

_LOCK = threading.Lock()  # one in-process CLI at a time: it swaps process-wide state
ENCODING = "utf-8"


def _pipe(errors: str) -> io.TextIOWrapper:
    """A text stream like a child's stdout or stderr on a pipe."""
    return io.TextIOWrapper(io.BytesIO(), encoding=ENCODING, errors=errors, write_through=True)


def _read_back(stream: io.TextIOWrapper) -> str:
    """What ``subprocess.run(text=True)`` would have read from that pipe."""
    stream.flush()
    raw = stream.buffer.getvalue()  # type: ignore[attr-defined]
    return io.TextIOWrapper(io.BytesIO(raw), encoding=ENCODING).read()


@contextlib.contextmanager
def _process_state(args: tuple[str, ...], env: dict[str, str] | None, stdin: str,
                   out: io.TextIOWrapper, err: io.TextIOWrapper) -> Iterator[None]:
    import deliberate  # not deliberate.__main__: importing it runs the CLI

    package_file = deliberate.__file__ or ""

    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    saved = (sys.argv, sys.stdin, sys.stdout, sys.stderr, sys.modules.get("__main__"))
    main_module = types.ModuleType("__main__")
    main_module.__package__ = "deliberate"
    main_module.__file__ = os.path.join(os.path.dirname(package_file), "__main__.py")
    os.environ.update(env or {})
    sys.argv = [main_module.__file__, *args]
    sys.stdin = io.TextIOWrapper(io.BytesIO(stdin.encode(ENCODING)), encoding=ENCODING)
    sys.stdout, sys.stderr = out, err
    sys.modules["__main__"] = main_module
    _reset_process_state()
    try:
        yield
    finally:
        sys.argv, sys.stdin, sys.stdout, sys.stderr = saved[:4]
        if saved[4] is not None:
            sys.modules["__main__"] = saved[4]
        _reset_process_state()
        os.environ.clear()
        os.environ.update(saved_env)
        os.chdir(saved_cwd)


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


def _exit_status(code: Any, err: io.TextIOWrapper) -> int:
    """The status a process ending with ``SystemExit(code)`` reports (as Python's own exit does)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=err)
    return 1


def _run(args: tuple[str, ...], input: str | None, env: dict[str, str] | None) -> subprocess.CompletedProcess[str]:
    from deliberate.cli.app import main

    out, err = _pipe("strict"), _pipe("backslashreplace")
    rc = 0
    with _process_state(args, env, input or "", out, err):
        try:
            main()
        except SystemExit as exc:
            rc = _exit_status(exc.code, err)
        except KeyboardInterrupt:
            traceback.print_exc(file=err)
            rc = -signal.SIGINT
        except Exception:
            traceback.print_exc(file=err)
            rc = 1
    return subprocess.CompletedProcess(["deliberate", *args], rc, _read_back(out), _read_back(err))


def needs_process(env: dict[str, str] | None) -> bool:
    """Whether ``env`` changes a variable that only a starting interpreter reads (``PYTHONPATH``,
    ``PYTHONHASHSEED``, ``PYTHONIOENCODING``, ...): then only a real process is faithful."""
    return any(k.startswith("PYTHON") and os.environ.get(k) != v for k, v in (env or {}).items())


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def run_cli(*args: str, input: str | None = None, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``deliberate ARGS`` in-process; the result looks like ``subprocess.run``'s."""
    with _LOCK:
        if not _in_event_loop():
            return _run(args, input, env)
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["result"] = _run(args, input, env)
            except BaseException as exc:  # pragma: no cover - _run catches what main lets out
                box["error"] = exc

        thread = threading.Thread(target=target, name="deliberate-cli", daemon=True)
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            raise subprocess.TimeoutExpired(["deliberate", *args], timeout)
        if "error" in box:
            raise box["error"]
        return box["result"]  # type: ignore[no-any-return]
