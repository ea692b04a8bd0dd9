"""The contract of function steps (``kind: task_analysis`` and friends).

A function step is a :class:`FunctionStep` registered in the ``deliberate.steps`` entry point
group; YAML names its kind, never code. The built-in ones register there too
(:mod:`deliberate.engine.builtins`), so the plugin path is always exercised. Step kinds with a
grammar of their own come from the ``deliberate.step_kinds`` group (``flows.spec.plugin_kinds``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import entry_points
from typing import Any

from pydantic import BaseModel, ConfigDict


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class FunctionStep:
    """A step kind implemented in Python: ``run(context, params) -> value``.

    ``context`` is a :class:`deliberate.engine.builtins.FunctionContext`; the value is any
    JSON-able data (a dict renders in templates as its fields, or as JSON text).
    """

    kind: str
    description: str
    params: type[BaseModel]
    run: Callable[[Any, Any], Awaitable[Any]]


@lru_cache(maxsize=1)
def function_kinds() -> dict[str, FunctionStep]:
    """Every function step kind from the ``deliberate.steps`` entry point group."""
    out: dict[str, FunctionStep] = {}
    for ep in entry_points(group="deliberate.steps"):
        try:
            obj = ep.load()
        except Exception:  # a broken plugin must not break every flow; it is reported by doctor
            continue
        if isinstance(obj, FunctionStep):
            out[ep.name] = obj
    return out
