"""How the gateway stacks its layers around a backend, and how a backend plugin is seen: the
order of the layers, what is left out, what is kept between calls, the whole request's attempts
and events in its result, and the hooks of a plugin without the Backend base class."""

from __future__ import annotations

from typing import Any

import pytest
from deliberate_scripted import ScriptedBackend

from deliberate.config import Settings
from deliberate.errors import BudgetExceeded, ProviderError
from deliberate.gateway import Backend, BackendCall, Budget, Gateway, GenerationRequest, Reply, ResponseCache
from deliberate.gateway.plugins import PluginBackend, as_backend
from deliberate.registry import CostProfile, Limits, ModelSpec, RateLimit, Registry, Sampling, StrategySpec


def registry(*models: ModelSpec, **strategy: Any) -> Registry:
    return Registry({m.key: m for m in models}, {"s": StrategySpec(name="s", **strategy)},
                    default_model=models[0].key, default_strategy="s")


def scripted(key: str, **kw: Any) -> ModelSpec:
    return ModelSpec(key=key, provider="scripted", context_window=1000, **kw)


def layers(model: Any) -> list[str]:
    names = []
    while hasattr(model, "inner"):
        names.append(type(model).__name__)
        model = model.inner
    return [*names, type(model).__name__]


def test_the_layers_stack_in_order_and_idle_ones_are_left_out(tmp_path: Any) -> None:
    limited = scripted("m", rate_limit=RateLimit(rpm=60))
    gw = Gateway(registry(limited, plain := scripted("plain")), settings=Settings(),
                 backends={"scripted": ScriptedBackend()}, cache=ResponseCache(tmp_path))
    strategy = StrategySpec(name="t", limits=Limits(timeout_s=5))
    assert layers(gw.stack(limited, strategy)) == [
        "ContextWindowLayer", "CacheLayer", "BudgetLayer", "RetryLayer", "ScrubLayer",
        "RateLimitLayer", "BreakerLayer", "TimeoutLayer", "ScriptedBackend"]
    assert layers(gw.stack(plain, StrategySpec(name="u"), cached=False)) == [
        "ContextWindowLayer", "BudgetLayer", "RetryLayer", "ScrubLayer", "BreakerLayer", "ScriptedBackend"]
    assert "TimeoutLayer" in layers(gw.stack(plain, StrategySpec(name="u"), timed=True))

    class Preparing(ScriptedBackend):  # a backend with a prepare hook (the remote one imports litellm)
        async def prepare(self, spec: Any) -> None:
            return None

    gw = Gateway(registry(plain), settings=Settings(), backends={"scripted": Preparing()})
    assert layers(gw.stack(plain, StrategySpec(name="u"), cached=False)) == [
        "ContextWindowLayer", "PrepareLayer", "BudgetLayer", "RetryLayer", "ScrubLayer", "BreakerLayer",
        "Preparing"]
    assert not ScriptedBackend().prepares() and Preparing().prepares()


async def test_a_run_s_gateway_is_freed_without_the_garbage_collector() -> None:
    """No reference cycle through the gateway, its layers and breakers: a gateway whose calls
    all succeeded goes when its last reference does, and the collector stays out of runs."""
    import gc
    import weakref

    gc.collect()
    gc.disable()
    try:
        gw = Gateway(registry(scripted("m")), settings=Settings(), backends={"scripted": ScriptedBackend()})
        await gw.generate(GenerationRequest.from_prompt("hi"))
        assert gw.breaker_state("scripted:m") == "closed"
        gone = weakref.ref(gw)
        del gw
        assert gone() is None
    finally:
        gc.enable()


async def test_layers_are_built_once_per_model_and_strategy(monkeypatch: pytest.MonkeyPatch) -> None:
    gw = Gateway(registry(scripted("m")), settings=Settings(), backends={"scripted": ScriptedBackend()})
    built: list[str] = []
    real = gw.stack
    monkeypatch.setattr(gw, "stack", lambda spec, *a, **k: built.append(spec.key) or real(spec, *a, **k))
    for _ in range(3):
        await gw.generate(GenerationRequest.from_prompt("hi"))
    assert built == ["m"]


async def test_a_new_budget_holds_from_the_next_call() -> None:
    priced = scripted("m", cost_profile=CostProfile(input_per_million=1e6, output_per_million=0))
    gw = Gateway(registry(priced), settings=Settings(), backends={"scripted": ScriptedBackend()})
    await gw.generate(GenerationRequest.from_prompt("hi"))
    gw.budget = Budget(0.5)  # as the run service does for --max-cost
    with pytest.raises(BudgetExceeded):
        await gw.generate(GenerationRequest.from_prompt("hi"))


async def test_a_gateway_with_its_own_budget_shares_backends_and_breakers() -> None:
    priced = scripted("m", cost_profile=CostProfile(input_per_million=1e6, output_per_million=0))
    backend = ScriptedBackend()
    shared = Gateway(registry(priced), settings=Settings(), backends={"scripted": backend})
    limited = shared.with_budget(Budget(0.5))
    with pytest.raises(BudgetExceeded):  # its own budget
        await limited.generate(GenerationRequest.from_prompt("hi"))
    await shared.generate(GenerationRequest.from_prompt("hi"))  # the shared one's is untouched
    assert limited.backend("scripted") is backend is shared.backend("scripted")
    assert limited.breaker(priced.endpoint) is shared.breaker(priced.endpoint)


async def test_the_result_carries_every_attempt_and_event_of_the_request() -> None:
    backend = ScriptedBackend(rules=[{"model": "a", "fail": "transient"}])
    gw = Gateway(registry(scripted("a"), scripted("b"), limits=Limits(max_retries=1), fallbacks=["b"]),
                 settings=Settings(), backends={"scripted": backend}, retry_base_s=0.001)
    heard: list[str] = []
    result = await gw.generate(GenerationRequest.from_prompt("hi"), on_event=lambda e: heard.append(e.kind))
    assert result.model_resolved == "b" and result.text == "[b] hi" and result.strategy == "s"
    assert [(a.model_key, a.ok) for a in result.attempts] == [("a", False), ("a", False), ("b", True)]
    assert [e.kind for e in result.events] == heard == ["retry", "fallback"]
    assert [e.kind for e in gw.events] == ["retry", "fallback"]
    assert result.timings.total_time >= sum(a.seconds for a in result.attempts)


async def test_every_model_failing_is_one_line_and_a_lone_model_keeps_its_error() -> None:
    backend = ScriptedBackend(rules=[{"fail": "fatal"}])
    gw = Gateway(registry(scripted("a"), scripted("b"), fallbacks=["b"]), settings=Settings(),
                 backends={"scripted": backend})
    with pytest.raises(ProviderError) as caught:
        await gw.generate(GenerationRequest.from_prompt("hi"))
    assert caught.value.line() == ("every model failed: a: scripted fatal failure for a; b: scripted fatal "
                                   "failure for b (see the run record for each attempt)")
    with pytest.raises(ProviderError) as caught:
        await gw.generate(GenerationRequest.from_prompt("hi", model_key="b", strategy=None))
    assert caught.value.line() == "model 'b': scripted fatal failure for b" and not caught.value.transient


async def test_a_cache_hit_is_free_and_says_so(tmp_path: Any) -> None:
    backend = ScriptedBackend()
    gw = Gateway(registry(scripted("m", cost_profile=CostProfile(input_per_million=1.0)),
                          sampling=Sampling(temperature=0)),
                 settings=Settings(), backends={"scripted": backend}, cache=ResponseCache(tmp_path))
    first = await gw.generate(GenerationRequest.from_prompt("hi"))
    again = await gw.generate(GenerationRequest.from_prompt("hi"))
    assert not first.cache_hit and first.usage.cost_usd > 0 and len(backend.calls) == 1
    assert again.cache_hit and again.usage.cost_usd == 0.0 and again.text == first.text
    assert again.model_resolved == "m" and [a.ok for a in again.attempts] == [True]


# ---------------------------------------------------------------------------------------------
# Backends and plugins


class OldStyle:
    """A plugin written before the Backend base class: hooks found by name, a sync estimate."""

    name = "old"

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.closed = False

    async def generate(self, call: BackendCall, on_token: Any = None) -> Reply:
        self.calls.append(call.model_key)
        return Reply(text="old answer")

    async def prepare(self, spec: Any) -> None:
        self.calls.append(f"prepare {spec.key}")

    def estimate_cost(self, spec: Any, prompt_tokens: int, max_tokens: int) -> float:
        return 0.75

    async def aclose(self) -> None:
        self.closed = True


async def test_an_old_style_plugin_is_wrapped_once_and_its_hooks_still_run() -> None:
    plugin = OldStyle()
    gw = Gateway(registry(ModelSpec(key="m", provider="old", context_window=1000)), settings=Settings(),
                 backends={"old": plugin}, budget=Budget(1.0))
    backend = gw.backend("old")
    assert isinstance(backend, PluginBackend) and backend.plugin is plugin and backend.name == "old"
    assert backend.calls is plugin.calls  # other attributes read through
    assert (await gw.generate(GenerationRequest.from_prompt("hi"))).text == "old answer"
    assert plugin.calls == ["prepare m", "m"]
    gw.budget = Budget(0.5)  # the plugin's estimate (0.75) does not fit
    with pytest.raises(BudgetExceeded, match=r"up to \$0.750000"):
        await gw.generate(GenerationRequest.from_prompt("hi"))
    info = await backend.check(ModelSpec(key="m", provider="old", context_window=1000))
    assert info["text"] == "old answer" and info["source"] == "unknown"
    await gw.aclose()
    assert plugin.closed


async def test_a_backend_subclass_is_used_as_it_is_and_has_default_hooks() -> None:
    backend = ScriptedBackend()
    assert as_backend(backend) is backend
    the_spec = scripted("m")
    await backend.prepare(the_spec)
    assert await backend.estimate_cost(the_spec, 10, 10) == 0.0
    info = await backend.check(the_spec)
    assert info["text"] == "[m] Say OK." and info["tokens"] == 3 and info["source"] == "scripted"
    await backend.aclose()
    with pytest.raises(TypeError):
        Backend()  # type: ignore[abstract]
