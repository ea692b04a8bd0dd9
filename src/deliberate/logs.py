"""Structured logs: the engine's events as JSON lines (the seed's structured logging).

The same event stream that feeds the live view and the run record feeds this subscriber. Logging
is configured from ``LOG_LEVEL`` and ``DELIBERATE_LOG_FILE``; secrets are scrubbed.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from .config import Settings, scrub, secret_values

log = logging.getLogger("deliberate.events")


class JsonFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self.secrets = secret_values()

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {"ts": round(record.created, 3), "level": record.levelname,
                                "logger": record.name, "msg": record.getMessage()}
        extra = getattr(record, "event", None)
        if extra is not None:
            data["event"] = extra
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return scrub(json.dumps(data, default=str), self.secrets)


def configure(settings: Settings) -> None:
    """Set up the ``deliberate`` logger once: JSON lines to stderr or to the log file."""
    root = logging.getLogger("deliberate")
    if getattr(root, "_deliberate_configured", False):
        return
    level = getattr(logging, str(settings.log_level).upper(), logging.WARNING)
    handler: logging.Handler
    if settings.log_file:
        settings.log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(settings.log_file, encoding="utf-8")
        level = min(level, logging.INFO)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
    root._deliberate_configured = True  # type: ignore[attr-defined]


class EventLog:
    """Subscriber: one log line per engine event (tokens at DEBUG)."""

    @staticmethod
    def wanted() -> bool:
        """Whether the log takes engine events at all (INFO and below)."""
        return log.isEnabledFor(logging.INFO)

    @property
    def wants_tokens(self) -> bool:
        return log.isEnabledFor(logging.DEBUG)

    def __call__(self, event: Any) -> None:
        name = type(event).__name__
        level = logging.DEBUG if name == "Token" else logging.INFO
        if not log.isEnabledFor(level):
            return
        from .engine.events import event_dict

        data = event_dict(event)
        data.pop("flow", None)  # RunStarted: the whole flow spec is in the record, not the log
        log.log(level, name, extra={"event": data})
