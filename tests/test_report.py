"""`deliberate replay RUN --html report.html`: one self-contained page, checked as text and loaded
in headless Chromium (no console errors, every step shown, hostile model output inert)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from conftest import cli

CHROMIUM = Path("/usr/bin/chromium")

SHOWCASE = """
name: showcase
description: Every step kind in one flow <b>not bold</b>
inputs:
  prompt: {description: the question}
steps:
  answers:
    for_each: [alpha, beta, gamma]
    prompt: "Q: {{ prompt }} (as {{ item }})"
  pick:
    kind: vote
    from: answers
  draft:
    prompt: "Draft from {{ pick }}"
  gate:
    kind: judge
    target: draft
    rubric: Is it right?
    threshold: 7
    retries: 1
  critic:
    prompt: "Critique {{ draft }}"
  fix:
    prompt: "Fix {{ draft }} using {{ critic }}"
  extra:
    when: "'never' in prompt"
    prompt: "Never {{ prompt }}"
rounds: {steps: [critic, fix], max: 2, carry: {draft: fix}}
output: fix
"""
STEPS = ["answers", "pick", "draft", "gate", "critic", "fix", "extra"]
HOSTILE = ("<script>alert(1)</script><script>document.body.setAttribute('data-pwned','1')</script>"
           "<img src=x onerror=\"document.body.setAttribute('data-pwned','2')\">")


def make_report(scripted: Any, isolated: Path) -> tuple[Path, dict[str, Any]]:
    (isolated / "showcase.yaml").write_text(SHOWCASE)
    scripted.write([
        {"match": "as gamma", "reply": "41"},
        {"match": "^Q:", "reply": "42"},
        {"match": "SCORE: N", "reply": "SCORE: 8\nGood enough."},
        {"match": "^Fix", "reply": f"fixed {HOSTILE}"},
    ])
    r = cli("run", "showcase.yaml", "What is 6 x 7?", "--json")
    assert r.returncode == 0, r.stderr
    run = json.loads(r.stdout)
    before = len(scripted.calls())
    page = isolated / "out" / "report.html"
    r = cli("replay", run["record"], "--html", str(page))
    assert r.returncode == 0, r.stderr
    assert len(scripted.calls()) == before  # writing a report calls no model
    return page, run


def test_report_is_self_contained_and_escapes_everything(scripted, isolated) -> None:
    page, run = make_report(scripted, isolated)
    html = page.read_text()
    for step in STEPS:
        assert f'id="step-{step}"' in html and f"<h3>{step} " in html
    # every fact the issue asks for is on the page
    assert run["run_id"] in html and "VOTE" in html.upper() and "Judge scores" in html
    assert '<meter min="0" max="3" value="2">' in html  # two of three answers said 42
    assert "<td>8</td><td>7</td><td>passed</td>" in html  # judge attempt: score, threshold, verdict
    assert "Rounds" in html and "<td>max</td>" in html
    assert "Q: What is 6 x 7? (as gamma)" in html  # a rendered prompt
    assert "skipped" in html and "&#x27;never&#x27; in prompt" in html
    summary = run["summary"]["totals"]
    assert f">{summary['calls']}</div>" in html
    # model text is data, never markup
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "onerror=\"document" not in html and "<b>not bold</b>" not in html
    assert html.count("<script") == 1  # the page's own
    # nothing to fetch: no remote URL anywhere but the SVG namespace, and a CSP that forbids it
    urls = set(re.findall(r"https?://[^\s\"'<>)]+", html))
    assert urls <= {"http://www.w3.org/2000/svg"}, urls
    assert "default-src 'none'" in html and "@import" not in html


def chromium(*args: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    profile = tmp / f"chromium-profile-{len(list(tmp.glob('chromium-profile-*')))}"
    return subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={profile}",
         "--enable-logging=stderr", "--v=0", *args],
        capture_output=True, text=True, timeout=120)


def console_lines(stderr: str) -> list[str]:
    """What the page logged: console messages, uncaught errors, CSP refusals."""
    return [line for line in stderr.splitlines() if re.search(r"CONSOLE[:(]|Uncaught|Refused to", line)]


@pytest.mark.browser
def test_report_loads_in_headless_chromium(scripted, isolated, tmp_path) -> None:
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is absent (apt-get install -y chromium chromium-driver)")
    page, _run = make_report(scripted, isolated)

    # the check can fail: a page with a script error is caught
    broken = tmp_path / "broken.html"
    broken.write_text("<!DOCTYPE html><html><body><p>x</p><script>undefinedFunction();</script></body></html>")
    control = chromium("--dump-dom", broken.as_uri(), tmp=tmp_path)
    assert any("undefinedFunction" in line for line in console_lines(control.stderr)), control.stderr[-2000:]

    r = chromium("--dump-dom", page.as_uri(), tmp=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    dom = r.stdout
    assert console_lines(r.stderr) == []
    assert 'class="toolbar"' in dom  # the page's script ran (the CSP admitted it by its hash)
    for step in STEPS:
        assert f'id="step-{step}"' in dom and f">{step}<" in dom  # a section and a graph node each
    assert "<svg" in dom and dom.count('class="edge"') >= 6
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom
    assert 'data-pwned="' not in dom  # neither injected script nor onerror handler ran


BAD = "<x onload=1>'\"&"
ESCAPED = "&lt;x onload=1&gt;&#x27;&quot;&amp;"  # html.escape's form, the one the secret scrub looks for


def odd_record() -> Any:
    """A record with hostile text in every free-text field the showcase run does not fill:
    gateway events, failures, fallbacks between models, a tie, odd-shaped values and rounds."""
    from deliberate.records.schema import RunRecord

    call = {"model_key": BAD, "model_requested": "asked", "messages": [{"role": "user", "content": BAD}],
            "text": BAD, "branch": 1, "item": BAD, "round": 2, "attempt": 2, "strategy": BAD, "source": BAD,
            "finish_reason": BAD, "attempts": [{"model_key": BAD, "ok": False, "error": BAD, "error_type": BAD},
                                               {"model_key": "m", "ok": True, "seconds": 1.5}]}
    steps = {
        "s1": {"name": "s1", "kind": BAD, "status": "failed", "error": BAD, "error_type": BAD, "calls": [call],
               "failures": [{"round": 2, "branch": 3, "error": BAD, "error_type": BAD}],
               "value": {"type": "branches", "branches": [{"item": BAD, "model": BAD, "text": BAD}, 7, None]},
               "vote": {"counts": {BAD: 1, "b": 1}, "winner": BAD, "tie": True, "tie_rule": BAD, "tied": [BAD, "b"]},
               "judge": [{"attempt": 1, "score": 2.5, "threshold": 7, "passed": False, "feedback": BAD}],
               "rounds": [{"round": BAD, "value": {"type": "text", "text": BAD}}, {"value": [BAD]}]},
        BAD: {"name": BAD, "kind": "judge", "status": "skipped", "skipped_when": BAD, "decided_by": {BAD: [BAD]},
              "value": {"type": "verdict", "score": BAD, "scale": [BAD], "passed": BAD, "feedback": BAD}},
        "s3": {"name": "s3", "kind": "data", "status": "reused", "value": {"type": "data", "data": {BAD: BAD}}},
    }
    return RunRecord.model_validate({
        "run_id": BAD, "parent_run_id": BAD, "status": "failed", "created_at": 1e300, "finished_at": -1e300,
        "flow_name": BAD, "flow_source": BAD, "flow_hash": BAD, "order": ["s1", BAD, "s3", "missing"],
        "flow": {"description": {BAD: BAD}, "steps": BAD,
                 "rounds": {"steps": [BAD, "s1", 3], "max": BAD, "until": BAD, "carry": {"s1": BAD, BAD: 3}}},
        "inputs": {BAD: {BAD: [BAD]}}, "options": {BAD: BAD}, "output_step": BAD, "reused_steps": [BAD],
        "steps": steps, "rounds": [{"round": 1, "stop_reason": BAD, "until_value": {BAD: 1}, "at": float("1e20")}],
        "events": [{"kind": "retry", "endpoint": BAD, "model_key": BAD, "detail": BAD, "at": 1.0}],
        "error": BAD, "deliberate_version": BAD,
    })


def test_an_odd_record_renders_with_every_text_escaped() -> None:
    """Rendered in process: no field of an unexpected shape crashes the template, and no text
    reaches the page unescaped, in element text or in an attribute."""
    from deliberate.records.report import render_report

    html = render_report(odd_record())
    assert "<x" not in html and "'\"&<" not in html
    assert html.count(ESCAPED) >= 30, html.count(ESCAPED)
    assert html.count("<script") == 1 and "default-src 'none'" in html
    for shown in ("Gateway events", "Judge scores", "tie between", "Output (3 branches)", "Verdict",
                  "Output (data)", "Output reused from run", "Skipped:", "round 2 branch 3", "does not validate"):
        assert shown in html, shown


def test_the_report_template_ships_with_the_package() -> None:
    """The template, CSS and JS sit in the package folder (hatchling puts every file of it in the
    wheel), and the page's CSP names the hashes of the CSS and JS it holds inline."""
    import base64
    import hashlib
    from importlib import resources

    from deliberate.records.report import render_report

    folder = resources.files("deliberate.records").joinpath("templates")
    html = render_report(odd_record())
    for name, tag in (("report.css", "style"), ("report.js", "script")):
        text = folder.joinpath(name).read_text(encoding="utf-8")
        digest = base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()
        assert f"<{tag}>{text}</{tag}>" in html and f"'sha256-{digest}'" in html
    assert folder.joinpath("report.html.j2").is_file()
