"""The engine: runs validated flows and emits one stream of events.

Names load lazily so that importing a function step (``deliberate.engine.builtins``, through its
entry point) during ``flows validate`` does not import the executor and the gateway."""

from typing import Any

_EXPORTS = {
    "Engine": ".executor", "RunOptions": ".executor", "RunResult": ".executor",
    "normalise": ".executor", "parse_score": ".executor",
    "Event": ".events", "RunFinished": ".events", "RunStarted": ".events", "StepFailed": ".events",
    "StepFinished": ".events", "StepStarted": ".events", "Token": ".events",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'deliberate.engine' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
