"""The table of step kinds: a step's ``kind`` to its :class:`~.steps.StepKind`. The built-in kinds
are listed here; plugins come from the ``deliberate.step_kinds`` entry point group
(:func:`deliberate.flows.spec.plugin_kinds`, the same lookup validation uses); any other kind
is a function step (``deliberate.steps``), all run by one handler."""

from __future__ import annotations

from typing import Any

from ..flows.spec import plugin_kinds
from .steps import StepKind, function, generate, judge, vote

#: Each built-in kind's handler; its spec model is the union member of the same name in
#: ``flows.spec.BUILTIN_KINDS``.
BUILTIN: dict[str, StepKind[Any]] = {"generate": generate.KIND, "judge": judge.KIND, "vote": vote.KIND}
FUNCTION: StepKind[Any] = function.KIND


def kind_for(kind: str) -> StepKind[Any]:
    """The handler of a step kind (built-in first: the entry points are read only for others)."""
    found = BUILTIN.get(kind)
    if found is not None:
        return found
    plugin: StepKind[Any] | None = plugin_kinds().get(kind)
    return plugin if plugin is not None else FUNCTION
