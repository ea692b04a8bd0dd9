"""`deliberate serve` under schemathesis: every operation of the app's own OpenAPI schema
(``/openapi.json``, read from a real uvicorn socket on 127.0.0.1) gets generated requests, valid
and invalid, and no response is a 500, none carries a traceback, and every error on the API's
paths is an OpenAI-style error. The scripted backend answers every model call; the runs the
requests start end before the server stops, and none is left running.

And what schemathesis cannot send (its requests are valid UTF-8 JSON): lone surrogates and
``NaN``/``Infinity``, which Python's JSON parser takes and no record or response can carry."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from deliberate.server.app import create_app
from deliberate.server.config import ServerConfig
from test_serve import RULES, Served, add_flow, records
from test_serve_runs import BOOM

#: Requests per operation and generation mode: few, and derandomized, so the run is bounded and
#: the same every time.
EXAMPLES = 10
#: Names the generator would not guess, put in now and then so that requests reach past "no such
#: flow/model" into real runs.
KNOWN = {"model": ["flow:trio", "alt", "paid", "flow:linear"], "flow": ["trio", "linear"]}


def error_shaped(doc: Any) -> bool:
    err = doc.get("error") if isinstance(doc, dict) else None
    return isinstance(err, dict) and set(err) == {"message", "type", "code"} and isinstance(err["message"], str)


def check_response(path: str, status: int, content_type: str, text: str) -> None:
    where = f"{path} answered {status}: {text[:500]}"
    assert status != 500, where
    assert "Traceback" not in text and 'File "' not in text, where
    if status >= 400 and path.startswith(("/v1/", "/api/")):
        assert error_shaped(json.loads(text)), where
    if content_type.startswith("text/event-stream"):
        for line in text.splitlines():
            if line.startswith("data: {"):
                doc = json.loads(line[6:])
                if doc.get("object") == "chat.completion.chunk" and "error" in doc:
                    assert error_shaped(doc), where


def steer(case: Any, data: Any, run_ids: list[str]) -> None:
    """Now and then put in a real flow, model, prompt or run id."""
    if isinstance(case.body, dict):
        for field, names in KNOWN.items():
            if field in case.body and data.draw(st.booleans()):
                case.body[field] = data.draw(st.sampled_from(names))
        if "flow" in case.body and data.draw(st.booleans()):
            inputs = case.body.get("inputs")
            case.body["inputs"] = {**(inputs if isinstance(inputs, dict) else {}),
                                   "prompt": data.draw(st.text(max_size=30))}
    if "run_id" in (case.path_parameters or {}) and data.draw(st.booleans()):
        case.path_parameters["run_id"] = data.draw(st.sampled_from(run_ids))


def seed_runs(url: str) -> list[str]:
    """A succeeded run and a failed one, for generated requests to name."""
    ok = httpx.post(f"{url}/v1/runs", json={"flow": "trio", "inputs": {"prompt": "tides"}}, timeout=30)
    bad = httpx.post(f"{url}/v1/chat/completions", timeout=30,
                     json={"model": "alt", "messages": [{"role": "user", "content": "boom"}]})
    return [ok.json()["run_id"], bad.headers["x-deliberate-run-id"]]


def fuzz(operation: Any, mode: GenerationMode, url: str, run_ids: list[str]) -> set[int]:
    """``EXAMPLES`` generated requests to one operation; the statuses they got."""
    strategy = operation.as_strategy(generation_mode=mode)
    statuses: set[int] = set()

    @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def check(data: Any) -> None:
        case = data.draw(strategy)
        steer(case, data, run_ids)
        response = case.call(base_url=url, timeout=60)
        statuses.add(response.status_code)
        content_type = (response.headers.get("content-type") or [""])[0]
        check_response(case.formatted_path, response.status_code, content_type, response.text)

    check()
    return statuses


def test_no_generated_request_makes_a_500_or_a_traceback(scripted: Any, isolated: Path) -> None:
    add_flow(isolated)
    scripted.write([*RULES, BOOM])
    with Served(create_app(ServerConfig(access_log=False))) as served:
        schema = schemathesis.openapi.from_url(served.url + "/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert {"POST /v1/chat/completions", "POST /v1/runs", "GET /v1/runs/{run_id}/events", "GET /metrics",
                "POST /api/orchestrate"} <= {op.label for op in operations}
        run_ids = seed_runs(served.url)
        seen: dict[str, set[int]] = {}
        for operation in operations:
            # a path parameter is any string: only a body or a typed query can be sent invalid
            invalid = bool(operation.body) or any(True for _ in operation.query)
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if invalid else (GenerationMode.POSITIVE,):
                seen.setdefault(operation.label, set()).update(fuzz(operation, mode, served.url, run_ids))
        # the requests reached real runs, not only refusals
        assert 200 in seen["POST /v1/chat/completions"] and 202 in seen["POST /v1/runs"], seen
        assert 200 in seen["GET /v1/runs/{run_id}/events"], seen
        deadline = time.time() + 30  # runs started with no client waiting (POST /v1/runs) end on their own
        while httpx.get(served.url + "/readyz").json()["in_flight"] and time.time() < deadline:
            time.sleep(0.05)
        assert httpx.get(served.url + "/readyz").json()["in_flight"] == 0
    # none was still going when the server stopped (its drain would have interrupted it)
    statuses = {r["status"] for r in records(isolated)}
    assert statuses and statuses <= {"succeeded", "failed"}, statuses


@pytest.mark.parametrize("path, body", [
    ("/v1/chat/completions", '{"model": "flow:trio", "messages": [{"role": "user", "content": "\\ud800 hi"}]}'),
    ("/v1/chat/completions", '{"model": "alt", "messages": [{"role": "user", "content": [{"type": "text", '
                             '"text": "a\\udfffb"}]}]}'),
    ("/v1/chat/completions", '{"model": "flow:trio", "messages": [{"role": "user", "content": "x"}], '
                             '"deliberate": {"inputs": {"prompt": NaN}}}'),
    ("/v1/runs", '{"flow": "trio", "inputs": {"prompt": "\\ud800"}}'),
    ("/v1/runs", '{"flow": "trio", "inputs": {"\\udfff": "x", "prompt": "x"}}'),
    ("/v1/runs", '{"flow": "trio", "inputs": {"prompt": "x"}, "options": {"max_cost": Infinity}}'),
    ("/api/orchestrate", '{"task": "\\ud800"}'),
    ("/api/inference", '{"prompt": "x", "system": "\\udc80"}'),
])
def test_bodies_no_record_can_hold_are_refused_before_a_run(scripted: Any, isolated: Path, path: str,
                                                            body: str) -> None:
    """A lone surrogate started a run whose record and answer could not be written (a 500 on the
    answer or on reading the run back); NaN reached a record, which no reader accepts."""
    add_flow(isolated)
    scripted.write(RULES)
    with TestClient(create_app(ServerConfig(access_log=False))) as http:
        r = http.post(path, content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_body", r.text
        assert "surrogate" in r.text or "NaN" in r.text
    assert records(isolated) == [] and scripted.calls() == []


def test_a_lone_surrogate_from_the_model_is_no_500(scripted: Any, isolated: Path) -> None:
    """A model's reply can hold a lone surrogate (an upstream's ``"\\ud800"`` escape): the gateway
    turns it into U+FFFD, streamed or not, so no answer is a 500 or a stream broken half-way (it
    was both), and the record holds the run."""
    add_flow(isolated)
    scripted.write([{"reply": "bad \ud800 text"}])
    ask = {"model": "alt", "messages": [{"role": "user", "content": "x"}]}
    with TestClient(create_app(ServerConfig(access_log=False))) as http:
        plain = http.post("/v1/chat/completions", json=ask)
        check_response("/v1/chat/completions", plain.status_code, plain.headers["content-type"], plain.text)
        assert plain.json()["choices"][0]["message"]["content"] == "bad \ufffd text"
        streamed = http.post("/v1/chat/completions", json={**ask, "stream": True})
        assert streamed.status_code == 200 and streamed.text.endswith("data: [DONE]\n\n"), streamed.text
        check_response("/v1/chat/completions", 200, streamed.headers["content-type"], streamed.text)
        deltas = [json.loads(line[6:]) for line in streamed.text.splitlines()
                  if line.startswith("data: {")]
        text = "".join(d["choices"][0]["delta"].get("content", "") for d in deltas if d["choices"])
        assert text == "bad \ufffd text"
        run_id = streamed.headers["x-deliberate-run-id"]
        for path in (f"/v1/runs/{run_id}", f"/v1/runs/{run_id}/events", f"/v1/runs/{run_id}/report"):
            r = http.get(path)
            check_response(path, r.status_code, r.headers["content-type"], r.text)
    record = json.loads((isolated / "runs" / f"{run_id}.json").read_text())
    assert record["status"] == "succeeded" and record["output"] == "bad \ufffd text"
