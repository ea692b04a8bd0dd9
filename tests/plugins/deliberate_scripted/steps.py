"""A custom function step registered through the entry point group (tests the plugin path)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from deliberate.engine.builtins import Data
from deliberate.flows.functions import FunctionStep


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str


async def _run(ctx: object, params: Params) -> Data:
    return Data(words=len(params.text.split()))


word_count = FunctionStep("word_count", "Count words (a test plugin).", Params, _run)
