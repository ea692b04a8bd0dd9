"""The gateway: one ``generate`` for every backend, with resilience layers."""

from .contracts import (
    Attempt,
    Backend,
    BackendCall,
    Constraints,
    GatewayEvent,
    GenerationRequest,
    GenerationResult,
    Message,
    Reply,
    Sampling,
    Timings,
    Usage,
)
from .gateway import Gateway, estimate_tokens, load_backend
from .layers import Breaker, Budget, RateLimit, ResponseCache, backoff_delay

__all__ = [
    "Attempt",
    "Backend",
    "BackendCall",
    "Breaker",
    "Budget",
    "Constraints",
    "Gateway",
    "GatewayEvent",
    "GenerationRequest",
    "GenerationResult",
    "Message",
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
