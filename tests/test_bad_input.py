"""Every malformed flow, registry or argument: one clean error line naming file, line and what
to do; exit code 2; no traceback; nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import cli

GOOD_HEAD = "name: t\ninputs: {prompt: {}}\nsteps:\n"

CASES = [
    # (id, file content (str or bytes), expected substring, expected line or None)
    ("invalid_yaml", "name: t\nsteps: [unclosed\n", "invalid YAML", 3),
    ("tab_indented", "name: t\nsteps:\n\ta: {prompt: hi}\n", "spaces, not tabs", 3),
    ("unknown_top_key", "name: t\nstepz: {}\nsteps:\n  a: {prompt: hi}\n", "unknown key 'stepz'", 2),
    ("unknown_step_key", GOOD_HEAD + "  a:\n    promt: hi\n", "unknown key 'promt'", 5),
    ("wrong_type", GOOD_HEAD + "  a:\n    prompt: hi\n    max_tokens: lots\n", "max_tokens", 6),
    ("empty_file", "", "the file is empty", None),
    ("missing_steps", "name: t\n", "missing required key 'steps'", 1),
    ("missing_step_ref", GOOD_HEAD + "  a: {prompt: '{{ creater }}'}\n  creator: {prompt: hi}\n",
     "unknown name 'creater'", 4),
    ("cycle", GOOD_HEAD + "  a: {prompt: '{{ b }}'}\n  b: {prompt: '{{ a }}'}\n", "cycle: ", None),
    ("self_reference", GOOD_HEAD + "  a: {prompt: 'more of {{ a }}'}\n", "refers to itself", 4),
    ("unknown_model", GOOD_HEAD + "  a: {prompt: hi, model: gpt-5-ultra}\n", "unknown model key 'gpt-5-ultra'", 4),
    ("unknown_strategy", GOOD_HEAD + "  a: {prompt: hi, strategy: precize}\n", "did you mean 'precise'", 4),
    ("template_syntax", GOOD_HEAD + "  a:\n    prompt: '{{ prompt }'\n", "step 'a', prompt: template syntax error", 5),
    ("python_internals", GOOD_HEAD + "  a: {prompt: \"{{ ''.__class__.__mro__ }}\"}\n", "'__class__' is refused", 4),
    ("python_tag", "name: !!python/object/apply:os.system ['echo pwned']\nsteps:\n  a: {prompt: hi}\n",
     "is not allowed", 1),
    ("duplicate_key", GOOD_HEAD + "  a: {prompt: hi}\n  a: {prompt: again}\n", "duplicate key 'a'", 5),
    ("until_unknown", GOOD_HEAD + "  a: {prompt: hi}\n  b: {prompt: '{{ a }}'}\n"
     "rounds: {steps: [b], max: 2, until: \"'OK' in critic\"}\n", "until: unknown name 'critic'", 6),
    ("until_nothing", GOOD_HEAD + "  a: {prompt: hi}\nrounds: {steps: [a], until: 'true'}\n",
     "until references nothing known", 5),
    ("rounds_unknown_step", GOOD_HEAD + "  a: {prompt: hi}\nrounds: {steps: [a, refine]}\n",
     "rounds names unknown step 'refine'", 5),
    ("judge_bad_target", GOOD_HEAD + "  a: {prompt: hi}\n  j: {kind: judge, target: ab, rubric: r, threshold: 5}\n",
     "judge target 'ab' is not a step", 5),
    ("unknown_kind", GOOD_HEAD + "  a: {kind: histroy}\n", "unknown step kind 'histroy'", 4),
    ("item_outside_for_each", GOOD_HEAD + "  a: {prompt: '{{ item }}'}\n", "only defined in a for_each", 4),
    ("not_utf8", b"name: t\nsteps:\n  a: {prompt: \"caf\xe9\"}\n", "not valid UTF-8", 3),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_validate_reports_one_clean_line(isolated: Path, case) -> None:
    _id, content, needle, line = case
    path = isolated / "bad.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    r = cli("flows", "validate", str(path))
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    assert needle in r.stderr, r.stderr
    assert str(path) in r.stderr
    if line is not None:
        assert f"{path}:{line}" in r.stderr, r.stderr
    # run refuses the same file before any model call, and writes nothing
    r2 = cli("run", str(path), "x")
    assert r2.returncode == 2 and needle in r2.stderr and "Traceback" not in r2.stderr
    assert not (isolated / "runs").exists()


def test_cycle_names_every_step_in_it(isolated: Path) -> None:
    path = isolated / "c.yaml"
    path.write_text(GOOD_HEAD + "  a: {prompt: '{{ c }}'}\n  b: {prompt: '{{ a }}'}\n  c: {prompt: '{{ b }}'}\n")
    r = cli("flows", "validate", str(path))
    assert r.returncode == 2
    line = [x for x in r.stderr.splitlines() if "cycle" in x][0]
    assert all(s in line for s in ("a", "b", "c")) and line.count("->") == 3


def test_all_problems_in_a_file_are_reported_together(isolated: Path) -> None:
    path = isolated / "many.yaml"
    path.write_text(GOOD_HEAD + "  a: {prompt: '{{ nope }}', model: nomodel}\n  b: {prompt: '{{ zilch }}'}\n"
                    "output: c\n")
    r = cli("flows", "validate", str(path), "--json")
    assert r.returncode == 2
    problems = json.loads(r.stdout)["files"][0]["problems"]
    messages = " | ".join(p["message"] for p in problems)
    for needle in ("'nope'", "'nomodel'", "'zilch'", "unknown step 'c'"):
        assert needle in messages
    assert all(p["line"] for p in problems)


def test_directory_passed_as_a_file(isolated: Path) -> None:
    (isolated / "adir.yaml").mkdir()
    r = cli("flows", "validate", str(isolated / "adir.yaml"))
    assert r.returncode == 2 and "is a directory" in r.stderr and "Traceback" not in r.stderr


def test_ten_megabyte_file_is_refused_quickly(isolated: Path) -> None:
    path = isolated / "huge.yaml"
    path.write_text("name: t\nsteps:\n  a: {prompt: hi}\n# " + "x" * 10_000_000 + "\n")
    r = cli("flows", "validate", str(path))
    assert r.returncode == 2 and "too large" in r.stderr


def test_missing_file(isolated: Path) -> None:
    r = cli("flows", "validate", "nowhere.yaml")
    assert r.returncode == 2 and "nowhere.yaml: no such file" in r.stderr


def test_sandbox_refuses_internals_at_render_time_too() -> None:
    from deliberate.flows.templates import TemplateProblem, render

    with pytest.raises(TemplateProblem):
        render("{{ x.__class__.__mro__[1].__subclasses__() }}", {"x": ""})
    with pytest.raises(TemplateProblem):
        render("{{ missing }}", {})


def test_shipped_flows_validate() -> None:
    from deliberate.flows.loader import available_flows

    paths = [str(p) for p in available_flows().values()]
    r = cli("flows", "validate", *paths)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("ok") == len(paths) >= 6


def test_broken_models_yaml_names_file_and_line(isolated: Path) -> None:
    (isolated / "models.yaml").write_text("mine:\n  provider: local\n  sorce: x\n")
    r = cli("models", "list")
    assert r.returncode == 2
    assert "models.yaml:3" in r.stderr and "sorce" in r.stderr and "Traceback" not in r.stderr


def test_strategy_fallback_to_unknown_model(isolated: Path) -> None:
    (isolated / "strategies.yaml").write_text("mine:\n  fallbacks: [gpt4o-mini]\n")
    r = cli("strategies", "list")
    assert r.returncode == 2 and "did you mean 'gpt-4o-mini'" in r.stderr


def test_unknown_flow_name_did_you_mean() -> None:
    r = cli("run", "chalenge", "x")
    assert r.returncode == 2 and "did you mean 'challenge'" in r.stderr


@pytest.mark.parametrize("args,needle", [
    (["run", "challenge", "x", "--input", "novalue"], "expected NAME=VALUE"),
    (["run", "challenge", "x", "--input", "code=@missing.txt"], "no such file"),
    (["run", "challenge", "x", "--input", "bogus=1"], "has no input 'bogus'"),
    (["run", "challenge", "x", "--rounds", "0"], "--rounds"),
    (["run", "challenge", "x", "--strategy", "fast"], "unknown strategy 'fast'"),
    (["run", "challenge", "x", "--model", "gpt-5"], "unknown model key 'gpt-5'"),
    (["replay", "runs/none.json"], "no such run record"),
])
def test_bad_arguments(args: list[str], needle: str, isolated: Path) -> None:
    r = cli(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert not (isolated / "runs").exists()
