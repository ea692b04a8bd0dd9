"""An eval through the real litellm path: every call over HTTP to the loopback OpenAI-compatible
test server of tests/servers (127.0.0.1 only; the guard fixture of test_remote_backend refuses
anything else), as an eval against vLLM or any OpenAI-compatible server would go."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from servers.fake_llm import FakeLLM, Script
from test_remote_backend import LITELLM_NOISE, loopback_only  # noqa: F401  (the guard fixture, reused)

pytestmark = LITELLM_NOISE
KEY_ENV, KEY = "EVAL_FAKE_TOKEN", "sk-eval-test-51d47f3a9c2e"


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeLLM]:
    monkeypatch.setenv(KEY_ENV, KEY)
    with FakeLLM(Script(text="Hello from the fake model.")) as s:
        yield s


def test_an_eval_over_real_http_counts_calls_tokens_and_cost(server: FakeLLM, isolated: Path) -> None:
    from deliberate.config import get_settings
    from deliberate.eval.runner import EvalControl, EvalRequest, run_eval
    from deliberate.services import Services
    from deliberate.services.run import RunOptions

    (isolated / "models.yaml").write_text(
        f"remote: {{provider: litellm, litellm_model: openai/test-model, api_base: '{server.openai_base}', "
        f"api_key_env: {KEY_ENV}, context_window: 8192, "
        "cost_profile: {input_per_million: 1000, output_per_million: 1000}}\n")
    rows = [{"prompt": "Say hello", "target": "hello"}, {"prompt": "Greet me", "target": "fake model"},
            {"prompt": "Say bye", "target": "goodbye"}]
    (isolated / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    get_settings.cache_clear()
    request = EvalRequest("challenge", "data.jsonl", scorer="includes", baselines=["single", "self_consistency"],
                          options=RunOptions(models={"*": "remote"}), control=EvalControl(concurrency=3))
    outcome = asyncio.run(run_eval(request, Services(settings=get_settings())))
    report = outcome.report
    arms = {a["arm"]: a for a in report["arms"]}
    assert [arms[a]["passed"] for a in ("flow", "single", "self_consistency")] == [2, 2, 2]
    # challenge: 3 calls an item, so self-consistency samples k = 3; all over HTTP
    assert report["matched"]["k"] == {"self_consistency": 3}
    assert server.calls == 3 * 3 + 3 * 1 + 3 * 3
    assert all(r.path.endswith("/chat/completions") for r in server.requests)
    assert all(r.headers.get("authorization") == f"Bearer {KEY}" for r in server.requests)
    assert arms["flow"]["calls_per_item"] == 3 and arms["flow"]["cost_usd"] > 0
    assert arms["single"]["tokens_per_item"] > 0
    c = {x["baseline"]: x for x in report["comparisons"]}
    assert c["single"]["p_value"] == 1.0 and c["single"]["verdict"] == "no significant difference"
    text = outcome.path.read_text()
    assert KEY not in text  # the key never reaches the eval record
    for run in (isolated / "runs").glob("*.json"):
        assert KEY not in run.read_text()
