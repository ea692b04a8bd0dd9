"""A run record is untrusted input. A run id from a record never names a file outside runs/
(resume, replay --from and --rerun refuse it, exit 2, one line); a record nested 100,000 levels
deep is an invalid record, not a crash; a run id prefix is looked up in runs/ only, never globbed
or walked out of it; record text with Rich markup or terminal escapes is shown as text, without
the escapes, while the record keeps it raw; the HTML report holds no secret value; a record
resumed from elsewhere never overwrites the record runs/ holds under its run id."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import SCRIPTED_MODELS, cli
from deliberate.errors import RecordError
from deliberate.records.store import RUN_ID_PATTERN, find, load, record_path
from helpers.limits import limited_cli

ESCAPED = "../../escaped"
NASTY = "[bold]x[/] \x1b]0;PWNED\x07\x1b[2J"
OTHER_ID = "01JC0FFEE0000000000000000Z"


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The record of a real run of the challenge flow (the scripted backend echoes)."""
    work = tmp_path_factory.mktemp("template")
    (work / "models.yaml").write_text(SCRIPTED_MODELS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DELIBERATE_")}
    env.update(DELIBERATE_HOME=str(work / "home"), DELIBERATE_CACHE_DIR=str(work / "cache"), NO_COLOR="1")
    r = subprocess.run([sys.executable, "-m", "deliberate", "run", "challenge", "Ship on Friday?", "--json"],
                       cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads((work / json.loads(r.stdout)["record"]).read_text())


def make_record(scripted: Any, template: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """The template record in this test's runs/: its path and its JSON."""
    scripted.write([])
    path = Path("runs") / f"{template['run_id']}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(template))
    return path, json.loads(json.dumps(template))


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def outside_runs(tmp: Path) -> set[Path]:
    """Every file of the test's directory (and its parent's entries) but those in runs/ and the
    scripted backend's call log."""
    runs = tmp / "work" / "runs"
    return {p for p in files_under(tmp) if runs not in p.parents and p.name != "calls.jsonl"} | set(tmp.parent.iterdir())


def one_clean_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr and "internal error" not in stderr
    return lines[0]


def plant(isolated: Path, data: dict[str, Any], name: str = OTHER_ID) -> Path:
    path = isolated / "runs" / f"{name}.json"
    path.write_text(json.dumps(data))
    return path


def test_resume_of_a_record_whose_run_id_escapes_runs_writes_nothing_outside(scripted, isolated, template) -> None:
    _, data = make_record(scripted, template)
    planted = plant(isolated, {**data, "run_id": ESCAPED, "status": "interrupted"})
    before, raw = outside_runs(isolated.parent), planted.read_bytes()
    for ref in (OTHER_ID, str(planted)):  # by run id and by path
        r = cli("resume", ref)  # the real CLI
        assert r.returncode == 2, r.stderr
        line = one_clean_line(r.stderr)
        assert "invalid run record: run_id" in line and planted.name in line
    assert not (isolated.parent / "escaped.json").exists()
    assert outside_runs(isolated.parent) == before
    assert planted.read_bytes() == raw
    assert {p.name for p in (isolated / "runs").iterdir()} == {planted.name, f"{data['run_id']}.json"}


@pytest.mark.parametrize("command", [["replay", "--from", "challenger"], ["replay", "--rerun"],
                                     ["replay", "--rerun", "--verify"], ["replay", "--html", "r.html"],
                                     ["runs", "show"]],
                         ids=["from", "rerun", "verify", "html", "show"])
def test_every_command_refuses_a_record_whose_run_id_escapes(scripted, isolated, template, command: list[str]) -> None:
    _, data = make_record(scripted, template)
    plant(isolated, {**data, "run_id": ESCAPED, "status": "interrupted"})
    runs_before = {p.name for p in (isolated / "runs").iterdir()}
    before = outside_runs(isolated.parent)
    r = cli(*command, OTHER_ID)
    assert r.returncode == 2, r.stderr
    assert "invalid run record: run_id" in one_clean_line(r.stderr)
    assert outside_runs(isolated.parent) == before and not (isolated / "r.html").exists()
    assert {p.name for p in (isolated / "runs").iterdir()} == runs_before  # no new record either
    assert scripted.calls() == []  # no model was called


def test_parent_run_id_and_the_id_pattern(scripted, isolated, template) -> None:
    path, data = make_record(scripted, template)
    assert load(path).run_id == data["run_id"]
    plant(isolated, {**data, "run_id": OTHER_ID, "parent_run_id": "../x"})
    r = cli("runs", "show", OTHER_ID)
    assert r.returncode == 2 and "invalid run record: parent_run_id" in one_clean_line(r.stderr)
    assert re.fullmatch(RUN_ID_PATTERN, data["run_id"])
    runs = isolated / "runs"
    for bad in (ESCAPED, "/etc/passwd", "*", "", OTHER_ID + "\n", OTHER_ID.lower(), "01JC0FFEE/../../x"):
        with pytest.raises(RecordError):
            record_path(runs, bad)
    assert record_path(runs, OTHER_ID) == runs / f"{OTHER_ID}.json"


def test_a_link_in_runs_that_leads_out_is_refused_as_a_record_path(isolated) -> None:
    runs = isolated / "runs"
    runs.mkdir()
    (runs / f"{OTHER_ID}.json").symlink_to(isolated.parent / "elsewhere.json")
    with pytest.raises(RecordError, match="outside the runs directory"):
        record_path(runs, OTHER_ID)


def deep(n: int) -> str:
    return '{"kind": "deliberate.run", "schema_version": 1, "inputs": ' + '{"a": ' * n + "1" + "}" * n + "}"


@pytest.mark.parametrize("shape", ["object", "array", "valid-record"])
def test_a_deeply_nested_record_is_an_invalid_record(scripted, isolated, template, shape: str) -> None:
    path, data = make_record(scripted, template)
    bad = isolated / "runs" / f"{OTHER_ID}.json"
    n = 100_000
    if shape == "object":
        bad.write_text(deep(n))
    elif shape == "array":
        bad.write_text("[" * n + "]" * n)
    else:  # a record valid in every other way, with an input nested 100,000 levels deep
        bad.write_text(json.dumps({**data, "run_id": OTHER_ID, "inputs": {"prompt": "DEEP"}}).replace(
            '"DEEP"', "[" * n + "]" * n))
    r, _wall = limited_cli("runs", "show", OTHER_ID)  # a real process under a 2 GB limit, timed
    assert r.returncode == 2, r.stderr
    line = one_clean_line(r.stderr)
    assert "invalid run record" in line and bad.name in line
    r = cli("resume", str(bad))
    assert r.returncode == 2 and "invalid run record" in one_clean_line(r.stderr)
    # runs list skips it and lists the good one
    r = cli("runs", "list", "--json")
    assert r.returncode == 0, r.stderr
    assert [x["run_id"] for x in json.loads(r.stdout)] == [path.stem]


def test_a_run_id_prefix_is_looked_up_in_runs_only(scripted, isolated, template) -> None:
    path, data = make_record(scripted, template)
    # a valid record outside runs/, one level up: a prefix must not reach it
    (isolated / "x-outside.json").write_text(json.dumps({**data, "run_id": OTHER_ID}))
    for ref in ("../x", "*"):  # the real CLI
        r = cli("runs", "show", ref)
        assert r.returncode == 2, (ref, r.stdout, r.stderr)
        assert "not a run id, a run id prefix or a record path" in one_clean_line(r.stderr), ref
    for ref in ("../x", "*", "0*", "0?", "[0-9]*", "runs/../x", "../x-outside", "0/../../x", "0\x00"):
        with pytest.raises(RecordError, match="not a run id, a run id prefix or a record path"):
            find(ref, isolated / "runs")
    # what a user types still works: a prefix, in either case, and a path
    for ref in (data["run_id"][:8], data["run_id"][:8].lower(), str(path)):
        assert find(ref, isolated / "runs").resolve() == path.resolve()
    r = cli("runs", "show", data["run_id"][:8].lower(), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["run_id"] == data["run_id"], r.stderr


def nasty_record(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with step ``challenger`` renamed to NASTY everywhere, and NASTY in the run's and
    that step's error and in the flow's name."""
    rec = json.loads(json.dumps(data))
    step = rec["steps"].pop("challenger")
    step.update(name=NASTY, error=NASTY, error_type="ProviderError", status="failed")
    rec["steps"][NASTY] = step
    rec["order"] = [NASTY if n == "challenger" else n for n in rec["order"]]
    rec["flow"]["steps"][NASTY] = rec["flow"]["steps"].pop("challenger")
    rec.update(status="failed", output=None, error=NASTY, flow_name=NASTY, run_id=OTHER_ID)
    return rec


@pytest.mark.parametrize("command", [["runs", "show", OTHER_ID], ["runs", "list"],
                                     ["runs", "diff", OTHER_ID, "FIRST"]], ids=["show", "list", "diff"])
def test_markup_and_escapes_in_a_record_are_shown_as_text(scripted, isolated, template, command: list[str]) -> None:
    path, data = make_record(scripted, template)
    planted = plant(isolated, nasty_record(data))
    raw = planted.read_bytes()
    r = cli(*[path.stem if a == "FIRST" else a for a in command], env={"COLUMNS": "400"})
    assert r.returncode == 0, r.stderr
    both = r.stdout + r.stderr
    assert "MarkupError" not in both and "internal error" not in both and "Traceback" not in both
    assert "\x1b" not in both and "\x07" not in both and "PWNED" not in both
    assert "[bold]x[/]" in both  # the markup is shown as the text it is
    # the record keeps the raw text
    assert planted.read_bytes() == raw and load(planted).steps[NASTY].error == NASTY


def test_html_report_holds_no_secret_value(scripted, isolated, template) -> None:
    secret = "sk-test-Abc123<&>\"xyz"
    _, data = make_record(scripted, template)
    rec = {**data, "run_id": OTHER_ID, "output": f"the key is {secret}", "error": secret}
    rec["steps"]["creator"]["output"] = secret
    plant(isolated, rec)
    page = isolated / "report.html"
    r = cli("replay", OTHER_ID, "--html", str(page), env={"OPENAI_API_KEY": secret})
    assert r.returncode == 0, r.stderr
    html = page.read_text()
    assert "***" in html
    assert secret not in html and "sk-test-Abc123&lt;&amp;&gt;&quot;xyz" not in html
    assert "Abc123" not in html


def test_a_record_from_elsewhere_never_overwrites_the_one_in_runs(scripted, isolated, template) -> None:
    path, data = make_record(scripted, template)
    copy = isolated / "copy.json"  # another record claiming the same run id, to be resumed
    copy.write_text(json.dumps({**data, "status": "interrupted", "output": "FORGED"}))
    before, copied = path.read_bytes(), copy.read_bytes()
    r = cli("resume", str(copy))
    assert r.returncode == 2, r.stderr
    line = one_clean_line(r.stderr)
    assert "already holds run" in line and data["run_id"] in line
    assert path.read_bytes() == before and copy.read_bytes() == copied
    # with no record of that id in runs/, the copy is continued there (docs/records.md)
    path.unlink()
    r = cli("resume", str(copy), "--json")
    assert r.returncode == 0, r.stderr
    assert load(path).run_id == data["run_id"] and copy.read_bytes() == copied
