"""The CLI as a new user meets it: help, version, lists, JSON output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from conftest import cli


def test_version_and_help() -> None:
    r = cli("--version")
    assert r.returncode == 0 and r.stdout.startswith("deliberate ")
    r = cli("--help")
    assert r.returncode == 0
    for cmd in ("run", "generate", "replay", "resume", "flows", "models", "strategies", "runs", "doctor"):
        assert cmd in r.stdout


def test_flows_list_json_lists_every_shipped_flow() -> None:
    r = cli("flows", "list", "--json")
    assert r.returncode == 0, r.stderr
    names = {f["name"]: f for f in json.loads(r.stdout)}
    for flow in ("linear", "challenge", "multi_perspective", "adversarial", "consensus", "debate"):
        assert names[flow]["origin"] == "packaged"
        assert names[flow]["steps"] >= 2


def test_user_flow_in_cwd_shadows_packaged(isolated) -> None:
    (isolated / "flows").mkdir()
    (isolated / "flows" / "challenge.yaml").write_text(
        "name: challenge\ndescription: mine\nsteps:\n  a: {prompt: hi}\n")
    rows = {f["name"]: f for f in json.loads(cli("flows", "list", "--json").stdout)}
    assert rows["challenge"]["origin"] == "user" and rows["challenge"]["description"] == "mine"


def test_models_and_strategies_json() -> None:
    models = {m["key"]: m for m in json.loads(cli("models", "list", "--json").stdout)}
    assert models["smollm2-135m"]["default"] is True
    assert models["qwen2.5-7b-4bit"]["quantization"] == "4bit"
    assert models["gpt-4o-mini"]["provider"] == "litellm"
    assert models["claude-haiku"]["target"].startswith("anthropic/")
    assert any(m["target"].startswith("ollama") for m in models.values())
    strategies = {s["name"]: s for s in json.loads(cli("strategies", "list", "--json").stdout)}
    assert set(strategies) >= {"precise", "balanced", "creative", "optimized"}
    assert strategies["precise"]["sampling"]["temperature"] == 0
    assert strategies["optimized"]["fallbacks"] == ["smollm2-135m"]


def test_models_show_unknown_key_did_you_mean() -> None:
    r = cli("models", "show", "smollm2-13m")
    assert r.returncode == 2
    assert "unknown model key 'smollm2-13m'" in r.stderr and "smollm2-135m" in r.stderr
    assert "Traceback" not in r.stderr


def test_flows_show_and_mermaid() -> None:
    r = cli("flows", "show", "challenge", "--mermaid")
    assert r.returncode == 0
    assert "flowchart TD" in r.stdout and "creator --> challenger" in r.stdout
    r = cli("flows", "show", "multi_perspective", "--json")
    data = json.loads(r.stdout)
    assert data["deps"]["synthesizer"] == ["experts_say"] and data["output"] == "synthesizer"


def test_flows_schema_is_a_json_schema_that_accepts_shipped_flows() -> None:
    import jsonschema
    import yaml

    from deliberate.flows.loader import available_flows

    schema = json.loads(cli("flows", "schema").stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    for path in available_flows().values():
        jsonschema.validate(yaml.safe_load(path.read_text()), schema)
    bad = {"name": "x", "steps": {"a": {"prompt": "p", "bogus": 1}}}
    try:
        jsonschema.validate(bad, schema)
    except jsonschema.ValidationError:
        pass
    else:
        raise AssertionError("schema accepted an unknown step key")


def test_doctor_json_names_keys_but_never_values(monkeypatch) -> None:
    r = cli("doctor", "--json", env={"OPENAI_API_KEY": "sk-test-SECRET-doctor-123"})
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert "OPENAI_API_KEY" in data["api_keys_set"]
    assert "SECRET-doctor" not in r.stdout + r.stderr
    assert data["builtin_model"]["installed"] is True
    assert data["gpu"] == "no GPU" or isinstance(data["gpu"], (dict, list))
    assert len(data["lookup"]) == 3


def test_doctor_says_which_llama_cpp_runs_gguf_models(monkeypatch) -> None:
    """The binding the engine would pick (llama-cpp-python first, if it loads), or why none does."""
    import sys
    import types

    from deliberate.cli.models import _llama_cpp
    from deliberate.gateway.backends import llamacpp, llamacpp_cffi

    data = json.loads(cli("doctor", "--json").stdout)["llama_cpp"]
    assert set(data) == {"binding", "version", "note"}
    versions = {"llama-cpp-cffi": "0.4.18", "llama-cpp-python": "0.3.9", "transformers": "5"}
    monkeypatch.setattr(llamacpp, "llama_cpp_python_installed", lambda: True)
    monkeypatch.setitem(sys.modules, "llama_cpp", types.ModuleType("llama_cpp"))  # it loads
    assert _llama_cpp(versions.get) == {"binding": "llama-cpp-python", "version": "0.3.9", "note": None}
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # installed, but importing it fails
    assert "does not load" in _llama_cpp(versions.get)["note"]
    monkeypatch.setattr(llamacpp, "llama_cpp_python_installed", lambda: False)
    monkeypatch.setattr(llamacpp_cffi, "library_path", lambda: Path("/x/_llama_cpp_cpu.so"))
    assert _llama_cpp(versions.get)["binding"] == "llama-cpp-cffi"
    monkeypatch.setattr(llamacpp_cffi, "library_path", lambda: None)
    monkeypatch.setattr(llamacpp_cffi, "cpu_can_run_it", lambda: False)
    assert "AVX2" in _llama_cpp(versions.get)["note"]
    monkeypatch.setattr(llamacpp_cffi, "cpu_can_run_it", lambda: True)
    assert "library is missing" in _llama_cpp(versions.get)["note"]
    assert "pip install --no-deps llama-cpp-cffi" in _llama_cpp({"transformers": "5"}.get)["note"]
    assert "cannot run" in _llama_cpp({}.get)["note"]


def test_home_env_var_is_not_taken_for_deliberate_home(isolated, monkeypatch) -> None:
    monkeypatch.delenv("DELIBERATE_HOME")
    home = isolated.parent / "userhome"
    home.mkdir()
    (home / "models.yaml").write_text("stray: {provider: local, source: x}\n")
    r = cli("doctor", "--json", env={"HOME": str(home)})
    lookup = json.loads(r.stdout)["lookup"]
    assert lookup[1] != str(home) and lookup[1].endswith("deliberate")
    models = {m["key"] for m in json.loads(cli("models", "list", "--json", env={"HOME": str(home)}).stdout)}
    assert "stray" not in models


def test_every_option_and_argument_of_every_command_says_what_it_does() -> None:
    """--help is the manual a user reads first: no parameter of any command goes without a line."""
    import typer

    from deliberate.cli.app import app

    def commands(command: Any, path: str) -> Any:
        yield path, command  # a group's own options too (deliberate --version)
        for name, sub in (getattr(command, "commands", None) or {}).items():
            yield from commands(sub, f"{path} {name}")

    found = list(commands(typer.main.get_command(app), "deliberate"))
    assert len(found) > 20
    missing = [f"{path} {p.name}" for path, c in found for p in c.params
               if p.name != "help" and not (getattr(p, "help", None) or "").strip()]
    assert missing == []
