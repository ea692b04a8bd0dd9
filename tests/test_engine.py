"""The engine in-process: concurrency, rounds, judges, votes, breakers, budgets, interruption.
Models are the SCRIPTED test backend; assertions are on recorded facts, not wall-clock limits."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from deliberate_scripted import ScriptedBackend

from deliberate import RunOptions
from deliberate._api import run_flow_async
from deliberate.config import Settings
from deliberate.errors import FlowError, InputError
from deliberate.flows import load_flow_text
from deliberate.gateway import Budget, Gateway
from deliberate.registry import Limits, ModelSpec, Registry, StrategySpec


def registry(**strategies: StrategySpec) -> Registry:
    models = {k: ModelSpec(key=k, provider="scripted", context_window=8192) for k in ("m1", "m2", "m3")}
    models["paid"] = ModelSpec(key="paid", provider="scripted", context_window=8192,
                               cost_profile={"input_per_million": 10000, "output_per_million": 10000})
    strats = {"balanced": StrategySpec(name="balanced", limits=Limits(max_retries=0))}
    strats.update({k: v.model_copy(update={"name": k}) for k, v in strategies.items()})
    return Registry(models, strats, default_model="m1", default_strategy="balanced")


async def run(text: str, backend: ScriptedBackend, inputs: dict[str, Any] | None = None,
              options: RunOptions | None = None, reg: Registry | None = None,
              settings: Settings | None = None, budget: Budget | None = None, runs: Path | None = None) -> Any:
    reg = reg or registry()
    flow = load_flow_text(text, "test.yaml", reg)
    gw = Gateway(reg, settings=settings or Settings(), backends={"scripted": backend}, budget=budget,
                 retry_base_s=0.001)
    events: list[Any] = []
    outcome = await run_flow_async(flow, inputs or {}, options, registry=reg, gateway=gw,
                                   subscribers=[events.append], runs_dir=runs or Path("runs"))
    return outcome, events, json.loads(outcome.record_path.read_text()) if outcome.record_path else None


FANOUT = """
name: fan
inputs: {prompt: {}}
steps:
  experts:
    for_each: [a, b, c, d, e]
    prompt: "{{ prompt }} as {{ item }}"
  merge:
    prompt: "{% for e in experts %}{{ e.item }}={{ e }};{% endfor %}"
"""


async def test_fanout_branches_overlap_in_time() -> None:
    backend = ScriptedBackend(rules=[{"match": " as ", "delay": 0.2}])
    outcome, _events, rec = await run(FANOUT, backend, {"prompt": "q"})
    assert outcome.result.status == "succeeded"
    calls = rec["steps"]["experts"]["calls"]
    assert len(calls) == 5
    latest_start = max(c["started_at"] for c in calls)
    earliest_end = min(c["finished_at"] for c in calls)
    assert latest_start < earliest_end  # every branch started before any finished
    merge_prompt = rec["steps"]["merge"]["calls"][0]["messages"][-1]["content"]
    for item in "abcde":
        assert f"{item}=[m1] q as {item};" in merge_prompt
    assert [b["item"] for b in rec["steps"]["experts"]["value"]["branches"]] == list("abcde")


ROUNDS = """
name: loop
inputs: {prompt: {}}
steps:
  creator: {prompt: "draft for {{ prompt }}"}
  challenger: {prompt: "review: {{ creator }}"}
  refiner: {prompt: "refine: {{ creator }} with {{ challenger }}"}
rounds: {steps: [challenger, refiner], max: 4, until: "'NO ISSUES' in challenger", carry: {creator: refiner}}
output: refiner
"""


async def test_rounds_stop_on_until_and_carry_the_draft() -> None:
    backend = ScriptedBackend(rules=[
        {"match": "^review: R1", "reply": "looks fine. NO ISSUES"},
        {"match": "^review:", "reply": "bug found"},
        {"match": "^refine:", "reply": "R1", "times": 1},
        {"match": "^refine:", "reply": "R2"},
        {"match": "^draft", "reply": "D0"},
    ])
    outcome, _events, rec = await run(ROUNDS, backend, {"prompt": "p"})
    assert outcome.result.status == "succeeded"
    assert [r["stop_reason"] for r in rec["rounds"]] == [None, "until"]
    prompts = [c["prompt"] for c in backend.calls]
    assert "review: R1" in prompts  # round 2 saw the refined draft in place of the creator's
    assert outcome.result.output == "R1"  # round 2's refiner did not run: the critic found nothing
    assert len([p for p in prompts if p.startswith("refine:")]) == 1


async def test_rounds_stop_on_max_and_cli_override() -> None:
    backend = ScriptedBackend(rules=[{"match": "^review:", "reply": "bug"}])
    outcome, _e, rec = await run(ROUNDS, backend, {"prompt": "p"}, RunOptions(rounds=3))
    assert [r["stop_reason"] for r in rec["rounds"]] == [None, None, "max"]
    assert len([c for c in backend.calls if c["prompt"].startswith("review:")]) == 3
    assert len(rec["steps"]["refiner"]["rounds"]) == 3


JUDGED = """
name: judged
inputs: {prompt: {}}
steps:
  answer: {prompt: "answer {{ prompt }}"}
  gate: {kind: judge, target: answer, rubric: "Is it right?", threshold: 7, retries: 2}
  after: {prompt: "final {{ answer }}"}
"""


async def test_judge_reruns_target_with_feedback_until_threshold() -> None:
    backend = ScriptedBackend(rules=[
        {"match": "SCORE: N", "reply": "SCORE: 3\nToo vague.", "times": 1},
        {"match": "SCORE: N", "reply": "SCORE: 9\nGood now."},
        {"match": "^answer", "reply": "v1"},
        {"match": "Too vague", "reply": "v2"},
    ])
    outcome, events, rec = await run(JUDGED, backend, {"prompt": "q"})
    assert outcome.result.status == "succeeded"
    judge = rec["steps"]["gate"]["judge"]
    assert [(j["score"], j["passed"]) for j in judge] == [(3, False), (9, True)]
    # the retry carried the judge's feedback, and the downstream step saw the improved answer
    retry = [c for c in backend.calls if "Too vague" in c["prompt"]]
    assert retry and retry[0]["messages"][-2] == {"role": "assistant", "content": "v1"}
    assert rec["steps"]["after"]["calls"][0]["messages"][-1]["content"] == "final v2"
    assert rec["steps"]["answer"]["output"] == "v2"
    assert rec["steps"]["gate"]["value"]["score"] == 9


async def test_judge_keeps_best_draft_when_threshold_never_met() -> None:
    backend = ScriptedBackend(rules=[
        {"match": "The answer:\nv1", "reply": "SCORE: 5 ok"},
        {"match": "SCORE: N", "reply": "SCORE: 2 worse"},
        {"match": "^answer", "reply": "v1"},
        {"match": "reviewer scored", "reply": "v-worse"},
    ])
    outcome, _e, rec = await run(JUDGED, backend, {"prompt": "q"})
    assert [j["score"] for j in rec["steps"]["gate"]["judge"]] == [5, 2, 2]
    assert rec["steps"]["answer"]["output"] == "v1"
    assert rec["steps"]["gate"]["value"]["passed"] is False


VOTE = """
name: vote
inputs: {prompt: {}}
steps:
  answers: {for_each: [m1, m2, m3, m1], model: "{{ item }}", prompt: "{{ prompt }}"}
  pick: {kind: vote, from: answers, tie: TIE}
"""


@pytest.mark.parametrize("tie,winner", [("first", "Paris."), ("last", "Lyon")])
async def test_vote_majority_and_declared_tie_rule(tie: str, winner: str) -> None:
    backend = ScriptedBackend(rules=[
        {"model": "m1", "reply": "Paris.", "times": 1}, {"model": "m2", "reply": " paris"},
        {"model": "m3", "reply": "Lyon"}, {"model": "m1", "reply": "lyon"},
    ])
    outcome, _e, rec = await run(VOTE.replace("TIE", tie), backend, {"prompt": "capital?"})
    vote = rec["steps"]["pick"]["vote"]
    assert vote["counts"] == {"paris": 2, "lyon": 2}
    assert vote["tie"] is True and vote["tie_rule"] == tie
    assert outcome.result.output == winner


async def test_vote_clear_majority_is_not_a_tie() -> None:
    backend = ScriptedBackend(rules=[{"model": "m3", "reply": "Lyon"}, {"reply": "The answer is: Paris"}])
    outcome, _e, rec = await run(VOTE.replace("TIE", "last"), backend, {"prompt": "capital?"})
    assert rec["steps"]["pick"]["vote"]["tie"] is False
    assert outcome.result.output == "The answer is: Paris"


async def test_breaker_opens_after_n_failures_and_fallback_answers() -> None:
    reg = registry(robust=StrategySpec(limits=Limits(max_retries=0), fallbacks=["m2"]))
    flow = """
name: many
inputs: {prompt: {}}
defaults: {strategy: robust}
steps:
  s1: {prompt: "1 {{ prompt }}"}
  s2: {prompt: "2 {{ s1 }}"}
  s3: {prompt: "3 {{ s2 }}"}
  s4: {prompt: "4 {{ s3 }}"}
"""
    backend = ScriptedBackend(rules=[{"model": "m1", "fail": "transient"}, {"model": "m2", "reply": "fallback ok"}])
    outcome, events, rec = await run(flow, backend, {"prompt": "q"}, reg=reg,
                                     settings=Settings(circuit_breaker_max_failures=2, circuit_breaker_timeout=60))
    assert outcome.result.status == "succeeded" and outcome.result.output == "fallback ok"
    m1_calls = [c for c in backend.calls if c["model"] == "m1"]
    assert len(m1_calls) == 2  # after two failures the breaker is open: m1 is not called again
    kinds = [e["kind"] for e in rec["events"]]
    assert "breaker_open" in kinds and "fallback" in kinds
    assert all(s["calls"][0]["model_key"] == "m2" for s in rec["steps"].values())
    attempts = rec["steps"]["s3"]["calls"][0]["attempts"]
    assert attempts[0]["ok"] is False and "breaker" in attempts[0]["error"]


async def test_breaker_half_open_probe_closes_it_again() -> None:
    reg = registry(robust=StrategySpec(limits=Limits(max_retries=0), fallbacks=["m2"]))
    backend = ScriptedBackend(rules=[{"model": "m1", "fail": "transient", "times": 1}])
    gw = Gateway(reg, settings=Settings(circuit_breaker_max_failures=1, circuit_breaker_timeout=0.2),
                 backends={"scripted": backend})
    from deliberate.gateway import GenerationRequest

    r1 = await gw.generate(GenerationRequest.from_prompt("a", model_key="m1", strategy="robust"))
    assert r1.model_resolved == "m2" and gw.breaker_state("scripted:m1") == "open"
    # a fake clock for the breaker: moving opened_at back by the reset timeout is the timeout passing
    cb = gw.breaker("scripted:m1").cb
    cb._state_storage.opened_at -= timedelta(seconds=cb.reset_timeout)
    r2 = await gw.generate(GenerationRequest.from_prompt("b", model_key="m1", strategy="robust"))
    assert r2.model_resolved == "m1"
    assert [e.kind for e in gw.events if e.kind.startswith("breaker")] == [
        "breaker_open", "breaker_half_open", "breaker_closed"]


async def test_transient_errors_are_retried_then_succeed() -> None:
    reg = registry(retrying=StrategySpec(limits=Limits(max_retries=3)))
    backend = ScriptedBackend(rules=[{"fail": "transient", "times": 2}, {"reply": "third time"}])
    flow = "name: r\ninputs: {prompt: {}}\ndefaults: {strategy: retrying}\nsteps:\n  a: {prompt: '{{ prompt }}'}\n"
    outcome, _e, rec = await run(flow, backend, {"prompt": "q"}, reg=reg)
    assert outcome.result.output == "third time"
    attempts = rec["steps"]["a"]["calls"][0]["attempts"]
    assert [a["ok"] for a in attempts] == [False, False, True]
    assert [e["kind"] for e in rec["events"]].count("retry") == 2


async def test_budget_stops_the_run_before_overspending() -> None:
    flow = """
name: costly
inputs: {prompt: {}}
defaults: {model: paid, max_tokens: 10}
steps:
  a: {prompt: "{{ prompt }}"}
  b: {prompt: "again {{ a }}"}
  c: {prompt: "and again {{ b }}"}
"""
    backend = ScriptedBackend(rules=[{"reply": "one two three four five six seven eight", "tokens": 8}])
    # each call: ~1-3 prompt tokens + 8 completion tokens at $0.01/token -> ~$0.1; estimate ~$0.11
    outcome, _e, rec = await run(flow, backend, {"prompt": "question"}, budget=Budget(0.25),
                                 options=RunOptions(max_cost=0.25))
    assert outcome.result.status == "failed" and outcome.result.exit_code == 1
    assert outcome.result.error_type == "BudgetExceeded"
    assert rec["totals"]["cost_usd"] <= 0.25
    assert rec["steps"]["a"]["status"] == "succeeded" and rec["steps"]["c"]["status"] in ("failed", "pending")
    assert len(backend.calls) < 3


async def test_when_false_skips_and_records_the_deciding_value() -> None:
    flow = """
name: cond
inputs: {prompt: {}}
steps:
  kind_of: {prompt: "classify {{ prompt }}"}
  critique: {when: "'TECHNICAL' in kind_of", prompt: "critique {{ prompt }}"}
  final: {prompt: "final [{{ critique }}]"}
"""
    backend = ScriptedBackend(rules=[{"match": "^classify", "reply": "CREATIVE"}])
    outcome, _e, rec = await run(flow, backend, {"prompt": "q"})
    assert rec["steps"]["critique"]["status"] == "skipped"
    assert rec["steps"]["critique"]["decided_by"] is False
    assert rec["steps"]["final"]["calls"][0]["messages"][-1]["content"] == "final []"


async def test_optional_step_failure_does_not_fail_the_run() -> None:
    flow = """
name: opt
inputs: {prompt: {}}
steps:
  extra: {optional: true, prompt: "extra {{ prompt }}"}
  main: {prompt: "main [{{ extra }}]"}
"""
    backend = ScriptedBackend(rules=[{"match": "^extra", "fail": "fatal"}])
    outcome, _e, rec = await run(flow, backend, {"prompt": "q"})
    assert outcome.result.status == "succeeded"
    assert rec["steps"]["extra"]["status"] == "failed" and rec["steps"]["main"]["status"] == "succeeded"


async def test_custom_function_step_from_an_entry_point_plugin() -> None:
    flow = """
name: plug
inputs: {prompt: {}}
steps:
  count: {kind: word_count, with: {text: "{{ prompt }}"}}
  say: {prompt: "words={{ count.words }}"}
"""
    outcome, _e, rec = await run(flow, ScriptedBackend(), {"prompt": "one two three"})
    assert rec["steps"]["say"]["calls"][0]["messages"][-1]["content"] == "words=3"


def test_secrets_never_reach_records_or_output(scripted, isolated) -> None:
    from conftest import cli

    secret = "sk-live-THIS-IS-SECRET-42"
    scripted.write([{"match": ".", "reply": f"leaked {secret}?"}])
    r = cli("run", "challenge", f"my key is {secret}", "--json", env={"OPENAI_API_KEY": secret})
    assert r.returncode == 0, r.stderr
    record = Path(json.loads(r.stdout)["record"]).read_text()
    assert secret not in record and "***" in record


def test_ctrl_c_mid_run_leaves_a_valid_interrupted_record(scripted, isolated) -> None:
    scripted.write([{"match": "Solution to review", "delay": 30}])
    env = dict(os.environ)
    proc = subprocess.Popen([sys.executable, "-m", "deliberate", "run", "challenge", "x", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    runs = isolated / "runs"
    deadline = time.time() + 60
    while time.time() < deadline:
        recs = list(runs.glob("*.json")) if runs.exists() else []
        if recs and json.loads(recs[0].read_text())["steps"]["creator"]["status"] == "succeeded":
            break
        time.sleep(0.1)
    else:
        proc.kill()
        raise AssertionError("creator never finished")
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    rec = json.loads(recs[0].read_text())
    assert rec["status"] == "interrupted"
    assert rec["steps"]["creator"]["status"] == "succeeded" and rec["steps"]["creator"]["output"]
    assert rec["steps"]["refiner"]["status"] == "pending"


def test_flow_with_unknown_reference_is_refused_before_any_call() -> None:
    with pytest.raises(FlowError) as exc:
        load_flow_text("name: x\nsteps:\n  a: {prompt: '{{ creater }}'}\n  creator: {prompt: hi}\n", "x.yaml")
    assert "did you mean 'creator'" in exc.value.line()


@pytest.mark.parametrize(("options", "says"), [
    (RunOptions(temperature=2.5), "temperature 2.5 is not a number from 0 to 2"),
    (RunOptions(temperature="hot"), "temperature 'hot'"),  # type: ignore[arg-type]
    (RunOptions(seed=1.5), "seed 1.5 is not an integer"),  # type: ignore[arg-type]
    (RunOptions(rounds=0), "rounds 0"),
    (RunOptions(max_cost=-1), "max_cost -1"),
])
async def test_run_options_a_model_call_could_not_take_are_refused_before_the_run(
        options: RunOptions, says: str, tmp_path: Path) -> None:
    """The engine builds its requests from the options without validating each again: the run
    service checks them first, and nothing is called or recorded."""
    backend = ScriptedBackend()
    with pytest.raises(InputError, match=re.escape(says)):
        await run(FANOUT, backend, {"prompt": "q"}, options=options, runs=tmp_path / "runs")
    assert backend.calls == [] and not (tmp_path / "runs").exists()


def test_run_options_take_any_real_number_as_the_type_a_call_takes() -> None:
    """A whole temperature is the float a flow's ``temperature: 0`` gives (same cache key), a
    numpy number the Python one; options already right are returned as they are."""
    import numpy as np

    opts = RunOptions(temperature=0, seed=np.int64(3), rounds=np.int64(2), max_cost=np.float32(1.5)).checked()
    assert (opts.temperature, opts.seed, opts.rounds, opts.max_cost) == (0.0, 3, 2, 1.5)
    assert [type(v) for v in (opts.temperature, opts.seed, opts.rounds, opts.max_cost)] == [float, int, int, float]
    ready = RunOptions(temperature=0.5, seed=1)
    assert ready.checked() is ready


async def test_the_engine_itself_refuses_options_no_call_could_take() -> None:
    """``Engine.run`` (the library's lower door) checks the options too, before any call."""
    from deliberate.engine.executor import Engine

    backend = ScriptedBackend()
    reg = registry()
    gw = Gateway(reg, settings=Settings(), backends={"scripted": backend})
    with pytest.raises(InputError, match="temperature 5"):
        await Engine(gw).run(load_flow_text(FANOUT, "t.yaml", reg), {"prompt": "q"}, RunOptions(temperature=5))
    assert backend.calls == []
