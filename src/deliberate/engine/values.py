"""Step values as templates see them, and their JSON form in run records."""

from __future__ import annotations

from typing import Any

from .builtins import Data


class BranchText(str):
    """One branch of a fan-out: renders as its text, with ``.item``, ``.index`` and ``.model``."""

    item: Any
    index: int  # type: ignore[assignment]  # templates read `e.index` as the branch position
    model: str

    def __new__(cls, text: str, item: Any = None, index: int = 0, model: str = "") -> BranchText:
        obj = super().__new__(cls, text)
        obj.item, obj.index, obj.model = item, index, model
        return obj

    @property
    def text(self) -> str:
        return str.__str__(self)


class Verdict(str):
    """A judge's value: renders as ``score N/S: feedback``; ``.score``, ``.passed``, ``.feedback``."""

    score: float
    passed: bool
    feedback: str
    attempts: int
    scale: int

    def __new__(cls, score: float, passed: bool, feedback: str, attempts: int, scale: int = 10) -> Verdict:
        obj = super().__new__(cls, f"score {score:g}/{scale}: {feedback}")
        obj.score, obj.passed, obj.feedback, obj.attempts, obj.scale = score, passed, feedback, attempts, scale
        return obj


def to_json(value: Any) -> Any:
    """A step value as JSON data for the record."""
    if isinstance(value, Verdict):
        return {"type": "verdict", "score": value.score, "passed": value.passed,
                "feedback": value.feedback, "attempts": value.attempts, "scale": value.scale}
    if isinstance(value, list) and value and all(isinstance(v, BranchText) for v in value):
        return {"type": "branches", "branches": [
            {"item": v.item, "index": v.index, "model": v.model, "text": v.text} for v in value]}
    if isinstance(value, list) and not value:
        return {"type": "branches", "branches": []}
    if isinstance(value, Data) or isinstance(value, dict):
        return {"type": "data", "data": dict(value)}
    if isinstance(value, list):
        return {"type": "data", "data": [dict(v) if isinstance(v, dict) else v for v in value]}
    return {"type": "text", "text": str(value)}


def from_json(data: Any) -> Any:
    """The inverse of :func:`to_json` (used by replay and resume)."""
    if not isinstance(data, dict) or "type" not in data:
        return "" if data is None else str(data)
    kind = data["type"]
    if kind == "verdict":
        return Verdict(data["score"], data["passed"], data["feedback"], data["attempts"], data.get("scale", 10))
    if kind == "branches":
        return [BranchText(b["text"], b.get("item"), b.get("index", i), b.get("model", ""))
                for i, b in enumerate(data["branches"])]
    if kind == "data":
        d = data["data"]
        return Data(d) if isinstance(d, dict) else [Data(x) if isinstance(x, dict) else x for x in d]
    return str(data.get("text", ""))


def as_text(value: Any) -> str:
    """The value as the text a user reads (the flow's answer)."""
    if isinstance(value, list):
        return "\n\n".join(f"[{getattr(v, 'item', i)}] {v}" for i, v in enumerate(value))
    return str(value)
