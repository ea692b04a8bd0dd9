"""The typed errors of deliberate.

Every error a user can cause or meet carries *where* and *why* and becomes one clean line at the
CLI. ``exit_code`` follows DESIGN.md: 2 for bad input, 1 for a flow that ran and failed.
"""

from __future__ import annotations


class DeliberateError(Exception):
    """Base of every error deliberate raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None) -> None:
        self.message = message
        self.where = where
        self.hint = hint
        super().__init__(self.line())

    def line(self) -> str:
        """The error as one line: ``where: message (hint)``."""
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.hint:
            text += f" ({self.hint})"
        return text


class InputError(DeliberateError):
    """Bad arguments, files or values given by the user."""

    exit_code = 2


class Problem:
    """One problem found in a file: location, message, optional hint."""

    __slots__ = ("file", "line", "column", "message", "hint")

    def __init__(
        self, file: str, line: int | None, column: int | None, message: str, hint: str | None = None
    ) -> None:
        self.file, self.line, self.column, self.message, self.hint = file, line, column, message, hint

    def location(self) -> str:
        parts = [self.file]
        if self.line is not None:
            parts.append(str(self.line))
            if self.column is not None:
                parts.append(str(self.column))
        return ":".join(parts)

    def __str__(self) -> str:
        text = f"{self.location()}: {self.message}"
        return f"{text} ({self.hint})" if self.hint else text

    def to_dict(self) -> dict[str, object]:
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "message": self.message,
            "hint": self.hint,
        }


class FlowError(InputError):
    """A flow file that cannot run. Carries every problem found, not only the first."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        first = problems[0]
        super().__init__(first.message, where=first.location(), hint=first.hint)

    def line(self) -> str:
        return "; ".join(str(p) for p in self.problems)


class RegistryError(InputError):
    """A broken models.yaml / strategies.yaml, or an unknown model or strategy key."""


class RecordError(InputError):
    """A run record that is missing, corrupt, foreign or from a newer version."""


class ProviderError(DeliberateError):
    """A backend failed to answer. ``transient`` errors are retried; others are not."""

    def __init__(
        self,
        message: str,
        *,
        where: str | None = None,
        hint: str | None = None,
        transient: bool = False,
        retry_after: float | None = None,
        trips_breaker: bool = True,
    ) -> None:
        self.transient = transient
        self.retry_after = retry_after
        self.trips_breaker = trips_breaker
        super().__init__(message, where=where, hint=hint)


class CapacityError(DeliberateError):
    """The model does not fit the machine (VRAM, RAM, context window)."""


class ValidationError(DeliberateError):
    """A request or an output that breaks a contract (bad request, empty output, bad score)."""


class BudgetExceeded(DeliberateError):
    """The run's cost budget (``--max-cost``) would be or was exceeded."""


class StepError(DeliberateError):
    """A step of a flow failed; carries the step name and the cause."""

    def __init__(self, step: str, cause: BaseException) -> None:
        self.step = step
        self.cause = cause
        text = cause.line() if isinstance(cause, DeliberateError) else f"{type(cause).__name__}: {cause}"
        super().__init__(text, where=f"step {step!r}")


__all__ = [
    "BudgetExceeded",
    "CapacityError",
    "DeliberateError",
    "FlowError",
    "InputError",
    "Problem",
    "ProviderError",
    "RecordError",
    "RegistryError",
    "StepError",
    "ValidationError",
]
