"""Bad eval input is refused before any model call: one line naming the file, the line and the
field, exit 2, no traceback, no eval record. Model calls go to the SCRIPTED test backend, whose
call log proves none was made."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import cli


def eval_cli(*args: str) -> object:
    return cli("eval", "challenge", *args, "--model", "smollm2-135m")


def refused(r: object, *needles: str) -> None:
    assert r.returncode == 2, (r.stdout, r.stderr)  # type: ignore[attr-defined]
    err = r.stderr  # type: ignore[attr-defined]
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for n in needles:
        assert n in err, err


@pytest.mark.parametrize(("content", "needles"), [
    ('{"prompt": "a", "target": "b"}\n{"prompt": "c", "target": \n', ("data.jsonl:2", "not a JSON line")),
    ('{"prompt": "a", "target": "b"}\n["a list"]\n', ("data.jsonl:2", "not an object")),
    ('{"prompt": "a", "target": "b"}\n\n{"target": "d"}\n', ("data.jsonl:3", "'prompt'", "--input prompt=COLUMN")),
    ('{"prompt": "a", "target": "b"}\n{"prompt": "c"}\n', ("data.jsonl:2", "'target'", "--target")),
    ('{"prompt": "a", "target": "b", "id": "x"}\n{"prompt": "c", "target": "d", "id": "x"}\n',
     ("data.jsonl:2", "field 'id'", "line 1")),
    ("", ("data.jsonl", "no rows")),
    ('[{"prompt": "a", "target": "b"}]\n', ("data.jsonl:1", "JSON array", "jq -c")),
    ('{"prompt": "a", "target": "b"}\n{"prompt": "c \\ud800", "target": "d"}\n',
     ("line 2", "input 'prompt' holds a lone surrogate (U+D800)")),
])
def test_a_bad_jsonl_dataset_names_file_line_and_field(scripted, isolated: Path, content: str,
                                                      needles: tuple[str, ...]) -> None:
    (isolated / "data.jsonl").write_text(content)
    refused(eval_cli("data.jsonl", "--scorer", "exact", "--baseline", "single"), *needles)
    assert scripted.calls() == [] and not (isolated / "evals").exists()


def test_a_bad_csv_dataset_names_its_line(scripted, isolated: Path) -> None:
    (isolated / "data.csv").write_text('prompt,target\n"one",1\n"two"\n')
    refused(eval_cli("data.csv", "--scorer", "exact"), "data.csv:3", "'target'")
    (isolated / "data.csv").write_text('prompt,target\n"one",1,extra\n')
    refused(eval_cli("data.csv", "--scorer", "exact"), "data.csv:2", "more cells")
    assert scripted.calls() == []


def test_not_utf8_and_unknown_format(scripted, isolated: Path) -> None:
    (isolated / "data.jsonl").write_bytes(b'{"prompt": "a", "target": "b"}\n{"prompt": "\xff"}\n')
    refused(eval_cli("data.jsonl"), "data.jsonl:2", "UTF-8")
    (isolated / "data.txt").write_text("hello\n")
    refused(eval_cli("data.txt"), "unknown dataset format")
    refused(eval_cli("nothere.jsonl"), "nothere.jsonl", "no such dataset file")
    assert scripted.calls() == []


@pytest.mark.parametrize(("args", "needles"), [
    (("--scorer", "exakt"), ("unknown scorer 'exakt'", "exact")),
    (("--scorer", "regex:(unclosed"), ("not a valid regular expression",)),
    (("--scorer", "python:nosuchmodule_xyz:f"), ("cannot load it",)),
    (("--scorer", "numeric:abc"), ("tolerance must be a number",)),
    (("--baseline", "singel"), ("unknown baseline 'singel'", "single")),
    (("--baseline", "flow:no_such_flow"), ("no_such_flow",)),
    (("--fail-under", "pass_rate"), ("expected METRIC=NUMBER",)),
    (("--fail-under", "delta_vs_single=0"), ("unknown metric 'delta_vs_single'",)),
    (("--shard", "3/2"), ("--shard",)),
    (("--match", "words"), ("--match 'words'",)),
    (("--judge-model", "no-such-model"), ("no-such-model",)),
    (("--input", "question=prompt"), ("no input 'question'",)),
    (("--resume", "01NOSUCHEVAL"), ("no eval",)),
])
def test_bad_options_exit_2_before_any_call(scripted, isolated: Path, args: tuple[str, ...],
                                            needles: tuple[str, ...]) -> None:
    (isolated / "data.jsonl").write_text(json.dumps({"prompt": "a", "target": "b"}) + "\n")
    refused(eval_cli("data.jsonl", *args), *needles)
    assert scripted.calls() == []


def test_a_flow_that_does_not_load_exits_2(scripted, isolated: Path) -> None:
    (isolated / "data.jsonl").write_text(json.dumps({"prompt": "a", "target": "b"}) + "\n")
    (isolated / "broken.yaml").write_text("name: broken\nsteps:\n  a: {prompt: '{{ nope }}'}\n")
    r = cli("eval", "broken.yaml", "data.jsonl")
    assert r.returncode == 2 and "broken.yaml" in r.stderr and "nope" in r.stderr
    assert "Traceback" not in r.stderr and scripted.calls() == []


def test_an_input_no_model_can_take_is_refused_with_its_item(scripted, isolated: Path) -> None:
    from deliberate.registry import Registry
    from deliberate.services import input_limit

    size = input_limit(Registry.load()) + 1
    rows = [{"prompt": "fine", "target": "x"}, {"prompt": "y" * size, "target": "x"}]
    (isolated / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = cli("eval", "challenge", "data.jsonl", "--model", "smollm2-135m")
    refused(r, "item 2 (line 2)", f"{size:,} characters")
    assert scripted.calls() == []


def test_column_mapping_and_line_number_ids(scripted, isolated: Path) -> None:
    (isolated / "data.csv").write_text("question,answer\nQ1: say yes,yes\nQ2: say no,no\n")
    scripted.write([{"match": "^Q1", "reply": "yes"}, {"match": "^Q2", "reply": "maybe"}])
    (isolated / "one.yaml").write_text("name: one\ninputs:\n  question: {}\nsteps:\n  a: {prompt: '{{ question }}'}\n")
    r = cli("eval", "one.yaml", "data.csv", "--input", "question=question", "--target", "answer",
            "--scorer", "exact", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["arms"][0]["passed"] == 1
    rec = json.loads(Path(doc["record"]).read_text())
    assert sorted(rec["items"]) == ["2", "3"]  # CSV line numbers (the header is line 1)
    assert rec["items"]["2"]["arms"]["flow"]["passed"] is True
