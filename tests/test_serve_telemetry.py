"""OpenTelemetry spans from a served run: one per run, step and model call, nested, with their real
times and the GenAI attributes. The API is installed here but no SDK: a recording tracer stands in
for the SDK's (it implements the API's Tracer: what an SDK would receive)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from opentelemetry import trace

from deliberate.server import telemetry
from deliberate.server.app import create_app
from deliberate.server.config import ServerConfig
from test_serve import RULES, add_flow


class Span(trace.NonRecordingSpan):
    def __init__(self, name: str, parent: Any, start: int, attributes: dict[str, Any]) -> None:
        super().__init__(trace.INVALID_SPAN_CONTEXT)
        self.name, self.parent, self.start, self.attributes = name, parent, start, dict(attributes)
        self.end_time: int | None = None
        self.status: Any = None

    def end(self, end_time: int | None = None) -> None:
        self.end_time = end_time

    def set_attribute(self, key: str, value: Any) -> None:
        self.attributes[key] = value

    def set_status(self, status: Any, description: str | None = None) -> None:
        self.status = status


class Tracer(trace.Tracer):
    def __init__(self) -> None:
        self.spans: list[Span] = []

    def start_span(self, name: str, context: Any = None, kind: Any = None, attributes: Any = None,
                   links: Any = None, start_time: int | None = None, record_exception: bool = True,
                   set_status_on_exception: bool = True) -> Span:
        parent = trace.get_current_span(context) if context is not None else None
        span = Span(name, parent if isinstance(parent, Span) else None, start_time or 0, attributes or {})
        self.spans.append(span)
        return span

    def start_as_current_span(self, *args: Any, **kwargs: Any) -> Any:  # not used by deliberate
        raise NotImplementedError


def test_a_served_run_makes_nested_spans_with_genai_attributes(scripted: Any, isolated: Path) -> None:
    add_flow(isolated)
    scripted.write([*RULES, {"match": "^boom", "fail": "fatal"}])
    app = create_app(ServerConfig(access_log=False))
    assert app.state.deliberate.tracer is not None  # the API is installed: spans are on
    fake = Tracer()
    app.state.deliberate.tracer = fake
    with TestClient(app) as http:
        r = http.post("/v1/chat/completions", json={"model": "flow:trio", "messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 200
        http.post("/v1/chat/completions", json={"model": "alt", "messages": [{"role": "user", "content": "boom"}]})
    runs = [s for s in fake.spans if s.name.startswith("deliberate.run")]
    assert [s.name for s in runs] == ["deliberate.run trio", "deliberate.run generate"]
    ok, failed = runs
    assert ok.attributes[telemetry.RUN_ID] == r.headers["x-deliberate-run-id"]
    assert ok.attributes[telemetry.STATUS] == "succeeded" and ok.status is None
    assert failed.attributes[telemetry.STATUS] == "failed" and failed.status.status_code == trace.StatusCode.ERROR
    steps = [s for s in fake.spans if s.parent is ok]
    assert [s.name for s in steps] == ["deliberate.step draft", "deliberate.step critique", "deliberate.step final"]
    calls = [s for s in fake.spans if s.name.startswith("chat ") and s.parent in steps]
    assert len(calls) == 3
    for call in calls:
        a = call.attributes
        assert a[telemetry.GEN_AI_OPERATION] == "chat" and a[telemetry.GEN_AI_REQUEST_MODEL] == "smollm2-135m"
        assert a[telemetry.GEN_AI_USAGE_OUTPUT] > 0 and a[telemetry.GEN_AI_PROVIDER] == "scripted"
        assert call.parent.start <= call.start <= call.end_time <= call.parent.end_time  # type: ignore[operator]
    assert all(s.end_time is not None for s in fake.spans)
    assert ok.start <= min(s.start for s in steps) and ok.end_time >= max(s.end_time for s in steps)  # type: ignore[operator,type-var]
