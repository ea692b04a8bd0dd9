"""The generate service: one gateway call, recorded as a one-step run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..engine.executor import RunOptions
from ..flows.loader import load_flow_data
from ..registry import Registry
from .run import OutputOptions, RunOutcome, RunRequest, Services, run


@dataclass
class GenerateRequest:
    """One prompt to one model (default: the registry's), with an optional system message."""

    prompt: str
    model: str | None = None
    strategy: str | None = None
    system: str | None = None
    max_tokens: int | None = None
    seed: int | None = None
    max_cost: float | None = None
    record: bool = True


async def generate(request: GenerateRequest, env: Services | None = None) -> RunOutcome:
    """Answer one prompt as a one-step flow named ``generate``."""
    env = env or Services()
    registry = env.registry or (env.gateway.registry if env.gateway else Registry.load(env.settings))
    # The prompt and the system text are data, not templates: they go in as inputs, so braces in
    # them ("{{", "{%") are sent as written.
    step: dict[str, Any] = {"prompt": "{{ prompt }}"}
    inputs: dict[str, Any] = {"prompt": {"description": "the prompt"}}
    values = {"prompt": request.prompt}
    if request.system:
        step["system"] = "{{ system }}"
        inputs["system"] = {"description": "the system message"}
        values["system"] = request.system
    if request.max_tokens:
        step["max_tokens"] = request.max_tokens
    data = {"name": "generate", "description": "Direct mode: one call.",
            "inputs": inputs, "steps": {"answer": step}, "output": "answer"}
    loaded = load_flow_data(data, "generate", registry)
    options = RunOptions(models={"*": request.model} if request.model else {}, strategy=request.strategy,
                         seed=request.seed, max_cost=request.max_cost)
    env.registry = registry
    return await run(RunRequest(loaded, values, options, OutputOptions(record=request.record)), env)
