"""The table of step kinds and plugin kinds. The test package tests/plugins/deliberate_testkinds
registers ``upper`` and ``ask`` through the ``deliberate.step_kinds`` entry point group, as a
third-party package would; they run in flows in-process and through the real CLI. The scheduler
knows no kind: a kind it has never heard of runs, skips and fails like the built-in ones."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, ClassVar, Literal

import deliberate_testkinds
import pytest
from deliberate_scripted import ScriptedBackend

from conftest import cli
from deliberate.engine.events import StepFailed, StepFinished, StepSkipped, StepStarted
from deliberate.engine.kinds import BUILTIN, kind_for
from deliberate.engine.steps import SkipStep, StepKind
from deliberate.errors import FlowError
from deliberate.flows import load_flow_text
from deliberate.flows import spec as spec_module
from deliberate.flows.spec import BUILTIN_KINDS, Step, flow_json_schema, plugin_kinds
from test_engine import registry, run

PLUGGED = """
name: plugged
inputs: {prompt: {}}
steps:
  shout: {kind: upper, of: answer, suffix: "!{{ prompt }}"}
  answer: {prompt: "say {{ prompt }}"}
  why: {kind: ask, question: "why {{ shout }}", model: m2}
"""


def test_the_built_in_handlers_and_the_union_list_the_same_kinds() -> None:
    assert set(BUILTIN) == set(BUILTIN_KINDS)
    assert all(BUILTIN[k].spec is BUILTIN_KINDS[k] for k in BUILTIN)


def test_plugin_kinds_come_from_the_entry_point_group() -> None:
    found = plugin_kinds()
    assert found["upper"] is deliberate_testkinds.UPPER and found["ask"] is deliberate_testkinds.ASK
    assert kind_for("upper") is deliberate_testkinds.UPPER
    assert kind_for("generate") is BUILTIN["generate"]


def entry_points_with(monkeypatch: pytest.MonkeyPatch, eps: list[Any]) -> None:
    """The ``deliberate.step_kinds`` group holds ``eps`` (every other group as installed)."""
    real = spec_module.entry_points
    monkeypatch.setattr(spec_module, "entry_points",
                        lambda group: eps if group == "deliberate.step_kinds" else real(group=group))
    plugin_kinds.cache_clear()


@pytest.fixture(autouse=True)
def _fresh_plugin_table() -> Any:
    yield
    plugin_kinds.cache_clear()  # a test that changed the group leaves no table behind


class _EP:
    def __init__(self, name: str, obj: Any) -> None:
        self.name, self.value, self.obj = name, f"fake:{name}", obj

    def load(self) -> Any:
        if isinstance(self.obj, Exception):
            raise self.obj
        return self.obj


def test_a_plugin_that_cannot_load_or_takes_a_built_in_name_is_left_out(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    eps = [_EP("generate", deliberate_testkinds.UPPER), _EP("broken", ImportError("no such module")),
           _EP("thing", object()), _EP("other", deliberate_testkinds.UPPER),  # its spec says "upper"
           _EP("upper", deliberate_testkinds.UPPER)]
    entry_points_with(monkeypatch, eps)
    with caplog.at_level(logging.WARNING, "deliberate.flows"):
        assert list(plugin_kinds()) == ["upper"]
    said = caplog.text
    assert all(f"step kind {n!r}" in said for n in ("generate", "broken", "thing", "other"))


async def test_plugin_kinds_run_in_a_flow() -> None:
    backend = ScriptedBackend(rules=[{"match": "^say", "reply": "hello there"}])
    outcome, events, rec = await run(PLUGGED, backend, {"prompt": "q"})
    assert outcome.result.status == "succeeded", outcome.result.error
    # `upper` reads `answer` through its own edge (`of`), so it ran after it, though declared first
    assert load_flow_text(PLUGGED, "t.yaml", registry()).deps["shout"] == {"answer"}
    assert outcome.result.values["shout"] == "HELLO THERE!q"
    assert [c["prompt"] for c in backend.calls] == ["say q", "why HELLO THERE!q"]
    assert backend.calls[1]["model"] == "m2"
    assert outcome.result.output == "[M2] WHY HELLO THERE!Q"  # `ask` calls a model: it is the answer
    assert rec["steps"]["shout"]["kind"] == "upper" and rec["steps"]["why"]["calls"][0]["model_key"] == "m2"
    finished = [(e.step, e.kind) for e in events if isinstance(e, StepFinished)]
    assert finished == [("answer", "generate"), ("shout", "upper"), ("why", "ask")]


def test_a_plugin_kinds_own_keys_are_checked_with_lines() -> None:
    bad = "name: t\nsteps:\n  a: {prompt: hi}\n  b:\n    kind: upper\n    of: a\n    prompt: x\n  c:\n    kind: upper\n"
    with pytest.raises(FlowError) as exc:
        load_flow_text(bad, "t.yaml", registry())
    said = {(p.line, p.message.split(": ")[-1] if "not allowed" in p.message else p.message)
            for p in exc.value.problems}
    assert said == {(7, "'prompt' is not allowed on a upper step"), (9, "missing required key 'of'")}  # at its step
    with pytest.raises(FlowError, match="unknown name 'nope'"):
        load_flow_text("name: t\nsteps:\n  a: {prompt: hi}\n  b: {kind: upper, of: a, suffix: '{{ nope }}'}\n",
                       "t.yaml", registry())


def test_the_json_schema_has_the_plugin_kinds() -> None:
    variants = flow_json_schema()["properties"]["steps"]["additionalProperties"]["oneOf"]
    kinds = [v.get("properties", {}).get("kind", {}).get("const") for v in variants]
    assert {"generate", "judge", "vote", "upper", "ask"} <= set(kinds)


def test_a_plugin_kind_through_the_real_cli(scripted: Any, isolated: Path) -> None:
    scripted.write([{"match": "^say", "reply": "hello there"}])
    (isolated / "plugged.yaml").write_text(PLUGGED.replace("model: m2", "model: alt"))
    r = cli("flows", "validate", "plugged.yaml")
    assert r.returncode == 0, r.stderr
    r = cli("run", "plugged.yaml", "q", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["status"] == "succeeded" and out["output"] == "[ALT] WHY HELLO THERE!Q"
    assert [c["prompt"] for c in scripted.calls()] == ["say q", "why HELLO THERE!q"]
    schema = json.loads(cli("flows", "schema").stdout)
    assert '"const": "upper"' in json.dumps(schema)


# -- the scheduler knows no kind ----------------------------------------------------------------

class ProbeStep(Step):
    kind: Literal["probe"]
    mode: Literal["value", "skip", "fail"] = "value"
    template_fields: ClassVar[tuple[str, ...]] = ()


async def _probe(ctx: Any, name: str, step: ProbeStep) -> Any:
    if step.mode == "skip":
        raise SkipStep("the probe said so", decided_by="no")
    if step.mode == "fail":
        raise RuntimeError("probe broke")
    return {"round": ctx.round, "seen": sorted(ctx.values)}


async def test_the_scheduler_runs_skips_and_fails_a_kind_it_never_heard_of(monkeypatch: pytest.MonkeyPatch) -> None:
    entry_points_with(monkeypatch, [_EP("probe", StepKind(ProbeStep, _probe))])
    flow = ("name: p\nsteps:\n  a: {prompt: hi}\n  b: {kind: probe, needs: [a]}\n"
            "  c: {kind: probe, mode: skip, needs: [b]}\n  d: {kind: probe, mode: fail, optional: true, needs: [c]}\n")
    outcome, events, rec = await run(flow, ScriptedBackend(rules=[]))
    assert outcome.result.status == "succeeded", outcome.result.error
    assert outcome.result.values["b"] == {"round": 1, "seen": ["a"]}
    started = [e.step for e in events if isinstance(e, StepStarted)]
    assert started == ["a", "b", "c", "d"]
    [skipped] = [e for e in events if isinstance(e, StepSkipped)]
    assert (skipped.step, skipped.when, skipped.decided_by) == ("c", "the probe said so", "no")
    [failed] = [e for e in events if isinstance(e, StepFailed)]
    assert (failed.step, failed.error, failed.optional) == ("d", "RuntimeError: probe broke", True)
    assert rec["steps"]["b"]["kind"] == "probe" and rec["steps"]["c"]["status"] == "skipped"
