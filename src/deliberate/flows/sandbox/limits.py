"""The budget of one render and the sizes it checks: limits, the per-render budget, how big a
value would print, how much a printf format would build."""


from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from typing import Any

from jinja2.utils import Namespace

#: characters: a template's output, and any one string or value it builds (a few times the
#: largest context window; the context-window check refuses a prompt long before this)
MAX_OUTPUT = 4_000_000
#: characters built in all during one render (strings, outputs, loop text, macro results)
MAX_BUILT = 10 * MAX_OUTPUT
#: items in one list or tuple a template builds
MAX_ITEMS = 1_000_000
#: bits in one integer a template builds
MAX_INT_BITS = 65_536
#: loop iterations, calls and filter calls in one render
MAX_STEPS = 1_000_000
#: wall-clock seconds for one render
MAX_SECONDS = 0.5
#: items given to a filter that does Python work on each (sort, unique, dictsort, ...)
MAX_SLOW_ITEMS = 100_000
#: characters given to a filter that does Python work on each word (title, wordwrap, urlize, pprint)
MAX_SLOW_TEXT = 500_000
#: nesting of a value a template prints or stores
MAX_DEPTH = 100


class TemplateProblem(Exception):
    """A template or expression that cannot be parsed or rendered."""

    def __init__(self, message: str, line: int | None = None) -> None:
        self.message = message
        self.line = line
        super().__init__(message)


class TemplateLimit(TemplateProblem):
    """A template refused for what it would cost: size, steps or time."""


# -- the budget of one render ---------------------------------------------------------------------

class _Budget:
    __slots__ = ("steps", "built", "deadline")

    def __init__(self) -> None:
        self.steps = 0
        self.built = 0
        self.deadline = time.perf_counter() + MAX_SECONDS

    def check(self) -> None:
        if self.steps > MAX_STEPS:
            raise TemplateLimit(f"template runs more than {MAX_STEPS:,} loop iterations and calls "
                                f"(limit {MAX_STEPS:,} per render)")
        if time.perf_counter() > self.deadline:
            raise TemplateLimit(f"template takes more than {MAX_SECONDS:g} s to render "
                                f"(limit {MAX_SECONDS:g} s per render)")

    def step(self) -> None:
        self.steps += 1
        self.check()

    def build(self, n: int) -> None:
        self.built += n
        if self.built > MAX_BUILT:
            raise TemplateLimit(f"template builds more than {MAX_BUILT:,} characters in all "
                                f"(limit {MAX_BUILT:,} per render)")


_BUDGET: ContextVar[_Budget | None] = ContextVar("deliberate_template_budget", default=None)


def _count(budget: _Budget, iterable: Iterable[Any], chars: int) -> Iterator[Any]:
    """Iterate, charging a step (and the loop body's text) per item."""
    for item in iterable:
        budget.steps += 1
        if chars:
            budget.build(chars)
        if not budget.steps & 255:
            budget.check()
        yield item


class _Counted:
    """A loop's iterable with its length kept (``loop.length`` asks for it)."""

    __slots__ = ("iterable", "budget", "chars")

    def __init__(self, iterable: Any, budget: _Budget, chars: int) -> None:
        self.iterable, self.budget, self.chars = iterable, budget, chars

    def __len__(self) -> int:
        return len(self.iterable)

    def __iter__(self) -> Iterator[Any]:
        return _count(self.budget, self.iterable, self.chars)


def _counted(iterable: Any) -> Any:
    budget = _BUDGET.get()
    return iterable if budget is None else _count(budget, iterable, 0)


# -- sizes ----------------------------------------------------------------------------------------

def _need_chars(n: int, what: str, at_least: bool = False) -> None:
    if n > MAX_OUTPUT:
        size = f"more than {MAX_OUTPUT:,}" if at_least else f"{n:,}"
        raise TemplateLimit(f"template would build a string of {size} characters with {what} "
                            f"(limit {MAX_OUTPUT:,})")


def _need_items(n: int, what: str) -> None:
    if n > MAX_ITEMS:
        raise TemplateLimit(f"template would build a list of {n:,} items with {what} (limit {MAX_ITEMS:,})")


def _need_bits(bits: float, what: str) -> None:
    if bits > MAX_INT_BITS:
        raise TemplateLimit(f"template would build a number of about {bits:,.0f} bits with {what} "
                            f"(limit {MAX_INT_BITS:,})")


_VIEWS: tuple[type, ...] = (type({}.keys()), type({}.values()), type({}.items()))
_CONTAINERS = (list, tuple, set, frozenset, dict, Namespace, *_VIEWS)
_PLAIN = frozenset({str, int, float, bool, type(None)})
_INT_BOUND = 1 << MAX_INT_BITS


class _Over(Exception):
    pass


def _weigh(value: Any, cap: int = MAX_OUTPUT) -> int:
    """About ``len(str(value))``, without building it: a list that holds one big string a
    million times is small in memory and huge as text. Stops once past ``cap``; a container met
    again is not walked again (a list of itself, doubled 60 times, weighs in 60 steps)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, int):
        return value.bit_length() // 3 + 1
    if not isinstance(value, _CONTAINERS):
        return 8
    total = [0]
    try:
        _walk(value, 0, total, cap, {})
    except _Over:
        pass
    return total[0]


def _walk(v: Any, depth: int, total: list[int], cap: int, seen: dict[int, int]) -> None:
    if depth > MAX_DEPTH:
        raise TemplateLimit(f"template value is nested more than {MAX_DEPTH} deep (limit {MAX_DEPTH})")
    start = total[0]
    n = start + 2
    if isinstance(v, Namespace):
        v = object.__getattribute__(v, "_Namespace__attrs")
        n += 13
    for x in v.items() if isinstance(v, dict) else v:
        if isinstance(x, str):
            n += len(x) + 4
        elif isinstance(x, _CONTAINERS):
            known = seen.get(id(x))
            if known is None:
                total[0] = n + 2
                _walk(x, depth + 1, total, cap, seen)
                n = total[0]
            else:
                n += known + 2
        elif isinstance(x, int):
            n += x.bit_length() // 3 + 3
        else:
            n += 10
        if n > cap:
            total[0] = n
            raise _Over
    total[0] = n
    seen[id(v)] = n - start


def _check_value(value: Any, what: str) -> None:
    """A container as text must fit too (it is printed, joined or compared whole)."""
    if value.__class__ not in _PLAIN and isinstance(value, _CONTAINERS) and _weigh(value) > MAX_OUTPUT:
        _need_chars(MAX_OUTPUT + 1, what, at_least=True)


def _account(result: Any, what: str, budget: _Budget | None) -> Any:
    """Check and count what an operation built."""
    if isinstance(result, str):
        n = len(result)
        _need_chars(n, what)
        if budget is not None:
            budget.build(n)
    elif isinstance(result, (list, tuple)):
        _need_items(len(result), what)
    elif result.__class__ is int and not -_INT_BOUND < result < _INT_BOUND:
        _need_bits(result.bit_length(), what)
    return result


_PRINTF = re.compile(r"%(?:\(([^)]*)\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d*))?[hlL]?(.?)", re.S)


def _num(digits: str) -> int:
    return int(digits) if len(digits) < 16 else 10**16


def _printf_size(fmt: str, args: Any) -> int:
    """An upper bound of ``len(fmt % args)``: widths, precisions and the arguments' sizes."""
    mapping = args if isinstance(args, dict) else None
    seq = list(args) if isinstance(args, tuple) else [args]
    total, i = len(fmt), 0

    def take() -> Any:
        nonlocal i
        i += 1
        return seq[i - 1] if i <= len(seq) else None

    for key, width, precision, conv in _PRINTF.findall(fmt):
        if conv == "%":
            continue
        for field in (width, precision):
            if field == "*":
                n = take()
                total += abs(n) if isinstance(n, int) else 0
            elif field:
                total += _num(field)
        arg = mapping.get(key) if mapping is not None and key else take()
        total += _weigh(arg)
    return total


_DIGITS = re.compile(r"\d+")


def _spec_size(spec: str) -> int:
    return sum(_num(d) for d in _DIGITS.findall(spec))
