"""An eval on the REAL built-in model (SmolLM2-135M, no scripted backend): reasoning-gym
arithmetic, scored by the package's own checker, the challenge flow against a single call and
self-consistency at matched compute. A tiny model gets little right; the test checks that the
whole path runs and accounts honestly, not what the model scores."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conftest import cli

pytestmark = pytest.mark.slow

STRATEGIES = "tiny: {sampling: {temperature: 0}, limits: {max_tokens: 12, timeout_s: 300, max_retries: 0}}\n"


def test_reasoning_gym_arithmetic_on_the_built_in_model(first_load: dict[str, Any], isolated: Path) -> None:
    (isolated / "strategies.yaml").write_text(STRATEGIES)
    env = {"MODEL_CACHE_DIR": str(first_load["cache"])}
    r = cli("eval", "challenge", "reasoning-gym:basic_arithmetic?n=3&seed=7", "--baseline", "single",
            "--baseline", "self_consistency", "--strategy", "tiny", "--seed", "1", "--json", env=env, timeout=900)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["scorer"] == "checker" and doc["done"] == doc["items"] == 3
    arms = {a["arm"]: a for a in doc["arms"]}
    assert set(arms) == {"flow", "single", "self_consistency"}
    assert arms["flow"]["calls_per_item"] == 3 and doc["matched"]["k"] == {"self_consistency": 3}
    assert arms["self_consistency"]["calls_per_item"] == 3 and arms["single"]["calls_per_item"] == 1
    for a in arms.values():
        assert a["n"] == 3 and a["failed_runs"] == 0 and 0 <= a["pass_rate"] <= 1
        assert a["wilson"][0] <= a["pass_rate"] <= a["wilson"][1]
    rec = json.loads(Path(doc["record"]).read_text())
    for item in rec["items"].values():
        for result in item["arms"].values():
            run = json.loads((isolated / "runs" / f"{result['run_ids'][0]}.json").read_text())
            calls = [c for s in run["steps"].values() for c in s["calls"]]
            assert calls and all(c["source"] == "local" for c in calls)
