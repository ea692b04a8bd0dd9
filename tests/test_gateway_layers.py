"""Each gateway layer alone, around a scripted inner model (and the breaker's state machine on
its own). No real waiting: retries take an injected ``sleep``, the breaker's reset timeout passes
by moving pybreaker's ``opened_at`` back, and the rate limit and timeout run on an event loop
whose clock jumps to its next timer instead of sleeping (:class:`FakeClockLoop`)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from deliberate.errors import BudgetExceeded, CapacityError, InputError, ProviderError, ValidationError
from deliberate.gateway.contracts import (
    Attempt,
    BackendCall,
    CallContext,
    Constraints,
    GatewayEvent,
    GenerationRequest,
    Message,
    Reply,
    Sampling,
)
from deliberate.gateway.layers import (
    Breaker,
    BreakerLayer,
    Budget,
    BudgetLayer,
    CacheLayer,
    ContextWindowLayer,
    EveryModelFailed,
    FallbackLayer,
    PrepareLayer,
    RateLimit,
    RateLimitLayer,
    ResponseCache,
    RetryLayer,
    ScrubLayer,
    TimeoutLayer,
)
from deliberate.registry import CostProfile, ModelSpec

# ---------------------------------------------------------------------------------------------
# The scripted inner model and fakes


class Inner:
    """A scripted model: each call takes the next outcome (the last one repeats): a Reply to
    answer with, an exception to raise, or an async function of (call, on_token)."""

    def __init__(self, *outcomes: Any) -> None:
        self.outcomes = list(outcomes) or [Reply(text="ok")]
        self.calls: list[BackendCall] = []

    async def generate(self, call: BackendCall, on_token: Any = None) -> Reply:
        self.calls.append(call)
        outcome = self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]
        if isinstance(outcome, BaseException):
            raise outcome
        if callable(outcome):
            reply: Reply = await outcome(call, on_token)
            return reply
        if on_token is not None:
            on_token(outcome.text)
        return Reply(**{f: getattr(outcome, f) for f in Reply.__slots__})  # a fresh one per call


def spec(key: str = "m", **kw: Any) -> ModelSpec:
    return ModelSpec(key=key, provider="scripted", context_window=kw.pop("context_window", 1000), **kw)


def make_call(the_spec: ModelSpec | None = None, prompt: str = "hi", max_tokens: int = 10,
              sampling: Sampling | None = None, **context: Any) -> BackendCall:
    the_spec = the_spec or spec()
    return BackendCall(model_key=the_spec.key, spec=the_spec, messages=[Message(role="user", content=prompt)],
                       sampling=sampling or Sampling(temperature=0), max_tokens=max_tokens,
                       context=CallContext(**context))


class Sleeps:
    """A fake ``asyncio.sleep`` for the retry layer: remembers each delay, returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


class FakeClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock jumps to its next timer instead of sleeping: aiolimiter's pacing
    and ``asyncio.timeout`` run at once, and ``time()`` says when each thing was due."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        select = self._selector.select  # type: ignore[attr-defined]

        def jump(timeout: float | None = None) -> Any:
            if timeout is None:
                raise RuntimeError("the test deadlocked: nothing is scheduled")
            self.now += timeout
            return select(0)

        self._selector.select = jump  # type: ignore[attr-defined]

    def time(self) -> float:
        return self.now


def on_fake_clock(main: Callable[[FakeClockLoop], Awaitable[Any]]) -> Any:
    loop = FakeClockLoop()
    try:
        return loop.run_until_complete(main(loop))
    finally:
        loop.close()


def transient(message: str = "500 from the server", retry_after: float | None = None) -> ProviderError:
    return ProviderError(message, transient=True, retry_after=retry_after)


# ---------------------------------------------------------------------------------------------
# Breaker: pybreaker stays the state machine, including for the calls that take the fast path
# (closed, no failures counted), which only skip bookkeeping that would change nothing.


def breaker(fail_max: int = 3) -> tuple[Breaker, list[GatewayEvent]]:
    events: list[GatewayEvent] = []
    return Breaker("test:endpoint", fail_max, 60, events.append), events


def reset_timeout_passes(b: Breaker) -> None:
    """pybreaker half-opens once now is past ``opened_at`` + reset timeout: move ``opened_at``."""
    storage = b.cb._state_storage
    assert storage.opened_at is not None
    storage.opened_at -= timedelta(seconds=b.cb.reset_timeout + 1)


async def ok() -> str:
    return "ok"


async def outage() -> Any:
    raise ProviderError("500 from the server", transient=True)


async def bad_key() -> Any:
    raise ProviderError("401: bad key", trips_breaker=False)


async def fail(b: Breaker, make: Any = outage) -> None:
    with pytest.raises(ProviderError):
        await b.call(make)


async def test_consecutive_failures_open_it_and_it_refuses_calls() -> None:
    b, events = breaker(3)
    for _ in range(3):
        await fail(b)
    assert b.state == "open"
    assert [e.kind for e in events] == ["breaker_open"]
    with pytest.raises(ProviderError, match="circuit breaker for test:endpoint is open"):
        await b.call(ok)


async def test_a_success_between_failures_resets_the_count() -> None:
    b, _ = breaker(3)
    await fail(b)
    await fail(b)
    assert b.cb.fail_counter == 2
    assert await b.call(ok) == "ok"
    assert b.cb.fail_counter == 0
    await fail(b)
    await fail(b)
    assert b.state == "closed"


async def test_a_call_started_before_a_failure_still_resets_the_count_when_it_succeeds() -> None:
    b, _ = breaker(3)
    gate = asyncio.Event()

    async def slow() -> str:
        await gate.wait()
        return "late"

    started = asyncio.create_task(b.call(slow))  # closed and clean: the fast path
    await asyncio.sleep(0)
    await fail(b)
    assert b.cb.fail_counter == 1
    gate.set()
    assert await started == "late"
    assert b.cb.fail_counter == 0


async def test_bad_requests_and_cancellations_do_not_count() -> None:
    b, events = breaker(1)
    await fail(b, bad_key)
    task = asyncio.create_task(b.call(lambda: asyncio.sleep(10)))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert b.state == "closed" and b.cb.fail_counter == 0 and events == []
    await fail(b)
    assert b.state == "open"


async def test_breaker_layer_opens_refuses_without_calling_then_half_opens_and_closes() -> None:
    b, events = breaker(2)
    inner = Inner(transient(), transient(), Reply(text="back"))
    layer = BreakerLayer(inner, b)
    for _ in range(2):
        with pytest.raises(ProviderError, match="500"):
            await layer.generate(make_call())
    with pytest.raises(ProviderError, match="is open") as refused:
        await layer.generate(make_call())
    assert len(inner.calls) == 2, "an open breaker refuses without calling"
    assert not refused.value.transient and not refused.value.trips_breaker
    reset_timeout_passes(b)
    assert (await layer.generate(make_call())).text == "back"  # the half-open probe succeeds
    assert [e.kind for e in events] == ["breaker_open", "breaker_half_open", "breaker_closed"]
    assert all(e.endpoint == "test:endpoint" for e in events) and b.state == "closed"


async def test_breaker_layer_reopens_when_the_half_open_probe_fails() -> None:
    b, events = breaker(1)
    layer = BreakerLayer(Inner(transient()), b)
    with pytest.raises(ProviderError):
        await layer.generate(make_call())
    reset_timeout_passes(b)
    with pytest.raises(ProviderError, match="500"):
        await layer.generate(make_call())
    assert [e.kind for e in events] == ["breaker_open", "breaker_half_open", "breaker_open"]
    assert b.state == "open"


# ---------------------------------------------------------------------------------------------
# Retry


async def test_transient_failures_are_retried_with_backoff_and_recorded() -> None:
    sleeps, events = Sleeps(), []
    inner = Inner(transient(), transient("503 busy"), Reply(text="third time"))
    layer = RetryLayer(inner, max_retries=2, base_s=0.5, sleep=sleeps, rng=random.Random(7))
    call = make_call(listeners=(events.append,))
    assert (await layer.generate(call)).text == "third time"
    assert len(inner.calls) == 3
    assert [(a.ok, a.error_type) for a in call.context.attempts] == [
        (False, "ProviderError"), (False, "ProviderError"), (True, None)]
    assert "503 busy" in (call.context.attempts[1].error or "")
    # full jitter: the n-th wait is drawn from [0, base * 2**n]
    expected = random.Random(7)
    assert sleeps.delays == [expected.uniform(0, 0.5), expected.uniform(0, 1.0)]
    assert [e.kind for e in call.context.events] == ["retry", "retry"] and events == call.context.events
    assert call.context.events[0].detail == f"attempt 1 failed (500 from the server); retrying in {sleeps.delays[0]:.2f}s"


async def test_retries_stop_at_max_retries_and_the_last_error_is_raised() -> None:
    sleeps = Sleeps()
    inner = Inner(transient("first"), transient("second"), transient("third"))
    with pytest.raises(ProviderError, match="second"):
        await RetryLayer(inner, max_retries=1, sleep=sleeps).generate(call := make_call())
    assert len(inner.calls) == 2 and len(sleeps.delays) == 1
    assert [a.ok for a in call.context.attempts] == [False, False]


@pytest.mark.parametrize("error", [ProviderError("401 bad key"), CapacityError("no room"),
                                   ValidationError("bad output")], ids=["fatal", "capacity", "invalid"])
async def test_errors_that_are_not_transient_are_not_retried(error: Exception) -> None:
    sleeps = Sleeps()
    inner = Inner(error)
    with pytest.raises(type(error)):
        await RetryLayer(inner, max_retries=3, sleep=sleeps).generate(call := make_call())
    assert len(inner.calls) == 1 and sleeps.delays == [] and call.context.events == []
    assert call.context.attempts[0].error_type == type(error).__name__


async def test_retry_after_wins_over_a_shorter_backoff() -> None:
    sleeps = Sleeps()
    inner = Inner(transient("rate limited", retry_after=7.0), Reply(text="ok"))
    call = make_call()
    await RetryLayer(inner, max_retries=1, base_s=0.01, sleep=sleeps).generate(call)
    assert sleeps.delays == [7.0]
    assert call.context.events[0].detail.endswith("retrying in 7.00s")


async def test_no_retry_once_the_endpoint_gives_up() -> None:
    sleeps = Sleeps()
    inner = Inner(transient())
    with pytest.raises(ProviderError):
        await RetryLayer(inner, max_retries=3, sleep=sleeps, give_up=lambda: True).generate(make_call())
    assert len(inner.calls) == 1 and sleeps.delays == []


# ---------------------------------------------------------------------------------------------
# Fallback


def candidates(*models: tuple[str, Inner]) -> tuple[FallbackLayer, dict[str, ModelSpec]]:
    specs = {key: spec(key) for key, _ in models}
    inners = dict(models)
    return FallbackLayer([k for k, _ in models], lambda key: (specs[key], inners[key])), specs


async def test_fallbacks_are_tried_in_order_with_an_event_each() -> None:
    a, b, c = Inner(transient("a is down")), Inner(CapacityError("b has no room")), Inner(Reply(text="from c"))
    layer, specs = candidates(("a", a), ("b", b), ("c", c))
    call = make_call(specs["a"])
    assert (await layer.generate(call)).text == "from c"
    assert [len(m.calls) for m in (a, b, c)] == [1, 1, 1]
    assert (c.calls[0].model_key, c.calls[0].spec) == ("c", specs["c"])
    assert [(e.kind, e.model_key, e.endpoint) for e in call.context.events] == [
        ("fallback", "b", "scripted:b"), ("fallback", "c", "scripted:c")]
    assert call.context.events[0].detail == "after: a: a is down"


async def test_when_every_model_fails_one_error_lists_each() -> None:
    layer, specs = candidates(("a", Inner(transient("a is down"))), ("b", Inner(ProviderError("b: bad key"))))
    with pytest.raises(EveryModelFailed) as caught:
        await layer.generate(make_call(specs["a"]))
    err = caught.value
    assert isinstance(err, ProviderError)
    assert err.line() == ("every model failed: a: a is down; b: b: bad key (see the run record for each attempt)")
    assert [(k, e.message) for k, e in err.failures] == [("a", "a is down"), ("b", "b: bad key")]
    # the same failures as an exception group, for `except*`
    assert err.__cause__ is err.group and [e.message for e in err.group.exceptions] == ["a is down", "b: bad key"]
    try:
        raise err.group
    except* ProviderError as matched:
        assert len(matched.exceptions) == 2


async def test_a_lone_candidate_raises_its_own_error() -> None:
    original = transient("down", retry_after=3.0)
    layer, specs = candidates(("a", Inner(original)))
    with pytest.raises(ProviderError) as caught:
        await layer.generate(make_call(specs["a"]))
    assert caught.value is original and caught.value.transient and caught.value.retry_after == 3.0
    assert caught.value.where == "model 'a'"


async def test_a_budget_refusal_is_not_a_reason_to_fall_back() -> None:
    spare = Inner()
    layer, specs = candidates(("a", Inner(BudgetExceeded("over"))), ("b", spare))
    with pytest.raises(BudgetExceeded):
        await layer.generate(make_call(specs["a"]))
    assert spare.calls == []


async def test_a_fallback_is_resolved_only_when_reached() -> None:
    asked: list[str] = []

    def stack_of(key: str) -> tuple[ModelSpec, Inner]:
        asked.append(key)
        if key != "a":
            raise AssertionError("resolved a fallback the primary did not need")
        return spec("a"), Inner()

    await FallbackLayer(["a", "ghost"], stack_of).generate(make_call(spec("a")))
    assert asked == ["a"]


# ---------------------------------------------------------------------------------------------
# Context window


async def test_a_prompt_that_cannot_fit_is_refused_before_the_model() -> None:
    inner = Inner()
    layer = ContextWindowLayer(inner)
    small = spec(context_window=100)
    with pytest.raises(CapacityError, match=r"prompt \(~100 tokens\) \+ max_tokens 10 exceed the context window"):
        await layer.generate(make_call(small, prompt="x" * 400, max_tokens=10))
    assert inner.calls == []
    await layer.generate(make_call(small, prompt="x" * 300, max_tokens=10))  # 75 + 10 fits
    assert len(inner.calls) == 1


async def test_a_model_over_the_requests_vram_is_refused() -> None:
    inner = Inner()
    with pytest.raises(CapacityError, match="needs 8.0 GB VRAM, the request allows 4.0 GB"):
        await ContextWindowLayer(inner).generate(
            make_call(spec(min_vram_gb=8), constraints=Constraints(max_vram_gb=4)))
    assert inner.calls == []


# ---------------------------------------------------------------------------------------------
# Response cache


async def test_a_hit_answers_from_disk_without_prepare_or_the_model(tmp_path: Path) -> None:
    inner, prepared = Inner(Reply(text="cached answer", prompt_tokens=3, completion_tokens=2, cost_usd=0.5)), []

    async def prepare(the_spec: Any) -> None:
        prepared.append(the_spec.key)

    layer = CacheLayer(PrepareLayer(inner, prepare), ResponseCache(tmp_path))
    first = make_call(strategy="s")
    assert (await layer.generate(first)).text == "cached answer" and first.context.cached is None
    assert len(inner.calls) == 1 and prepared == ["m"]

    again, tokens = make_call(strategy="s"), []
    reply = await layer.generate(again, on_token=tokens.append)
    assert reply.text == "cached answer" and tokens == ["cached answer"]
    assert len(inner.calls) == 1 and prepared == ["m"], "a hit prepares and calls nothing"
    hit = again.context.cached
    assert hit is not None and hit.cache_hit and hit.usage.cost_usd == 0.0 and hit.text == "cached answer"
    assert (hit.usage.prompt_tokens, hit.tokens_generated, hit.strategy) == (3, 2, "s")
    assert again.context.attempts == [Attempt(model_key="m", ok=True, seconds=0.0)] == hit.attempts


async def test_sampled_calls_are_never_cached(tmp_path: Path) -> None:
    inner = Inner()
    layer = CacheLayer(inner, ResponseCache(tmp_path))
    for _ in range(2):
        await layer.generate(make_call(sampling=Sampling(temperature=0.7)))
    assert len(inner.calls) == 2 and ResponseCache(tmp_path).entries() == []
    await layer.generate(make_call(sampling=Sampling(temperature=0.7, seed=1)))  # seeded: deterministic
    assert len(ResponseCache(tmp_path).entries()) == 1


async def test_the_key_holds_the_prompt_and_sampling_but_not_the_model_key(tmp_path: Path) -> None:
    base = CacheLayer.key(make_call())
    assert CacheLayer.key(make_call(prompt="other")) != base
    assert CacheLayer.key(make_call(sampling=Sampling(temperature=0, top_p=0.5))) != base
    assert CacheLayer.key(make_call(max_tokens=11)) != base
    assert CacheLayer.key(make_call(spec("another-key"))) == base  # the same model under two keys


async def test_an_answer_over_budget_is_still_cached(tmp_path: Path) -> None:
    store = ResponseCache(tmp_path)
    layer = CacheLayer(BudgetLayer(Inner(Reply(text="pricey", cost_usd=2.0)), Budget(1.0), no_estimate), store)
    with pytest.raises(BudgetExceeded):
        await layer.generate(make_call())
    assert [store.get(p.stem).text for p in store.entries()] == ["pricey"]  # type: ignore[union-attr]


# ---------------------------------------------------------------------------------------------
# Budget


async def no_estimate(the_spec: Any, prompt_tokens: int, max_tokens: int) -> float:
    return 0.0


async def test_the_estimate_is_reserved_during_the_call_and_the_price_charged_after() -> None:
    budget = Budget(1.0)
    seen: list[float] = []

    async def answer(call: BackendCall, on_token: Any) -> Reply:
        seen.append(budget.reserved_usd)
        return Reply(text="ok", prompt_tokens=1000, completion_tokens=100)

    priced = spec(cost_profile=CostProfile(input_per_million=100.0, output_per_million=1000.0))
    reply = await BudgetLayer(Inner(answer), budget, no_estimate).generate(make_call(priced, prompt="x" * 400,
                                                                                      max_tokens=100))
    assert seen == [pytest.approx(100 * 100e-6 + 100 * 1000e-6)]  # prompt ~100 tokens, max_tokens 100
    assert reply.cost_usd == pytest.approx(1000 * 100e-6 + 100 * 1000e-6)  # priced from the profile
    assert budget.spent_usd == pytest.approx(reply.cost_usd) and budget.reserved_usd == 0.0


async def test_a_call_whose_estimate_does_not_fit_is_refused_before_it_runs() -> None:
    inner = Inner()
    budget = Budget(0.01)
    budget.spent_usd = 0.009

    async def estimate(the_spec: Any, prompt_tokens: int, max_tokens: int) -> float:
        return 0.002  # the backend's estimate: the model has no cost_profile

    with pytest.raises(BudgetExceeded, match="a call to m would cost up to"):
        await BudgetLayer(inner, budget, estimate).generate(make_call())
    assert inner.calls == [] and budget.reserved_usd == 0.0


async def test_an_answer_that_goes_over_is_charged_and_carried_by_the_error() -> None:
    budget = Budget(1.0)
    with pytest.raises(BudgetExceeded, match="over the") as caught:
        await BudgetLayer(Inner(Reply(text="pricey", cost_usd=1.5)), budget, no_estimate).generate(make_call())
    result = caught.value.result  # type: ignore[attr-defined]
    assert result.text == "pricey" and result.usage.cost_usd == 1.5
    assert budget.spent_usd == 1.5 and budget.reserved_usd == 0.0


async def test_without_a_limit_nothing_is_estimated_but_spending_is_counted() -> None:
    async def estimate(the_spec: Any, prompt_tokens: int, max_tokens: int) -> float:
        raise AssertionError("estimated without a budget")

    budget = Budget(None)
    await BudgetLayer(Inner(Reply(text="ok", cost_usd=0.25)), budget, estimate).generate(make_call())
    assert budget.spent_usd == 0.25


# ---------------------------------------------------------------------------------------------
# Scrubbing


SECRET = "sk-layer-test-4b1d9e7f02"


async def test_a_secret_in_a_backend_error_is_scrubbed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAYER_TEST_TOKEN", SECRET)
    with pytest.raises(ProviderError) as caught:
        await ScrubLayer(Inner(transient(f"upstream rejected {SECRET}")), "scripted").generate(make_call())
    assert SECRET not in caught.value.line() and "upstream rejected ***" in caught.value.line()
    assert caught.value.transient  # only the words change


async def test_a_stray_exception_becomes_a_scrubbed_provider_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAYER_TEST_TOKEN", SECRET)
    bug = RuntimeError(f"client built with {SECRET}")
    with pytest.raises(ProviderError) as caught:
        await ScrubLayer(Inner(bug), "scripted").generate(make_call())
    assert caught.value.line() == "backend scripted: RuntimeError: client built with ***"
    assert not caught.value.transient and caught.value.__cause__ is bug


async def test_input_errors_pass_and_a_reply_without_text_is_refused() -> None:
    with pytest.raises(InputError, match="unknown model"):
        await ScrubLayer(Inner(InputError("unknown model")), "scripted").generate(make_call())

    async def not_a_reply(call: BackendCall, on_token: Any) -> Any:
        return {"text": "a dict"}

    with pytest.raises(ProviderError, match="backend scripted answered dict, not a Reply with text"):
        await ScrubLayer(Inner(not_a_reply), "scripted").generate(make_call())


async def test_a_lone_surrogate_in_a_reply_becomes_a_replacement_character() -> None:
    # a broken decode upstream; left in, no record, log or JSON response could hold the text
    reply = await ScrubLayer(Inner(Reply(text="ok \ud800 then \udfff")), "scripted").generate(make_call())
    assert reply.text == "ok \ufffd then \ufffd"
    reply.text.encode("utf-8")  # raises if one were left
    fine = Reply(text="plain \U0001f600")
    assert (await ScrubLayer(Inner(fine), "scripted").generate(make_call())).text == "plain \U0001f600"


async def test_a_backend_that_answers_no_reply_is_a_provider_error() -> None:
    from deliberate.config import Settings
    from deliberate.gateway import Gateway, GenerationRequest
    from deliberate.registry import Limits, Registry, StrategySpec

    class Broken:  # an old-style plugin: no Backend base class
        name = "broken"

        async def generate(self, call: Any, on_token: Any = None) -> Any:
            return {"text": "a dict is not a Reply"}

    reg = Registry({"m": ModelSpec(key="m", provider="broken", context_window=1000)},
                   {"s": StrategySpec(name="s", limits=Limits(max_retries=0))}, default_model="m",
                   default_strategy="s")
    gw = Gateway(reg, settings=Settings(), backends={"broken": Broken()})
    with pytest.raises(ProviderError, match="backend broken answered dict, not a Reply"):
        await gw.generate(GenerationRequest.from_prompt("hi"))


# ---------------------------------------------------------------------------------------------
# Rate limit and timeout, on a fake clock


def test_requests_per_minute_are_paced_on_the_limiters_clock() -> None:
    async def main(loop: FakeClockLoop) -> list[float]:
        arrived: list[float] = []

        async def answer(call: BackendCall, on_token: Any) -> Reply:
            arrived.append(loop.time())
            return Reply(text="ok")

        layer = RateLimitLayer(Inner(answer), RateLimit(rpm=2, max_concurrent=None))
        await asyncio.gather(*(layer.generate(make_call()) for _ in range(4)))
        return arrived

    arrived = on_fake_clock(main)
    # a burst of 2, then one every 30 s (2 a minute)
    assert arrived[:2] == [0.0, 0.0]
    assert arrived[2] == pytest.approx(30.0, abs=0.1) and arrived[3] == pytest.approx(60.0, abs=0.1)


async def test_max_concurrent_caps_calls_in_flight() -> None:
    gate, in_flight, peak = asyncio.Event(), [0], [0]

    async def answer(call: BackendCall, on_token: Any) -> Reply:
        in_flight[0] += 1
        peak[0] = max(peak[0], in_flight[0])
        await gate.wait()
        in_flight[0] -= 1
        return Reply(text="ok")

    limit = RateLimit(rpm=None, max_concurrent=2)
    layer = RateLimitLayer(Inner(answer), limit)
    tasks = [asyncio.create_task(layer.generate(make_call())) for _ in range(5)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert in_flight[0] == 2
    gate.set()
    await asyncio.gather(*tasks)
    assert peak[0] == 2 and limit.peak == 2 and limit.in_flight == 0


def test_a_slow_answer_times_out_as_a_transient_error_and_the_shorter_limit_wins() -> None:
    async def never(call: BackendCall, on_token: Any) -> Reply:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def main(loop: FakeClockLoop) -> list[tuple[str, bool, float]]:
        out = []
        for layer, call in ((TimeoutLayer(Inner(never), 30.0), make_call()),
                            (TimeoutLayer(Inner(never), 30.0), make_call(constraints=Constraints(latency_budget_s=5))),
                            (TimeoutLayer(Inner(never), None), make_call(constraints=Constraints(latency_budget_s=2)))):
            started = loop.time()
            with pytest.raises(ProviderError) as caught:
                await layer.generate(call)
            out.append((caught.value.message, caught.value.transient, loop.time() - started))
        return out

    assert on_fake_clock(main) == [("no answer from m within 30s", True, pytest.approx(30.0)),
                                   ("no answer from m within 5s", True, pytest.approx(5.0)),
                                   ("no answer from m within 2s", True, pytest.approx(2.0))]


async def test_without_any_timeout_the_call_passes_through() -> None:
    assert (await TimeoutLayer(Inner(Reply(text="in time")), None).generate(make_call())).text == "in time"


def test_checked_requests_and_messages_are_the_validated_ones() -> None:
    """The engine builds requests without validation (``checked``): each is equal to, dumps and
    copies like the one pydantic validates from the same values."""
    msgs = [Message.checked("system", "be brief"), Message.checked("user", "q")]
    assert msgs == [Message(role="system", content="be brief"), Message(role="user", content="q")]
    fields: dict[str, Any] = {"model_key": "m", "strategy": None, "max_tokens": 64, "temperature": 0.5,
                              "seed": 7, "context": {"step": "a", "branch": None}}
    checked = GenerationRequest.checked(msgs, **fields)
    validated = GenerationRequest(messages=msgs, **fields)
    assert checked == validated
    assert checked.model_dump() == validated.model_dump()
    assert checked.model_dump_json() == validated.model_dump_json()
    assert checked.model_fields_set == validated.model_fields_set
    assert checked.model_dump(exclude_unset=True) == validated.model_dump(exclude_unset=True)
    assert repr(checked) == repr(validated)
    assert checked.model_copy(update={"seed": 8}).seed == 8 and checked.seed == 7
    assert checked.prompt == "q"
