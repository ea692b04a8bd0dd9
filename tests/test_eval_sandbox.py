"""The sandbox for model-written code: what a hostile or broken program does, and that each
comes back as a failed item, never as a crash of the caller or harm to the machine.

Where the namespaces work (``isolation_problem()`` is None) every test runs fully contained; where
they do not, the tests that need them check the refusal instead, and the rest run with
``allow_network=True`` (limits and the seccomp filter only)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from deliberate.eval import sandbox
from deliberate.eval.sandbox import TAIL_CHARS, SandboxResult, _verdict, isolation_problem, run_code

ISOLATED = isolation_problem() is None
needs_namespaces = pytest.mark.skipif(not ISOLATED, reason=f"no namespaces here: {isolation_problem()}")


def run(source: str, **kwargs: Any) -> SandboxResult:
    """run_code as the eval would call it here (allowing the network only where it must)."""
    kwargs.setdefault("allow_network", not ISOLATED)
    kwargs.setdefault("timeout_s", 5)
    return run_code(source, **kwargs)


def live_in_group(pgid: int) -> list[int]:
    """Processes of the group ``pgid`` that are not zombies."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def processes_running(marker: str) -> list[int]:
    """Live processes whose command line holds ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    if "Z" not in (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]:
                        found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_a_passing_program() -> None:
    result = run("def add(a, b):\n    return a + b\n", tests="assert add(2, 3) == 5\nprint('ok')\n")
    assert result == SandboxResult(True, "passed", "all tests passed", "ok\n", "", result.seconds)
    assert 0 < result.seconds < 5


def test_a_humaneval_style_harness() -> None:
    prompt = 'def incr(xs: list) -> list:\n    """Add one to each."""\n'
    completion = "    return [x + 1 for x in xs]\n"
    test = "def check(candidate):\n    assert candidate([1, 2]) == [2, 3]\n    assert candidate([]) == []\n"
    assert run(prompt + completion, tests=test + "\ncheck(incr)\n").passed
    wrong = run(prompt + "    return xs\n", tests=test + "\ncheck(incr)\n")
    assert (wrong.passed, wrong.status, wrong.reason) == (False, "failed", "AssertionError")


def test_a_failing_assertion_names_the_error() -> None:
    result = run("x = 1", tests="assert x == 2, 'x should be 2'")
    assert (result.passed, result.status) == (False, "failed")
    assert result.reason == "AssertionError: x should be 2"
    assert "Traceback" in result.stderr


def test_a_syntax_error_fails() -> None:
    result = run("def f(:\n    pass\n")
    assert result.status == "failed" and "SyntaxError" in result.reason


def test_an_infinite_loop_times_out_and_its_group_is_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    spawned: list[subprocess.Popen[bytes]] = []
    real_popen = subprocess.Popen

    def spy(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        child = real_popen(*args, **kwargs)
        spawned.append(child)
        return child

    monkeypatch.setattr(sandbox.subprocess, "Popen", spy)
    start = time.monotonic()
    result = run("while True:\n    pass\n", timeout_s=1)
    assert (result.passed, result.status) == (False, "timeout")
    assert time.monotonic() - start < 4
    child = spawned[-1]
    assert child.returncode is not None
    deadline = time.monotonic() + 3
    while live_in_group(child.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert live_in_group(child.pid) == []


def test_a_fork_bomb_is_contained() -> None:
    before = len([p for p in os.listdir("/proc") if p.isdigit()])
    start = time.monotonic()
    result = run("import os\nwhile True:\n    os.fork()\n", timeout_s=3)
    assert (result.passed, result.status) == (False, "failed")
    assert "Operation not permitted" in result.reason  # the first fork already fails
    assert time.monotonic() - start < 3
    after = len([p for p in os.listdir("/proc") if p.isdigit()])
    assert after < before + 20  # the machine is fine (other engineers' processes come and go)


def test_threads_still_work() -> None:
    source = "import threading\nout = []\nt = threading.Thread(target=out.append, args=(1,))\n"
    assert run(source + "t.start(); t.join()\nassert out == [1]\n").passed


def test_a_grandchild_cannot_be_spawned_nor_outlive_the_program() -> None:
    marker = "314.159265"  # sleep's argument, unique to this test
    source = f"import subprocess\nsubprocess.Popen(['sleep', '{marker}'], start_new_session=True)\n"
    result = run(source)
    assert (result.passed, result.status) == (False, "failed")
    assert "PermissionError" in result.reason
    assert processes_running(marker) == []


def test_a_10_gb_allocation_fails() -> None:
    result = run("x = bytearray(10 * 1024 ** 3)\n")  # the default limit, 512 MiB
    assert (result.passed, result.status, result.reason) == (False, "failed", "MemoryError")


def test_output_flooding_is_capped() -> None:
    result = run("while True:\n    print('x' * 1000)\n", timeout_s=10)
    assert (result.passed, result.status) == (False, "failed")
    assert "File too large" in result.reason
    assert 0 < len(result.stdout) <= TAIL_CHARS and len(result.stderr) <= TAIL_CHARS


def test_a_big_file_is_refused() -> None:
    result = run("open('big', 'wb').write(b'x' * (32 * 1024 * 1024))\n")
    assert result.status == "failed" and "File too large" in result.reason


@needs_namespaces
def test_no_socket_reaches_the_loopback() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        # the same program outside the sandbox connects: the test can tell the difference
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        server.accept()[0].close()
        result = run(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n")
        assert (result.passed, result.status) == (False, "failed")
        assert "Network is unreachable" in result.reason
        server.settimeout(0.2)
        with pytest.raises(TimeoutError):
            server.accept()


@needs_namespaces
def test_no_host_resolves() -> None:
    result = run("import socket\nsocket.getaddrinfo('pypi.org', 443)\n")
    assert result.status == "failed" and "gaierror" in result.reason


@needs_namespaces
def test_writing_outside_its_directory_fails(tmp_path: Path) -> None:
    target = tmp_path / "escaped.txt"  # writable by this user, outside the sandbox
    target.parent.mkdir(exist_ok=True)
    result = run(f"open({str(target)!r}, 'w').write('escaped')\n")
    assert (result.passed, result.status) == (False, "failed")
    assert "Read-only file system" in result.reason
    assert not target.exists()
    victim = tmp_path / "victim.txt"
    victim.write_text("still here")
    result = run(f"import os\nos.remove({str(victim)!r})\n")
    assert result.status == "failed" and victim.read_text() == "still here"


@needs_namespaces
def test_it_cannot_see_or_signal_other_processes() -> None:
    result = run(f"import os\nassert {os.getpid()} not in [int(p) for p in os.listdir('/proc') if p.isdigit()]\n"
                 f"os.kill({os.getppid()}, 0)\n")
    assert result.status == "failed" and "PermissionError" in result.reason


def test_its_directory_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-sandbox-secret-0123")
    monkeypatch.setenv("SOME_SETTING", "visible-outside")
    source = (
        "import os, tempfile\n"
        "assert os.environ['HOME'] == os.getcwd() == tempfile.gettempdir(), os.environ\n"
        "assert 'OPENAI_API_KEY' not in os.environ and 'SOME_SETTING' not in os.environ\n"
        "open('notes.txt', 'w').write('kept here')\n"
        "assert open('notes.txt').read() == 'kept here'\n"
        "print('key: sk-test-sandbox-secret-0123')\n"  # as if read from a file: scrubbed
    )
    result = run(source)
    assert result.passed, result
    assert result.stdout == "key: ***\n"


def test_it_cannot_raise_its_limits() -> None:
    result = run("import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))\n")
    assert result.status == "failed" and "not allowed" in result.reason


def test_without_namespaces_it_refuses_unless_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "isolation_problem", lambda: "unshare failed: not permitted")
    refused = run_code("print('hi')")
    assert (refused.passed, refused.status) == (False, "refused")
    assert "unshare failed: not permitted" in refused.reason and "--allow-network-code" in refused.reason
    allowed = run_code("print('hi')", allow_network=True)
    assert (allowed.status, allowed.stdout) == ("passed", "hi\n")
    # the limits and the seccomp filter still hold
    assert run_code("import os\nos.fork()\n", allow_network=True).status == "failed"


def test_a_sandbox_that_cannot_start_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox.sys, "executable", "/nonexistent/python")
    result = run("print('hi')")
    assert (result.passed, result.status) == (False, "error")


def test_exit_statuses_become_statuses() -> None:
    # the CPU limit (SIGXCPU) is hard to reach before the wall clock in a test: checked here
    assert _verdict(-signal.SIGXCPU, "", False) == ("timeout", "CPU time limit exceeded")
    assert _verdict(128 + signal.SIGXCPU, "", False) == ("timeout", "CPU time limit exceeded")  # via pid 1
    assert _verdict(-signal.SIGKILL, "", False) == ("failed", "killed by SIGKILL")
    assert _verdict(0, "", True) == ("timeout", "wall-clock time limit exceeded")
    assert _verdict(3, "", False) == ("failed", "exit status 3")
    assert _verdict(1, "Traceback\n  ...\nValueError: no\n\n", False) == ("failed", "ValueError: no")
