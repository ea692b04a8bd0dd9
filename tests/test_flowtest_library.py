"""Flow tests from Python: the `flow_test` fixture of the pytest plugin, and the replies backend
under the gateway's real layers (retries, the circuit breaker, fallbacks), with each call told
apart by its step, round and branch tags."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT
from deliberate.config import get_settings
from deliberate.errors import InputError
from deliberate.gateway.contracts import GenerationRequest
from deliberate.gateway.gateway import Gateway
from deliberate.gateway.plugins import load_backend
from deliberate.testing.api import case_registry, run_flow_test
from deliberate.testing.backend import RepliesBackend
from deliberate.testing.replies import Script
from deliberate.testing.spec import load_tests

CHALLENGE = str(ROOT / "flows" / "challenge.yaml")


def test_fixture_runs_a_flow_on_scripted_replies(flow_test: Any) -> None:
    result = flow_test(CHALLENGE, {"creator": "Draft", "challenger": ["Too long.", "NO ISSUES"],
                                   "refiner": "Short"},
                       inputs={"prompt": "Write a haiku"}, rounds=3, expect={"output": "Short"})
    assert result.passed, result.failures
    actual = result.actual
    assert actual["calls"] == {"creator": 1, "challenger": 2, "refiner": 1, "total": 4}
    assert actual["rounds"] == {"count": 2, "stop_reason": "until"}
    assert "Draft" in actual["prompts"]["challenger"][0] and "Short" in actual["prompts"]["challenger"][1]
    assert actual["record"]["steps"]["refiner"]["calls"][0]["source"] == "replies"


def test_fixture_reports_what_differs(flow_test: Any) -> None:
    result = flow_test(CHALLENGE, {"creator": "Draft", "challenger": "NO ISSUES", "refiner": "Short"},
                       inputs={"prompt": "x"}, expect={"output": {"contains": "Long"}, "calls": {"total": 2}})
    assert not result.passed
    assert [(f.what, f.expected, f.actual) for f in result.failures] == [
        ("output", "Long", "Short"), ("calls.total", 2, 3)]


def test_a_step_without_replies_fails_the_case_by_name(flow_test: Any) -> None:
    result = flow_test(CHALLENGE, {"creator": "Draft", "challenger": "Bad."}, inputs={"prompt": "x"})
    assert not result.passed
    assert result.failures[0].what == "replies"
    assert "step 'refiner' has no scripted replies" in result.failures[0].message


def test_a_list_that_runs_out_fails_the_case(flow_test: Any) -> None:
    result = flow_test(CHALLENGE, {"creator": "Draft", "challenger": ["Bad.", "Bad."], "refiner": "R"},
                       inputs={"prompt": "x"}, rounds=3)
    assert "step 'challenger' ran out of replies (call 3)" in [f.message for f in result.failures]


def test_bad_replies_are_refused_before_anything_runs(flow_test: Any) -> None:
    with pytest.raises(InputError, match="no step 'critic'"):
        flow_test(CHALLENGE, {"critic": "x"}, inputs={"prompt": "x"})


async def test_the_breaker_opens_on_scripted_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIRCUIT_BREAKER_MAX_FAILURES", "2")
    get_settings.cache_clear()
    result = await run_flow_test(CHALLENGE, {"creator": {"error": "server_error"}}, inputs={"prompt": "x"},
                                 strategy="balanced", expect={"status": "failed"})
    assert result.passed, result.failures
    # balanced allows three tries; the open breaker stops the third before it reaches the backend
    assert result.actual["calls"]["creator"] == 2
    assert result.actual["events"]["breaker_open"] == 1
    assert result.actual["events"]["retry"] == 1


async def test_a_fallback_answers_after_the_primary_fails() -> None:
    result = await run_flow_test(
        CHALLENGE, {"creator": {"rules": [{"when_prompt_contains": "Produce", "error": "rate_limit", "times": 4}],
                                "then": "Draft from the fallback"},
                    "challenger": "NO ISSUES", "refiner": "Done"},
        inputs={"prompt": "x"}, strategy="optimized", models={"creator": "gpt-4o-mini"},
        expect={"events": {"retry": 3, "fallback": 1}, "calls": {"creator": 5}})
    assert result.passed, result.failures
    calls = result.actual["record"]["steps"]["creator"]["calls"]
    assert [c["model_key"] for c in calls] == ["smollm2-135m"]
    assert "Draft from the fallback" in result.actual["prompts"]["challenger"][0]


async def test_branches_are_told_apart_by_item_and_index() -> None:
    flow = str(ROOT / "flows" / "multi_perspective.yaml")
    result = await run_flow_test(flow, {"experts_say": {"branches": {"security": "S", 1: "P", "ux": ["U"]}},
                                        "synthesizer": "all"}, inputs={"prompt": "x"})
    assert result.passed, result.failures
    values = result.actual["record"]["steps"]["experts_say"]["value"]["branches"]
    assert [(v["item"], v["text"]) for v in values] == [("security", "S"), ("performance", "P"), ("ux", "U")]


async def test_the_gateway_carries_request_tags_to_the_backend() -> None:
    script = Script({})
    seen: list[dict[str, Any]] = []
    script.answer = lambda tags, model, messages: seen.append(dict(tags)) or _text("ok")  # type: ignore[method-assign]
    gateway = Gateway(case_registry(), backends={"replies": RepliesBackend(script=script)})
    await gateway.generate(GenerationRequest.from_prompt("hi", model_key="smollm2-135m",
                                                         context={"step": "s", "round": 2, "branch": 1}))
    assert seen == [{"step": "s", "round": 2, "branch": 1}]


def _text(text: str) -> Any:
    from deliberate.testing.replies import Canned

    return Canned(text=text)


def test_the_replies_backend_loads_as_a_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    replies = tmp_path / "r.yaml"
    replies.write_text("creator: [one, {error: timeout}]\n")
    monkeypatch.setenv("DELIBERATE_REPLIES", str(replies))
    backend = load_backend("replies", get_settings())
    assert isinstance(backend, RepliesBackend)
    assert "creator" in backend.script.steps
    replies.write_text("creator: {error: meltdown}\n")
    with pytest.raises(InputError, match=r"r.yaml:1: unknown error 'meltdown'"):
        load_backend("replies", get_settings())


def test_shipped_test_files_cover_every_shipped_flow() -> None:
    registry = case_registry()
    flows = {p.stem for p in (ROOT / "flows").glob("*.yaml")}
    tested = {load_tests(p, registry).loaded.flow.name for p in (ROOT / "flows" / "tests").glob("*.yaml")}
    assert flows and tested == flows
