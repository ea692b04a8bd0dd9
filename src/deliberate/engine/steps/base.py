"""The handler interface of a step kind."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ...flows.spec import Step

if TYPE_CHECKING:
    from ..context import RunContext

S = TypeVar("S", bound=Step)

#: ``await run(ctx, name, step) -> value``: runs step ``name`` (its spec ``step``) and returns its
#: value. The scheduler has already checked ``when`` and emitted ``StepStarted``; it stores the
#: value and emits ``StepFinished`` (or ``StepFailed`` when this raises).
StepHandler = Callable[["RunContext", str, S], Awaitable[Any]]


@dataclass(frozen=True)
class StepKind(Generic[S]):
    """A kind of step: its spec model (the YAML grammar, a subclass of ``flows.spec.Step`` whose
    ``kind`` is ``Literal["<name>"]``) and its handler. ``reused(ctx, name, step, value)``, when
    set, is called instead of the handler for a step whose recorded value is reused (resume,
    replay --from), to emit what the kind tells about a value besides ``StepFinished``."""

    spec: type[S]
    run: StepHandler[S]
    description: str = ""
    reused: Callable[[RunContext, str, S, Any], None] | None = None


class SkipStep(Exception):
    """Raised by a handler to skip its step after all (its value is empty, as for a false
    ``when``): ``reason`` says why in ``StepSkipped.when``."""

    def __init__(self, reason: str, decided_by: Any = False) -> None:
        super().__init__(reason)
        self.reason, self.decided_by = reason, decided_by
