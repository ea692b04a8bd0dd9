"""`deliberate test` through the real CLI: the shipped flow tests pass and write valid JUnit, a
broken expectation fails with a diff, bad test files exit 2 with file and line, a recorded run
becomes a passing case. Model keys are pointed at the SCRIPTED test backend, whose log proves that
no model (not even a stand-in) is called: every reply comes from the `replies` backend."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import ROOT, cli

TESTS = ROOT / "flows" / "tests"
SHIPPED = sorted(p.stem for p in (ROOT / "flows").glob("*.yaml"))


def cases_in(path: Path) -> list[str]:
    return [c["name"] for c in yaml.safe_load(path.read_text())["cases"]]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


CHALLENGE_CASE = """\
flow: {flow}
cases:
  - name: the refiner's answer is the output
    inputs: {{prompt: "Write a haiku"}}
    replies:
      creator: "Draft haiku"
      challenger: "NO ISSUES"
      refiner: "{answer}"
    expect:
      output: {{equals: "{expected}"}}
      calls: {{total: 3}}
"""


def challenge_case(tmp: Path, answer: str = "Final haiku", expected: str = "Final haiku") -> Path:
    return write(tmp / "my.test.yaml", CHALLENGE_CASE.format(flow=ROOT / "flows" / "challenge.yaml",
                                                             answer=answer, expected=expected))


def test_shipped_flow_tests_pass_and_write_junit(scripted: Any, isolated: Path) -> None:
    out = isolated / "reports" / "junit.xml"
    r = cli("test", str(TESTS), "--junit", str(out))
    assert r.returncode == 0, r.stderr
    assert "no model was called" in r.stderr
    assert scripted.calls() == []  # the stand-in model backend never heard a call
    suites = ET.parse(out).getroot()
    assert suites.tag == "testsuites"
    cases = suites.findall("./testsuite/testcase")
    expected = [n for f in sorted(TESTS.glob("*.yaml")) for n in cases_in(f)]
    assert sorted(c.get("name") for c in cases) == sorted(expected)
    assert int(suites.get("tests", "0")) == len(expected)
    assert suites.findall(".//failure") == []
    # at least one case per shipped flow
    assert {c.get("classname") for c in cases} == {f"flows.{name}" for name in SHIPPED}


def test_broken_expectation_fails_with_a_readable_diff(isolated: Path) -> None:
    path = challenge_case(isolated, answer="Rain on the roof", expected="Rain on the tin roof")
    out = isolated / "junit.xml"
    r = cli("test", str(path), "--junit", str(out))
    assert r.returncode == 1, r.stderr
    assert "FAIL the refiner's answer is the output" in r.stderr and f"({path}:3)" in r.stderr
    assert "output: differs" in r.stderr
    assert "- expected: Rain on the tin roof" in r.stderr
    assert "+ actual:   Rain on the roof" in r.stderr
    assert "Traceback" not in r.stderr
    failure = ET.parse(out).getroot().find(".//testcase/failure")
    assert failure is not None and "output: differs" in failure.get("message", "")
    assert "Rain on the tin roof" in (failure.text or "")


def test_multiline_outputs_fail_with_a_unified_diff(isolated: Path) -> None:
    path = write(isolated / "ml.test.yaml", f"""\
flow: {ROOT / "flows" / "adversarial.yaml"}
cases:
  - name: multi-line answer
    inputs: {{prompt: x}}
    replies: {{proposal: p, red_team: r, blue_team: b, arbiter: "line one\\nline two\\nline three"}}
    expect:
      output: "line one\\nline 2\\nline three"
""")
    r = cli("test", str(path))
    assert r.returncode == 1
    assert "--- expected" in r.stderr and "+++ actual" in r.stderr
    assert "-line 2" in r.stderr and "+line two" in r.stderr


def test_json_output_is_one_document(isolated: Path) -> None:
    challenge_case(isolated)
    r = cli("test", str(isolated / "my.test.yaml"), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["ok"] is True and doc["passed"] == 1 and doc["failed"] == 0
    assert doc["cases"][0]["case"] == "the refiner's answer is the output"


def test_keyword_selects_cases(isolated: Path) -> None:
    r = cli("test", str(TESTS), "-k", "tie", "--json")
    assert r.returncode == 0, r.stderr
    names = [c["case"] for c in json.loads(r.stdout)["cases"]]
    assert names and all("tie" in n for n in names)
    r = cli("test", str(TESTS), "-k", "consensus and not tie", "--json")
    names = [c["case"] for c in json.loads(r.stdout)["cases"]]
    assert names and not any("tie" in n for n in names)
    r = cli("test", str(TESTS), "-k", "no such case")
    assert r.returncode == 2 and "no case matches" in r.stderr


def test_default_discovery_finds_flows_tests(isolated: Path) -> None:
    r = cli("test", "--json")
    assert r.returncode == 2 and "no test files found" in r.stderr
    challenge_case(isolated / "flows" / "tests")  # a *.test.yaml anywhere under ./flows
    r = cli("test", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["files"] == ["flows/tests/my.test.yaml"]


BASE = """\
flow: {flow}
cases:
  - name: x
    inputs: {{prompt: hi}}
    replies:
      creator: a
      challenger: NO ISSUES
      refiner: r
    expect: {{status: ok}}
"""


@pytest.mark.parametrize("old, new, message", [
    ("expect: {status: ok}", "expect: {outptu: x}", "unknown key 'outptu' (did you mean 'output'"),
    ("expect: {status: ok}", "expect: {output: {equls: x}}", "unknown key 'equls' (did you mean 'equals'?)"),
    ("challenger: NO ISSUES", "critic: nope", "flow 'challenge' has no step 'critic'"),
    ("expect: {status: ok}", "expect: {calls: {refinr: 1}}", "has no step 'refinr' (did you mean 'refiner'?)"),
    ("expect: {status: ok}", "expect: {votes: {creator: {tie: true}}}", "step 'creator' is a generate step: it is not a vote"),
    ("refiner: r", "refiner: {error: meltdown}", "unknown error 'meltdown'"),
    ("refiner: r", "refiner: {reply: a, error: timeout}", "exactly one of 'reply'"),
    ("refiner: r", "refiner: [a, {replies: b}]", "unknown key 'replies' in a reply"),
    ("refiner: r", "refiner: {rounds: {first: a}}", "rounds: 'first' is not a round number"),
    ("    inputs: {prompt: hi}", "    inputs: {prompt: hi, topic: x}", "flow 'challenge' has no input 'topic'"),
    ("    inputs: {prompt: hi}", "    inputs: {}", "case 'x' gives no input 'prompt'"),
    ("    inputs: {prompt: hi}", "    inputs: {prompt: hi}\n    models: {creator: gpt-4o-mni}",
     "unknown model key 'gpt-4o-mni' (did you mean 'gpt-4o-mini'"),
    ("    inputs: {prompt: hi}", "    inputs: {prompt: hi}\n    strategy: fast", "unknown strategy 'fast'"),
    ("    expect: {status: ok}", "    expect: {status: ok}\n    inputs2: {}", "unknown key 'inputs2'"),
])
def test_bad_test_files_exit_2_with_file_and_line(isolated: Path, old: str, new: str, message: str) -> None:
    text = BASE.format(flow=ROOT / "flows" / "challenge.yaml").replace(old, new)
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if new.strip().splitlines()[-1].strip() in ln)
    path = write(isolated / "bad.test.yaml", text)
    r = cli("test", str(path))
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"error: {path}:{line}:"), lines[0]
    assert message in lines[0]


def test_replies_for_a_step_that_never_ran_exit_2(isolated: Path) -> None:
    path = write(isolated / "stale.test.yaml", f"""\
flow: {ROOT / "flows" / "challenge.yaml"}
cases:
  - name: the creator fails, so nothing after it runs
    inputs: {{prompt: hi}}
    replies:
      creator: {{error: context_window}}
      challenger: "never sent"
    expect: {{status: failed, error: {{contains: context window}}}}
""")
    r = cli("test", str(path))
    assert r.returncode == 2, r.stderr
    assert f"{path}:7:" in r.stderr and "replies for step 'challenger', which never ran" in r.stderr


def test_yaml_bomb_is_refused(isolated: Path) -> None:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        prev = chr(ord("a") + i - 1)
        lines.append(f"{chr(ord('a') + i)}: &{chr(ord('a') + i)} [{', '.join(['*' + prev] * 10)}]")
    path = write(isolated / "bomb.test.yaml", "\n".join(lines) + "\n")
    r = cli("test", str(path))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert str(path) in r.stderr


def test_update_rewrites_pinned_values_only(isolated: Path) -> None:
    path = challenge_case(isolated, answer="Final haiku", expected="Old haiku")
    text = path.read_text().replace("calls: {total: 3}", "calls: {total: 9}\n      prompts: {creator: {contains: nope}}")
    path.write_text(text)
    r = cli("test", str(path), "--update")
    # output and calls are pinned values: rewritten; the prompt's `contains` is a person's to fix
    assert r.returncode == 1, r.stderr
    data = yaml.safe_load(path.read_text())
    assert data["cases"][0]["expect"]["output"] == {"equals": "Final haiku"}
    assert data["cases"][0]["expect"]["calls"] == {"total": 3}
    assert "prompts.creator: does not contain 'nope'" in r.stderr


def test_record_becomes_a_passing_case(scripted: Any, isolated: Path) -> None:
    scripted.write([{"match": "NO ISSUES", "reply": "Looks wrong to me."}])  # the rest echoes
    runs = []
    for args in (("multi_perspective", "Review a login form"), ("challenge", "Write a haiku", "--rounds", "2"),
                 ("challenge", "Write a limerick")):
        r = cli("run", *args, "--json")
        assert r.returncode == 0, r.stderr
        runs.append(json.loads(r.stdout))
    before = len(scripted.calls())
    mp, ch = isolated / "mp.test.yaml", isolated / "tests" / "challenge.test.yaml"
    r = cli("test", "--record", runs[0]["record"], "--out", str(mp))
    assert r.returncode == 0, r.stderr + r.stdout
    assert "1 passed" in r.stderr
    r = cli("test", "--record", runs[1]["record"], "--out", str(ch), "--name", "challenge regression")
    assert r.returncode == 0, r.stderr
    r = cli("test", "--record", runs[2]["record"], "--out", str(ch))  # appended to the same file
    assert r.returncode == 0, r.stderr
    assert "2 passed" in r.stderr
    r = cli("test", "--record", runs[0]["record"], "--out", str(ch))  # another flow's run: refused
    assert r.returncode == 2 and "tests flow 'challenge'" in r.stderr
    assert len(scripted.calls()) == before  # replaying called no model
    first = yaml.safe_load(mp.read_text())["cases"][0]
    assert first["name"] == f"replays run {runs[0]['run_id']}"
    assert first["expect"]["output"] == {"equals": runs[0]["output"]}
    assert set(first["replies"]["experts_say"]["branches"]) == {0, 1, 2}
    assert first["expect"]["calls"]["total"] == 4
    data = yaml.safe_load(ch.read_text())
    assert [c["name"] for c in data["cases"]] == ["challenge regression", f"replays run {runs[2]['run_id']}"]
    second = data["cases"][0]
    assert second["rounds"] == 2 and second["expect"]["rounds"]["count"] == 2
    # the pinned answer is checked: change the replayed reply and the case fails
    second["replies"]["refiner"] = ["something else"] * len(second["replies"]["refiner"])
    ch.write_text(yaml.safe_dump(data))
    r = cli("test", str(ch), "--json")
    assert r.returncode == 1
    failed = [c for c in json.loads(r.stdout)["cases"] if not c["passed"]]
    assert [c["case"] for c in failed] == ["challenge regression"]


def test_record_of_a_judged_run_and_of_a_failed_run(scripted: Any, isolated: Path) -> None:
    scripted.write([{"match": "Reply with 'SCORE: N'", "reply": "SCORE: 3 too short", "times": 1},
                    {"match": "Reply with 'SCORE: N'", "reply": "SCORE: 8 fine"}])
    r = cli("run", "linear", "Write a Python function that adds two numbers", "--json")
    assert r.returncode == 0, r.stderr
    judged = json.loads(r.stdout)
    scripted.write([{"match": "Produce a complete solution", "fail": "fatal"}])
    r = cli("run", "challenge", "Write a haiku", "--json")
    assert r.returncode == 1, r.stderr
    failed = json.loads(r.stdout)
    for i, run in enumerate((judged, failed)):
        out = isolated / f"r{i}.test.yaml"
        r = cli("test", "--record", run["record"], "--out", str(out), "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        assert json.loads(r.stdout)["passed"] == 1
    case = yaml.safe_load((isolated / "r0.test.yaml").read_text())["cases"][0]
    assert len(case["replies"]["execute"]) == 2 and case["replies"]["validate"][0] == "SCORE: 3 too short"
    assert case["expect"]["calls"] == {"execute": 2, "deep_check": 1, "validate": 2, "total": 5}
    case = yaml.safe_load((isolated / "r1.test.yaml").read_text())["cases"][0]
    assert case["replies"] == {"creator": {"error": "server_error"}}
    assert case["expect"] == {"status": "failed"}


def test_replies_backend_is_a_plugin_for_run(isolated: Path) -> None:
    write(isolated / "models.yaml", "smollm2-135m: {provider: replies, family: test, context_window: 8192}\n")
    replies = write(isolated / "replies.yaml", "creator: draft\nchallenger: NO ISSUES\nrefiner: from the plugin\n")
    r = cli("run", "challenge", "x", "--json", env={"DELIBERATE_REPLIES": str(replies)})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["output"] == "from the plugin"


# A child pytest with this project's plugin, found through its pytest11 entry point as a user's
# pytest finds it, and without the heavy unrelated plugins of the dev install (3.4 s -> 0.9 s each).
CHILD_PYTEST = ["-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-p", "no:schemathesis", "-p", "no:xdist",
                "-p", "no:xdist.looponfail", "-p", "no:anyio", "-p", "no:asyncio"]


def test_pytest_plugin_collects_the_same_cases(isolated: Path) -> None:
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", *CHILD_PYTEST, str(TESTS)],
                       capture_output=True, text=True, cwd=isolated, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    collected = [ln for ln in r.stdout.splitlines() if "::" in ln]
    expected = [n for f in sorted(TESTS.glob("*.yaml")) for n in cases_in(f)]
    assert sorted(ln.split("::", 1)[1] for ln in collected) == sorted(expected)


def test_pytest_plugin_reports_a_failing_case(isolated: Path) -> None:
    import subprocess
    import sys

    challenge_case(isolated, answer="Final haiku", expected="Another haiku")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", *CHILD_PYTEST, str(isolated)],
                       capture_output=True, text=True, cwd=isolated, timeout=120)
    assert r.returncode == 1, r.stdout
    assert "1 failed" in r.stdout
    assert "- expected: Another haiku" in r.stdout and "+ actual:   Final haiku" in r.stdout


async def test_a_judged_case_waits_no_backoff_whatever_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """Scripted replies come at once: a judge asking its target again does not wait its backoff
    (0.5 s by default) in a flow test, even where the setting asks for one."""
    from deliberate.config import Settings
    from deliberate.engine.steps import judge
    from deliberate.testing.api import run_tests

    waits: list[float] = []
    real_sleep = judge.asyncio.sleep

    async def sleep(delay: float) -> None:
        waits.append(delay)
        await real_sleep(0)

    monkeypatch.setattr(judge.asyncio, "sleep", sleep)
    monkeypatch.setenv("DELIBERATE_JUDGE_BACKOFF_S", "0.5")
    outcome = await run_tests([ROOT / "flows" / "tests" / "linear.yaml"], "never passes", settings=Settings())
    assert [r.passed for r in outcome.results] == [True]
    assert waits and set(waits) == {0.0}
