"""load_flow keeps a loaded flow while its file and the registry's names stay the same, and
loads it again when either changes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from deliberate.errors import FlowError
from deliberate.flows.loader import load_flow
from deliberate.registry import ModelSpec, Registry, StrategySpec

FLOW = "name: f\ninputs: {prompt: {}}\nsteps:\n  a: {prompt: \"{{ prompt }}\", model: m}\n"


def registry(*keys: str) -> Registry:
    return Registry({k: ModelSpec(key=k, provider="scripted", context_window=1000) for k in keys},
                    {"balanced": StrategySpec(name="balanced")}, default_model=keys[0])


def test_same_file_same_names_is_loaded_once_and_changes_are_seen(tmp_path: Path) -> None:
    path = tmp_path / "f.yaml"
    path.write_text(FLOW)
    reg = registry("m")
    first = load_flow(path, reg)
    assert load_flow(path, reg) is first
    assert load_flow(path, registry("m")) is first  # another registry with the same names

    path.write_text(FLOW.replace("{{ prompt }}", "Q: {{ prompt }}"))
    os.utime(path, ns=(1, 1))  # even an edit that kept the old modification time would change size
    second = load_flow(path, reg)
    assert second is not first and second.flow.steps["a"].prompt == "Q: {{ prompt }}"

    with pytest.raises(FlowError, match="unknown model key 'm'"):
        load_flow(path, registry("other"))  # the checks run again for a registry without `m`
