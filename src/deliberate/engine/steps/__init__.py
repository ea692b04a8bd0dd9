"""Step kinds as handlers: one module per kind (generate, judge, vote, function), each a
:class:`StepKind`. The scheduler finds a step's kind in ``deliberate.engine.kinds``; a plugin adds
one through the ``deliberate.step_kinds`` entry point group.

This package imports only :mod:`.base`, so a plugin that imports ``StepKind`` from here (loaded
while a flow is validated) does not load the handlers, the scheduler or the gateway."""

from .base import SkipStep, StepHandler, StepKind

__all__ = ["SkipStep", "StepHandler", "StepKind"]
