"""The gateway: one ``generate`` for every model, local or remote.

It resolves a request's model and strategy, then hands the call to a stack of layers
(:mod:`deliberate.gateway.layers`) built once per model and strategy and kept: the strategy's
fallbacks outermost, then for each model its context-window check, response cache, backend
set-up, cost budget, retries, scrubbing, rate limit, circuit breaker and timeout around the
backend. The result carries the whole request (every attempt and event, fallbacks included). It
knows no flows.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable
from typing import Any

from ..config import Settings, get_settings
from ..registry import ModelSpec, Registry, StrategySpec
from .contracts import (
    Backend,
    BackendCall,
    CallContext,
    EventCallback,
    GatewayEvent,
    GenerationRequest,
    GenerationResult,
    Model,
    Sampling,
    TokenCallback,
)
from .layers import (
    BreakerLayer,
    BudgetLayer,
    CacheLayer,
    ContextWindowLayer,
    FallbackLayer,
    PrepareLayer,
    RateLimitLayer,
    RetryLayer,
    ScrubLayer,
    TimeoutLayer,
)
from .plugins import as_backend, load_backend
from .results import estimate_tokens, result_of
from .state import Breaker, Budget, RateLimit, ResponseCache

log = logging.getLogger("deliberate.gateway")


class Gateway:
    """``await Gateway(registry).generate(GenerationRequest(...))``."""

    def __init__(
        self,
        registry: Registry | None = None,
        *,
        settings: Settings | None = None,
        backends: dict[str, Any] | None = None,
        budget: Budget | None = None,
        cache: ResponseCache | None = None,
        retry_base_s: float = 0.5,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        self.registry = registry or Registry.load(self.settings)
        self._backends: dict[str, Backend] = {k: as_backend(b) for k, b in (backends or {}).items()}
        # built on first use, by (model key, id of the strategy, timed, cached): see generate();
        # the layers hold the strategy, so its id is not reused while they are kept
        self._requests: dict[tuple[str, int, bool, bool], Model] = {}  # fallbacks over candidates
        self._models: dict[tuple[str, int, bool, bool], Model] = {}  # one candidate's layers
        self._budget = budget or Budget(None)
        if cache is None and self.settings.cache:
            cache = ResponseCache(self.settings.response_cache())
        self._cache = cache
        self.retry_base_s = retry_base_s
        self.progress = progress
        self._breakers: dict[str, Breaker] = {}
        self._limits: dict[str, RateLimit | None] = {}  # per endpoint, or endpoint|key
        self._listeners: list[EventCallback] = []
        self.events: list[GatewayEvent] = []

    # -- what the layers share ----------------------------------------------------------------
    @property
    def budget(self) -> Budget:
        """The run's cost budget. Setting a new one takes effect from the next call."""
        return self._budget

    @budget.setter
    def budget(self, budget: Budget) -> None:
        self._budget = budget
        self._forget_stacks()  # their budget layers hold the old one

    @property
    def cache(self) -> ResponseCache | None:
        """The response cache, or None. Setting it takes effect from the next call."""
        return self._cache

    @cache.setter
    def cache(self, cache: ResponseCache | None) -> None:
        self._cache = cache
        self._forget_stacks()

    def with_budget(self, budget: Budget) -> Gateway:
        """A gateway with its own cost budget over this one's backends, breakers and rate limits
        (one request's limit, while every other caller keeps this gateway's budget). Closing
        this gateway closes the backends; the sibling is never closed on its own."""
        g = Gateway(self.registry, settings=self.settings, budget=budget, cache=self._cache,
                    retry_base_s=self.retry_base_s, progress=self.progress)
        g._backends, g._breakers, g._limits = self._backends, self._breakers, self._limits
        return g

    def _forget_stacks(self) -> None:
        self._requests.clear()
        self._models.clear()

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
        """The backend of ``provider``, loaded on first use."""
        if provider not in self._backends:
            self._backends[provider] = load_backend(provider, self.settings, self.progress)
        return self._backends[provider]

    async def aclose(self) -> None:
        """Close every backend loaded so far (loaded models, connections)."""
        for backend in list(self._backends.values()):
            await backend.aclose()

    def breaker(self, endpoint: str) -> Breaker:
        """The circuit breaker of ``endpoint``, shared by every model behind it."""
        if endpoint not in self._breakers:
            self._breakers[endpoint] = Breaker(
                endpoint,
                self.settings.circuit_breaker_max_failures,
                self.settings.circuit_breaker_timeout,
                _weak(self, Gateway._emit),
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
        shared = spec.provider == "litellm" and bool(spec.api_base)
        slot = spec.endpoint if shared else f"{spec.endpoint}|{spec.key}"
        if slot in self._limits:
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
        self._limits[slot] = limiter
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
        constraints = request.constraints
        context = CallContext(
            listeners=(self.events.append, on_event) if on_event else (self.events.append,),
            started=started, strategy=strategy.name, constraints=constraints, tags=request.context)
        call = BackendCall(model_key=spec.key, spec=spec, messages=request.messages, sampling=sampling,
                           max_tokens=max_tokens, timeout_s=strategy.limits.timeout_s, context=context)
        # what a stack depends on besides the model: its strategy (the object: names may repeat),
        # whether a latency budget needs a timeout layer, whether the call may be cached
        slot = (id(strategy), constraints.latency_budget_s is not None,
                self._cache is not None and sampling.deterministic)
        model = self._requests.get((spec.key, *slot))
        if model is None:
            keys = [spec.key] + [k for k in strategy.fallbacks if k != spec.key]
            candidate = _weak(self, Gateway._candidate)  # the gateway holds the layer: no reference cycle
            model = self._requests[(spec.key, *slot)] = FallbackLayer(
                keys, lambda key: candidate(key, strategy, slot))
        reply = await model.generate(call, on_token)
        if context.cached is not None:
            return context.cached
        return result_of(reply, call, context.attempts[-1].model_key)  # the last attempt answered

    def _candidate(self, key: str, strategy: StrategySpec, slot: tuple[int, bool, bool]) -> tuple[ModelSpec, Model]:
        """The spec and layer stack of one candidate model of a request."""
        spec = self.registry.model(key)  # each time: an untrusted entry stays refused
        model = self._models.get((key, *slot))
        if model is None:
            model = self._models[(key, *slot)] = self.stack(spec, strategy, timed=slot[1], cached=slot[2])
        return spec, model

    def stack(self, spec: ModelSpec, strategy: StrategySpec, *, timed: bool = False, cached: bool = True) -> Model:
        """The layers around ``spec``'s backend for calls under ``strategy``, built from the
        backend up (see :mod:`deliberate.gateway.layers` for the order). A layer that could do nothing for
        these calls is left out: no timeout layer without a timeout (``timed``: the request has a
        latency budget), no cache layer unless ``cached``, no rate limit layer without a limit,
        no prepare layer for a backend without a ``prepare``."""
        backend = self.backend(spec.provider)
        breaker = self.breaker(spec.endpoint)
        limits = strategy.limits
        model: Model = backend
        if limits.timeout_s is not None or timed:
            model = TimeoutLayer(model, limits.timeout_s)
        model = BreakerLayer(model, breaker)
        rate = self.rate_limit(spec)
        if rate is not None:
            model = RateLimitLayer(model, rate)
        model = ScrubLayer(model, backend.name)
        model = RetryLayer(model, limits.max_retries, self.retry_base_s,
                           give_up=lambda: breaker.state != "closed")
        model = BudgetLayer(model, self._budget, backend.estimate_cost)
        if backend.prepares():
            model = PrepareLayer(model, backend.prepare)
        if cached and self._cache is not None:
            model = CacheLayer(model, self._cache)
        return ContextWindowLayer(model)


def _weak(owner: Gateway, func: Callable[..., Any]) -> Callable[..., Any]:
    """``func`` bound to ``owner`` without a strong reference to it. What the gateway hands the
    layers and breakers it keeps calls back into it; a strong reference would be a reference
    cycle, and every run's gateway would wait for the garbage collector instead of being freed at
    once. (A ``weakref.ref`` and the function: 0.42 us, where a ``WeakMethod`` took 1.18.)"""
    ref = weakref.ref(owner)

    def call(*args: Any) -> Any:
        owner = ref()
        # None: the gateway is gone (a breaker shared with a sibling gateway, whose events no
        # one can hear any more); its layers are only called through it, while it lives
        return None if owner is None else func(owner, *args)

    return call


__all__ = ["Gateway", "estimate_tokens", "load_backend"]

