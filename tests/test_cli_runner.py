"""The in-process CLI runner (tests/helpers/inproc.py, what ``conftest.cli`` uses) against a real
``python -m deliberate`` process: same exit code, stdout and stderr, apart, for the same argv,
environment, working directory and stdin. These are also the suite's subprocess smoke tests of
exit codes (0, 1, 2) and of the process boundary."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from conftest import cli, cli_process
from helpers.inproc import needs_process, run_cli

ULID = re.compile(r"\b[0-9A-HJKMNP-TV-Z]{26}\b")


def both(*args: str, **kw: Any) -> tuple[Any, Any]:
    return run_cli(*args, **kw), cli_process(*args, **kw)


def same(a: Any, b: Any) -> None:
    assert (a.returncode, a.stdout, a.stderr) == (b.returncode, b.stdout, b.stderr)


@pytest.mark.parametrize("args", [
    ("--help",),                                  # click names the program as `python -m deliberate` does
    ("flows", "list", "--json"),
    ("models", "show", "no-such-model"),          # a clean error: exit 2, one line on stderr
    ("no-such-command",),                         # a usage error from click
], ids=lambda a: " ".join(a))
def test_in_process_matches_a_real_process(args: tuple[str, ...]) -> None:
    same(*both(*args))


def test_stdin_env_and_cwd_reach_the_command(scripted: Any, isolated: Path) -> None:
    scripted.write([{"match": "Produce a complete", "reply": "DRAFT"}])
    env = {"COLUMNS": "123", "OPENAI_API_KEY": "sk-test-runner-0000"}
    a, b = both("run", "challenge", "-", "--json", input="Is the runner faithful?", env=env)
    assert a.returncode == b.returncode == 0, (a.stderr, b.stderr)
    doc_a, doc_b = json.loads(a.stdout), json.loads(b.stdout)  # stdout is the JSON alone
    assert doc_a["output"] == doc_b["output"] and doc_a["status"] == doc_b["status"] == "succeeded"
    assert ULID.sub("ID", a.stderr) == ULID.sub("ID", b.stderr)
    prompts = [c["prompt"] for c in scripted.calls()]
    assert sum("Is the runner faithful?" in p for p in prompts) >= 2  # stdin was the prompt, both times
    # the environment: the key is seen as set, and is never printed
    a, b = both("doctor", "--json", env=env)
    assert a.returncode == b.returncode == 0
    assert "OPENAI_API_KEY" in json.loads(a.stdout)["api_keys_set"] == json.loads(b.stdout)["api_keys_set"]
    # the working directory: ./models.yaml (the scripted models) is read by both
    a, b = both("models", "list", "--json")
    same(a, b)
    assert {m["key"] for m in json.loads(a.stdout)} >= {"alt", "paid", "tiny"}


def test_what_the_command_changes_is_put_back(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import sys

    before = (dict(os.environ), os.getcwd(), sys.argv, sys.stdin, sys.stdout, sys.stderr,
              sys.modules["__main__"])
    r = cli("flows", "list", "--json", env={"DELIBERATE_RUNNER_PROBE": "1"})
    assert r.returncode == 0
    assert (dict(os.environ), os.getcwd(), sys.argv, sys.stdin, sys.stdout, sys.stderr,
            sys.modules["__main__"]) == before


def test_exit_statuses_as_a_process_reports_them(monkeypatch: pytest.MonkeyPatch) -> None:
    import deliberate.cli.app as app

    def exits(code: Any) -> Any:
        def main() -> None:
            raise SystemExit(code)
        return main

    for code, status, err in [(None, 0, ""), (3, 3, ""), (256 + 4, 4, ""), ("bye", 1, "bye\n")]:
        monkeypatch.setattr(app, "main", exits(code))
        r = run_cli("x")
        assert (r.returncode, r.stdout, r.stderr) == (status, "", err)

    def raises() -> None:
        raise RuntimeError("escaped main")

    monkeypatch.setattr(app, "main", raises)
    r = run_cli("x")
    assert r.returncode == 1 and "Traceback" in r.stderr and "RuntimeError: escaped main" in r.stderr


async def test_from_a_running_event_loop(isolated: Path) -> None:
    r = cli("flows", "list", "--json")  # the command runs its own asyncio.run: on a thread of its own
    assert r.returncode == 0 and json.loads(r.stdout)


def test_interpreter_start_variables_need_a_process() -> None:
    assert needs_process({"PYTHONPATH": "/elsewhere"})
    assert not needs_process({"NO_COLOR": "1"}) and not needs_process(None)
