"""The engine: runs validated flows and emits one stream of events."""

from .events import Event, RunFinished, RunStarted, StepFailed, StepFinished, StepStarted, Token
from .executor import Engine, RunOptions, RunResult, normalise, parse_score

__all__ = ["Engine", "Event", "RunFinished", "RunOptions", "RunResult", "RunStarted", "StepFailed",
           "StepFinished", "StepStarted", "Token", "normalise", "parse_score"]
