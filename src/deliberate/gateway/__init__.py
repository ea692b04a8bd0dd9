"""The gateway: one ``generate`` for every backend, through a stack of layers.

``contracts`` (what goes in and out, the :class:`Model` protocol, the :class:`Backend` base),
``gateway`` (resolution and the stack builder), ``layers`` (one class per concern), ``state``
(breakers, rate limits, budget, response cache), ``results`` (a reply as a result), ``plugins``
(backends from entry points), and ``backends/`` (local, remote).
"""

from .contracts import (
    Attempt,
    Backend,
    BackendCall,
    CallContext,
    Constraints,
    GatewayEvent,
    GenerationRequest,
    GenerationResult,
    Message,
    Model,
    Reply,
    Sampling,
    Timings,
    Usage,
)
from .gateway import Gateway
from .layers import EveryModelFailed
from .plugins import load_backend
from .results import estimate_tokens
from .state import Breaker, Budget, RateLimit, ResponseCache, backoff_delay

__all__ = [
    "Attempt",
    "Backend",
    "BackendCall",
    "Breaker",
    "Budget",
    "CallContext",
    "Constraints",
    "EveryModelFailed",
    "Gateway",
    "GatewayEvent",
    "GenerationRequest",
    "GenerationResult",
    "Message",
    "Model",
    "RateLimit",
    "Reply",
    "ResponseCache",
    "Sampling",
    "Timings",
    "Usage",
    "backoff_delay",
    "estimate_tokens",
    "load_backend",
]
