"""The remote backend, through the real litellm HTTP path, against real servers on 127.0.0.1.

Every test points litellm at a :class:`FakeLLM` with ``api_base`` and drives it through the
Gateway (or the backend alone where the exact error matters), so retries, the breaker, fallbacks,
the budget and rate limits are the real layers meeting real HTTP faults.
"""

from __future__ import annotations

import asyncio
import email.utils
import io
import ipaddress
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic_core import to_json

from conftest import cli
from deliberate.config import Settings
from deliberate.errors import BudgetExceeded, ProviderError
from deliberate.gateway import Backend, Budget, Gateway, GenerationRequest
from deliberate.gateway.backends.remote import RemoteBackend, load_litellm
from deliberate.gateway.contracts import BackendCall, Message, Sampling
from deliberate.registry import CostProfile, Limits, ModelSpec, RateLimit, Registry, StrategySpec
from helpers import remote_gateway, with_shipped
from servers.fake_llm import FakeLLM, Script, pieces

# litellm's own pydantic models warn on import and on every response; not ours to fix.
LITELLM_NOISE = [pytest.mark.filterwarnings("ignore:.*ReadOnly.*:UserWarning"),
                 pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecatedSince211")]
pytestmark = LITELLM_NOISE

KEY_ENV = "FAKE_LLM_TOKEN"  # deliberately not *_API_KEY: the backend must scrub it by itself
KEY = "sk-deliberate-test-7f3a9c2e51d4"


# ---------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module", autouse=True)
def _litellm_loaded() -> None:
    # Import once up front: its seconds must not count against the short timeouts below.
    load_litellm()


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Refuse (and remember) any connection or name lookup outside 127.0.0.0/8 and ::1."""
    refused: list[str] = []
    real_connect, real_connect_ex, real_getaddrinfo = (socket.socket.connect, socket.socket.connect_ex,
                                                       socket.getaddrinfo)

    def loopback(host: object) -> bool:
        if host in ("localhost", None):
            return True
        try:
            return ipaddress.ip_address(str(host)).is_loopback
        except ValueError:
            return False

    def check(sock: socket.socket, address: Any) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple) \
                and not loopback(address[0]):
            refused.append(str(address))
            raise OSError(f"test guard: no traffic outside 127.0.0.0/8 ({address})")

    def connect(sock: socket.socket, address: Any) -> None:
        check(sock, address)
        return real_connect(sock, address)

    def connect_ex(sock: socket.socket, address: Any) -> int:
        check(sock, address)
        return real_connect_ex(sock, address)

    def getaddrinfo(host: Any, *args: Any, **kw: Any) -> Any:
        if not loopback(host.decode() if isinstance(host, bytes) else host):
            refused.append(f"lookup {host}")
            raise socket.gaierror(f"test guard: no lookup of {host}")
        return real_getaddrinfo(host, *args, **kw)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield refused
    assert not refused, f"a test tried to leave the machine: {refused}"


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(KEY_ENV, KEY)
    return KEY


@pytest.fixture
def server() -> Iterator[FakeLLM]:
    with FakeLLM() as s:
        yield s


@pytest.fixture
def backup() -> Iterator[FakeLLM]:
    with FakeLLM(Script(text="The backup answers.")) as s:
        yield s


# ---------------------------------------------------------------------------------------------
# Helpers


def openai_model(key: str, server: FakeLLM, **kw: Any) -> ModelSpec:
    fields: dict[str, Any] = {"provider": "litellm", "litellm_model": "openai/test-model",
                                 "api_base": server.openai_base, "api_key_env": KEY_ENV,
                                 "context_window": 8192}
    fields.update(kw)
    return ModelSpec(key=key, **fields)


def anthropic_model(key: str, server: FakeLLM, **kw: Any) -> ModelSpec:
    return openai_model(key, server, litellm_model="anthropic/claude-test", api_base=server.url, **kw)


def gateway(*models: ModelSpec, retries: int = 2, timeout_s: float | None = 10.0, fallbacks: list[str] | None = None,
            max_failures: int = 5, breaker_timeout: float = 60.0, budget: float | None = None,
            plugin: bool = False) -> Gateway:
    strategy = StrategySpec(name="test", sampling=Sampling(temperature=0.2),
                            limits=Limits(max_tokens=16, max_retries=retries, timeout_s=timeout_s),
                            fallbacks=fallbacks or [])
    registry = Registry(models={m.key: m for m in models}, strategies={"test": strategy},
                        default_model=models[0].key, default_strategy="test")
    settings = Settings(circuit_breaker_max_failures=max_failures, circuit_breaker_timeout=breaker_timeout,
                        cache=False)
    backends: dict[str, Backend] | None = None if plugin else {"litellm": RemoteBackend(settings)}
    return Gateway(registry, settings=settings, backends=backends, budget=Budget(budget), retry_base_s=0.01)


def ask(prompt: str = "Say hello.", key: str | None = None, **kw: Any) -> GenerationRequest:
    return GenerationRequest.from_prompt(prompt, model_key=key, **kw)


def call_for(spec: ModelSpec, timeout_s: float | None = 10.0, system: str | None = None) -> BackendCall:
    msgs = ([Message(role="system", content=system)] if system else []) + [Message(role="user", content="Hi")]
    return BackendCall(model_key=spec.key, spec=spec, messages=msgs, sampling=Sampling(temperature=0),
                       max_tokens=16, timeout_s=timeout_s)


def kinds(gw: Gateway, endpoint: str) -> list[str]:
    return [e.kind for e in gw.events if e.endpoint == endpoint and e.kind.startswith("breaker")]


# ---------------------------------------------------------------------------------------------
# Import cost


def test_importing_the_backend_does_not_import_litellm() -> None:
    code = ("import sys, deliberate.gateway, deliberate.gateway.backends.remote as r; r.RemoteBackend(None); "
            "print('litellm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"


async def test_litellm_loads_once_for_concurrent_first_calls_and_again_after_a_failure(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import deliberate.gateway.backends.remote_litellm as remote

    real, loads = load_litellm(), []

    def load() -> Any:
        loads.append(1)
        if len(loads) == 1:
            raise ImportError("a broken install")
        return real

    monkeypatch.setattr(remote, "_litellm", None)  # as in a fresh process
    monkeypatch.setattr(remote, "load_litellm", load)
    said: list[str] = []
    backend = RemoteBackend(None, progress=said.append)
    with pytest.raises(ImportError):
        await backend._load()
    assert await asyncio.gather(*(backend._load() for _ in range(3))) == [real] * 3
    assert len(loads) == 2  # the failure was not kept; the three concurrent calls shared one load
    assert [m.startswith("loading litellm") for m in said] == [True, True, False]  # failed, then shared
    assert said[-1].startswith("litellm ready in")

    def broken_display(message: str) -> None:
        raise RuntimeError("the terminal went away")

    loads.clear()
    loads.append(1)  # the next load succeeds
    assert await RemoteBackend(None, progress=broken_display)._load() is real


async def test_a_cached_answer_needs_no_litellm(server: FakeLLM, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import deliberate.gateway.backends.remote_litellm as remote
    from deliberate.gateway.layers import ResponseCache

    spec = openai_model("remote", server)
    settings = Settings(cache=False)
    registry = Registry(models={"remote": spec}, strategies={"t": StrategySpec(name="t", sampling=Sampling(
        temperature=0.0))}, default_model="remote", default_strategy="t")
    gw = remote_gateway(registry, settings, cache=ResponseCache(tmp_path))
    first = await gw.generate(ask("Cache me."))

    imports: list[int] = []

    def no_import() -> Any:
        imports.append(1)
        raise ImportError("not for a cached answer")

    monkeypatch.setattr(remote, "_litellm", None)  # as in a new process, with the cache on disk
    monkeypatch.setattr(remote, "load_litellm", no_import)
    fresh = remote_gateway(registry, settings, cache=ResponseCache(tmp_path))
    again = await fresh.generate(ask("Cache me."))
    assert again.cache_hit and again.text == first.text and server.calls == 1
    assert imports == []


# ---------------------------------------------------------------------------------------------
# Answers


async def test_tokens_stream_in_order_and_join_to_the_text(server: FakeLLM) -> None:
    text = "Deliberation beats a single guess, most of the time."
    server.queue(Script(text=text, prompt_tokens=12))
    gw = gateway(openai_model("remote", server), plugin=True)  # the entry point, as a user gets it
    tokens: list[str] = []
    result = await gw.generate(ask("Why deliberate?"), on_token=tokens.append)

    assert tokens == pieces(text)
    assert "".join(tokens) == result.text == text
    assert result.source == "openai" and result.model_resolved == "remote"
    assert result.usage.prompt_tokens == 12 and result.usage.completion_tokens == len(pieces(text))
    assert result.finish_reason == "stop"
    sent = server.requests[-1]
    assert sent.path == "/v1/chat/completions"
    assert sent.body["stream"] is True and sent.body["stream_options"] == {"include_usage": True}
    assert sent.body["max_tokens"] == 16 and sent.body["temperature"] == 0.2
    assert sent.body["messages"] == [{"role": "user", "content": "Why deliberate?"}]


@pytest.mark.parametrize("flavour", ["openai", "anthropic"])
async def test_without_a_listener_one_plain_request_answers(server: FakeLLM, flavour: str) -> None:
    text = "Nobody watches, so nothing streams."
    server.queue(Script(text=text, prompt_tokens=12, completion_tokens=7))
    spec = (openai_model if flavour == "openai" else anthropic_model)("remote", server)
    result = await gateway(spec).generate(ask("Why deliberate?"))

    assert result.text == text and result.source == flavour and result.finish_reason == "stop"
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (12, 7)
    sent = server.requests[-1].body
    assert not sent.get("stream") and "stream_options" not in sent
    assert sent["max_tokens"] == 16


async def test_cost_comes_from_the_cost_profile(server: FakeLLM) -> None:
    server.queue(Script(prompt_tokens=1000, completion_tokens=500))
    profile = CostProfile(input_per_million=2.0, output_per_million=10.0)
    gw = gateway(openai_model("priced", server, cost_profile=profile))
    result = await gw.generate(ask())
    assert result.usage.cost_usd == pytest.approx(1000 * 2e-6 + 500 * 10e-6)
    # the profile's price is handed to litellm (sparing it a price-map search), never to the server
    assert not {"input_cost_per_token", "output_cost_per_token"} & set(server.requests[-1].body)


async def test_cost_comes_from_litellms_price_map_without_a_profile(server: FakeLLM) -> None:
    lit = load_litellm()
    server.queue(Script(prompt_tokens=1000, completion_tokens=500), Script(prompt_tokens=1000, completion_tokens=500))
    known = openai_model("mini", server, litellm_model="openai/gpt-4o-mini")
    unknown = openai_model("unknown", server)
    gw = gateway(known, unknown)

    priced = await gw.generate(ask(key="mini"))
    p, c = lit.cost_per_token(model="openai/gpt-4o-mini", prompt_tokens=1000, completion_tokens=500)
    assert priced.usage.cost_usd == pytest.approx(p + c) and priced.usage.cost_usd > 0
    assert (await gw.generate(ask(key="unknown"))).usage.cost_usd == 0.0

    backend = RemoteBackend(None)
    assert await backend.estimate_cost(known, 1000, 500) == pytest.approx(p + c)
    assert await backend.estimate_cost(unknown, 1000, 500) == 0.0


async def test_usage_is_counted_when_the_server_reports_none(server: FakeLLM) -> None:
    server.queue(Script(text="Four words right here.", usage=False))
    result = await gateway(openai_model("remote", server)).generate(ask("Count these words please."))
    assert result.usage.prompt_tokens > 0 and result.usage.completion_tokens > 0


async def test_anthropic_end_to_end(server: FakeLLM) -> None:
    text = "Claude-shaped answer, streamed."
    server.queue(Script(text=text, prompt_tokens=9, completion_tokens=5))
    gw = gateway(anthropic_model("claude", server))
    tokens: list[str] = []
    result = await gw.generate(ask("Hi", system="Be brief."), on_token=tokens.append)

    assert tokens == pieces(text) and result.text == text
    assert result.source == "anthropic"
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (9, 5)
    sent = server.requests[-1]
    assert sent.path == "/v1/messages"
    assert sent.headers["x-api-key"] == KEY and "authorization" not in sent.headers
    assert "Be brief." in str(sent.body["system"]) and sent.body["max_tokens"] == 16


# ---------------------------------------------------------------------------------------------
# Faults


@pytest.mark.parametrize("listen", [True, False], ids=["streamed", "plain"])
async def test_server_errors_are_retried_until_an_answer(server: FakeLLM, listen: bool) -> None:
    server.queue(Script(status=500), Script(status=500))
    gw = gateway(openai_model("remote", server), retries=2)
    result = await gw.generate(ask(), on_token=listener(listen))

    assert result.text == Script().text and server.calls == 3
    assert [a.ok for a in result.attempts] == [False, False, True]
    assert "HTTP 500" in (result.attempts[0].error or "")
    assert [e.kind for e in result.events] == ["retry", "retry"]
    assert gw.breaker_state(openai_model("remote", server).endpoint) == "closed"


async def test_429_retry_after_is_honoured(server: FakeLLM) -> None:
    server.queue(Script(status=429, retry_after="1"))
    gw = gateway(openai_model("remote", server), retries=1)
    result = await gw.generate(ask())

    retry = next(e for e in result.events if e.kind == "retry")
    delay = float(re.search(r"retrying in ([0-9.]+)s", retry.detail).group(1))  # type: ignore[union-attr]
    assert delay >= 1.0  # the jittered backoff alone would be ~0.01 s
    assert "rate limited" in retry.detail
    assert server.requests[1].at - server.requests[0].at >= 0.9


async def test_retry_after_is_read_for_anthropic_and_as_an_http_date(server: FakeLLM) -> None:
    backend = RemoteBackend(None)
    server.queue(Script(status=429, retry_after="2"))
    with pytest.raises(ProviderError) as caught:
        await backend.generate(call_for(anthropic_model("claude", server)))
    assert caught.value.transient and caught.value.retry_after == 2.0

    when = email.utils.formatdate(time.time() + 3, usegmt=True)
    server.queue(Script(status=429, retry_after=when))
    with pytest.raises(ProviderError) as caught:
        await backend.generate(call_for(openai_model("remote", server)))
    assert caught.value.retry_after is not None and 0.5 < caught.value.retry_after <= 3.5


async def test_breaker_opens_the_fallback_answers_and_a_probe_closes_it(server: FakeLLM, backup: FakeLLM) -> None:
    server.default = Script(status=503)
    primary, spare = openai_model("primary", server), openai_model("spare", backup)
    gw = gateway(primary, spare, retries=0, fallbacks=["spare"], max_failures=2, breaker_timeout=1.0)

    for _ in range(2):  # two consecutive failures open the primary's breaker
        result = await gw.generate(ask(key="primary"))
        assert result.model_resolved == "spare" and result.text == "The backup answers."
    assert gw.breaker_state(primary.endpoint) == "open"
    assert kinds(gw, primary.endpoint) == ["breaker_open"]
    assert any(e.kind == "fallback" and e.model_key == "spare" for e in gw.events)

    calls = server.calls
    result = await gw.generate(ask(key="primary"))  # open: the primary is not even tried
    assert result.model_resolved == "spare" and server.calls == calls
    assert "circuit breaker" in (result.attempts[0].error or "")

    server.default = Script(text="Primary is back.")
    reset_timeout_passes(gw, primary.endpoint)
    result = await gw.generate(ask(key="primary"))  # half-open: one probe, it succeeds, closed again
    assert result.model_resolved == "primary" and result.text == "Primary is back."
    assert kinds(gw, primary.endpoint) == ["breaker_open", "breaker_half_open", "breaker_closed"]
    assert gw.breaker_state(primary.endpoint) == "closed"
    assert kinds(gw, spare.endpoint) == []


def reset_timeout_passes(gw: Gateway, endpoint: str) -> None:
    """A fake clock for the breaker: pybreaker half-opens once now is past ``opened_at`` plus its
    reset timeout, so moving ``opened_at`` back is the timeout passing, without sleeping."""
    cb = gw.breaker(endpoint).cb
    assert cb.current_state == "open" and cb._state_storage.opened_at is not None
    cb._state_storage.opened_at -= timedelta(seconds=cb.reset_timeout)


def listener(listen: bool) -> Any:
    """A token callback when the test streams, None for a plain request."""
    return (lambda piece: None) if listen else None


@pytest.mark.parametrize("listen", [True, False], ids=["streamed", "plain"])
async def test_a_slow_reply_times_out_as_a_transient_failure(server: FakeLLM, listen: bool) -> None:
    server.queue(Script(delay_s=3))
    with pytest.raises(ProviderError) as caught:
        await RemoteBackend(None).generate(call_for(openai_model("remote", server), timeout_s=0.3),
                                           on_token=listener(listen))
    assert caught.value.transient and "timed out" in caught.value.message

    server.queue(Script(delay_s=3))
    gw = gateway(openai_model("remote", server), retries=1, timeout_s=0.3)
    started = time.perf_counter()
    result = await gw.generate(ask(), on_token=listener(listen))
    assert result.text == Script().text and [a.ok for a in result.attempts] == [False, True]
    assert time.perf_counter() - started < 2.5  # it did not wait for the slow reply


@pytest.mark.parametrize("listen", [True, False], ids=["streamed", "plain"])
@pytest.mark.parametrize("flavour", ["openai", "anthropic"])
async def test_malformed_json_is_a_transient_failure(server: FakeLLM, flavour: str, listen: bool) -> None:
    spec = (openai_model if flavour == "openai" else anthropic_model)("remote", server)
    server.queue(Script(malformed=True))
    with pytest.raises(ProviderError) as caught:
        await RemoteBackend(None).generate(call_for(spec), on_token=listener(listen))
    assert caught.value.transient
    assert bool(server.requests[-1].body.get("stream")) is listen

    server.queue(Script(malformed=True))
    result = await gateway(spec, retries=1).generate(ask(), on_token=listener(listen))
    assert result.text == Script().text and [a.ok for a in result.attempts] == [False, True]


@pytest.mark.parametrize("flavour", ["openai", "anthropic"])
async def test_a_dropped_stream_is_never_taken_as_the_answer(server: FakeLLM, flavour: str) -> None:
    spec = (openai_model if flavour == "openai" else anthropic_model)("remote", server)
    cut = Script(text="one two three four five", cut_after=2)
    server.queue(cut)
    seen: list[str] = []
    with pytest.raises(ProviderError) as caught:
        await RemoteBackend(None).generate(call_for(spec), on_token=seen.append)
    assert caught.value.transient and seen == ["one ", "two "]

    server.queue(cut)
    tokens: list[str] = []
    result = await gateway(spec, retries=1).generate(ask(), on_token=tokens.append)
    assert result.text == Script().text  # the retry's whole answer, not "one two "
    assert server.requests[-1].body["stream"] is True
    assert [a.ok for a in result.attempts] == [False, True]


async def test_401_is_not_retried_and_does_not_trip_the_breaker(server: FakeLLM) -> None:
    server.default = Script(status=401, error="invalid key")
    spec = openai_model("remote", server)
    gw = gateway(spec, retries=3, max_failures=1)
    for expected_calls in (1, 2):
        with pytest.raises(ProviderError, match="authentication failed"):
            await gw.generate(ask())
        assert server.calls == expected_calls  # one request per call: no retry
    assert gw.breaker_state(spec.endpoint) == "closed" and kinds(gw, spec.endpoint) == []


@pytest.mark.parametrize(("status", "transient", "trips"), [(400, False, False), (404, False, False),
                                                             (422, False, False), (502, True, True),
                                                             (503, True, True)])
async def test_status_codes_map_to_the_gateways_error_kinds(server: FakeLLM, status: int, transient: bool,
                                                           trips: bool) -> None:
    server.queue(Script(status=status))
    with pytest.raises(ProviderError) as caught:
        await RemoteBackend(None).generate(call_for(openai_model("remote", server)))
    assert (caught.value.transient, caught.value.trips_breaker) == (transient, trips)
    assert f"HTTP {status}" in caught.value.message


# ---------------------------------------------------------------------------------------------
# Budget and rate limits


async def test_the_budget_refuses_the_call_that_would_go_over(server: FakeLLM) -> None:
    server.default = Script(completion_tokens=16)
    profile = CostProfile(input_per_million=0.0, output_per_million=1000.0)  # $0.001 per output token
    gw = gateway(openai_model("priced", server, cost_profile=profile), budget=0.02)

    first = await gw.generate(ask())
    assert first.usage.cost_usd == pytest.approx(0.016)
    with pytest.raises(BudgetExceeded):
        await gw.generate(ask())  # 0.016 spent + up to 0.016 more > 0.02
    assert server.calls == 1  # refused before any request


async def test_max_concurrent_holds_under_a_five_way_fan_out(server: FakeLLM) -> None:
    server.default = Script(delay_s=0.4)  # long enough that the first two always overlap
    gw = gateway(openai_model("limited", server, rate_limit=RateLimit(max_concurrent=2)))
    results = await asyncio.gather(*(gw.generate(ask(f"expert {i}")) for i in range(5)))
    assert len(results) == 5 and server.calls == 5
    assert server.max_in_flight == 2


async def test_requests_per_minute_are_paced_across_models_of_one_server(server: FakeLLM) -> None:
    # rpm 20: a burst of up to 20, then one every 3 s. Two model keys on one server share the pace.
    a = openai_model("a", server, rate_limit=RateLimit(rpm=20))
    b = openai_model("b", server, litellm_model="openai/other-model")
    gw = gateway(a, b)
    assert gw.rate_limit(b) is gw.rate_limit(a)  # b declares nothing; the server's limit holds for it
    started = time.monotonic()
    results = await asyncio.gather(*(gw.generate(ask(f"q{i}", key="ab"[i % 2])) for i in range(21)))
    assert len(results) == 21
    arrivals = sorted(r.at - started for r in server.requests)
    assert arrivals[20] >= 2.9  # the 21st waited for the bucket to drip (3 s after the first went)...
    assert arrivals[20] - arrivals[19] >= 0.5  # ...held back, not merely slow like the burst before it


def test_rate_limits_per_server_and_per_hosted_model() -> None:
    def spec(key: str, model: str, api_base: str | None = None, **limit: Any) -> ModelSpec:
        return ModelSpec(key=key, provider="litellm", litellm_model=model, api_base=api_base,
                         rate_limit=RateLimit(**limit) if limit else None)

    shipped = Registry.load(Settings())  # gpt-4o-mini and claude-haiku ship with a rate_limit
    mine = {"sonnet": spec("sonnet", "anthropic/claude-sonnet-4-5"),
            "big": spec("big", "openai/gpt-4.1", rpm=5000, max_concurrent=64),
            "vllm-a": spec("vllm-a", "openai/a", "http://127.0.0.1:9/v1", rpm=100, max_concurrent=8),
            "vllm-b": spec("vllm-b", "openai/b", "http://127.0.0.1:9/v1", rpm=50),
            "other": spec("other", "openai/c", "http://127.0.0.1:10/v1")}
    registry = Registry(models={**shipped.models, **mine}, strategies=shipped.strategies,
                        default_model="sonnet", default_strategy="balanced")

    def limits(gw: Gateway, key: str) -> tuple[float | None, int | None] | None:
        limit = gw.rate_limit(registry.model(key))
        if limit is None:
            return None
        return (limit.limiter.max_rate if limit.limiter else None), (limit.sem._value if limit.sem else None)

    gw = Gateway(registry, settings=Settings(remote_rpm=None, remote_max_concurrent=None))
    assert limits(gw, "gpt-4o-mini") == (500, 8)
    assert limits(gw, "big") == (5000, 64)  # a hosted model's own limit, whoever was called first
    assert limits(gw, "sonnet") is None  # not claude-haiku's: hosted APIs limit per model
    # one server of your own: the strictest of its models' limits, shared by all of them
    assert limits(gw, "vllm-b") == (50, 8) and gw.rate_limit(mine["vllm-a"]) is gw.rate_limit(mine["vllm-b"])
    assert limits(gw, "other") is None and limits(gw, "smollm2-135m") is None

    gw = Gateway(registry, settings=Settings(remote_rpm=30, remote_max_concurrent=3))
    assert limits(gw, "sonnet") == (30, 3) and limits(gw, "other") == (30, 3)  # what no entry declares
    assert limits(gw, "big") == (5000, 64) and limits(gw, "vllm-a") == (50, 8)
    assert limits(gw, "smollm2-135m") is None  # an in-process model is not a server


# ---------------------------------------------------------------------------------------------
# Keys


async def test_a_missing_key_names_the_variable_and_sends_nothing(server: FakeLLM,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV)
    spec = openai_model("remote", server)
    with pytest.raises(ProviderError) as caught:
        await RemoteBackend(None).generate(call_for(spec))
    assert KEY_ENV in caught.value.line()
    assert not caught.value.transient and not caught.value.trips_breaker

    gw = gateway(spec, max_failures=1)
    with pytest.raises(ProviderError, match=KEY_ENV):
        await gw.generate(ask())
    assert server.calls == 0 and gw.breaker_state(spec.endpoint) == "closed"


@pytest.mark.parametrize("flavour", ["openai", "anthropic"])
async def test_the_key_travels_in_the_header_and_nowhere_else(server: FakeLLM, flavour: str,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    spec = (openai_model if flavour == "openai" else anthropic_model)("remote", server)
    gw = gateway(spec, retries=0)
    result = await gw.generate(ask())
    sent = server.requests[-1]
    header = sent.headers["authorization"] if flavour == "openai" else sent.headers["x-api-key"]
    assert header in (f"Bearer {KEY}", KEY)
    assert KEY not in sent.raw and KEY not in to_json(result).decode()

    # A server that echoes the key back in its error (some do) must not leak it into ours.
    server.queue(Script(status=401, error=f"Incorrect API key provided: {KEY}"),
                 Script(status=500, error=f"upstream rejected {KEY}"))
    for _ in range(2):
        with pytest.raises(ProviderError) as caught:
            await gw.generate(ask())
        assert KEY not in caught.value.line() and KEY not in str(caught.value)
    assert KEY not in caplog.text
    assert all(KEY not in to_json(e).decode() for e in gw.events)


async def test_a_provider_key_in_the_environment_never_goes_to_a_custom_api_base(
        server: FakeLLM, monkeypatch: pytest.MonkeyPatch) -> None:
    provider_key = "sk-real-openai-key-0123456789"
    monkeypatch.setenv("OPENAI_API_KEY", provider_key)
    spec = openai_model("self-hosted", server, api_key_env=None)
    await gateway(spec).generate(ask())
    assert provider_key not in str(server.requests[-1].headers)


async def test_the_key_may_come_from_the_dotenv_file(server: FakeLLM, monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    monkeypatch.delenv(KEY_ENV)
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(f"{KEY_ENV}={KEY}\n")
    await gateway(openai_model("remote", server)).generate(ask())
    assert server.requests[-1].headers["authorization"] == f"Bearer {KEY}"


# ---------------------------------------------------------------------------------------------
# Whole flows: the engine, the gateway and litellm over real HTTP, and the record on disk


def registry_of(*models: ModelSpec, fallbacks: list[str] | None = None, retries: int = 1) -> Registry:
    strategy = StrategySpec(name="test", sampling=Sampling(temperature=0.2),
                            limits=Limits(max_tokens=16, max_retries=retries, timeout_s=10), fallbacks=fallbacks or [])
    return with_shipped(*models, strategy=strategy)


async def run_recorded(flow: str | Path, registry: Registry, runs: Path, gw: Gateway | None = None,
                       max_cost: float | None = None, prompt: str = "Design a login form.") -> dict[str, Any]:
    """Run a flow with every step on the registry's first model; the record as written to disk."""
    from deliberate._api import run_flow_async
    from deliberate.engine import RunOptions

    settings = Settings(cache=False, circuit_breaker_max_failures=2, circuit_breaker_timeout=1.0)
    gw = gw or remote_gateway(registry, settings, retry_base_s=0.01)
    options = RunOptions(models={"*": registry.default_model}, max_cost=max_cost)
    outcome = await run_flow_async(flow, {"prompt": prompt}, options, registry=registry, gateway=gw,
                                   runs_dir=runs)
    assert outcome.record_path is not None
    record: dict[str, Any] = json.loads(outcome.record_path.read_text())
    return record


@pytest.mark.parametrize("flavour", ["openai", "anthropic"])
async def test_the_challenge_flow_runs_end_to_end_through_each_server(server: FakeLLM, flavour: str,
                                                                      tmp_path: Path) -> None:
    profile = CostProfile(input_per_million=3.0, output_per_million=15.0)
    spec = (openai_model if flavour == "openai" else anthropic_model)("remote", server, cost_profile=profile)
    server.queue(Script(text="Draft: a form with a password field.", prompt_tokens=40, completion_tokens=8),
                 Script(text="Problem: no rate limit on attempts.", prompt_tokens=60, completion_tokens=7),
                 Script(text="Final: a form with a rate-limited password check.", prompt_tokens=90,
                        completion_tokens=9))
    record = await run_recorded("challenge", registry_of(spec), tmp_path)

    assert record["status"] == "succeeded" and record["output"] == "Final: a form with a rate-limited password check."
    steps = record["steps"]
    assert [steps[s]["output"] for s in ("creator", "challenger", "refiner")] == [
        "Draft: a form with a password field.", "Problem: no rate limit on attempts.",
        "Final: a form with a rate-limited password check."]
    # each step's prompt reached the server with the earlier answers wired in
    bodies = [json.dumps(r.body) for r in server.requests]
    assert "Draft: a form with a password field." in bodies[1]
    assert "Problem: no rate limit on attempts." in bodies[2] and "Draft: a form" in bodies[2]
    # usage as the server reported it and cost from the profile, per call and in the totals
    calls = [steps[s]["calls"][0] for s in ("creator", "challenger", "refiner")]
    assert [(c["prompt_tokens"], c["completion_tokens"]) for c in calls] == [(40, 8), (60, 7), (90, 9)]
    assert all(c["source"] == flavour and c["model_key"] == "remote" for c in calls)
    for c in calls:
        assert c["cost_usd"] == pytest.approx(c["prompt_tokens"] * 3e-6 + c["completion_tokens"] * 15e-6)
    totals = record["totals"]
    assert (totals["calls"], totals["prompt_tokens"], totals["completion_tokens"]) == (3, 190, 24)
    assert totals["cost_usd"] == pytest.approx(sum(c["cost_usd"] for c in calls))
    assert KEY not in json.dumps(record)


TWO_STEPS = """\
name: two_steps
inputs: {prompt: {}}
steps:
  first: {prompt: "First: {{ prompt }}"}
  second: {prompt: "Second, after {{ first }}"}
output: second
"""


async def test_breaker_fallback_and_probe_land_in_the_record(server: FakeLLM, backup: FakeLLM,
                                                             tmp_path: Path) -> None:
    flow = tmp_path / "two_steps.yaml"
    flow.write_text(TWO_STEPS)
    primary, spare = openai_model("primary", server), openai_model("spare", backup)
    registry = registry_of(primary, spare, fallbacks=["spare"], retries=1)
    settings = Settings(cache=False, circuit_breaker_max_failures=2, circuit_breaker_timeout=1.0)
    gw = remote_gateway(registry, settings, retry_base_s=0.01)
    server.default = Script(status=503)

    # first: two failed attempts open the breaker, the spare answers; second: the open breaker
    # skips the primary without a request and the spare answers again
    record = await run_recorded(flow, registry, tmp_path / "runs", gw=gw)
    assert record["status"] == "succeeded" and server.calls == 2
    assert [record["steps"][s]["calls"][0]["model_key"] for s in ("first", "second")] == ["spare", "spare"]
    assert [(e["kind"], e["endpoint"]) for e in record["events"] if e["kind"].startswith("breaker")] == [
        ("breaker_open", primary.endpoint)]
    assert [e["model_key"] for e in record["events"] if e["kind"] == "fallback"] == ["spare", "spare"]
    assert "circuit breaker" in (record["steps"]["second"]["calls"][0]["attempts"][0]["error"] or "")

    # after CIRCUIT_BREAKER_TIMEOUT one probe goes to the primary; it answers and closes the breaker
    server.default = Script(text="Primary is back.")
    reset_timeout_passes(gw, primary.endpoint)
    record = await run_recorded(flow, registry, tmp_path / "runs", gw=gw)
    assert record["status"] == "succeeded" and record["output"] == "Primary is back."
    assert [e["kind"] for e in record["events"]] == ["breaker_half_open", "breaker_closed"]
    assert all(record["steps"][s]["calls"][0]["model_key"] == "primary" for s in ("first", "second"))


async def test_a_flow_streams_only_when_a_subscriber_takes_tokens(server: FakeLLM, tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    from rich.console import Console

    from deliberate._api import run_flow_async
    from deliberate.engine import RunOptions, Token
    from deliberate.logs import EventLog
    from deliberate.ui.live import LiveView

    flow = tmp_path / "two_steps.yaml"
    flow.write_text(TWO_STEPS)
    registry = registry_of(openai_model("remote", server))
    settings = Settings(cache=False)
    gw = remote_gateway(registry, settings)
    server.default = Script(text="Four pieces of text.")

    async def run(*subscribers: Any) -> list[bool]:
        server.reset()
        outcome = await run_flow_async(flow, {"prompt": "hi"}, RunOptions(), registry=registry, gateway=gw,
                                       record=False, subscribers=list(subscribers))
        assert outcome.result.status == "succeeded" and outcome.result.output == "Four pieces of text."
        return [bool(r.body.get("stream")) for r in server.requests]

    assert await run() == [False, False]  # nobody shows tokens: one plain request per call
    tokens: list[str] = []
    assert await run(lambda e: tokens.append(e.text) if isinstance(e, Token) else None) == [True, True]
    assert "".join(tokens) == "Four pieces of text." * 2

    # what ships: the live view streams on a terminal only; its plain lines and the log at INFO do not
    on_terminal, in_a_pipe = Console(force_terminal=True), Console(file=io.StringIO(), force_terminal=False)
    assert LiveView(on_terminal).wants_tokens and not LiveView(in_a_pipe).wants_tokens
    caplog.set_level(logging.DEBUG, logger="deliberate.events")
    assert EventLog().wants_tokens  # the log writes tokens at DEBUG
    caplog.set_level(logging.INFO, logger="deliberate.events")
    assert await run(LiveView(in_a_pipe), EventLog()) == [False, False]


async def test_the_budget_stops_a_flow_and_the_record_says_why(server: FakeLLM, tmp_path: Path) -> None:
    flow = tmp_path / "two_steps.yaml"
    flow.write_text(TWO_STEPS)
    server.default = Script(completion_tokens=16)
    spec = openai_model("priced", server, cost_profile=CostProfile(input_per_million=0.0, output_per_million=1000.0))
    record = await run_recorded(flow, registry_of(spec), tmp_path / "runs", max_cost=0.02)

    assert record["status"] == "failed" and record["error_type"] == "BudgetExceeded"
    assert server.calls == 1  # the second call was refused before any request
    assert record["steps"]["first"]["status"] == "succeeded"
    assert record["steps"]["second"]["status"] == "failed"
    assert record["totals"]["cost_usd"] == pytest.approx(0.016)


def user_models_yaml(server: FakeLLM, folder: Path) -> dict[str, str]:
    """A ./models.yaml with one remote model on the server; the environment to run the CLI in.

    Its strategy allows 2 s a call, less than litellm's import (seconds) in a fresh process: the
    import must not count against the first call's timeout."""
    (folder / "models.yaml").write_text(
        f"remote:\n  provider: litellm\n  litellm_model: openai/test-model\n  api_base: {server.openai_base}\n"
        f"  api_key_env: {KEY_ENV}\n  context_window: 8192\n  default_strategy: brisk\n"
        "  cost_profile: {input_per_million: 1.0, output_per_million: 2.0}\n")
    (folder / "strategies.yaml").write_text("brisk:\n  limits: {max_tokens: 64, timeout_s: 2, max_retries: 0}\n")
    return {**os.environ, KEY_ENV: KEY, "DELIBERATE_HOME": str(folder / "home"), "NO_COLOR": "1"}


def test_models_check_sends_one_tiny_request_and_says_what_loads(server: FakeLLM, tmp_path: Path) -> None:
    env = user_models_yaml(server, tmp_path)
    out = subprocess.run([sys.executable, "-m", "deliberate", "models", "check", "remote"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "ok: True" in out.stdout and f"text: {Script().text}" in out.stdout
    assert "loading litellm" in out.stderr and "litellm ready in" in out.stderr  # it takes seconds: say so
    assert server.calls == 1 and server.requests[0].body["max_tokens"] == 8
    assert KEY not in out.stdout + out.stderr


def test_the_cli_runs_a_flow_on_a_remote_model_from_models_yaml(server: FakeLLM, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # the CLI in-process (conftest.cli): a fresh process's litellm import is the test above's
    env = user_models_yaml(server, tmp_path)
    server.default = Script(text="Remote answer.", prompt_tokens=10, completion_tokens=3)
    monkeypatch.chdir(tmp_path)
    out = cli("run", "challenge", "Design a login form.", "--model", "remote", "--json",
              env={k: env[k] for k in (KEY_ENV, "DELIBERATE_HOME", "NO_COLOR")})
    assert out.returncode == 0, out.stderr
    assert not any(r.body.get("stream") for r in server.requests)  # --json shows no tokens: nothing streams
    doc = json.loads(out.stdout)
    assert doc["status"] == "succeeded" and doc["output"] == "Remote answer."
    assert server.calls == 3 and all(r.body["model"] == "test-model" for r in server.requests)
    record = json.loads(Path(tmp_path, doc["record"]).read_text())
    assert record["totals"]["prompt_tokens"] == 30 and record["totals"]["cost_usd"] == pytest.approx(3 * 16e-6)
    assert KEY not in out.stdout + out.stderr and KEY not in json.dumps(record)
