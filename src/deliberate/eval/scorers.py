"""Scorers: how an answer is judged against an item. ``--scorer NAME[:ARG]``:

=======================  =================================================================
``exact``                the normalised answer equals the normalised target
``includes``             the normalised target appears in the normalised answer
``regex:PATTERN``        the pattern matches (group 1, when it has one, must equal the target)
``numeric[:TOL]``        the last number in the answer is within TOL (default 1e-6,
                         relative to the target past 1) of the target
``choice``               the last standalone letter A-E in the answer is the target's
``python:MOD:FUNC``      ``FUNC(answer, item_dict)`` returns a bool, a number in [0, 1] or a Score
``code``                 the answer's code passes the item's tests in the sandbox
``judge[:RUBRIC]``       a model grades the answer 1-10 against a rubric (and the target)
``checker``              the dataset's own checker (reasoning-gym)
=======================  =================================================================

Third parties add scorers through the entry-point group ``deliberate.scorers``: the entry point
names a factory called with the ARG (or None) that returns an object with ``name``,
``needs_target``, ``graded``, ``key(answer)`` and ``async score(answer, item, ctx) -> Score``
(subclass :class:`Scorer`). An unknown scorer is refused before any call.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import InputError
from .datasets import Item

GROUP = "deliberate.scorers"
BUILTIN = ("exact", "includes", "regex", "numeric", "choice", "python", "code", "judge", "checker")
_PUNCT = re.compile(r"[\s\W_]+", re.UNICODE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?|-?\.\d+")
_CHOICE = re.compile(r"(?<![A-Za-z])\(?([A-E])\)?(?![A-Za-z])")


@dataclass
class Score:
    """One answer's score: ``value`` in [0, 1], ``passed``, and why. ``run_ids`` and
    ``cost_usd``: what scoring itself spent (a judge's calls, recorded as runs)."""

    value: float
    passed: bool
    detail: str = ""
    run_ids: list[str] = field(default_factory=list)
    cost_usd: float = 0.0


@dataclass
class JudgeReply:
    """A judge model's answer: its text, the run that recorded it, what it cost."""

    text: str
    run_id: str | None = None
    cost_usd: float = 0.0


@dataclass
class ScoreContext:
    """What scoring may use: the dataset's checker, a judge (one prompt -> one recorded call),
    and the sandbox's settings."""

    checker: Callable[[str, Item], float] | None = None
    judge: Callable[[str], Awaitable[JudgeReply]] | None = None
    code_timeout_s: float = 10.0
    allow_network_code: bool = False


def normalise(text: str) -> str:
    """Answers that differ only in case, spacing, quotes or punctuation count as one."""
    a = str(text).strip().lower()
    a = re.sub(r"^(the )?(final )?answer( is)?\s*[:\-]?\s*", "", a)
    return _PUNCT.sub(" ", a).strip()


class Scorer:
    """A scorer. ``key`` is the normalised answer self-consistency votes over."""

    name = "scorer"
    needs_target = True
    graded = False  # True: scores between 0 and 1 are compared with the sign test

    def key(self, answer: str) -> str:
        return normalise(answer)

    async def score(self, answer: str, item: Item, ctx: ScoreContext) -> Score:
        raise NotImplementedError


class Exact(Scorer):
    name = "exact"

    async def score(self, answer: str, item: Item, ctx: ScoreContext) -> Score:
        ok = normalise(answer) == normalise(item.target)
        return Score(float(ok), ok)


class Includes(Scorer):
    name = "includes"

    async def score(self, answer: str, item: Item, ctx: ScoreContext) -> Score:
        target = normalise(item.target)
        ok = bool(target) and f" {target} " in f" {normalise(answer)} "
        return Score(float(ok), ok)


class Regex(Scorer):
    name = "regex"

    def __init__(self, pattern: str) -> None:
        try:
            self.pattern = re.compile(pattern, re.S)
        except re.error as exc:
            raise InputError(f"--scorer regex:{pattern}: not a valid regular expression: {exc}") from None
        self.needs_target = self.pattern.groups > 0

    def key(self, answer: str) -> str:
        m = self.pattern.search(answer)
        return normalise(m.group(1) if m and self.pattern.groups else answer)

    async def score(self, answer: str, item: Item, ctx: ScoreContext) -> Score:
        m = self.pattern.search(answer)
        if m is None:
            return Score(0.0, False, "no match")
        if self.pattern.groups:
            ok = normalise(m.group(1) or "") == normalise(item.target)
            return Score(float(ok), ok, f"matched {m.group(1)!r}")
        return Score(1.0, True)


def last_number(text: str) -> float | None:
    """The last number written in ``text`` (thousands separators allowed), or None."""
    for raw in reversed(_NUMBER.findall(str(text))):
        try:
            return float(raw.replace(",", ""))
        except ValueError:
            continue
    return None


class Numeric(Scorer):
    name = "numeric"

    def __init__(self, tolerance: str | None) -> None:
        try:
            self.tolerance = float(tolerance) if tolerance else 1e-6
        except ValueError:
            raise InputError(f"--scorer numeric:{tolerance}: the tolerance must be a number") from None
        if not self.tolerance >= 0:
            raise InputError(f"--scorer numeric:{tolerance}: the tolerance must be 0 or more")

    def key(self, answer: str) -> str:
        n = last_number(answer)
        return "" if n is None else f"{n:.10g}"

    async def score(self, answer: str, item: Item, ctx: ScoreContext) -> Score:
        got, want = last_number(answer), last_number(str(item.target))
        if want is None:
            return Score(0.0, False, f"the target {item.target!r} holds no number")
        if got is None:
            return Score(0.0, False, "no number in the answer")
        ok = math.isclose(got, want, rel_tol=self.tolerance, abs_tol=self.tolerance)
        return Score(float(ok), ok, f"{got:g} vs {want:g}")


def last_choice(text: str) -> str:
    """The last standalone capital letter A-E (``(B)``, ``B.``, ``answer: B``), or ''."""
    found = _CHOICE.findall(str(text))
    return found[-1] if found else ""


class Choice(Scorer):
    name = "choice"

    def key(self, answer: str) -> str:
        return last_choice(answer)

    async def score(self, answer: str, item: Item, ctx: ScoreContext) -> Score:
        got, want = last_choice(answer), last_choice(str(item.target).strip().upper())
        ok = bool(got) and got == want
        return Score(float(ok), ok, f"chose {got or 'nothing'}")


class Checker(Scorer):
    """The dataset's own checker (reasoning-gym's ``score_answer``); passed at 1.0."""

    name = "checker"
    graded = True

    async def score(self, answer: str, item: Item, ctx: ScoreContext) -> Score:
        if ctx.checker is None:
            raise InputError("--scorer checker: this dataset has no checker of its own")
        value = float(ctx.checker(answer, item))
        return Score(value, value >= 1.0)


class Function(Scorer):
    """``python:module:function``, or an entry point that names a plain function."""

    graded = True
    needs_target = False  # the function decides what it compares with

    def __init__(self, fn: Callable[..., Any], name: str) -> None:
        self.fn, self.name = fn, name

    async def score(self, answer: str, item: Item, ctx: ScoreContext) -> Score:
        out = self.fn(answer, item.as_dict())
        if inspect.isawaitable(out):
            out = await out
        if isinstance(out, Score):
            return out
        if isinstance(out, bool):
            return Score(float(out), out)
        if isinstance(out, int | float) and 0 <= float(out) <= 1:
            return Score(float(out), float(out) >= 1.0)
        raise TypeError(f"scorer {self.name} returned {out!r}: expected a bool, a number in [0, 1] or a Score")


def _python(arg: str | None) -> Scorer:
    module, _, func = (arg or "").rpartition(":")
    if not module or not func:
        raise InputError(f"--scorer python:{arg or ''}: expected python:MODULE:FUNCTION")
    try:
        fn = getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError) as exc:
        raise InputError(f"--scorer python:{arg}: cannot load it: {exc}",
                         hint="the module must be importable from the current directory or PYTHONPATH") from None
    if not callable(fn):
        raise InputError(f"--scorer python:{arg}: {func} is not a function")
    return Function(fn, f"python:{arg}")


def _plugins() -> dict[str, Any]:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=GROUP)}


def scorer_names() -> list[str]:
    """Every scorer name: the built-in ones, then the plugins'."""
    return [*BUILTIN, *sorted(n for n in _plugins() if n not in BUILTIN)]


def resolve(spec: str) -> Scorer:
    """The scorer ``NAME[:ARG]`` names; an unknown one is an :class:`InputError` (exit 2)."""
    name, _, arg = spec.partition(":")
    name = name.strip()
    made: dict[str, Callable[[], Scorer]] = {
        "exact": Exact, "includes": Includes, "choice": Choice, "checker": Checker,
        "regex": lambda: Regex(arg), "numeric": lambda: Numeric(arg or None),
        "python": lambda: _python(arg), "code": _code, "judge": lambda: _judge(arg or None),
    }
    if name in made:
        if name == "regex" and not arg:
            raise InputError("--scorer regex needs a pattern: regex:PATTERN")
        return made[name]()
    plugins = _plugins()
    if name in plugins:
        try:
            factory = plugins[name].load()
        except Exception as exc:
            raise InputError(f"--scorer {name}: its plugin failed to load: {type(exc).__name__}: {exc}") from None
        made_one = factory(arg or None) if inspect.isclass(factory) or _takes_one(factory) else factory
        if isinstance(made_one, Scorer) or hasattr(made_one, "score"):
            return made_one  # type: ignore[no-any-return]
        return Function(factory, name)
    from ..registry import did_you_mean

    raise InputError(f"unknown scorer {name!r}",
                     hint=did_you_mean(name, scorer_names()) or f"scorers: {', '.join(scorer_names())}")


def _takes_one(fn: Any) -> bool:
    try:
        return len(inspect.signature(fn).parameters) == 1
    except (TypeError, ValueError):
        return False


def _code() -> Scorer:
    from .code import CodeScorer

    return CodeScorer()


def _judge(rubric: str | None) -> Scorer:
    from .judge import JudgeScorer

    return JudgeScorer(rubric)


async def in_thread(fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    """Run a blocking function off the event loop (the sandbox, a slow checker)."""
    out = await asyncio.to_thread(fn, *args, **kw)
    return await out if inspect.isawaitable(out) else out
