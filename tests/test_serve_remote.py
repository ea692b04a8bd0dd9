"""`deliberate serve` proxying a plain model key through the real gateway and litellm to a remote
(OpenAI-style) server, here the loopback fake of tests/test_remote_backend.py: the openai client
talks to deliberate, deliberate talks to the model server. The model server's key stays out of
the responses and records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai

from deliberate.server.app import create_app
from deliberate.server.config import ServerConfig
from servers.fake_llm import FakeLLM
from test_remote_backend import KEY, KEY_ENV, LITELLM_NOISE, _litellm_loaded, api_key, loopback_only  # noqa: F401
from test_serve import Served, wait_record

pytestmark = LITELLM_NOISE


def test_a_remote_model_key_is_proxied_streamed_and_not(isolated: Path) -> None:
    with FakeLLM() as upstream:
        (isolated / "models.yaml").write_text(json.dumps({"remote-test": {
            "provider": "litellm", "litellm_model": "openai/test-model", "api_base": upstream.openai_base,
            "api_key_env": KEY_ENV, "context_window": 8192}}))
        with Served(create_app(ServerConfig(access_log=False))) as served:
            api = openai.OpenAI(base_url=served.url + "/v1", api_key="x", max_retries=0, timeout=60)
            assert "remote-test" in [m.id for m in api.models.list()]
            raw = api.chat.completions.with_raw_response.create(
                model="remote-test", messages=[{"role": "user", "content": "Say hello"}])
            done: Any = raw.parse()
            assert done.choices[0].message.content == "Hello from the fake model."
            assert done.usage.completion_tokens > 0
            chunks = list(api.chat.completions.create(model="remote-test", stream=True,
                                                      messages=[{"role": "user", "content": "again"}]))
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert text == "Hello from the fake model."
        assert len(upstream.requests) == 2
        assert all(r.headers.get("authorization") == f"Bearer {KEY}" for r in upstream.requests)
        rec = wait_record(isolated, raw.headers["x-deliberate-run-id"], "succeeded")
        assert rec["steps"]["answer"]["calls"][0]["model_key"] == "remote-test"
        for path in (isolated / "runs").glob("*.json"):
            assert KEY not in path.read_text()
        assert KEY not in raw.http_response.text
