"""Scripted replies: the grammar of a test case's ``replies:`` and the script that answers calls.

Per step, replies are one of::

    creator: "Draft haiku"                      # every call of the step gets this text
    challenger: ["ISSUE: x", "NO ISSUES"]       # one per call, in order (rounds, judge re-runs, retries)
    execute: [{error: rate_limit}, "answer"]    # an error to inject, then an answer
    experts_say:                                # a mapping: by rule, fan-out branch, round, then the rest
      rules: [{when_prompt_contains: "tie", reply: "A"}]
      branches: {security: "...", 1: ["...", "..."]}   # a branch's item, or its index
      rounds: {2: "in round 2"}
      then: "everything else"

A reply is a text, or a mapping with ``reply`` (text) or ``error`` (``rate_limit | timeout |
server_error | context_window``), and optionally ``tokens`` (completion tokens; default: the
words). A rule adds ``when_prompt_contains`` (searched in every message the call sends) and
``times`` (how often it may answer). Parsing reports problems by path, so the caller can give
the file and line of each.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from ..engine.events import Event, StepStarted
from ..errors import CapacityError, DeliberateError, ProviderError

ERROR_KINDS = ("rate_limit", "timeout", "server_error", "context_window")
REPLY_KEYS = ("reply", "error", "tokens")
RULE_KEYS = (*REPLY_KEYS, "when_prompt_contains", "times")
STEP_KEYS = ("branches", "rounds", "rules", "then")


@dataclass
class Canned:
    """One scripted answer: a text, or an error to raise."""

    text: str | None = None
    error: str | None = None
    tokens: int | None = None

    def to_data(self) -> Any:
        if self.error is None and self.tokens is None:
            return self.text
        out: dict[str, Any] = {"error": self.error} if self.error else {"reply": self.text}
        if self.tokens is not None:
            out["tokens"] = self.tokens
        return out


@dataclass
class Sequence:
    """Replies taken in order (``repeat``: a lone text answers every call)."""

    items: list[Canned]
    repeat: bool = False
    used: int = 0

    def next(self) -> Canned | None:
        if self.repeat:
            self.used += 1
            return self.items[0]
        if self.used >= len(self.items):
            return None
        self.used += 1
        return self.items[self.used - 1]


@dataclass
class Rule:
    contains: str
    canned: Canned
    times: int | None = None


@dataclass
class StepScript:
    """What one step answers: rules first, then its branch's replies, its round's, then the rest."""

    rules: list[Rule] = field(default_factory=list)
    branches: dict[Any, Sequence] = field(default_factory=dict)
    rounds: dict[int, Sequence] = field(default_factory=dict)
    then: Sequence | None = None


Problems = list[tuple[tuple[Any, ...], str]]


def _canned(value: Any, loc: tuple[Any, ...], problems: Problems, keys: tuple[str, ...] = REPLY_KEYS) -> Canned | None:
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return Canned(text=str(value))
    if not isinstance(value, dict):
        problems.append((loc, f"a reply is a text or a mapping with 'reply' or 'error', not a {type(value).__name__}"))
        return None
    for k in value:
        if k not in keys:
            problems.append(((*loc, k), f"unknown key {k!r} in a reply (allowed: {', '.join(keys)})"))
            return None
    if ("reply" in value) == ("error" in value):
        problems.append((loc, "a reply needs exactly one of 'reply' (a text) or 'error' (an error to inject)"))
        return None
    if "error" in value and value["error"] not in ERROR_KINDS:
        problems.append(((*loc, "error"), f"unknown error {value['error']!r} (one of: {', '.join(ERROR_KINDS)})"))
        return None
    tokens = value.get("tokens")
    if tokens is not None and (not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0):
        problems.append(((*loc, "tokens"), "tokens must be a whole number >= 0"))
        return None
    text = value.get("reply")
    return Canned(text=None if text is None else str(text), error=value.get("error"), tokens=tokens)


def _sequence(value: Any, loc: tuple[Any, ...], problems: Problems) -> Sequence | None:
    if isinstance(value, list):
        if not value:
            problems.append((loc, "an empty list of replies: give at least one, or remove the step"))
            return None
        items = [_canned(v, (*loc, i), problems) for i, v in enumerate(value)]
        return Sequence([c for c in items if c is not None]) if all(items) else None
    one = _canned(value, loc, problems)
    return None if one is None else Sequence([one], repeat=True)  # a lone reply or error: every call


def _rule(value: Any, loc: tuple[Any, ...], problems: Problems) -> Rule | None:
    if not isinstance(value, dict) or not isinstance(value.get("when_prompt_contains"), str):
        problems.append((loc, "a rule is a mapping with 'when_prompt_contains' (a text) and 'reply' or 'error'"))
        return None
    canned = _canned(value, loc, problems, RULE_KEYS)
    times = value.get("times")
    if times is not None and (not isinstance(times, int) or isinstance(times, bool) or times < 1):
        problems.append(((*loc, "times"), "times must be a whole number >= 1"))
        return None
    return None if canned is None else Rule(value["when_prompt_contains"], canned, times)


def parse_step(value: Any, loc: tuple[Any, ...], problems: Problems) -> StepScript | None:
    """One step's replies, or None (with ``problems`` added)."""
    if not (isinstance(value, dict) and set(value) & set(STEP_KEYS)):
        seq = _sequence(value, loc, problems)
        return None if seq is None else StepScript(then=seq)
    script = StepScript()
    n = len(problems)
    for k, v in value.items():
        if k not in STEP_KEYS:
            problems.append(((*loc, k), f"unknown key {k!r} (a step's replies take: {', '.join(STEP_KEYS)})"))
        elif k == "then":
            script.then = _sequence(v, (*loc, k), problems)
        elif k == "rules":
            if not isinstance(v, list) or not v:
                problems.append(((*loc, k), "rules is a non-empty list"))
                continue
            rules = [_rule(r, (*loc, k, i), problems) for i, r in enumerate(v)]
            script.rules = [r for r in rules if r is not None]
        elif not isinstance(v, dict) or not v:
            problems.append(((*loc, k), "branches maps a branch's item (or index) to its replies" if k == "branches"
                             else "rounds maps a round (1, 2, ...) to its replies"))
        else:
            for b, bv in v.items():
                if k == "rounds" and (not isinstance(b, int) or isinstance(b, bool) or b < 1):
                    problems.append(((*loc, k, b), f"rounds: {b!r} is not a round number (1, 2, ...)"))
                    continue
                seq = _sequence(bv, (*loc, k, b), problems)
                if seq is not None:
                    (script.rounds if k == "rounds" else script.branches)[b] = seq
    return script if len(problems) == n else None


class Unscripted(ProviderError):
    """A call the case has no reply for: the case fails, naming the step."""

    def __init__(self, message: str) -> None:
        super().__init__(message, transient=False, trips_breaker=False,
                         hint="add replies for it to the case")


def injected(kind: str, model: str) -> DeliberateError:
    """The error a provider would raise, as the gateway's layers know it."""
    if kind == "context_window":
        return CapacityError(f"scripted: the prompt exceeds the context window of {model}")
    what = {"rate_limit": "rate limited (429)", "timeout": "timed out",
            "server_error": "server error (500)"}[kind]
    return ProviderError(f"scripted: {model} {what}", transient=True)


@dataclass
class CallLog:
    """One call the replies backend received."""

    step: str
    round: int
    branch: int | None
    item: Any
    model: str
    messages: list[dict[str, str]]
    outcome: str  # "ok", an error kind, or "unscripted"

    @property
    def prompt(self) -> str:
        return next((m["content"] for m in reversed(self.messages) if m["role"] == "user"), "")


class Script:
    """The replies of one case, answering calls by their step tags; also an event subscriber
    (it learns each fan-out branch's item from ``StepStarted``)."""

    wants_tokens = False

    def __init__(self, steps: dict[str, StepScript]) -> None:
        self.steps = steps
        self.calls: list[CallLog] = []
        self.problems: list[str] = []
        self._items: dict[tuple[str, int, int], Any] = {}
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        if isinstance(event, StepStarted) and event.branch is not None:
            self._items[(event.step, event.round, event.branch)] = event.item

    def answer(self, tags: dict[str, Any], model: str, messages: list[dict[str, str]]) -> Canned:
        """The scripted answer of one call (raises :class:`Unscripted` when there is none)."""
        step, rnd, branch = str(tags.get("step") or "?"), int(tags.get("round") or 1), tags.get("branch")
        item = self._items.get((step, rnd, branch)) if branch is not None else None
        log = CallLog(step, rnd, branch, item, model, messages, "ok")
        with self._lock:
            self.calls.append(log)
            canned = self._pick(step, (rnd, branch, item), "\n".join(m["content"] for m in messages))
        if canned is None:
            n = sum(1 for c in self.calls if c.step == step)
            where = f"step {step!r}" + (f" branch {item if item is not None else branch!r}" if branch is not None else "")
            why = "has no scripted replies" if step not in self.steps else f"ran out of replies (call {n})"
            log.outcome = "unscripted"
            self.problems.append(f"{where} {why}")
            raise Unscripted(f"{where} {why}")
        if canned.error:
            log.outcome = canned.error
        return canned

    def _pick(self, step: str, where: tuple[int, int | None, Any], prompt: str) -> Canned | None:
        rnd, branch, item = where
        script = self.steps.get(step)
        if script is None:
            return None
        for rule in script.rules:
            if rule.contains in prompt and (rule.times is None or rule.times > 0):
                if rule.times is not None:
                    rule.times -= 1
                return rule.canned
        if branch is not None:
            for key in (item, branch, str(branch)):
                if key is not None and not isinstance(key, (list, dict)) and key in script.branches:
                    return script.branches[key].next()
        if rnd in script.rounds:
            return script.rounds[rnd].next()
        return script.then.next() if script.then is not None else None

    def unused(self) -> list[str]:
        """Steps with replies that no call used."""
        called = {c.step for c in self.calls}
        return [s for s in self.steps if s not in called]
