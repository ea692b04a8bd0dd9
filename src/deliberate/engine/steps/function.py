"""Function steps (``kind: history`` and every kind in the ``deliberate.steps`` entry point group):
Python code given ``with:`` as validated parameters and a :class:`FunctionContext`."""

from __future__ import annotations

from typing import Any

from ...flows.functions import function_kinds
from ...flows.spec import FunctionCallStep
from ...flows.templates import render
from ..builtins import FunctionContext
from ..context import RunContext
from .base import StepKind


async def run(ctx: RunContext, name: str, step: FunctionCallStep) -> Any:
    """The function's value."""
    fn = function_kinds()[step.kind]
    # only strings holding a template tag are templates here: the checks validate the others as given
    scope = ctx.scope()
    args = {k: (render(v, scope) if isinstance(v, str) and ("{{" in v or "{%" in v) else v)
            for k, v in step.with_.items()}
    params = fn.params.model_validate(args)
    fctx = FunctionContext(flow_name=ctx.flow.name, inputs=dict(ctx.inputs), outputs=dict(ctx.values),
                           history=ctx.history or (lambda _f, _n: []), stats=ctx.stats)
    return await fn.run(fctx, params)



KIND = StepKind(FunctionCallStep, run, "A function step from the deliberate.steps entry point group.")
