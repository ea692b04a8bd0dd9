"""`deliberate serve`, the OpenAI-compatible face: the official openai client against the app, in
process and through a real uvicorn socket on 127.0.0.1, streamed and not, with the scripted
backend answering (no model needed). Every served run must be a real record under runs/."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from deliberate.server.app import create_app
from deliberate.server.config import ServerConfig

TRIO = """
name: trio
description: draft, critique, final
inputs:
  prompt: {description: the task}
defaults: {model: smollm2-135m}
steps:
  draft: {prompt: "Draft: {{ prompt }}"}
  critique: {prompt: "Critique: {{ draft }}"}
  final: {prompt: "Final: {{ prompt }}"}
  # final reads the critique without quoting it: its first line stays the task
output: final
"""
TRIO = TRIO.replace('final: {prompt: "Final: {{ prompt }}"}',
                    'final: {prompt: "Final: {{ prompt }}\\n{{ critique }}"}')

RULES = [{"match": "^Draft", "reply": "a first draft"},
         {"match": "^Critique", "reply": "the draft lacks detail"},
         {"match": "^Final", "reply": "the final answer"}]


class Served:
    """A real uvicorn server on 127.0.0.1 (a free port) in a thread; stopped on exit."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                                    access_log=False, timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Served:
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        assert not self.thread.is_alive(), "the server did not stop"


def add_flow(work: Path, text: str = TRIO, name: str = "trio") -> None:
    (work / "flows").mkdir(exist_ok=True)
    (work / "flows" / f"{name}.yaml").write_text(text)


def records(work: Path) -> list[dict[str, Any]]:
    runs = work / "runs"
    return [json.loads(p.read_text()) for p in sorted(runs.glob("*.json"))] if runs.is_dir() else []


def wait_record(work: Path, run_id: str, status: str, timeout: float = 20) -> dict[str, Any]:
    path = work / "runs" / f"{run_id}.json"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists():
            try:
                doc = json.loads(path.read_text())
            except json.JSONDecodeError:
                doc = {}
            if doc.get("status") == status:
                return doc
        time.sleep(0.05)
    raise AssertionError(f"{path} never said {status}: {path.read_text() if path.exists() else 'no file'}")


@pytest.fixture
def served(scripted: Any, isolated: Path) -> Iterator[Served]:
    add_flow(isolated)
    scripted.write(RULES)
    with Served(create_app(ServerConfig(access_log=False))) as s:
        yield s


def client(served: Served, key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=served.url + "/v1", api_key=key, max_retries=0, timeout=60)


def reasoning_of(chunk: Any) -> str:
    if not chunk.choices:
        return ""
    extra = chunk.choices[0].delta.model_extra or {}
    assert extra.get("reasoning_content") == extra.get("reasoning")
    return extra.get("reasoning_content") or ""


# -- in process ----------------------------------------------------------------------------------
def test_models_list_in_process_with_the_openai_client(scripted: Any, isolated: Path) -> None:
    from fastapi.testclient import TestClient

    add_flow(isolated)
    with TestClient(create_app(ServerConfig(access_log=False))) as http:
        api = openai.OpenAI(base_url="http://testserver/v1", api_key="none", http_client=http, max_retries=0)
        ids = [m.id for m in api.models.list()]
        assert "flow:trio" in ids and "flow:challenge" in ids
        assert "smollm2-135m" in ids and "alt" in ids
        scripted.write(RULES)
        done = api.chat.completions.create(model="flow:trio", messages=[{"role": "user", "content": "Say hi"}])
        assert done.choices[0].message.content == "the final answer"


# -- through a real socket -----------------------------------------------------------------------
def test_flow_completion_is_the_answer_with_summed_usage_and_a_record(served: Served, isolated: Path,
                                                                      scripted: Any) -> None:
    raw = client(served).chat.completions.with_raw_response.create(
        model="flow:trio", messages=[{"role": "system", "content": "be brief"},
                                     {"role": "user", "content": "Explain tides"}])
    run_id = raw.headers["x-deliberate-run-id"]
    done = raw.parse()
    assert done.choices[0].message.content == "the final answer"
    assert done.choices[0].finish_reason == "stop"
    calls = scripted.calls()
    assert len(calls) == 3
    assert done.usage.prompt_tokens == sum(max(1, len(c["prompt"]) // 4) for c in calls)
    assert done.usage.completion_tokens == 3 + 4 + 3  # words of the three replies
    assert done.usage.total_tokens == done.usage.prompt_tokens + done.usage.completion_tokens
    rec = wait_record(isolated, run_id, "succeeded")
    assert rec["flow_name"] == "trio" and rec["inputs"]["prompt"] == "Explain tides"
    assert rec["output"] == "the final answer"
    assert set(rec["steps"]) == {"draft", "critique", "final"}


def test_streamed_flow_sends_steps_as_reasoning_in_order_then_the_answer_and_usage(served: Served,
                                                                                   isolated: Path) -> None:
    stream = client(served).chat.completions.create(
        model="flow:trio", messages=[{"role": "user", "content": "Explain tides"}], stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    reasoning = "".join(reasoning_of(c) for c in chunks)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == "the final answer"
    assert reasoning.index("### draft") < reasoning.index("a first draft") < reasoning.index("### critique") \
        < reasoning.index("the draft lacks detail")
    assert "### final" not in reasoning  # the answer goes out as content, not reasoning
    assert len({c.id for c in chunks}) == 1
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 10
    # the first reasoning comes before the first content
    first_reasoning = next(i for i, c in enumerate(chunks) if reasoning_of(c))
    first_content = next(i for i, c in enumerate(chunks) if c.choices and c.choices[0].delta.content)
    assert first_reasoning < first_content
    assert [r["status"] for r in records(isolated)] == ["succeeded"]


def test_stream_ends_with_done_and_no_usage_unless_asked(served: Served) -> None:
    with httpx.stream("POST", served.url + "/v1/chat/completions", timeout=60,
                      json={"model": "flow:trio", "stream": True,
                            "messages": [{"role": "user", "content": "x"}]}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert len(r.headers["x-deliberate-run-id"]) == 26
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    docs = [json.loads(line[6:]) for line in lines[:-1]]
    assert all("usage" not in d for d in docs)


def test_a_model_key_proxies_one_call_and_records_it(served: Served, isolated: Path, scripted: Any) -> None:
    api = client(served)
    done = api.chat.completions.create(model="alt", max_tokens=20,
                                       messages=[{"role": "system", "content": "You are terse."},
                                                 {"role": "user", "content": "hello there"}])
    assert done.choices[0].message.content == "[alt] hello there"
    call = scripted.calls()[-1]
    assert call["model"] == "alt" and call["max_tokens"] == 20
    assert [m["role"] for m in call["messages"]] == ["system", "user"]
    assert call["messages"][0]["content"] == "You are terse."
    streamed = list(api.chat.completions.create(model="alt", stream=True,
                                                messages=[{"role": "user", "content": "again"}]))
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == "[alt] again"
    assert not any(reasoning_of(c) for c in streamed)
    recs = records(isolated)
    assert len(recs) == 2 and {r["flow_name"] for r in recs} == {"generate"}


def test_an_answer_cut_at_max_tokens_finishes_with_length(served: Served, scripted: Any) -> None:
    scripted.write([{"match": "long", "reply": "cut short", "finish": "length"}])
    api = client(served)
    done = api.chat.completions.create(model="alt", max_tokens=2, messages=[{"role": "user", "content": "long"}])
    assert done.choices[0].finish_reason == "length"
    streamed = list(api.chat.completions.create(model="alt", stream=True, max_tokens=2,
                                                messages=[{"role": "user", "content": "long"}]))
    assert [c.choices[0].finish_reason for c in streamed if c.choices and c.choices[0].finish_reason] == ["length"]
    plain = api.chat.completions.create(model="alt", messages=[{"role": "user", "content": "short"}])
    assert plain.choices[0].finish_reason == "stop"


def test_errors_are_openai_errors(served: Served, scripted: Any) -> None:
    api = client(served)
    with pytest.raises(openai.NotFoundError) as nf:
        api.chat.completions.create(model="flow:nope", messages=[{"role": "user", "content": "x"}])
    assert nf.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError) as missing:
        api.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert "flow of that name" not in str(missing.value)
    with pytest.raises(openai.NotFoundError) as bare:  # a flow's bare name: the error gives the model name
        api.chat.completions.create(model="trio", messages=[{"role": "user", "content": "x"}])
    assert "the flow of that name is flow:trio" in str(bare.value)
    with pytest.raises(openai.BadRequestError) as bad:
        api.chat.completions.create(model="flow:trio", messages=[{"role": "assistant", "content": "x"}])
    assert "no user message" in str(bad.value)
    with pytest.raises(openai.NotFoundError):  # a path is not a flow name
        api.chat.completions.create(model="flow:../../etc/passwd", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError) as unknown:
        api.chat.completions.create(model="flow:trio", messages=[{"role": "user", "content": "x"}],
                                    extra_body={"deliberate": {"inputs": {"nope": "1"}}})
    assert "no input 'nope'" in str(unknown.value)
    r = httpx.post(served.url + "/v1/chat/completions", content=b"{not json", timeout=10,
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "code"}
    # a provider failing mid-run: 502 with the run's error, no traceback
    scripted.write([{"match": "^Critique", "fail": "fatal", "message": "the provider fell over"}])
    with pytest.raises(openai.APIStatusError) as failed:
        api.chat.completions.create(model="flow:trio", messages=[{"role": "user", "content": "x"}])
    assert failed.value.status_code == 502 and "fell over" in str(failed.value)
    assert "Traceback" not in failed.value.response.text


def test_streamed_failure_is_an_error_chunk_then_done(served: Served, scripted: Any) -> None:
    scripted.write([{"match": "^Critique", "fail": "fatal", "message": "boom"}])
    with httpx.stream("POST", served.url + "/v1/chat/completions", timeout=60,
                      json={"model": "flow:trio", "stream": True,
                            "messages": [{"role": "user", "content": "x"}]}) as r:
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    last = json.loads(lines[-2][6:])
    assert "boom" in last["error"]["message"] and last["error"]["type"] == "run_failed"


def test_deliberate_object_sets_options_and_history_fills_a_declared_input(served: Served, isolated: Path,
                                                                         scripted: Any) -> None:
    add_flow(isolated, """
name: chatty
inputs:
  prompt: {description: the question}
  history: {description: earlier turns, default: ""}
  tone: {description: the tone, default: plain}
steps:
  answer: {model: smollm2-135m, prompt: "Q: {{ prompt }} ({{ tone }})\\n{{ history }}"}
""", "chatty")
    api = client(served)
    raw = api.chat.completions.with_raw_response.create(
        model="flow:chatty", messages=[{"role": "user", "content": "first"}, {"role": "assistant", "content": "ok"},
                                       {"role": "user", "content": "second"}],
        extra_body={"deliberate": {"inputs": {"tone": "dry"}, "models": {"answer": "alt"}, "seed": 7}})
    assert raw.parse().choices[0].message.content == "[alt] Q: second (dry)"
    rec = wait_record(isolated, raw.headers["x-deliberate-run-id"], "succeeded")
    assert rec["inputs"]["history"] == "user: first\n\nassistant: ok"
    assert rec["options"]["models"] == {"answer": "alt"} and rec["options"]["seed"] == 7


def test_fifty_concurrent_streams_get_their_own_answers_and_records(served: Served, isolated: Path,
                                                                    scripted: Any) -> None:
    scripted.write([{"delay": 0.2}])  # echo, slowly: every stream is in flight at once

    async def one(api: openai.AsyncOpenAI, i: int) -> tuple[str, str]:
        raw = await api.chat.completions.with_streaming_response.create(
            model="alt", stream=True, messages=[{"role": "user", "content": f"question {i}"}]).__aenter__()
        text = ""
        async for line in raw.iter_lines():
            if line.startswith("data: {"):
                doc = json.loads(line[6:])
                if doc["choices"]:
                    text += doc["choices"][0]["delta"].get("content") or ""
        return raw.headers["x-deliberate-run-id"], text

    async def main() -> list[tuple[str, str]]:
        async with openai.AsyncOpenAI(base_url=served.url + "/v1", api_key="x", max_retries=0, timeout=120) as api:
            return await asyncio.gather(*(one(api, i) for i in range(50)))

    t0 = time.time()
    results = asyncio.run(main())
    assert time.time() - t0 < 8  # side by side, not one after another (50 x 0.2 s)
    assert [text for _, text in results] == [f"[alt] question {i}" for i in range(50)]
    assert len({rid for rid, _ in results}) == 50
    for rid, text in results:
        rec = wait_record(isolated, rid, "succeeded")
        assert rec["output"] == text


def test_client_gone_mid_stream_stops_the_run_and_the_cli_resumes_it(served: Served, isolated: Path,
                                                                    scripted: Any, run_cli: Any) -> None:
    scripted.write([{"match": "^Critique", "reply": "slow critique", "delay": 30}, *RULES])
    with httpx.stream("POST", served.url + "/v1/chat/completions", timeout=60,
                      json={"model": "flow:trio", "stream": True,
                            "messages": [{"role": "user", "content": "x"}]}) as r:
        run_id = r.headers["x-deliberate-run-id"]
        for line in r.iter_lines():
            if "### critique" in line:
                break  # the draft is done; the critique is waiting on its model: hang up
    rec = wait_record(isolated, run_id, "interrupted")
    assert rec["steps"]["draft"]["status"] == "succeeded"
    scripted.write(RULES)
    done = run_cli("resume", run_id, "--json")
    assert done.returncode == 0, done.stderr
    rec = wait_record(isolated, run_id, "succeeded")
    assert rec["output"] == "the final answer"
    drafts = [c for c in scripted.calls() if c["prompt"].startswith("Draft") and c.get("ok")]
    assert len(drafts) == 1  # the draft was kept, not asked again


def test_client_gone_before_a_plain_completion_ends_stops_the_run(served: Served, isolated: Path,
                                                                 scripted: Any) -> None:
    scripted.write([{"match": "^Critique", "reply": "slow", "delay": 30}, *RULES])
    with pytest.raises(httpx.ReadTimeout):  # the client gives up after 1.5 s and closes the connection
        httpx.post(served.url + "/v1/chat/completions", timeout=1.5,
                   json={"model": "flow:trio", "messages": [{"role": "user", "content": "x"}]})
    deadline = time.time() + 20
    while not list((isolated / "runs").glob("*.json")):
        assert time.time() < deadline
        time.sleep(0.05)
    run_id = next((isolated / "runs").glob("*.json")).stem
    rec = wait_record(isolated, run_id, "interrupted", timeout=10)
    assert rec["steps"]["draft"]["status"] == "succeeded" and rec["steps"]["final"]["status"] == "pending"


def test_readyz_waits_for_the_warm_model(scripted: Any, isolated: Path) -> None:
    from fastapi.testclient import TestClient

    scripted.write([{"match": "OK", "reply": "OK", "delay": 0.5}])
    with TestClient(create_app(ServerConfig(access_log=False, warm="alt"))) as http:
        assert http.get("/readyz").status_code == 503  # loading
        deadline = time.time() + 10
        while http.get("/readyz").status_code != 200:
            assert time.time() < deadline
            time.sleep(0.05)
        assert http.get("/readyz").json()["warm"] == "alt"
    assert [c["model"] for c in scripted.calls()] == ["alt"]
    with TestClient(create_app(ServerConfig(access_log=False, warm="no-such-model"))) as http:
        time.sleep(0.2)
        r = http.get("/readyz")
        assert r.status_code == 503 and "no-such-model" in r.json()["error"]


def stream_text(served: Served, model: str, extra: dict[str, Any] | None = None) -> tuple[str, str]:
    chunks = list(client(served).chat.completions.create(
        model=model, stream=True, messages=[{"role": "user", "content": "Explain tides"}], extra_body=extra))
    return ("".join(reasoning_of(c) for c in chunks),
            "".join(c.choices[0].delta.content or "" for c in chunks if c.choices))


def test_a_rounds_flow_streams_each_round_and_answers_with_the_last_draft(served: Served, scripted: Any) -> None:
    scripted.write([{"match": "Produce a complete", "reply": "draft one"},
                    {"match": "List the concrete problems", "reply": "too short"},
                    {"match": "Write the improved", "reply": "a better draft"}])
    reasoning, content = stream_text(served, "flow:challenge", {"deliberate": {"rounds": 2}})
    assert content == "a better draft"
    heads = [line for line in reasoning.splitlines() if line.startswith("### ")]
    assert heads == ["### creator", "### challenger", "### refiner", "### challenger (round 2)",
                     "### refiner (round 2)"]
    assert reasoning.count("a better draft") == 2  # each refined draft is reasoning; the last is the answer


def test_steps_side_by_side_do_not_interleave(served: Served, isolated: Path, scripted: Any) -> None:
    add_flow(isolated, """
name: fork
inputs: {prompt: {description: the task}}
defaults: {model: smollm2-135m}
steps:
  left: {prompt: "Left: {{ prompt }}"}
  right: {prompt: "Right: {{ prompt }}"}
  join: {prompt: "Join: {{ left }} {{ right }}"}
output: join
""", "fork")
    scripted.write([{"match": "^Left", "reply": "l1 l2 l3 l4", "delay": 0.3},
                    {"match": "^Right", "reply": "r1 r2 r3 r4"},
                    {"match": "^Join", "reply": "joined"}])
    reasoning, content = stream_text(served, "flow:fork")
    assert content == "joined"
    assert "### left\n\nl1 l2 l3 l4\n\n" in reasoning and "### right\n\nr1 r2 r3 r4\n\n" in reasoning


def test_inputs_too_long_are_refused_before_any_call(served: Served, scripted: Any) -> None:
    from fastapi.testclient import TestClient

    api = client(served)
    with pytest.raises(openai.BadRequestError) as over:  # longer than the chosen model's window
        api.chat.completions.create(model="flow:trio", messages=[{"role": "user", "content": "word " * 200}],
                                    extra_body={"deliberate": {"models": {"*": "tiny"}}})
    assert over.value.code == "context_length_exceeded" and "context window of tiny" in str(over.value)
    # longer than any configured model could take: refused before the run is even recorded
    with TestClient(create_app(ServerConfig(access_log=False, max_body_bytes=8 << 20))) as http:
        from deliberate.services import input_limit

        size = input_limit(http.app.state.deliberate.live.registry) + 1  # type: ignore[attr-defined]
        r = http.post("/v1/chat/completions", json={"model": "flow:trio",
                                                    "messages": [{"role": "user", "content": "x" * size}]})
        assert r.status_code == 400 and "context window" in r.json()["error"]["message"]
        assert "x" * 100 not in r.text  # the input is not echoed back
    assert scripted.calls() == []
