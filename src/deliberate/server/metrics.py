"""Prometheus metrics in the text exposition format, written by hand: a few counters, a gauge and
one histogram do not need a client library (and its global registry) as a dependency.

:class:`Metrics` subscribes to every served run's events (:meth:`Metrics.subscriber`) and renders
its counters for ``GET /metrics``; breaker states and in-flight runs are read at scrape time."""

from __future__ import annotations

import math
import threading
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from ..engine.events import CallFailed, CallFinished, Event, RunFinished, RunStarted, StepFinished

#: Step durations (seconds): a local step takes tens of milliseconds to minutes.
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, math.inf)
BREAKER = {"closed": 0, "half-open": 1, "open": 2}

Labels = tuple[tuple[str, str], ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels) + "}"


def _num(v: float) -> str:
    return "+Inf" if v == math.inf else repr(float(v))


class Metrics:
    """The server's counters, fed by run events (from the event loop's thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counters: dict[str, dict[Labels, float]] = defaultdict(lambda: defaultdict(float))
        self.hist_counts: list[int] = [0] * len(BUCKETS)
        self.hist_sum = 0.0
        self.hist_n = 0

    def add(self, name: str, labels: Labels, value: float = 1.0) -> None:
        with self._lock:
            self.counters[name][labels] += value

    def observe(self, seconds: float) -> None:
        with self._lock:
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    self.hist_counts[i] += 1
            self.hist_sum += seconds
            self.hist_n += 1

    def subscriber(self) -> Callable[[Event], None]:
        """One run's subscriber (it remembers the run's flow for the run counter)."""
        flow = {"name": "unknown"}

        def on(event: Event) -> None:
            if isinstance(event, RunStarted):
                flow["name"] = event.flow_name
            elif isinstance(event, RunFinished):
                self.add("deliberate_flow_runs_total", (("flow", flow["name"]), ("status", event.status)))
            elif isinstance(event, StepFinished) and not event.reused and event.started_at:
                self.observe(max(0.0, event.at - event.started_at))
            elif isinstance(event, CallFinished):
                c = event.call
                self.add("deliberate_model_calls_total", (("model", c.model_key),
                                                          ("outcome", "cache_hit" if c.cache_hit else "ok")))
                self.add("deliberate_tokens_total", (("model", c.model_key), ("direction", "input")),
                         c.prompt_tokens)
                self.add("deliberate_tokens_total", (("model", c.model_key), ("direction", "output")),
                         c.completion_tokens)
                self.add("deliberate_cost_usd_total", (), c.cost_usd)
            elif isinstance(event, CallFailed):
                model = event.model_key or (event.attempts[-1].model_key if event.attempts else "unknown")
                self.add("deliberate_model_calls_total", (("model", model), ("outcome", "error")))

        on.wants_tokens = False  # type: ignore[attr-defined]
        return on

    def render(self, breakers: dict[str, str], in_flight: int) -> str:
        """The exposition text; ``breakers``: model key -> breaker state."""
        helps = {
            "deliberate_flow_runs_total": "Runs served, by flow and final status.",
            "deliberate_model_calls_total": "Model calls, by model and outcome.",
            "deliberate_tokens_total": "Tokens, by model and direction (input, output).",
            "deliberate_cost_usd_total": "Estimated spend in US dollars.",
        }
        lines: list[str] = []
        with self._lock:
            for name, help_text in helps.items():
                lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
                series = self.counters.get(name, {})
                if not series and name == "deliberate_cost_usd_total":
                    series = {(): 0.0}
                for labels, value in sorted(series.items()):
                    lines.append(f"{name}{_labels(labels)} {_num(value)}")
            h = "deliberate_step_duration_seconds"
            lines += [f"# HELP {h} Wall time of each step run (reused steps excluded).", f"# TYPE {h} histogram"]
            for bound, count in zip(BUCKETS, self.hist_counts, strict=True):
                lines.append(f'{h}_bucket{{le="{_num(bound)}"}} {count}')
            lines += [f"{h}_sum {_num(self.hist_sum)}", f"{h}_count {self.hist_n}"]
        b = "deliberate_breaker_state"
        lines += [f"# HELP {b} Circuit breaker of each model's endpoint: 0 closed, 1 half-open, 2 open.",
                  f"# TYPE {b} gauge"]
        for model, state in sorted(breakers.items()):
            lines.append(f"{b}{_labels((('model', model),))} {BREAKER.get(state, 0)}")
        f = "deliberate_runs_in_flight"
        lines += [f"# HELP {f} Runs in flight in this process.", f"# TYPE {f} gauge", f"{f} {in_flight}"]
        return "\n".join(lines) + "\n"


def breaker_states(gateway: Any, registry: Any) -> dict[str, str]:
    return {key: gateway.breaker_state(spec.endpoint) for key, spec in registry.models.items()}
