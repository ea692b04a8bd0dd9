"""Running evals for real: resume after kill -9 without redoing finished items, shards and
merge, the cost limit, --fail-under, and the evals commands. Model calls go to the SCRIPTED test
backend (canned replies by rule, with delays; its call log shows what was asked)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from conftest import cli
from deliberate.errors import InputError

N = 6


def dataset(path: Path, n: int = N) -> None:
    path.write_text("".join(json.dumps({"prompt": f"Q{i}: say word{i}", "target": f"word{i}"}) + "\n"
                            for i in range(1, n + 1)))


def script(scripted: Any, delay: float = 0.0) -> None:
    """The flow (one step) is right on odd items; the single baseline on items 1-2."""
    rules: list[dict[str, Any]] = []
    for i in range(1, N + 1):
        rules.append({"match": f"^Task: Q{i}:", "reply": f"word{i}" if i % 2 else "no", "delay": delay})
        rules.append({"match": f"^Q{i}:", "reply": f"word{i}" if i <= 2 else "no", "delay": delay})
    scripted.write(rules)


FLOW = "name: one\ninputs:\n  prompt: {}\nsteps:\n  answer: {prompt: 'Task: {{ prompt }}'}\n"


def setup(isolated: Path, scripted: Any, delay: float = 0.0) -> None:
    (isolated / "one.yaml").write_text(FLOW)
    dataset(isolated / "data.jsonl")
    script(scripted, delay)


def eval_args(*extra: str) -> list[str]:
    return ["eval", "one.yaml", "data.jsonl", "--scorer", "exact", "--baseline", "single",
            "--model", "smollm2-135m", *extra]


def only_eval(isolated: Path) -> dict[str, Any]:
    """The one eval record, with the results its journal holds (as resume reads it)."""
    from deliberate.eval.record import load

    files = list((isolated / "evals").glob("*.json"))
    assert len(files) == 1, files
    return load(files[0]).model_dump(mode="json")


def test_resume_after_kill_9_redoes_no_finished_item(scripted, isolated: Path) -> None:
    setup(isolated, scripted, delay=0.4)
    env = dict(os.environ)
    proc = subprocess.Popen([sys.executable, "-m", "deliberate", *eval_args("-j", "1", "--json")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 60
    done = 0
    while time.time() < deadline:
        time.sleep(0.1)
        try:
            rec = only_eval(isolated)
        except (AssertionError, InputError):
            continue
        done = sum(len(i["arms"]) for i in rec["items"].values())
        if done >= 3:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    rec = only_eval(isolated)
    finished = {(iid, arm) for iid, item in rec["items"].items() for arm in item["arms"]}
    assert 3 <= len(finished) < 2 * N and rec["status"] == "running"
    before = len(scripted.calls())
    r = cli(*eval_args("--resume", rec["eval_id"], "--json"))
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["eval_id"] == rec["eval_id"] and doc["done"] == N
    # the resumed process asked only for what was not finished (a call cut by the kill is asked again)
    asked = scripted.calls()[before:]
    assert len(asked) == 2 * N - len(finished)
    for iid, arm in finished:
        prompt = f"Task: Q{iid}:" if arm == "flow" else f"Q{iid}:"
        assert not any(c["prompt"].startswith(prompt) for c in asked), (iid, arm)
    arms = {a["arm"]: a for a in doc["arms"]}
    assert arms["flow"]["passed"] == 3 and arms["single"]["passed"] == 2


def test_resume_refuses_another_dataset(scripted, isolated: Path) -> None:
    setup(isolated, scripted)
    r = cli(*eval_args("--json"))
    eval_id = json.loads(r.stdout)["eval_id"]
    dataset(isolated / "data.jsonl", N - 1)
    calls = len(scripted.calls())
    r = cli(*eval_args("--resume", eval_id))
    assert r.returncode == 2 and "dataset digest differs" in r.stderr and len(scripted.calls()) == calls


def test_shards_merge_to_the_whole_eval(scripted, isolated: Path) -> None:
    setup(isolated, scripted)
    ids = []
    for i in (1, 2):
        r = cli(*eval_args("--shard", f"{i}/2", "--json"))
        assert r.returncode == 0, r.stderr
        ids.append(json.loads(r.stdout)["eval_id"])
    r = cli("evals", "merge", *ids, "--json")
    assert r.returncode == 0, r.stderr
    merged = json.loads(r.stdout)
    assert merged["items"] == merged["done"] == N and merged["merged_from"] == ids
    whole = json.loads(cli(*eval_args("--json")).stdout)
    for a, b in zip(merged["arms"], whole["arms"], strict=True):
        assert (a["arm"], a["passed"], a["n"]) == (b["arm"], b["passed"], b["n"])
    assert merged["comparisons"][0]["p_value"] == whole["comparisons"][0]["p_value"]


def test_max_cost_stops_cleanly_and_resume_finishes(scripted, isolated: Path) -> None:
    setup(isolated, scripted)
    # 'paid': 1000 USD per million prompt tokens, 2000 per million completion tokens: a call costs
    # 0.006 (4 + 1 tokens), and the budget reserves its worst case first (256 tokens out: 0.516),
    # so calls stop once 0.006 * done + 0.516 passes the limit: after 4 items
    args = ["eval", "one.yaml", "data.jsonl", "--scorer", "exact", "--model", "paid", "-j", "1"]
    r = cli(*args, "--max-cost", "0.537", "--json")
    assert r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)
    assert doc["status"] == "stopped" and "cost limit" in doc["stop_reason"]
    assert doc["done"] == 4
    cost = sum(a["cost_usd"] for a in doc["arms"])
    assert 0 < cost <= 0.537
    r = cli(*args, "--max-cost", "100", "--resume", doc["eval_id"], "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["done"] == N


def test_fail_under_exits_1_when_missed(scripted, isolated: Path) -> None:
    setup(isolated, scripted)
    r = cli(*eval_args("--fail-under", "pass_rate=0.4", "--fail-under", "delta_vs_single=0"))
    assert r.returncode == 0, r.stderr  # flow 3/6 = 0.5; single 2/6
    r = cli(*eval_args("--fail-under", "pass_rate=0.6", "--json"))
    assert r.returncode == 1
    doc = json.loads(r.stdout)
    assert doc["fail_under"] == [{"metric": "pass_rate", "threshold": 0.6, "value": 0.5, "passed": False}]
    assert "pass_rate is 0.5000, under 0.6" in r.stderr


def test_evals_list_show_diff(scripted, isolated: Path) -> None:
    setup(isolated, scripted)
    a = json.loads(cli(*eval_args("--json")).stdout)["eval_id"]
    # a second eval where the flow is right everywhere
    scripted.write([{"match": f"^Task: Q{i}:", "reply": f"word{i}"} for i in range(1, N + 1)])
    b = json.loads(cli(*eval_args("--json")).stdout)["eval_id"]
    rows = json.loads(cli("evals", "list", "--json").stdout)
    assert [r["eval_id"] for r in rows] == [b, a] and rows[1]["flow_pass_rate"] == 0.5
    for columns in (80, 140):  # each id whole, what show, diff and merge take, at any width
        out = cli("evals", "list", env={"COLUMNS": str(columns)}).stdout
        assert a in out and b in out and max(len(line) for line in out.splitlines()) <= columns
        assert ("evals show, --json or a wider terminal" in out) is (columns == 80)
    narrow = cli("evals", "list", env={"COLUMNS": "40"}).stdout  # a line an eval, never cut
    assert narrow.splitlines() == [f"{b}  finished  one", f"{a}  finished  one"]
    r = cli("evals", "show", a[:20])
    assert r.returncode == 0 and "paired comparisons" in r.stdout and "single" in r.stdout
    assert json.loads(cli("evals", "show", a, "--json").stdout)["eval_id"] == a
    doc = json.loads(cli("evals", "diff", a, b, "--json").stdout)
    assert doc["common"] == N and doc["flow"]["b_wins"] == 3 and doc["flow"]["a_wins"] == 0
    flow = next(x for x in doc["arms"] if x["arm"] == "flow")
    assert (flow["a"], flow["b"]) == (0.5, 1.0)
    r = cli("evals", "show", "nope")
    assert r.returncode == 2 and "no eval 'nope'" in r.stderr
    (isolated / "evals" / "bad.json").write_text("{}")
    r = cli("evals", "show", "evals/bad.json")
    assert r.returncode == 2 and "not an eval record" in r.stderr


def test_a_torn_journal_line_is_skipped_and_that_result_redone(scripted, isolated: Path) -> None:
    from deliberate.eval.record import journal_of, load

    setup(isolated, scripted)
    doc = json.loads(cli(*eval_args("--json")).stdout)
    path = Path(doc["record"])
    rec = load(path)
    item = rec.items.pop("6")  # as if item 6 had only reached the journal, its last line torn
    from deliberate.eval.record import save

    rec.status = "running"
    save(rec, path.parent)
    with journal_of(path.parent, rec.eval_id).open("w") as fh:
        fh.write(json.dumps({"id": "6", "line": 6, "target": "word6", "arm": "flow",
                             "result": item.arms["flow"].model_dump(mode="json")}) + "\n")
        fh.write('{"id": "6", "line": 6, "arm": "single", "resu')
    again = load(path)
    assert set(again.items["6"].arms) == {"flow"}
    before = len(scripted.calls())
    r = cli(*eval_args("--resume", rec.eval_id, "--json"))
    assert r.returncode == 0, r.stderr
    asked = scripted.calls()[before:]
    assert [c["prompt"] for c in asked] == ["Q6: say word6"]  # only the torn result, redone
    assert not journal_of(path.parent, rec.eval_id).exists()


def test_secret_values_never_reach_the_eval_record(scripted, isolated: Path) -> None:
    secret = "sk-live-0123456789abcdefSECRET"
    (isolated / "one.yaml").write_text(FLOW)
    dataset(isolated / "data.jsonl", 2)
    scripted.write([{"match": "Q1", "reply": f"my key is {secret}"}])
    r = cli(*eval_args("--json"), env={"SOME_PROVIDER_API_KEY": secret})
    assert r.returncode == 0, r.stderr
    assert secret not in r.stdout
    for f in (isolated / "evals").iterdir():
        assert secret not in f.read_text()


def test_items_run_concurrently_and_the_service_reports_progress(scripted, isolated: Path) -> None:
    import asyncio

    from deliberate.eval.runner import EvalControl, EvalProgress, EvalRequest, run_eval
    from deliberate.services.run import RunOptions

    setup(isolated, scripted, delay=0.3)
    events: list[EvalProgress] = []
    request = EvalRequest("one.yaml", "data.jsonl", scorer="exact", baselines=["single"],
                          options=RunOptions(models={"*": "smollm2-135m"}), control=EvalControl(concurrency=4))
    outcome = asyncio.run(run_eval(request, listen=events.append))
    assert outcome.exit_code == 0 and outcome.report["done"] == N
    flow_calls = sorted((c["start"], c["end"]) for c in scripted.calls() if c["prompt"].startswith("Task:"))
    overlapping = max(sum(1 for s, e in flow_calls if s <= t < e) for t, _ in flow_calls)
    assert overlapping == 4  # four items at once, never more
    kinds = [e.kind for e in events]
    assert kinds[0] == "started" and kinds[-1] == "finished" and "phase" in kinds
    assert kinds.count("item") == 2 * N
    last = events[-1]
    assert (last.total, last.done) == (2 * N, 2 * N) and last.passed == {"flow": 3, "single": 2}


def test_an_eval_without_a_baseline_says_it_cannot_answer_and_how_to(scripted, isolated: Path) -> None:
    setup(isolated, scripted)
    args = ["eval", "one.yaml", "data.jsonl", "--scorer", "exact", "--model", "smollm2-135m"]
    doc = json.loads(cli(*args, "--json").stdout)
    assert [a["arm"] for a in doc["arms"]] == ["flow"] and doc["comparisons"] == []
    assert len(doc["verdict"]) == 1 and "--baseline single --baseline self_consistency" in doc["verdict"][0]
    shown = cli("evals", "show", doc["eval_id"], env={"COLUMNS": "200"})
    assert "no baseline to compare with" in shown.stdout
