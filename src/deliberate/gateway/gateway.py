"""The gateway: one ``generate`` for every model, local or remote.

It resolves the model and strategy, checks constraints and the context window, and calls the
backend through the layers of :mod:`deliberate.gateway.layers`: response cache, cost budget,
per-endpoint circuit breaker and rate limit, timeout, retries with backoff, then the strategy's
fallbacks. It knows no flows.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from importlib.metadata import entry_points
from typing import Any

from ..config import Settings, get_settings, scrub
from ..errors import (
    BudgetExceeded,
    CapacityError,
    DeliberateError,
    InputError,
    ProviderError,
    RegistryError,
    ValidationError,
)
from ..registry import ModelSpec, Registry, StrategySpec
from .contracts import (
    Attempt,
    Backend,
    BackendCall,
    EventCallback,
    GatewayEvent,
    GenerationRequest,
    GenerationResult,
    Sampling,
    Timings,
    TokenCallback,
    Usage,
)
from .layers import Breaker, Budget, RateLimit, ResponseCache, backoff_delay

log = logging.getLogger("deliberate.gateway")
_UNKNOWN = object()


def estimate_tokens(text: str) -> int:
    """A cheap token estimate (about four characters a token) for limits and budgets."""
    return max(1, len(text) // 4)


def load_backend(provider: str, settings: Settings,
                 progress: Callable[[str], None] | None = None) -> Backend:
    """Create the backend registered under ``provider`` in the ``deliberate.backends`` entry
    point group. The built-in backends register there too, so the plugin path is always used.
    ``progress`` (human-readable loading messages) goes to backends that accept it."""
    import inspect

    for ep in entry_points(group="deliberate.backends"):
        if ep.name == provider:
            factory = ep.load()
            try:
                accepts = "progress" in inspect.signature(factory).parameters
            except (TypeError, ValueError):
                accepts = False
            if accepts and progress is not None:
                return factory(settings, progress=progress)  # type: ignore[no-any-return]
            return factory(settings)  # type: ignore[no-any-return]
    known = sorted({ep.name for ep in entry_points(group="deliberate.backends")})
    raise RegistryError(f"no backend for provider {provider!r}", hint=f"known: {', '.join(known)}")


class Gateway:
    """``await Gateway(registry).generate(GenerationRequest(...))``."""

    def __init__(
        self,
        registry: Registry | None = None,
        *,
        settings: Settings | None = None,
        backends: dict[str, Backend] | None = None,
        budget: Budget | None = None,
        cache: ResponseCache | None = None,
        retry_base_s: float = 0.5,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        self.registry = registry or Registry.load(self.settings)
        self._backends: dict[str, Backend] = dict(backends or {})
        self.budget = budget or Budget(None)
        self.cache = cache
        if self.cache is None and self.settings.cache:
            self.cache = ResponseCache(self.settings.response_cache())
        self.retry_base_s = retry_base_s
        self.progress = progress
        self._breakers: dict[str, Breaker] = {}
        self._limits: dict[str, RateLimit | None] = {}  # per endpoint, or endpoint|key
        self._limit_of: dict[str, RateLimit | None] = {}  # per model key
        self._listeners: list[EventCallback] = []
        self.events: list[GatewayEvent] = []

    # -- plumbing -----------------------------------------------------------------------------
    def subscribe(self, listener: EventCallback) -> Callable[[], None]:
        """Receive every gateway event (breaker changes, retries, fallbacks)."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _emit(self, event: GatewayEvent) -> None:
        """Endpoint-level events (breaker state): every subscriber hears them."""
        self.events.append(event)
        for listener in list(self._listeners):
            listener(event)

    def backend(self, provider: str) -> Backend:
        if provider not in self._backends:
            self._backends[provider] = load_backend(provider, self.settings, self.progress)
        return self._backends[provider]

    def breaker(self, endpoint: str) -> Breaker:
        if endpoint not in self._breakers:
            self._breakers[endpoint] = Breaker(
                endpoint,
                self.settings.circuit_breaker_max_failures,
                self.settings.circuit_breaker_timeout,
                self._emit,
            )
        return self._breakers[endpoint]

    def breaker_state(self, endpoint: str) -> str:
        """``closed``, ``open`` or ``half-open`` (``closed`` for an endpoint not used yet)."""
        b = self._breakers.get(endpoint)
        return b.state if b else "closed"

    def rate_limit(self, spec: ModelSpec) -> RateLimit | None:
        """The limiter a call to ``spec`` waits on, or None.

        A server of your own (``api_base``) has one limiter for all its models: the strictest
        ``rate_limit`` any of them declares, else ``DELIBERATE_REMOTE_RPM`` /
        ``DELIBERATE_REMOTE_MAX_CONCURRENT``. A hosted API (no ``api_base``) limits per model, as
        the providers do: the model's own ``rate_limit``, else those settings."""
        known = self._limit_of.get(spec.key, _UNKNOWN)  # every call asks: keep it a lookup
        if known is not _UNKNOWN:
            return known  # type: ignore[return-value]
        shared = spec.provider == "litellm" and bool(spec.api_base)
        slot = spec.endpoint if shared else f"{spec.endpoint}|{spec.key}"
        if slot in self._limits:
            self._limit_of[spec.key] = self._limits[slot]
            return self._limits[slot]
        if shared:
            models = {**self.registry.models, spec.key: spec}.values()
            declared = [m.rate_limit for m in models if m.rate_limit is not None and m.endpoint == spec.endpoint]
        else:
            declared = [spec.rate_limit] if spec.rate_limit is not None else []
        rpm: float | None = None
        cap: int | None = None
        if declared:
            rpm = min((d.rpm for d in declared if d.rpm), default=None)
            cap = min((d.max_concurrent for d in declared if d.max_concurrent), default=None)
        elif spec.provider == "litellm":
            rpm, cap = self.settings.remote_rpm, self.settings.remote_max_concurrent
        limiter = RateLimit(rpm, cap) if rpm or cap else None
        self._limits[slot] = self._limit_of[spec.key] = limiter
        return limiter

    # -- resolution ---------------------------------------------------------------------------
    def resolve(self, request: GenerationRequest) -> tuple[ModelSpec, StrategySpec, Sampling, int]:
        """The model, strategy, sampling and max_tokens a request resolves to."""
        spec = self.registry.model(request.model_key or self.registry.default_model)
        strategy = self.registry.strategy(
            request.strategy or spec.default_strategy or self.registry.default_strategy
        )
        update: dict[str, Any] = {}
        if request.temperature is not None:
            update["temperature"] = request.temperature
        if request.seed is not None:
            update["seed"] = request.seed
        sampling = strategy.sampling.model_copy(update=update) if update else strategy.sampling
        max_tokens = request.max_tokens or strategy.limits.max_tokens or self.settings.max_tokens_default
        return spec, strategy, sampling, max_tokens

    # -- the call -----------------------------------------------------------------------------
    async def generate(
        self,
        request: GenerationRequest,
        on_token: TokenCallback | None = None,
        on_event: EventCallback | None = None,
    ) -> GenerationResult:
        """Answer one request, walking the strategy's fallbacks when a model fails."""
        started = time.perf_counter()
        spec, strategy, sampling, max_tokens = self.resolve(request)
        candidates = [spec.key] + [k for k in strategy.fallbacks if k != spec.key]
        attempts: list[Attempt] = []
        events: list[GatewayEvent] = []

        def emit(ev: GatewayEvent) -> None:
            """This call's events (retries, fallbacks): in its result, to its caller, and in
            ``self.events``; not broadcast, since concurrent calls must not see each other's."""
            events.append(ev)
            self.events.append(ev)
            if on_event:
                on_event(ev)

        failures: list[str] = []
        errors: list[DeliberateError] = []
        for i, key in enumerate(candidates):
            model = self.registry.model(key)
            if i > 0:
                emit(GatewayEvent(kind="fallback", endpoint=model.endpoint, model_key=key,
                                  detail=f"after: {failures[-1]}", at=time.time()))
            try:
                return await self._call_model(
                    model, strategy, sampling, max_tokens, request, attempts, on_token, emit, events, started
                )
            except BudgetExceeded:
                raise
            except (ProviderError, CapacityError, ValidationError) as exc:
                failures.append(f"{key}: {exc.line()}")
                errors.append(exc)
                continue
        if len(errors) == 1:
            # keep the original (transient, retry_after, trips_breaker) so callers can tell a bad
            # key from an outage
            err = errors[0]
            err.where = err.where or f"model {candidates[0]!r}"
            raise err
        raise ProviderError(
            "every model failed: " + "; ".join(failures),
            hint="see the run record for each attempt",
        )

    async def _call_model(
        self,
        spec: ModelSpec,
        strategy: StrategySpec,
        sampling: Sampling,
        max_tokens: int,
        request: GenerationRequest,
        attempts: list[Attempt],
        on_token: TokenCallback | None,
        emit: EventCallback,
        events: list[GatewayEvent],
        started: float,
    ) -> GenerationResult:
        """One model of the request's candidates; the result carries the whole request's
        attempts, events and time (``started``: when the request began)."""
        prompt_text = "\n".join(m.content for m in request.messages)
        prompt_est = estimate_tokens(prompt_text)
        if prompt_est + max_tokens > spec.context_window:
            raise CapacityError(
                f"prompt (~{prompt_est} tokens) + max_tokens {max_tokens} exceed the context window "
                f"of {spec.key} ({spec.context_window})",
                hint="shorten the inputs, lower max_tokens or pick a model with a larger window",
            )
        limit = request.constraints.max_vram_gb
        if limit is not None and spec.min_vram_gb and spec.min_vram_gb > limit:
            raise CapacityError(f"{spec.key} needs {spec.min_vram_gb} GB VRAM, the request allows {limit} GB")

        backend = self.backend(spec.provider)
        call = BackendCall(model_key=spec.key, spec=spec, messages=request.messages,
                           sampling=sampling, max_tokens=max_tokens, timeout_s=strategy.limits.timeout_s)

        cache_key = None
        if self.cache is not None and sampling.deterministic:
            identity = spec.model_dump(include={"provider", "source", "litellm_model", "api_base",
                                                "quantization", "dtype"})
            cache_key = ResponseCache.key({"model": identity, "messages": [m.model_dump() for m in request.messages],
                                           "sampling": sampling.model_dump(), "max_tokens": max_tokens})
            hit = self.cache.get(cache_key)
            if hit is not None:
                attempts.append(Attempt(model_key=spec.key, ok=True, seconds=0.0))
                if on_token:
                    on_token(hit.text)
                return replace(hit, cache_hit=True, usage=replace(hit.usage, cost_usd=0.0), attempts=attempts,
                               events=events, strategy=strategy.name,
                               timings=replace(hit.timings, total_time=time.perf_counter() - started))

        prepare = getattr(backend, "prepare", None)
        if prepare is not None:  # one-time set-up (litellm's import): outside the timeout and breaker
            await prepare(spec)
        reserved = 0.0
        if self.budget.max_cost_usd is not None:
            estimate = await self._estimate_cost(backend, spec, prompt_est, max_tokens)
            self.budget.check(estimate, f"a call to {spec.key}")
            reserved = estimate
        try:
            return await self._attempts(spec, strategy, sampling, max_tokens, call, backend, attempts, emit,
                                        on_token, request, cache_key, events, started)
        finally:
            self.budget.release(reserved)

    async def _attempts(self, spec: ModelSpec, strategy: StrategySpec, sampling: Sampling, max_tokens: int,
                        call: BackendCall, backend: Backend, attempts: list[Attempt], emit: EventCallback,
                        on_token: TokenCallback | None, request: GenerationRequest,
                        cache_key: str | None, events: list[GatewayEvent], started: float) -> GenerationResult:

        breaker = self.breaker(spec.endpoint)
        rate = self.rate_limit(spec)
        timeout = strategy.limits.timeout_s
        request_timeout = request.constraints.latency_budget_s
        if request_timeout is not None:
            timeout = min(timeout or request_timeout, request_timeout)

        async def inner() -> Any:
            if timeout is None:
                return await backend.generate(call, on_token)
            try:
                async with asyncio.timeout(timeout):  # unlike wait_for (3.11), no task of its own
                    return await backend.generate(call, on_token)
            except TimeoutError:
                raise ProviderError(f"no answer from {spec.key} within {timeout:g}s", transient=True) from None

        async def once() -> Any:
            if rate is None:
                return await breaker.call(inner)
            async with rate:
                return await breaker.call(inner)

        last: DeliberateError | None = None
        for attempt in range(strategy.limits.max_retries + 1):
            t0 = time.perf_counter()
            try:
                reply = await once()
            except (ProviderError, CapacityError, ValidationError) as exc:
                exc.message = scrub(exc.message)
                attempts.append(Attempt(model_key=spec.key, ok=False, error=exc.line(),
                                        error_type=type(exc).__name__, seconds=time.perf_counter() - t0))
                last = exc
                if isinstance(exc, ProviderError) and exc.transient and attempt < strategy.limits.max_retries \
                        and breaker.state == "closed":
                    delay = backoff_delay(attempt, self.retry_base_s, retry_after=exc.retry_after)
                    emit(GatewayEvent(kind="retry", endpoint=spec.endpoint, model_key=spec.key,
                                            detail=f"attempt {attempt + 1} failed ({exc.message}); "
                                                   f"retrying in {delay:.2f}s", at=time.time()))
                    await asyncio.sleep(delay)
                    continue
                raise
            except (InputError, asyncio.CancelledError):
                raise
            except Exception as exc:  # a backend bug: report it as a provider error, never a traceback
                err = ProviderError(scrub(f"{type(exc).__name__}: {exc}"), where=f"backend {backend.name}")
                attempts.append(Attempt(model_key=spec.key, ok=False, error=err.line(),
                                        error_type="ProviderError", seconds=time.perf_counter() - t0))
                raise err from exc
            elapsed = time.perf_counter() - t0
            if not isinstance(getattr(reply, "text", None), str):
                err = ProviderError(f"backend {backend.name} answered {type(reply).__name__}, not a Reply with text",
                                    where=f"backend {backend.name}")
                attempts.append(Attempt(model_key=spec.key, ok=False, error=err.line(), error_type="ProviderError",
                                        seconds=elapsed))
                raise err
            attempts.append(Attempt(model_key=spec.key, ok=True, seconds=elapsed))
            cost = reply.cost_usd
            if cost is None:
                cost = spec.cost_profile.cost(reply.prompt_tokens, reply.completion_tokens) if spec.cost_profile else 0.0
            result = GenerationResult(
                text=reply.text,
                tokens_generated=reply.completion_tokens,
                timings=Timings(load_time=reply.load_time, inference_time=reply.inference_time,
                                total_time=time.perf_counter() - started),
                usage=Usage(prompt_tokens=reply.prompt_tokens, completion_tokens=reply.completion_tokens,
                            cost_usd=cost),
                source=reply.source,
                cache_hit=False,
                model_resolved=spec.key,
                model_name=reply.model_name,
                sampling=sampling,
                max_tokens=max_tokens,
                finish_reason=reply.finish_reason,
                strategy=strategy.name,
                attempts=attempts,
                events=events,
            )
            if cache_key is not None and self.cache is not None:
                self.cache.put(cache_key, result)
            try:
                self.budget.charge(cost)
            except BudgetExceeded as exc:
                exc.result = result  # type: ignore[attr-defined]
                raise
            return result
        assert last is not None
        raise last

    async def _estimate_cost(self, backend: Backend, spec: ModelSpec, prompt_tokens: int,
                             max_tokens: int) -> float:
        if spec.cost_profile is not None:
            return spec.cost_profile.cost(prompt_tokens, max_tokens)
        estimate = getattr(backend, "estimate_cost", None)
        if estimate is None:
            return 0.0
        # a backend may import its pricing tables on first use (litellm: seconds); off the loop
        return float(await asyncio.to_thread(estimate, spec, prompt_tokens, max_tokens))
