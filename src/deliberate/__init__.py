"""deliberate: LLM deliberation workflows declared in YAML.

The library API (the CLI is a thin face over it)::

    from deliberate import load_flow, run_flow
    result = run_flow("challenge", {"prompt": "Write a haiku about rain"})
"""

__version__ = "0.1.0"

from ._api import run_flow, run_flow_async  # noqa: E402
from .engine import Engine, RunOptions, RunResult  # noqa: E402
from .errors import (  # noqa: E402
    BudgetExceeded,
    CapacityError,
    DeliberateError,
    FlowError,
    InputError,
    ProviderError,
    RecordError,
    ValidationError,
)
from .flows import Flow, LoadedFlow, Step, load_flow  # noqa: E402
from .gateway import (  # noqa: E402
    Backend,
    BackendCall,
    Gateway,
    GenerationRequest,
    GenerationResult,
    Message,
    Reply,
)
from .registry import ModelSpec, Registry, StrategySpec  # noqa: E402

__all__ = [
    "Backend",
    "BackendCall",
    "BudgetExceeded",
    "CapacityError",
    "DeliberateError",
    "Engine",
    "Flow",
    "FlowError",
    "Gateway",
    "GenerationRequest",
    "GenerationResult",
    "InputError",
    "LoadedFlow",
    "Message",
    "ModelSpec",
    "ProviderError",
    "RecordError",
    "Registry",
    "Reply",
    "RunOptions",
    "RunResult",
    "Step",
    "StrategySpec",
    "ValidationError",
    "__version__",
    "load_flow",
    "run_flow",
    "run_flow_async",
]
