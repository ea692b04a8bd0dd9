"""`deliberate serve` beyond chat: the run API (start, state, SSE events resumed with
Last-Event-ID, cancel, resume, report), flows, the seed's aliases, /healthz, /readyz, /metrics,
auth, limits, and the `serve` command itself (its refusals, and a real start and SIGTERM)."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from deliberate.errors import InputError
from deliberate.server.app import create_app
from deliberate.server.config import ServerConfig
from test_serve import RULES, add_flow, records, wait_record

KEY = "sk-test-0123456789abcdef-secret"
# the app's gateway (shared by every run, as in production) reads the script once: write it first
SLOW_ONCE = {"match": "^Critique", "reply": "slow", "delay": 30, "times": 1}
BOOM = {"match": "^boom", "fail": "fatal"}


@pytest.fixture
def app_client(scripted: Any, isolated: Path) -> Any:
    add_flow(isolated)
    scripted.write([*RULES, BOOM])
    with TestClient(create_app(ServerConfig(access_log=False))) as http:
        yield http


def sse(text: str) -> list[dict[str, Any]]:
    """Parse an SSE body into events ({id, event, data})."""
    out = []
    for block in text.split("\n\n"):
        ev: dict[str, Any] = {}
        for line in block.splitlines():
            if line.startswith(":"):
                continue
            field, _, value = line.partition(": ")
            ev[field] = json.loads(value) if field == "data" else value
        if ev:
            out.append(ev)
    return out


def test_run_api_start_follow_resume_events_state_and_report(app_client: Any, isolated: Path) -> None:
    r = app_client.post("/v1/runs", json={"flow": "trio", "inputs": {"prompt": "tides"}})
    assert r.status_code == 202, r.text
    run_id = r.json()["run_id"]
    assert r.headers["x-deliberate-run-id"] == run_id
    events = sse(app_client.get(f"/v1/runs/{run_id}/events").text)
    types = [e["event"] for e in events]
    assert types[0] == "RunStarted" and types[-1] == "RunFinished"
    assert [e["data"]["step"] for e in events if e["event"] == "StepFinished"] == ["draft", "critique", "final"]
    assert [int(e["id"]) for e in events] == list(range(1, len(events) + 1))
    # a reconnect after event 3 gets the rest, and only the rest
    later = sse(app_client.get(f"/v1/runs/{run_id}/events", headers={"Last-Event-ID": "3"}).text)
    assert [int(e["id"]) for e in later] == list(range(4, len(events) + 1))
    assert later == events[3:]
    state = app_client.get(f"/v1/runs/{run_id}").json()
    assert state["status"] == "succeeded" and state["output"] == "the final answer" and state["flow"] == "trio"
    report = app_client.get(f"/v1/runs/{run_id}/report")
    assert report.status_code == 200 and report.headers["content-type"].startswith("text/html")
    assert "the final answer" in report.text and run_id in report.text
    assert wait_record(isolated, run_id, "succeeded")["output"] == "the final answer"


def test_cancel_leaves_the_run_resumable_and_resume_finishes_it(scripted: Any, isolated: Path) -> None:
    add_flow(isolated)
    scripted.write([SLOW_ONCE, *RULES])
    with TestClient(create_app(ServerConfig(access_log=False))) as http:
        cancel_then_resume(http, isolated)


def cancel_then_resume(app_client: Any, isolated: Path) -> None:
    run_id = app_client.post("/v1/runs", json={"flow": "trio", "inputs": {"prompt": "x"}}).json()["run_id"]
    deadline = time.time() + 10
    while "draft" not in app_client.get(f"/v1/runs/{run_id}").json().get("steps_done", []):
        assert time.time() < deadline
        time.sleep(0.05)
    r = app_client.post(f"/v1/runs/{run_id}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "interrupted" and r.json()["cancelled"] is True
    rec = wait_record(isolated, run_id, "interrupted")
    assert rec["steps"]["draft"]["status"] == "succeeded"
    r = app_client.post(f"/v1/runs/{run_id}/resume")
    assert r.status_code == 202, r.text
    events = sse(app_client.get(f"/v1/runs/{run_id}/events").text)
    assert events[-1]["data"]["status"] == "succeeded"
    assert wait_record(isolated, run_id, "succeeded")["output"] == "the final answer"
    assert app_client.post(f"/v1/runs/{run_id}/resume").status_code == 409  # nothing left to do


def test_run_api_refusals(app_client: Any) -> None:
    assert app_client.post("/v1/runs", json={"flow": "nope"}).status_code == 404
    r = app_client.post("/v1/runs", json={"flow": "trio"})
    assert r.status_code == 400 and "missing input 'prompt'" in r.json()["error"]["message"]
    r = app_client.post("/v1/runs", json={"flow": "trio", "inputs": {"prompt": "x"}, "surprise": 1})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_body"
    r = app_client.post("/v1/runs", json={"flow": "trio", "inputs": {"prompt": "x"},
                                          "options": {"models": {"draft": "no-such"}}})
    assert r.status_code == 400 and "no-such" in r.json()["error"]["message"]
    for bad in ("../../etc/passwd", "not-a-run-id", "01M8TZK58WDKC703ND77Z6MQMN"):
        assert app_client.get(f"/v1/runs/{bad}").status_code == 404
        assert app_client.get(f"/v1/runs/{bad}/report").status_code == 404
        assert app_client.post(f"/v1/runs/{bad}/cancel").status_code == 404
    assert app_client.get("/v1/nowhere").json()["error"]["code"] == "not_found"


def test_flows_list_inputs_and_graph(app_client: Any) -> None:
    flows = {f["name"]: f for f in app_client.get("/v1/flows").json()["data"]}
    trio = flows["trio"]
    assert trio["model"] == "flow:trio" and trio["output"] == "final"
    assert trio["inputs"]["prompt"]["required"] is True
    assert [s["name"] for s in trio["steps"]] == ["draft", "critique", "final"]
    assert {s["name"]: s["needs"] for s in trio["steps"]}["final"] == ["critique"]
    assert flows["challenge"]["rounds"]["steps"] == ["challenger", "refiner"]


def test_seed_aliases(app_client: Any, isolated: Path) -> None:
    assert app_client.get("/api/health").json() == {"status": "ok"}
    r = app_client.post("/api/orchestrate", json={"flow": "trio", "task": "tides"})
    assert r.status_code == 200, r.text
    assert r.json()["output"] == "the final answer" and r.json()["flow"] == "trio"
    r = app_client.post("/api/inference", json={"prompt": "hello", "model": "alt"})
    assert r.json()["output"] == "[alt] hello" and r.json()["model"] == "alt"
    assert sorted(x["flow_name"] for x in records(isolated)) == ["generate", "trio"]


def parse_metrics(text: str) -> dict[str, float]:
    """Samples by ``name{labels}`` (labels sorted), read with prometheus-client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def metric_types(text: str) -> dict[str, str]:
    from prometheus_client.parser import text_string_to_metric_families

    return {f.name: f.type for f in text_string_to_metric_families(text)}


def test_health_ready_and_metrics_move_with_runs(scripted: Any, isolated: Path) -> None:
    add_flow(isolated)
    scripted.write([SLOW_ONCE, *RULES, BOOM])
    with TestClient(create_app(ServerConfig(access_log=False))) as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        ready = http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["ready"] is True
        first = http.get("/metrics")
        assert first.headers["content-type"].startswith("text/plain; version=0.0.4")
        # the parser names a counter's family without its _total suffix
        assert metric_types(first.text) == {
            "deliberate_flow_runs": "counter", "deliberate_model_calls": "counter", "deliberate_tokens": "counter",
            "deliberate_cost_usd": "counter", "deliberate_step_duration_seconds": "histogram",
            "deliberate_breaker_state": "gauge", "deliberate_runs_in_flight": "gauge"}
        before = parse_metrics(first.text)
        assert before["deliberate_runs_in_flight"] == 0 and before["deliberate_cost_usd_total"] == 0
        assert before["deliberate_step_duration_seconds_count"] == 0
        assert before['deliberate_breaker_state{model="alt"}'] == 0
        assert not any(k.startswith(("deliberate_flow_runs_total{", "deliberate_model_calls_total{")) for k in before)

        slow = http.post("/v1/runs", json={"flow": "trio", "inputs": {"prompt": "x"}}).json()["run_id"]
        assert parse_metrics(http.get("/metrics").text)["deliberate_runs_in_flight"] == 1
        http.post(f"/v1/runs/{slow}/cancel")
        ask = {"messages": [{"role": "user", "content": "x"}]}
        for model in ("flow:trio", "flow:trio", "paid"):
            assert http.post("/v1/chat/completions", json={**ask, "model": model}).status_code == 200
        boom = {"model": "alt", "messages": [{"role": "user", "content": "boom"}]}
        assert http.post("/v1/chat/completions", json=boom).status_code == 502
        after = parse_metrics(http.get("/metrics").text)
    assert after["deliberate_runs_in_flight"] == 0
    assert after['deliberate_flow_runs_total{flow="trio",status="interrupted"}'] == 1
    assert after['deliberate_flow_runs_total{flow="trio",status="succeeded"}'] == 2
    assert after['deliberate_flow_runs_total{flow="generate",status="succeeded"}'] == 1
    assert after['deliberate_flow_runs_total{flow="generate",status="failed"}'] == 1
    # the interrupted run's draft, then two runs of three calls
    assert after['deliberate_model_calls_total{model="smollm2-135m",outcome="ok"}'] == 7
    assert after['deliberate_model_calls_total{model="paid",outcome="ok"}'] == 1
    assert after['deliberate_model_calls_total{model="alt",outcome="error"}'] == 1
    assert not any('model="unknown"' in k for k in after)
    out = 'deliberate_tokens_total{direction="output",model="smollm2-135m"}'
    assert after[out] == 3 + 2 * 10  # "a first draft" (3 words), then 3 + 5 + 2 per run
    assert after['deliberate_tokens_total{direction="input",model="paid"}'] > 0
    assert after["deliberate_cost_usd_total"] > 0
    # steps that finished: the interrupted run's draft, three in each trio run, the paid call's
    assert after["deliberate_step_duration_seconds_count"] == 1 + 6 + 1
    assert after['deliberate_step_duration_seconds_bucket{le="+Inf"}'] == after["deliberate_step_duration_seconds_count"]
    assert after["deliberate_step_duration_seconds_sum"] > 0


def test_auth_keys_constant_time_and_never_logged_or_recorded(scripted: Any, isolated: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    add_flow(isolated)
    scripted.write(RULES)
    with pytest.raises(InputError, match="needs an API key"):
        create_app(ServerConfig(host="0.0.0.0"))
    with pytest.raises(InputError, match="unset or empty"):
        create_app(ServerConfig(api_key_env="SERVE_TEST_KEYS"))
    monkeypatch.setenv("SERVE_TEST_KEYS", "other-key-of-16-chars-at-least")
    monkeypatch.setenv("SERVE_TEST_KEY2", KEY)  # a name no secret pattern matches: registered by serve
    caplog.set_level(logging.INFO, logger="deliberate")
    config = ServerConfig(host="0.0.0.0", api_key_env="SERVE_TEST_KEYS, SERVE_TEST_KEY2")
    with TestClient(create_app(config)) as http:
        assert http.get("/healthz").status_code == 200 and http.get("/readyz").status_code == 200
        r = http.get("/v1/models")
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert http.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert http.get("/metrics", headers={"Authorization": f"Bearer {KEY}x"}).status_code == 401
        ok = http.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"})
        assert ok.status_code == 200
        done = http.post("/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                         json={"model": "flow:trio", "messages": [{"role": "user", "content": f"echo {KEY}"}]})
        assert done.status_code == 200
    assert any(r.name == "deliberate.server.access" for r in caplog.records)
    assert KEY not in caplog.text
    for rec in (isolated / "runs").glob("*.json"):
        assert KEY not in rec.read_text()


def test_limits_body_messages_and_concurrency(scripted: Any, isolated: Path) -> None:
    add_flow(isolated)
    scripted.write([{"reply": "slow", "delay": 30}])
    config = ServerConfig(access_log=False, max_body_bytes=4096, max_messages=3, max_concurrent=1)
    with TestClient(create_app(config)) as http:
        big = {"model": "alt", "messages": [{"role": "user", "content": "x" * 5000}]}
        r = http.post("/v1/chat/completions", json=big)
        assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
        many = {"model": "alt", "messages": [{"role": "user", "content": "x"}] * 4}
        assert http.post("/v1/chat/completions", json=many).json()["error"]["code"] == "too_many_messages"
        first = http.post("/v1/runs", json={"flow": "trio", "inputs": {"prompt": "x"}})
        assert first.status_code == 202
        second = http.post("/v1/runs", json={"flow": "trio", "inputs": {"prompt": "y"}})
        assert second.status_code == 429 and second.headers["retry-after"] == "1"
        http.post(f"/v1/runs/{first.json()['run_id']}/cancel")
        third = http.post("/v1/runs", json={"flow": "trio", "inputs": {"prompt": "z"}})
        assert third.status_code == 202
        http.post(f"/v1/runs/{third.json()['run_id']}/cancel")  # else the app's shutdown waits out its 30 s


def test_run_timeout_stops_the_run_and_keeps_it(scripted: Any, isolated: Path) -> None:
    add_flow(isolated)
    scripted.write([SLOW_ONCE, *RULES])
    with TestClient(create_app(ServerConfig(access_log=False, run_timeout_s=1))) as http:
        r = http.post("/v1/chat/completions", json={"model": "flow:trio", "messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 504 and r.json()["error"]["code"] == "run_timeout"
        assert wait_record(isolated, r.headers["x-deliberate-run-id"], "interrupted")


def test_cors_is_off_unless_asked(app_client: Any, scripted: Any) -> None:
    pre = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    assert "access-control-allow-origin" not in app_client.options("/v1/chat/completions", headers=pre).headers
    with TestClient(create_app(ServerConfig(access_log=False, cors_origins=["https://ui.example"]))) as http:
        ok = http.options("/v1/models", headers={**pre, "Origin": "https://ui.example"})
        assert ok.headers["access-control-allow-origin"] == "https://ui.example"


# -- the command ---------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_refuses_bad_options_in_one_line(run_cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = run_cli("serve", "--port", str(port))
    assert r.returncode == 2 and "cannot listen there" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run_cli("serve", "--api-key-env", "NO_SUCH_VARIABLE_SET")
    assert r.returncode == 2 and "unset or empty" in r.stderr
    r = run_cli("serve", "--api-key-env", "bad name")
    assert r.returncode == 2 and "not an environment variable name" in r.stderr
    r = run_cli("serve", "--host", "0.0.0.0")
    assert r.returncode == 2 and "needs an API key" in r.stderr
    monkeypatch.setenv("SHORT_KEY_VAR", "abc")
    r = run_cli("serve", "--api-key-env", "SHORT_KEY_VAR")
    assert r.returncode == 2 and "at least 16" in r.stderr and "abc" not in r.stderr


def test_serve_command_serves_then_drains_on_sigterm(scripted: Any, isolated: Path) -> None:
    add_flow(isolated)
    scripted.write([{"match": "^Critique", "reply": "late", "delay": 2, "times": 1}, *RULES])
    port = free_port()
    env = {**os.environ, "SERVE_KEY": KEY, "LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen([sys.executable, "-m", "deliberate", "serve", "--port", str(port),
                             "--api-key-env", "SERVE_KEY"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.1)
        auth = {"Authorization": f"Bearer {KEY}"}
        going = httpx.post(url + "/v1/runs", headers=auth, json={"flow": "trio", "inputs": {"prompt": "x"}})
        run_id = going.json()["run_id"]  # its critique takes 2 s
        r = httpx.post(url + "/v1/chat/completions", headers=auth, timeout=30,
                       json={"model": "flow:trio", "messages": [{"role": "user", "content": "y"}]})
        assert r.json()["choices"][0]["message"]["content"] == "the final answer"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode in (0, -signal.SIGTERM), err  # uvicorn re-raises the signal once drained
    assert wait_record(isolated, run_id, "succeeded", timeout=1)["steps"]["critique"]["output"] == "late"
    assert KEY not in out + err
    access = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    hits = [a["event"] for a in access if a.get("logger") == "deliberate.server.access"]
    assert any(h["path"] == "/v1/chat/completions" and h["status"] == 200 and h["run_id"] for h in hits)


def test_tokens_on_request_and_budgets_per_run_on_one_shared_gateway(app_client: Any) -> None:
    r = app_client.post("/v1/runs", json={"flow": "trio", "inputs": {"prompt": "x"}, "tokens": True})
    events = sse(app_client.get(f"/v1/runs/{r.json()['run_id']}/events").text)
    assert "".join(e["data"]["text"] for e in events if e["event"] == "Token" and e["data"]["step"] == "draft") \
        == "a first draft"
    quiet = app_client.post("/v1/runs", json={"flow": "trio", "inputs": {"prompt": "x"}})
    assert "Token" not in {e["event"] for e in sse(app_client.get(f"/v1/runs/{quiet.json()['run_id']}/events").text)}
    # a run's max_cost is its own: the next run without one is not held to it
    body = {"model": "paid", "messages": [{"role": "user", "content": "hello"}]}
    over = app_client.post("/v1/chat/completions", json={**body, "deliberate": {"max_cost": 0.000001}})
    assert over.status_code == 402 and over.json()["error"]["code"] == "budget_exceeded"
    assert app_client.post("/v1/chat/completions", json=body).status_code == 200


def test_breaker_state_is_shared_by_served_runs_and_shown(scripted: Any, isolated: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from deliberate.config import get_settings

    monkeypatch.setenv("CIRCUIT_BREAKER_MAX_FAILURES", "2")
    get_settings.cache_clear()
    scripted.write([{"model": "alt", "fail": "fatal"}])
    with TestClient(create_app(ServerConfig(access_log=False))) as http:
        body = {"model": "alt", "messages": [{"role": "user", "content": "x"}]}
        for _ in range(2):  # two runs, one failure each: the endpoint's breaker opens
            assert http.post("/v1/chat/completions", json=body).status_code == 502
        shown = parse_metrics(http.get("/metrics").text)
        assert shown['deliberate_breaker_state{model="alt"}'] == 2
        third = http.post("/v1/chat/completions", json=body)
        assert third.status_code == 502 and "circuit" in third.json()["error"]["message"].lower()
