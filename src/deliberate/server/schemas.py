"""What the server accepts, as pydantic models: every body is validated here before a route
reads it. OpenAI clients send fields deliberate has no use for (``top_p``, ``user``, ``tools``):
those are ignored, not refused; the fields deliberate reads are checked."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from ..engine.executor import RunOptions
from ..safetext import LONE_SURROGATE

Name = Annotated[str, StringConstraints(min_length=1, max_length=200)]
InputValue = str | int | float | list[str]


def refuse_unsound(data: Any) -> Any:
    """``data`` (a parsed JSON body) unchanged, or ValueError if it holds what JSON text may spell
    but no record or response can carry: a lone surrogate (``"\\ud800"``: not Unicode, so not
    UTF-8) or a number that is not finite (Python's parser takes ``NaN`` and ``Infinity``)."""
    stack, seen = [data], 0
    while stack:
        value = stack.pop()
        seen += 1
        if isinstance(value, str):
            if LONE_SURROGATE.search(value):
                raise ValueError("text holds a lone surrogate (\\ud800-\\udfff), which is not Unicode")
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise ValueError("NaN and Infinity are not JSON numbers")
        elif isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return data


class _Body(BaseModel):
    """A request body: refused whole when it holds a lone surrogate or a non-finite number."""

    @model_validator(mode="before")
    @classmethod
    def _sound(cls, data: Any) -> Any:
        return refuse_unsound(data)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = Field(None, max_length=200)

    @property
    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class DeliberateOptions(_Strict):
    """The ``deliberate`` object of a chat completion, and the options of ``POST /v1/runs``."""

    inputs: dict[Name, InputValue] = Field(default_factory=dict, max_length=64)
    models: dict[Name, Name] = Field(default_factory=dict, max_length=64)
    strategy: Name | None = None
    rounds: int | None = Field(None, ge=1, le=20)
    max_cost: float | None = Field(None, ge=0)
    seed: int | None = None
    temperature: float | None = Field(None, ge=0, le=2)

    def run_options(self) -> RunOptions:
        return RunOptions(models=dict(self.models), strategy=self.strategy, rounds=self.rounds,
                          seed=self.seed, max_cost=self.max_cost, temperature=self.temperature)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class ChatRequest(_Body):
    model_config = ConfigDict(extra="ignore")
    model: Name
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    seed: int | None = None
    max_tokens: int | None = Field(None, ge=1, le=1_000_000)
    max_completion_tokens: int | None = Field(None, ge=1, le=1_000_000)
    n: int | None = Field(None, ge=1, le=1)
    deliberate: DeliberateOptions | None = None


class RunBody(_Strict, _Body):
    """``POST /v1/runs``: a flow by name, its inputs, the run's options."""

    flow: Name
    inputs: dict[Name, InputValue] = Field(default_factory=dict, max_length=64)
    options: DeliberateOptions = Field(default_factory=DeliberateOptions)
    tokens: bool = Field(False, description="also stream the model's tokens as events")


class OrchestrateBody(_Body):
    """The seed's ``POST /api/orchestrate``: a task for a flow (default ``linear``)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    prompt: str | None = Field(None, alias="task")
    flow: Name = "linear"
    inputs: dict[Name, InputValue] = Field(default_factory=dict, max_length=64)
    options: DeliberateOptions = Field(default_factory=DeliberateOptions)


class InferenceBody(_Strict, _Body):
    """The seed's ``POST /api/inference``: one prompt to one model."""

    prompt: str = Field(min_length=1)
    model: Name | None = None
    system: str | None = None
    max_tokens: int | None = Field(None, ge=1, le=1_000_000)
    strategy: Name | None = None
    seed: int | None = None

