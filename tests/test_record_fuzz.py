"""Fuzzing what reads run records. Whatever a record file holds (any bytes, any JSON, or a valid
record with fuzzed ids, step names and values), ``store.load`` returns a record or raises a
RecordError, and the commands that read records (runs show / list / diff, replay plain, --html,
--from, --rerun, resume) end with a clean exit code, never a traceback or an "internal error",
never write a file outside runs/ and each answer within the deadline.

The commands run in-process through the CLI's own ``main()`` (what ``python -m deliberate``
runs), so an error is printed exactly as a user sees it."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import SCRIPTED_MODELS
from deliberate.errors import RecordError
from deliberate.records.schema import RunRecord
from deliberate.records.store import RUN_ID_PATTERN, load
from helpers.lanes import examples

FUZZ_ID = "01JC0FFEE0000000000000000Z"  # the fuzzed record's file: runs/<FUZZ_ID>.json
FUZZ = settings(deadline=2000, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

ABSOLUTE = "<absolute>"  # a run id made, per test, an absolute path into the test's directory
NASTY = ["../../escaped", "../escaped", ABSOLUTE, "escaped/../../x", "*", "?", "[0-9]", "..", ".", "",
         "[/]", "[bold]x[/]", "\x1b]0;PWNED\x07\x1b[2J", "\x9b2J", "a\x00b", "\ud800", "01JC0FFEE", FUZZ_ID,
         "01JC0FFEE0000000000000000Z/../../escaped", "x" * 300, "challenger", "creator", "refiner", "prompt"]
texts = st.one_of(st.sampled_from(NASTY), st.text(max_size=20))
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-2**70, 2**70),
                    st.floats(allow_nan=False, allow_infinity=False), texts)
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(texts, inner, max_size=4)), max_leaves=12)
step_values = st.one_of(json_values, st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "verdict", "branches", "data", "nope"])},
    optional={"text": json_values, "score": json_values, "passed": json_values, "feedback": json_values,
              "attempts": json_values, "scale": json_values, "branches": json_values, "data": json_values}))


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The record of a real run of the challenge flow (the scripted backend echoes), made
    ``interrupted`` so that resume has something to do."""
    work = tmp_path_factory.mktemp("template")
    (work / "models.yaml").write_text(SCRIPTED_MODELS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DELIBERATE_")}
    env.update(DELIBERATE_HOME=str(work / "home"), DELIBERATE_CACHE_DIR=str(work / "cache"), NO_COLOR="1")
    r = subprocess.run([sys.executable, "-m", "deliberate", "run", "challenge", "Ship on Friday?", "--json"],
                       cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    rec = json.loads((work / json.loads(r.stdout)["record"]).read_text())
    rec["status"] = "interrupted"
    rec["steps"]["refiner"].update(status="running", value=None, output=None)
    return rec


def invoke(*args: str) -> tuple[int, str, str]:
    """``deliberate ARGS`` in this process, through the CLI's ``main()``: exit code, stdout, stderr."""
    from deliberate.cli.app import main

    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["deliberate", *args]
    code: Any = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as exc:
        code = exc.code
    finally:
        sys.argv = argv
    return (code if isinstance(code, int) else 1), out.getvalue(), err.getvalue()


class Sandbox:
    """The test's directory: runs/ is emptied before each example, and every file outside it is
    compared before and after (the scripted backend's call log and the report folder excepted)."""

    def __init__(self, tmp: Path, template: dict[str, Any]) -> None:
        self.tmp, self.work, self.template = tmp, tmp / "work", template
        self.runs = self.work / "runs"

    def reset(self) -> None:
        shutil.rmtree(self.runs, ignore_errors=True)
        shutil.rmtree(self.work / "out", ignore_errors=True)
        self.runs.mkdir()
        (self.runs / f"{self.template['run_id']}.json").write_text(json.dumps(self.template))

    def outside(self) -> set[tuple[Path, int]]:
        skip = (self.runs, self.work / "out")
        files = {(p, p.stat().st_size) for p in self.tmp.rglob("*")
                 if p.is_file() and p.name != "calls.jsonl" and not any(s in p.parents for s in skip)}
        return files | {(p, 0) for p in self.tmp.parent.iterdir()}


@pytest.fixture
def sandbox(scripted: Any, isolated: Path, template: dict[str, Any]) -> Sandbox:
    scripted.write([])
    box = Sandbox(isolated.parent, template)
    box.reset()
    # warm up (imports, the flow machinery) so that the deadline measures the command alone
    invoke("replay", template["run_id"], "--from", "challenger", "--json")
    invoke("runs", "show", template["run_id"])
    box.reset()
    return box


# -- store.load --------------------------------------------------------------------------------
def deep_texts() -> Any:
    """JSON (or almost) nested from 150 to 100,000 levels deep, bare or inside a record."""
    shapes = {"[": "]", '{"a":': "}", '{"kind": "deliberate.run", "schema_version": 1, "inputs": {"x": [': "]}}"}
    return st.builds(lambda n, o, cut: (o * n + "1" + shapes[o] * n)[: None if cut else -1],
                     st.one_of(st.integers(150, 3000), st.just(100_000)), st.sampled_from(sorted(shapes)),
                     st.booleans())


def load_or_record_error(path: Path) -> RunRecord | None:
    """``load(path)``: a record whose ids are run ids, or one clean RecordError (exit 2)."""
    try:
        rec = load(path)
    except RecordError as exc:
        assert exc.exit_code == 2
        line = exc.line()
        assert "\n" not in line and "\x1b" not in line
        return None
    assert re.fullmatch(RUN_ID_PATTERN, rec.run_id), rec.run_id
    assert rec.parent_run_id is None or re.fullmatch(RUN_ID_PATTERN, rec.parent_run_id)
    assert all(n in rec.steps for n in rec.order)
    return rec


@settings(FUZZ, max_examples=examples(400))
@given(st.data())
def test_load_any_content(isolated: Path, template: dict[str, Any], data: Any) -> None:
    content = data.draw(st.one_of(
        st.binary(max_size=300),
        json_values.map(lambda v: json.dumps(v).encode()),
        json_values.map(lambda v: json.dumps({"kind": "deliberate.run", "schema_version": 1, **(
            v if isinstance(v, dict) else {"run_id": v})}).encode()),
        deep_texts().map(str.encode),
        mutated(template).map(lambda r: json.dumps(r).encode()),
    ), label="content")
    path = isolated / "r.json"
    path.write_bytes(content)
    load_or_record_error(path)


# -- records mutated from a valid one ------------------------------------------------------------
def paths_of(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            out += paths_of(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value[:3]):
            out += paths_of(v, (*prefix, i))
    return out


@st.composite
def mutated(draw: Any, template: dict[str, Any]) -> dict[str, Any]:
    rec = json.loads(json.dumps(template))
    rec["run_id"] = FUZZ_ID
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["run_id", "parent", "rename", "value", "step_value", "delete", "status"]))
        if kind == "run_id":
            rec["run_id"] = draw(texts)
        elif kind == "parent":
            rec["parent_run_id"] = draw(st.one_of(st.none(), texts))
        elif kind == "rename":  # a step renamed everywhere, or in steps only
            steps = rec.get("steps")
            if not isinstance(steps, dict) or not steps:
                continue
            old = draw(st.sampled_from(sorted(steps)))
            new = draw(texts)
            if new in steps:
                continue
            step = steps.pop(old)
            if isinstance(step, dict):
                step["name"] = new
            steps[new] = step
            if draw(st.booleans()):
                if isinstance(rec.get("order"), list):
                    rec["order"] = [new if n == old else n for n in rec["order"]]
                flow = rec.get("flow")
                if isinstance(flow, dict) and isinstance(flow.get("steps"), dict) and old in flow["steps"]:
                    flow["steps"][new] = flow["steps"].pop(old)
        elif kind in ("value", "delete"):
            where = draw(st.sampled_from(paths_of(rec) or [("run_id",)]))
            parent: Any = rec
            for key in where[:-1]:
                parent = parent[key]
            if kind == "value":
                parent[where[-1]] = draw(json_values)
            elif isinstance(parent, dict):
                del parent[where[-1]]
        elif kind == "step_value":
            steps = rec.get("steps")
            if not isinstance(steps, dict) or not steps:
                continue
            name = draw(st.sampled_from(sorted(steps)))
            if isinstance(steps[name], dict):
                steps[name]["value"] = draw(step_values)
        else:
            rec["status"] = draw(st.sampled_from(["running", "interrupted", "succeeded", "failed", "bogus"]))
    return rec


COMMANDS = [["runs", "show", "REF"], ["runs", "show", "REF", "--json"], ["runs", "list"], ["runs", "list", "--json"],
            ["runs", "diff", "REF", "TEMPLATE"], ["replay", "REF"], ["replay", "REF", "--html", "out/r.html"],
            ["replay", "REF", "--from", "challenger"], ["replay", "REF", "--from", "creator", "--json"],
            ["replay", "REF", "--rerun"], ["resume", "REF"], ["resume", "REF", "--json"]]
RUNS_A_FLOW = {"--from", "--rerun", "resume"}


def check_command(box: Sandbox, record: dict[str, Any], command: list[str], ref: str) -> None:
    if record.get("run_id") == ABSOLUTE:
        record = {**record, "run_id": str(box.tmp / "escaped")}
    box.reset()
    (box.runs / f"{FUZZ_ID}.json").write_text(json.dumps(record))
    before = box.outside()
    args = [{"REF": ref, "TEMPLATE": box.template["run_id"]}.get(a, a) for a in command]
    code, out, err = invoke(*args)
    both = out + err
    assert "internal error" not in both and "Traceback" not in both, (args, both[-2000:])
    runs_a_flow = bool(RUNS_A_FLOW & set(command))
    assert code in ((0, 1, 2) if runs_a_flow else (0, 2)), (args, code, both[-2000:])
    if code == 2:
        assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), (args, err)
    assert box.outside() == before, args  # nothing written outside runs/ (or the report's folder)
    assert not list(box.tmp.parent.glob("escaped*")) and not list(box.tmp.glob("escaped*"))
    if not runs_a_flow:
        assert "\x1b" not in both and "\x07" not in both, (args, both[-2000:])


@settings(FUZZ, max_examples=examples(200))
@given(st.data())
def test_commands_read_any_mutated_record_cleanly(sandbox: Sandbox, data: Any) -> None:
    record = data.draw(mutated(sandbox.template), label="record")
    command = data.draw(st.sampled_from(COMMANDS), label="command")
    ref = data.draw(st.sampled_from([FUZZ_ID, FUZZ_ID[:12], f"runs/{FUZZ_ID}.json"]), label="ref")
    check_command(sandbox, record, command, ref)


@settings(FUZZ, max_examples=examples(100))
@given(st.data())
def test_commands_read_any_file_cleanly(sandbox: Sandbox, data: Any) -> None:
    content = data.draw(st.one_of(st.binary(max_size=200), json_values.map(lambda v: json.dumps(v).encode()),
                                  deep_texts().map(str.encode)), label="content")
    command = data.draw(st.sampled_from(COMMANDS), label="command")
    sandbox.reset()
    (sandbox.runs / f"{FUZZ_ID}.json").write_bytes(content)
    check_command_file(sandbox, command)


def check_command_file(box: Sandbox, command: list[str]) -> None:
    before = box.outside()
    args = [{"REF": FUZZ_ID, "TEMPLATE": box.template["run_id"]}.get(a, a) for a in command]
    code, out, err = invoke(*args)
    both = out + err
    assert "internal error" not in both and "Traceback" not in both, (args, both[-2000:])
    assert code in (0, 2), (args, code, both[-2000:])
    assert box.outside() == before, args


def test_every_command_with_a_foreign_run_id(sandbox: Sandbox) -> None:
    for run_id in ("../../escaped", "../escaped", ABSOLUTE, "[/]", "\x1b[2J"):
        for command in (c for c in COMMANDS if "REF" in c):
            for ref in (FUZZ_ID, f"runs/{FUZZ_ID}.json"):
                check_command(sandbox, {**sandbox.template, "run_id": run_id}, command, ref)
