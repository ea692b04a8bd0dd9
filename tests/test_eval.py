"""``deliberate eval`` end to end, through the real CLI, on the SCRIPTED test backend
(tests/plugins/deliberate_scripted: canned replies by rule, not a model). The script decides which
arm is right on which item, so the counts, the p-values and the matched k are known in advance and
checked exactly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conftest import cli

N = 10
FLOW_RIGHT = set(range(1, 9))  # the challenge flow's refined answer is right on items 1-8
CREATOR_RIGHT = {1, 9}  # its first draft is right on 1 and 9 (9: refined into a wrong answer)
SINGLE_RIGHT = {1, 2, 9}
SC_RIGHT = {1, 2, 9, 10}  # the majority of 3 samples


def right(i: int) -> str:
    return f"The code word is word{i}."


WRONG = "I do not know."


def write_dataset(path: Path, n: int = N) -> None:
    path.write_text("".join(json.dumps({"prompt": f"Q{i}: what is the code word?", "target": f"word{i}"}) + "\n"
                            for i in range(1, n + 1)))


def rules(n: int = N) -> list[dict[str, Any]]:
    """Replies by item. The challenge flow: creator, challenger (NO ISSUES), refiner. The
    baselines' prompt is the task itself (starts with 'Qi:'); with one item at a time (-j 1) the
    single arm asks first, then self-consistency's 3 samples: each rule answers once, in order."""
    out: list[dict[str, Any]] = [{"match": "List the concrete problems", "reply": "NO ISSUES"}]
    for i in range(1, n + 1):
        q = f"Q{i}:"
        out.append({"match": f"{q}.*Produce a complete solution", "reply": right(i) if i in CREATOR_RIGHT else "draft"})
        out.append({"match": f"{q}.*Write the improved solution", "reply": right(i) if i in FLOW_RIGHT else WRONG})
        samples = [right(i), right(i), WRONG] if i in SC_RIGHT else [right(i), WRONG, WRONG]
        for reply in [right(i) if i in SINGLE_RIGHT else WRONG, *samples]:
            out.append({"match": f"^{q}", "reply": reply, "times": 1})
    return out


def run_eval(*extra: str) -> Any:
    return cli("eval", "challenge", "data.jsonl", "--scorer", "includes", "--baseline", "single",
               "--baseline", "self_consistency", "--model", "smollm2-135m", *extra)


def test_eval_counts_pvalues_and_matched_k_are_exact(scripted, isolated: Path) -> None:
    write_dataset(isolated / "data.jsonl")
    scripted.write(rules())
    r = run_eval("--json", "-j", "1")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    arms = {a["arm"]: a for a in doc["arms"]}
    assert (arms["flow"]["passed"], arms["single"]["passed"], arms["self_consistency"]["passed"]) == (8, 3, 4)
    assert arms["flow"]["n"] == arms["single"]["n"] == arms["self_consistency"]["n"] == N
    # matched compute: the flow made 3 calls per item (creator, challenger, refiner), so k = 3
    assert arms["flow"]["calls_per_item"] == 3 and doc["matched"]["k"] == {"self_consistency": 3}
    assert arms["self_consistency"]["calls_per_item"] == 3 and arms["single"]["calls_per_item"] == 1
    assert arms["self_consistency"]["k"] == 3 and arms["flow"]["tokens_per_item"] > arms["single"]["tokens_per_item"]
    comps = {c["baseline"]: c for c in doc["comparisons"]}
    # vs single: flow alone right on 3..8 (b=6), single alone on 9 (c=1): p = 2 * (1 + 7) / 2^7
    s = comps["single"]
    assert (s["flow_wins"], s["baseline_wins"], s["test"]) == (6, 1, "mcnemar")
    assert s["p_value"] == pytest.approx(0.125)
    # vs self-consistency: b=6 (3..8), c=2 (9, 10): p = 2 * (1 + 8 + 28) / 2^8
    c = comps["self_consistency"]
    assert (c["flow_wins"], c["baseline_wins"]) == (6, 2)
    assert c["p_value"] == pytest.approx(74 / 256)
    # Holm over the two: [0.125 * 2, max(0.25, 0.289)]
    assert s["p_holm"] == pytest.approx(0.25) and c["p_holm"] == pytest.approx(74 / 256)
    assert s["verdict"] == c["verdict"] == "no significant difference"
    assert s["difference"] == pytest.approx(0.5) and s["interval"][0] <= 0.5 <= s["interval"][1]
    assert {d["id"] for d in c["disagreements"]} == {"3", "4", "5", "6", "7", "8", "9", "10"}
    # per-round ablation: the creator's draft right on 2 items, the refined answer on 8
    stages = {st["stage"]: st for st in doc["rounds"]["stages"]}
    assert stages["creator"]["pass_rate"] == pytest.approx(0.2)
    assert stages["round 1"]["pass_rate"] == pytest.approx(0.8)
    assert doc["rounds"]["flips"] == {"right_to_wrong": 1, "wrong_to_right": 7, "right_before": 2}
    assert doc["rounds"]["abandoned_right_rate"] == pytest.approx(0.5)
    assert any("not significant" in line for line in doc["verdict"])
    # every item's arms link normal run records
    rec = json.loads(Path(doc["record"]).read_text())
    item = rec["items"]["1"]
    for arm in ("flow", "single", "self_consistency"):
        run_id = item["arms"][arm]["run_ids"][0]
        run = json.loads((isolated / "runs" / f"{run_id}.json").read_text())
        assert run["status"] == "succeeded"
    assert item["arms"]["self_consistency"]["votes"] == {"the code word is word1": 2, "i do not know": 1}


def test_the_issue_example_works_as_written(scripted, isolated: Path) -> None:
    """deliberate eval challenge data.jsonl --scorer includes --baseline single --baseline
    self_consistency --model KEY --json: JSON with every arm, the paired tests and the matched compute."""
    write_dataset(isolated / "data.jsonl", 4)
    scripted.write([{"match": "List the concrete problems", "reply": "NO ISSUES"},
                    {"match": "Q(\\d+):.*Write the improved solution", "reply": "The code word is word1."},
                    {"match": "^Q", "reply": "no idea"}])
    r = run_eval("--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [a["arm"] for a in doc["arms"]] == ["flow", "single", "self_consistency"]
    assert [a["passed"] for a in doc["arms"]] == [1, 0, 0]
    assert [c["baseline"] for c in doc["comparisons"]] == ["single", "self_consistency"]
    assert doc["matched"] == {"match": "calls", "flow_calls_per_item": 3.0, "flow_tokens_per_item":
                              doc["arms"][0]["tokens_per_item"], "k": {"self_consistency": 3}}
    assert r.stderr == "" or "Traceback" not in r.stderr


BAD = "<script>alert(1)</script><img src=x onerror=\"document.body.dataset.pwned=1\">"


@pytest.mark.browser
def test_html_report_is_self_contained_escaped_and_loads_in_chromium(scripted, isolated: Path, tmp_path: Path) -> None:
    import re
    import subprocess

    write_dataset(isolated / "data.jsonl")
    hostile = rules()
    hostile.insert(0, {"match": "Q3:.*Write the improved solution", "reply": BAD})
    scripted.write(hostile)
    r = run_eval("-j", "1", "--html", "report.html")
    assert r.returncode == 0, r.stderr
    assert "paired comparisons" in r.stdout and "self_consistency" in r.stdout
    html = (isolated / "report.html").read_text()
    assert "<script" not in html.replace("&lt;script", "")  # the page has no script of its own either
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert set(re.findall(r"https?://[^\s\"'<>)]+", html)) <= {"http://www.w3.org/2000/svg"}
    assert "default-src 'none'" in html and 'id="chart-arms"' in html and 'id="chart-rounds"' in html
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        pytest.skip("/usr/bin/chromium is absent (apt-get install -y chromium)")
    out = subprocess.run([str(chromium), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                          "--disable-background-networking", "--host-resolver-rules=MAP * ~NOTFOUND",
                          f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
                          "--dump-dom", (isolated / "report.html").as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    dom = out.stdout
    refused = [ln for ln in out.stderr.splitlines() if re.search(r"CONSOLE[:(]|Uncaught|Refused to", ln)]
    assert refused == [], refused
    assert dom.count("<rect") == 3 and "<polyline" in dom  # a bar per arm, the rounds line
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom and "data-pwned" not in dom


def test_match_tokens_adds_the_single_arm_and_sets_k_from_tokens(scripted, isolated: Path) -> None:
    write_dataset(isolated / "data.jsonl", 3)
    # long refined answers: the flow spends many more tokens than one call does
    scripted.write([{"match": "List the concrete problems", "reply": "NO ISSUES"},
                    {"match": "Write the improved solution", "reply": "word " * 300, "tokens": 300},
                    {"match": "^Q", "reply": "short", "tokens": 10}])
    r = cli("eval", "challenge", "data.jsonl", "--scorer", "includes", "--baseline", "self_consistency",
            "--match", "tokens", "--model", "smollm2-135m", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    arms = {a["arm"]: a for a in doc["arms"]}
    assert list(arms) == ["flow", "single", "self_consistency"]
    k = round(arms["flow"]["tokens_per_item"] / arms["single"]["tokens_per_item"])
    assert k > 3 and doc["matched"]["k"] == {"self_consistency": k} and arms["self_consistency"]["calls_per_item"] == k
