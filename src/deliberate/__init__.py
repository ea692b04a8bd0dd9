"""deliberate: LLM deliberation workflows declared in YAML.

The library API (the CLI is a thin face over it)::

    from deliberate import load_flow, run_flow
    result = run_flow("challenge", {"prompt": "Write a haiku about rain"})
"""

from typing import TYPE_CHECKING, Any

from ._version import __version__

# The public names load lazily (PEP 562), so `deliberate --help` does not import the engine.
_EXPORTS = {
    "run_flow": "._api", "run_flow_async": "._api",
    "Engine": ".engine", "RunOptions": ".engine", "RunResult": ".engine",
    "BudgetExceeded": ".errors", "CapacityError": ".errors", "DeliberateError": ".errors",
    "FlowError": ".errors", "InputError": ".errors", "ProviderError": ".errors",
    "RecordError": ".errors", "ValidationError": ".errors",
    "Flow": ".flows", "LoadedFlow": ".flows", "Step": ".flows", "load_flow": ".flows",
    "Backend": ".gateway", "BackendCall": ".gateway", "Gateway": ".gateway",
    "GenerationRequest": ".gateway", "GenerationResult": ".gateway", "Message": ".gateway",
    "Reply": ".gateway",
    "ModelSpec": ".registry", "Registry": ".registry", "StrategySpec": ".registry",
    "EvalControl": ".eval.runner", "EvalRequest": ".eval.runner", "run_eval": ".eval.runner",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'deliberate' has no attribute {name!r}")


if TYPE_CHECKING:  # pragma: no cover
    from ._api import run_flow, run_flow_async  # noqa: F401
    from .engine import Engine, RunOptions, RunResult  # noqa: F401
    from .errors import (  # noqa: F401
        BudgetExceeded,
        CapacityError,
        DeliberateError,
        FlowError,
        InputError,
        ProviderError,
        RecordError,
        ValidationError,
    )
    from .eval.runner import EvalControl, EvalRequest, run_eval  # noqa: F401
    from .flows import Flow, LoadedFlow, Step, load_flow  # noqa: F401
    from .gateway import (  # noqa: F401
        Backend,
        BackendCall,
        Gateway,
        GenerationRequest,
        GenerationResult,
        Message,
        Reply,
    )
    from .registry import ModelSpec, Registry, StrategySpec  # noqa: F401

__all__ = [
    "Backend",
    "BackendCall",
    "BudgetExceeded",
    "CapacityError",
    "DeliberateError",
    "Engine",
    "EvalControl",
    "EvalRequest",
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
    "run_eval",
    "run_flow",
    "run_flow_async",
]
