"""The engine: runs validated flows and emits one stream of events.

``executor`` is the scheduler (graph, rounds, ``when``, cancellation, events, totals) and knows no
step kind; ``kinds`` maps each kind to its handler in ``steps/`` (generate, judge, vote, function,
and plugins of the ``deliberate.step_kinds`` entry point group); ``context`` is what a handler is
given. Names load lazily so that importing a function step (``deliberate.engine.builtins``,
through its entry point) or a plugin's ``StepKind`` (``deliberate.engine.steps``) during ``flows
validate`` does not import the executor and the gateway."""

from typing import Any

_EXPORTS = {
    "Engine": ".executor", "RunOptions": ".executor", "RunResult": ".executor",
    "normalise": ".steps.vote", "parse_score": ".steps.judge", "RunContext": ".context",
    "StepKind": ".steps", "SkipStep": ".steps",
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
