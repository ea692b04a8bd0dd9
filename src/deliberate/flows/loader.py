"""Finding, loading and validating flows."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from ..config import packaged_dir, search_dirs
from ..errors import FlowError, InputError, Problem
from ..registry import Registry, did_you_mean
from ..yamlio import YamlProblem, load_yaml_file, load_yaml_text
from .checks import check_data
from .graph import dependencies, output_step, topo_order
from .spec import Flow


@dataclass
class LoadedFlow:
    """A validated flow with what the engine needs to run it."""

    flow: Flow
    source: str  # file path, or "packaged:<name>"
    data: dict[str, Any]
    deps: dict[str, set[str]] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    output: str = ""

    @cached_property
    def hash(self) -> str:
        return flow_hash(self.data)


def flow_hash(data: dict[str, Any]) -> str:
    blob = json.dumps(data, sort_keys=True, default=str).encode()
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def available_flows() -> dict[str, Path]:
    """Flow name -> file, over the lookup order (first hit wins)."""
    out: dict[str, Path] = {}
    for d in search_dirs():
        fdir = d / "flows"
        if fdir.is_dir():
            for p in sorted(fdir.glob("*.yaml")) + sorted(fdir.glob("*.yml")):
                out.setdefault(p.stem, p)
    return out


def origin_of(path: Path) -> str:
    try:
        path.resolve().relative_to(packaged_dir().resolve())
        return "packaged"
    except ValueError:
        return "user"


def resolve_flow_path(ref: str) -> Path:
    """A flow reference: a file path, or the name of a flow in the lookup order."""
    p = Path(ref)
    if p.suffix in (".yaml", ".yml") or p.exists() or "/" in ref:
        return p
    flows = available_flows()
    if ref in flows:
        return flows[ref]
    raise InputError(f"no flow named {ref!r}",
                     hint=did_you_mean(ref, list(flows)) or f"available: {', '.join(sorted(flows))}")


def check_flow_data(data: Any, marks: Any, name: str, registry: Registry | None) -> LoadedFlow:
    flow, problems = check_data(data, marks, name, registry)
    if problems or flow is None:
        raise FlowError(problems)
    deps = dependencies(flow)
    order = topo_order(deps, list(flow.steps))
    return LoadedFlow(flow=flow, source=name, data=data, deps=deps, order=order,
                      output=output_step(flow, deps))


_LOADED: dict[tuple[Any, ...], LoadedFlow] = {}


def load_flow(ref: str | Path, registry: Registry | None = None) -> LoadedFlow:
    """Load and validate a flow by name or path. Raises :class:`FlowError` with every problem.

    A process that runs one flow file many times (a library caller, a benchmark) loads it once:
    the result is kept while the file's size and modification time and the registry's model and
    strategy names (all the checks look up) stay the same. A LoadedFlow is never changed after
    loading, so sharing it is safe."""
    path = resolve_flow_path(str(ref))
    try:
        st = path.stat()
    except OSError:
        st = None
    key = None
    if st is not None:
        key = (str(path.resolve()), st.st_mtime_ns, st.st_size,
               None if registry is None else (tuple(registry.models), tuple(registry.strategies)))
        hit = _LOADED.get(key)
        if hit is not None:
            return hit
    try:
        data, marks = load_yaml_file(path)
    except YamlProblem as exc:
        raise FlowError([exc.problem]) from None
    loaded = check_flow_data(data, marks, str(path), registry)
    if key is not None:
        if len(_LOADED) >= 64:
            _LOADED.pop(next(iter(_LOADED)))
        _LOADED[key] = loaded
    return loaded


def load_flow_text(text: str, name: str = "<flow>", registry: Registry | None = None) -> LoadedFlow:
    """Load and validate a flow from YAML text."""
    try:
        data, marks = load_yaml_text(text, name)
    except YamlProblem as exc:
        raise FlowError([exc.problem]) from None
    return check_flow_data(data, marks, name, registry)


def load_flow_data(data: dict[str, Any], name: str, registry: Registry | None = None) -> LoadedFlow:
    """Validate a flow given as data (as stored in a run record)."""
    return check_flow_data(data, {}, name, registry)


def validate_file(path: Path, registry: Registry | None) -> list[Problem]:
    """Every problem in one flow file (empty when it is valid)."""
    try:
        data, marks = load_yaml_file(path)
    except YamlProblem as exc:
        return [exc.problem]
    _flow, problems = check_data(data, marks, str(path), registry)
    return problems
