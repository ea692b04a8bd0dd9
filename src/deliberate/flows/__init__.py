"""The flow language: spec, loading with positions, templates, checks, graph."""

from .graph import dependencies, mermaid, topo_order
from .loader import (
    LoadedFlow,
    available_flows,
    flow_hash,
    load_flow,
    load_flow_data,
    load_flow_text,
    resolve_flow_path,
    validate_file,
)
from .spec import Defaults, Flow, InputSpec, Rounds, Step, flow_json_schema

__all__ = [
    "Defaults",
    "Flow",
    "InputSpec",
    "LoadedFlow",
    "Rounds",
    "Step",
    "available_flows",
    "dependencies",
    "flow_hash",
    "flow_json_schema",
    "load_flow",
    "load_flow_data",
    "load_flow_text",
    "mermaid",
    "resolve_flow_path",
    "topo_order",
    "validate_file",
]
