"""Plugin step kinds registered through the ``deliberate.step_kinds`` entry point group (see the
dist-info folder beside this one), as a third-party package would:

- ``upper``: the value of the step named in ``of`` in capitals, then ``suffix`` (a template).
  Exercises a kind's own edge (``of``), a template field, and a plain handler.
- ``ask``: one model call with ``question`` (a template) as the user message, through the run
  context (model choice, request, gateway, events); its value is the answer in capitals."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from deliberate.engine.steps import StepKind
from deliberate.flows.spec import ModelStep, Step
from deliberate.gateway.contracts import Message


class UpperStep(Step):
    """``kind: upper``: another step's value in capitals."""

    kind: Literal["upper"]
    of: str
    suffix: str = ""

    template_fields: ClassVar[tuple[str, ...]] = ("suffix",)

    def edges(self) -> set[str]:
        return {self.of}


async def _upper(ctx: Any, name: str, step: UpperStep) -> str:
    return str(ctx.values[step.of]).upper() + ctx.render(step.suffix)


class AskStep(ModelStep):
    """``kind: ask``: one question to a model."""

    kind: Literal["ask"]
    question: str

    calls_model: ClassVar[bool] = True
    template_fields: ClassVar[tuple[str, ...]] = ("question",)


async def _ask(ctx: Any, name: str, step: AskStep) -> str:
    messages = [Message(role="user", content=ctx.render(step.question))]
    result = await ctx.call(name, ctx.request(name, step, messages, ctx.model_for(name, step)))
    return str(result.text).upper()


UPPER = StepKind(UpperStep, _upper, "Another step's value in capitals (a test plugin).")
ASK = StepKind(AskStep, _ask, "One question to a model, answered in capitals (a test plugin).")
