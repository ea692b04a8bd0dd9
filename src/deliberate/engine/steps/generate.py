"""``kind: generate``: one model call, or one per element of ``for_each`` (concurrent branches)."""

from __future__ import annotations

from typing import Any

from ...errors import ValidationError
from ...flows.spec import GenerateStep, for_each_expression
from ...flows.templates import render
from ...gateway.contracts import Message
from ..branches import run_branches
from ..context import RunContext, jsonable
from ..events import StepStarted
from ..values import BranchText
from .base import StepKind


async def run(ctx: RunContext, name: str, step: GenerateStep) -> Any:
    """The answer's text; for a for_each step, one :class:`BranchText` per element, in order."""
    if step.for_each is None:
        msgs = prompt_messages(ctx, step)
        ctx.last_messages[name] = msgs
        result = await ctx.call(name, ctx.request(name, step, msgs, ctx.model_for(name, step)))
        return result.text
    items = for_each_items(ctx, name, step)

    async def branch(i: int, item: Any) -> BranchText:
        extra = {"item": item, "index": i}
        model = ctx.model_for(name, step, extra)
        ctx.emit(StepStarted(step=name, kind=step.kind, round=ctx.round, branch=i, item=jsonable(item),
                             model_key=model))
        req = ctx.request(name, step, prompt_messages(ctx, step, extra), model, branch=i)
        result = await ctx.call(name, req, branch=i, item=item)
        return BranchText(result.text, item, i, result.model_resolved)

    return await run_branches([branch(i, it) for i, it in enumerate(items)])


def prompt_messages(ctx: RunContext, step: GenerateStep, extra: dict[str, Any] | None = None) -> list[Message]:
    """The step's system (when it has one) and user messages, rendered now."""
    scope = ctx.scope(extra)
    msgs = []
    if step.system:
        msgs.append(Message.checked("system", render(step.system, scope)))
    msgs.append(Message.checked("user", render(step.prompt or "", scope)))
    return msgs


def for_each_items(ctx: RunContext, name: str, step: GenerateStep) -> list[Any]:
    """The elements a for_each step fans out over (a list, or an expression's list or CSV text)."""
    if isinstance(step.for_each, list):
        return list(step.for_each)
    value = ctx.evaluate(for_each_expression(str(step.for_each)))
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)):
        raise ValidationError(f"for_each of step {name!r} is a {type(value).__name__}, not a list")
    if not value:
        raise ValidationError(f"for_each of step {name!r} is empty")
    return list(value)


KIND = StepKind(GenerateStep, run, "One model call, or one per for_each element.")
