"""Jinja2 templates and expressions, in the sandbox, with undefined names as errors, and a budget.

References are found statically (``jinja2.meta``), which is how edges are inferred and how a
flow that mentions a step that does not exist is refused before any model call.

Every render has a budget, so a template cannot take the machine with it (``'x' * 10**10``, two
nested ``range(99999)`` loops, an exponential macro, ``center(9999999999)``):

- nothing is folded at compile time: the size-making operators are intercepted (a sandbox does
  not fold those), every filter takes the context (jinja does not fold those), and so does
  ``finalize`` (jinja then folds no output at all). Validating a flow builds nothing.
- ``*``, ``**``, ``+`` and ``%``, every filter and the methods of strings check the size of what
  they would build *before* building it: a string or a value of at most ``MAX_OUTPUT``
  characters, a list of at most ``MAX_ITEMS`` items, an integer of at most ``MAX_INT_BITS`` bits.
  Methods of builtin types are an allow-list; ``str.format`` checks its widths.
- loops (each ``For``'s iterable is wrapped when compiling), calls and filter calls count
  against ``MAX_STEPS`` and a wall-clock deadline of ``MAX_SECONDS``; everything built counts
  against ``MAX_BUILT`` characters; the output is at most ``MAX_OUTPUT`` characters.
- ``constant_problem`` evaluates a template's constant parts through the same checks, so a
  constant bomb is a validation error, found in milliseconds.

Each refusal is a :class:`TemplateLimit`: one line that says what was refused and the limit.
"""

from __future__ import annotations

import math
import re
import time
import types
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, meta, nodes, pass_context
from jinja2.environment import TemplateExpression
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.parser import Parser
from jinja2.runtime import Context, LoopContext, Macro, Undefined, markup_join
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedEscapeFormatter, SandboxedFormatter
from jinja2.utils import Namespace, _PassArg
from jinja2.visitor import NodeTransformer
from markupsafe import Markup

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


# -- guards the compiled templates call -----------------------------------------------------------

def _guard_iter(context: Context, iterable: Any, chars: int) -> Any:
    budget = _BUDGET.get()
    return iterable if budget is None else _Counted(iterable, budget, chars)


def _guard_concat(context: Context, *parts: Any) -> str:
    total = 0
    for p in parts:
        total += len(p) if isinstance(p, str) else _weigh(p)
    _need_chars(total, "'~'")
    budget = _BUDGET.get()
    if budget is not None:
        budget.build(total)
    if context.eval_ctx.autoescape:
        return markup_join(parts)  # type: ignore[no-any-return]
    return "".join([str(p) for p in parts])


def _guard_value(context: Context, value: Any) -> Any:
    _check_value(value, "'set'")
    return value


@pass_context
def _finalize(context: Context, value: Any) -> Any:
    if value.__class__ is str or isinstance(value, str):
        n = len(value)
    elif isinstance(value, _CONTAINERS):
        n = _weigh(value)
        _need_chars(n, "'{{ }}'", at_least=True)
    else:
        return value
    budget = _BUDGET.get()
    if budget is not None:
        budget.build(n)
    return value


_GUARDS = frozenset({_guard_iter, _guard_concat, _guard_value})


def _guard_name(fn: Callable[..., Any]) -> nodes.ImportedName:
    """A node that compiles to a module-level import: no template can name or shadow it."""
    return nodes.ImportedName(f"{__name__}.{fn.__name__}")


def _literal_chars(body: list[nodes.Node]) -> int:
    """The text a loop body writes per iteration at most (nested loops and macros count their own)."""
    total = 0
    for node in body:
        if isinstance(node, nodes.TemplateData):
            total += len(node.data)
        elif isinstance(node, nodes.For):
            total += _literal_chars(node.else_)
        elif not isinstance(node, (nodes.Macro, nodes.CallBlock)):
            total += _literal_chars(list(node.iter_child_nodes()))
    return total


class _Guard(NodeTransformer):
    """Wraps every loop's iterable, ``~`` and ``set`` in the guards above."""

    def _call(self, fn: Callable[..., Any], args: list[Any], like: nodes.Node) -> nodes.Call:
        call = nodes.Call(_guard_name(fn), args, [], None, None)
        call.set_lineno(like.lineno or 1)
        call.set_environment(ENV)
        return call

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        chars = nodes.Const(_literal_chars(node.body))
        node.iter = self._call(_guard_iter, [node.iter, chars], node)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return self._call(_guard_concat, list(node.nodes), node)

    def visit_Assign(self, node: nodes.Assign) -> nodes.Node:
        self.generic_visit(node)
        node.node = self._call(_guard_value, [node.node], node)
        return node


# -- filters --------------------------------------------------------------------------------------

_SAME = object()


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _size(value: Any) -> int:
    return len(value) if isinstance(value, str) else _weigh(value)


def _replace_size(s: str, old: str, new: str, count: Any) -> int:
    if len(new) <= len(old):
        return len(s)
    occurrences = len(s) + 1 if not old else s.count(old)
    if isinstance(count, int) and count >= 0:
        occurrences = min(occurrences, count)
    return len(s) + occurrences * (len(new) - len(old))


def _f_center(value: Any, width: Any = 80, *_: Any, **__: Any) -> Any:
    if isinstance(width, int):
        _need_chars(max(width, _size(value)), "filter 'center'")
    return _SAME


def _f_indent(s: Any, width: Any = 4, *_: Any, **__: Any) -> Any:
    prefix = width if isinstance(width, int) else len(width) if isinstance(width, str) else 0
    text = _text(s)
    lines = text.count("\n") + 1 if text is not None else _size(s) + 1
    _need_chars(_size(s) + lines * max(prefix, 0), "filter 'indent'")
    return _SAME


def _f_format(value: Any, *args: Any, **kwargs: Any) -> Any:
    if isinstance(value, str):
        _need_chars(_printf_size(value, kwargs or args), "filter 'format'")
    return _SAME


def _f_batch(value: Any, linecount: Any = None, fill_with: Any = None, *_: Any, **__: Any) -> Any:
    if fill_with is not None and isinstance(linecount, int):
        _need_items(linecount, "filter 'batch'")
        _need_chars(linecount * _size(fill_with), "filter 'batch'")
    return _counted(value)


def _f_slice(value: Any, slices: Any = None, fill_with: Any = None, *_: Any, **__: Any) -> Any:
    if isinstance(slices, int):
        _need_items(slices, "filter 'slice'")
        if fill_with is not None:
            _need_chars(slices * _size(fill_with), "filter 'slice'")
    return _SAME


def _f_wordwrap(s: Any, width: Any = 79, break_long_words: Any = True, wrapstring: Any = None,
                *_: Any, **__: Any) -> Any:
    text = _text(s)
    if text is not None and isinstance(width, int) and width >= 1:
        lines = 2 * len(text) // width + text.count("\n") + 2
        _need_chars(len(text) + lines * (len(wrapstring) if isinstance(wrapstring, str) else 1),
                    "filter 'wordwrap'")
    return _SAME


def _f_replace(s: Any, old: Any = None, new: Any = None, count: Any = None, *_: Any, **__: Any) -> Any:
    if isinstance(old, str) and isinstance(new, str):
        text = s if isinstance(s, str) else str(s)
        _need_chars(_replace_size(text, old, new, count), "filter 'replace'")
    return _SAME


def _f_join(value: Any, d: Any = "", attribute: Any = None, *_: Any, **__: Any) -> Any:
    if attribute is not None:
        return _counted(value)
    items = value if isinstance(value, (list, tuple)) else list(_counted(value))
    sep = len(d) if isinstance(d, str) else _size(d)
    total = max(len(items) - 1, 0) * sep
    for x in items:
        total += len(x) if isinstance(x, str) else _weigh(x)
        if total > MAX_OUTPUT:
            break
    _need_chars(total, "filter 'join'", at_least=total > MAX_OUTPUT)
    return items


def _f_sum(value: Any, attribute: Any = None, start: Any = 0, *_: Any, **__: Any) -> Any:
    if not isinstance(start, (list, tuple)) or attribute is not None:
        return _counted(value)
    items = list(_counted(value))
    total = len(start) + sum(len(x) for x in items if isinstance(x, (list, tuple)))
    _need_items(total, "filter 'sum'")
    _need_items(len(items) * total // 50, "filter 'sum' (it copies the list once per item)")
    return items


def _f_round(value: Any, precision: Any = 0, *_: Any, **__: Any) -> Any:
    if isinstance(precision, int) and abs(precision) > 1000:
        raise TemplateLimit(f"template would round to {precision:,} digits with filter 'round' (limit 1,000)")
    return _SAME


def _slow_items(name: str) -> Callable[..., Any]:
    def check(value: Any, *_: Any, **__: Any) -> Any:
        if isinstance(value, (str, list, tuple, dict, set, frozenset)):
            if len(value) > MAX_SLOW_ITEMS:
                raise TemplateLimit(f"template gives filter {name!r} {len(value):,} items "
                                    f"(limit {MAX_SLOW_ITEMS:,})")
            return _SAME
        return list(_limited(_counted(value), name))
    return check


def _limited(it: Iterable[Any], name: str) -> Iterator[Any]:
    for i, x in enumerate(it):
        if i >= MAX_SLOW_ITEMS:
            raise TemplateLimit(f"template gives filter {name!r} more than {MAX_SLOW_ITEMS:,} items "
                                f"(limit {MAX_SLOW_ITEMS:,})")
        yield x


def _slow_text(name: str) -> Callable[..., Any]:
    def check(value: Any, *_: Any, **__: Any) -> Any:
        n = _size(value)
        if n > MAX_SLOW_TEXT:
            raise TemplateLimit(f"template gives filter {name!r} {n:,} characters (limit {MAX_SLOW_TEXT:,})")
        return _SAME
    return check


def _then(*checks: Callable[..., Any]) -> Callable[..., Any]:
    def check(value: Any, *args: Any, **kwargs: Any) -> Any:
        for c in checks:
            out = c(value, *args, **kwargs)
            if out is not _SAME:
                value = out
        return value
    return check


def _just_count(value: Any, *_: Any, **__: Any) -> Any:
    return _counted(value)


_FILTER_CHECKS: dict[str, Callable[..., Any]] = {
    "center": _f_center, "indent": _f_indent, "format": _f_format, "batch": _f_batch,
    "slice": _f_slice, "wordwrap": _then(_slow_text("wordwrap"), _f_wordwrap), "replace": _f_replace,
    "join": _f_join, "sum": _f_sum, "round": _f_round,
    "title": _slow_text("title"), "urlize": _slow_text("urlize"), "pprint": _slow_text("pprint"),
    **{name: _slow_items(name) for name in ("sort", "unique", "min", "max", "dictsort", "groupby", "xmlattr")},
    **{name: _just_count for name in ("map", "select", "reject", "selectattr", "rejectattr")},
}


def _guard_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """The filter, checked; it takes the context, so jinja never folds it at compile time."""
    kind = _PassArg.from_obj(func)
    check = _FILTER_CHECKS.get(name)
    what = f"filter {name!r}"
    weighs_value = name == "join"  # its check weighs the items itself

    @pass_context
    def guarded(context: Any, value: Any, *args: Any, **kwargs: Any) -> Any:
        budget = _BUDGET.get()
        if budget is not None:
            budget.steps += 1
            if budget.steps > MAX_STEPS or time.perf_counter() > budget.deadline:
                budget.check()
        if value.__class__ not in _PLAIN and not weighs_value:
            _check_value(value, what)
        if args:
            for arg in args:
                _check_value(arg, what)
        if kwargs:
            for arg in kwargs.values():
                _check_value(arg, what)
        if check is not None:
            try:
                out = check(value, *args, **kwargs)
            except (TypeError, ValueError, AttributeError):
                out = _SAME  # arguments the filter itself refuses: let it say so
            if out is not _SAME:
                value = out
        if kind is None:
            result = func(value, *args, **kwargs)
        elif kind is _PassArg.context:
            result = func(context, value, *args, **kwargs)
        elif kind is _PassArg.eval_context:
            result = func(context.eval_ctx, value, *args, **kwargs)
        else:
            result = func(context.environment, value, *args, **kwargs)
        if result.__class__ is str:
            n = len(result)
            if n > MAX_OUTPUT:
                _need_chars(n, what)
            if budget is not None:
                budget.built += n
                if budget.built > MAX_BUILT:
                    budget.build(0)
            return result
        return _account(result, what, budget)

    guarded.__name__ = getattr(func, "__name__", name)
    guarded.__doc__ = func.__doc__
    guarded.guarded_filter = (func, kind)  # type: ignore[attr-defined]
    return guarded


# -- methods of builtin types ---------------------------------------------------------------------

_METHODS: tuple[tuple[type | tuple[type, ...], frozenset[str]], ...] = (
    (str, frozenset(
        "capitalize casefold center count endswith expandtabs find format format_map index isalnum isalpha "
        "isascii isdecimal isdigit isidentifier islower isnumeric isprintable isspace istitle isupper join "
        "ljust lower lstrip partition removeprefix removesuffix replace rfind rindex rjust rpartition rsplit "
        "rstrip split splitlines startswith strip swapcase title upper zfill".split())),
    (dict, frozenset("get items keys values copy".split())),
    ((list, tuple, range), frozenset("count index copy".split())),
    ((set, frozenset), frozenset("copy difference intersection isdisjoint issubset issuperset "
                                 "symmetric_difference union".split())),
    ((int, float), frozenset("bit_length bit_count conjugate as_integer_ratio is_integer hex".split())),
)


_BUILTIN_METHODS = (types.BuiltinMethodType, types.MethodDescriptorType, types.ClassMethodDescriptorType,
                    types.WrapperDescriptorType, types.MethodWrapperType)


def _method_check(obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """Check a string method's call before it runs; returns the arguments to call it with."""
    s: str = obj.__self__
    name = obj.__name__
    what = f"str.{name}()"
    if name in ("center", "ljust", "rjust", "zfill") and args and isinstance(args[0], int):
        _need_chars(max(len(s), args[0]), what)
    elif name == "expandtabs":
        size = args[0] if args else kwargs.get("tabsize", 8)
        if isinstance(size, int) and size > 1:
            _need_chars(len(s) + s.count("\t") * size + s.count("\n") * size, what)
    elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        _need_chars(_replace_size(s, args[0], args[1], args[2] if len(args) > 2 else kwargs.get("count")), what)
    elif name == "join" and args:
        items = list(_counted(args[0]))
        total = max(len(items) - 1, 0) * len(s)
        for x in items:
            total += len(x) if isinstance(x, str) else 0
            if total > MAX_OUTPUT:
                break
        _need_chars(total, what, at_least=total > MAX_OUTPUT)
        return (items, *args[1:])
    return args


class _FormatGuard:
    """``str.format`` in the sandbox, with each field's size checked before it is built."""

    built = 0

    def convert_field(self, value: Any, conversion: str | None) -> Any:
        if conversion is not None:
            _check_value(value, "str.format()")
        return super().convert_field(value, conversion)  # type: ignore[misc]

    def format_field(self, value: Any, format_spec: str) -> Any:
        self.built += _size(value) + _spec_size(format_spec)
        _need_chars(self.built, "str.format()")
        return super().format_field(value, format_spec)  # type: ignore[misc]


class _GuardedFormatter(_FormatGuard, SandboxedFormatter):
    pass


class _GuardedEscapeFormatter(_FormatGuard, SandboxedEscapeFormatter):
    pass


# -- the environment ------------------------------------------------------------------------------

class GuardedEnvironment(ImmutableSandboxedEnvironment):
    """The immutable sandbox, with sizes checked and every render on a budget."""

    # intercepted operators are not folded at compile time (nodes.BinExpr.as_const)
    intercepted_binops = frozenset({"+", "*", "**", "%"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        what = f"'{operator}'"
        if operator == "*":
            if isinstance(left, int) and isinstance(right, int):
                _need_bits(left.bit_length() + right.bit_length(), what)
            else:
                seq, n = (left, right) if isinstance(right, int) else (right, left)
                if isinstance(n, int) and n > 1:
                    if isinstance(seq, str):
                        _need_chars(len(seq) * n, what)
                    elif isinstance(seq, (list, tuple)):
                        _need_items(len(seq) * n, what)
                        _need_chars(_weigh(seq, MAX_OUTPUT // n + 1) * n, what, at_least=True)
        elif operator == "+":
            if isinstance(left, str) and isinstance(right, str):
                _need_chars(len(left) + len(right), what)
            elif isinstance(left, (list, tuple)) and isinstance(right, (list, tuple)):
                _need_items(len(left) + len(right), what)
                _need_chars(_weigh(left) + _weigh(right), what, at_least=True)
        elif operator == "**":
            if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
                _need_bits(math.inf if right.bit_length() > 60 else math.log2(abs(left)) * right, what)
        elif operator == "%" and isinstance(left, str):
            _need_chars(_printf_size(left, right), what)
        return _account(self.binop_table[operator](left, right), what, _BUDGET.get())

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if not super().is_safe_attribute(obj, attr, value):
            return False
        if isinstance(obj, type) and isinstance(value, _BUILTIN_METHODS):
            return False  # dict.fromkeys, dict.update(d, ...): nothing a template needs from a type
        if isinstance(value, types.BuiltinMethodType):
            for kinds, allowed in _METHODS:
                if isinstance(obj, kinds):
                    return attr in allowed
        return True

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """``str.format`` and ``format_map``, through the guarded formatter (jinja's own logic,
        see sandbox.py, with the formatter swapped)."""
        if not isinstance(value, (types.MethodType, types.BuiltinMethodType)) or value.__name__ not in (
                "format", "format_map"):
            return None
        f_self: Any = value.__self__
        if not isinstance(f_self, str):
            return None
        str_type: type[str] = type(f_self)
        is_format_map = value.__name__ == "format_map"

        def wrapper(*args: Any, **kwargs: Any) -> str:
            formatter: SandboxedFormatter
            if isinstance(f_self, Markup):
                formatter = _GuardedEscapeFormatter(self, escape=f_self.escape)
            else:
                formatter = _GuardedFormatter(self)
            if is_format_map:
                if kwargs:
                    raise TypeError("format_map() takes no keyword arguments")
                if len(args) != 1:
                    raise TypeError(f"format_map() takes exactly one argument ({len(args)} given)")
                kwargs = args[0]
                args = ()
            return str_type(formatter.vformat(f_self, args, kwargs))

        wrapper.__name__ = value.__name__
        return wrapper

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        if obj.__class__ is types.FunctionType and obj in _GUARDS:
            return obj(context, *args)
        budget = _BUDGET.get()
        if budget is not None:
            budget.step()
        if not self.is_safe_callable(obj):
            raise SecurityError(f"{obj!r} is not safely callable")
        for arg in args:
            _check_value(arg, "a call")
        if kwargs:
            for arg in kwargs.values():
                _check_value(arg, "a call")
        what = f"macro {obj.name}()" if isinstance(obj, Macro) else "a call"
        if isinstance(obj, LoopContext) and args and budget is not None:
            args = (_Counted(args[0], budget, 0), *args[1:])  # a recursive loop's next level
        elif isinstance(obj, types.BuiltinMethodType) and isinstance(obj.__self__, str):
            what = f"str.{obj.__name__}()"
            fmt = self.wrap_str_format(obj)
            if fmt is not None:
                obj = fmt  # str.format reached some other way than getattr: the guarded one
            else:
                args = _method_check(obj, args, kwargs)
        return _account(context.call(obj, *args, **kwargs), what, budget)


def _make_env() -> GuardedEnvironment:
    env = GuardedEnvironment(
        undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False,
        trim_blocks=True, lstrip_blocks=True, finalize=_finalize,
    )
    del env.globals["lipsum"]  # paragraphs of lorem ipsum, as many as asked
    env.filters = {name: _guard_filter(name, f) for name, f in env.filters.items()}
    return env


ENV = _make_env()
GLOBAL_NAMES = frozenset(ENV.globals)


# -- parsing, compiling, rendering ----------------------------------------------------------------

@lru_cache(maxsize=2048)
def parse(source: str) -> nodes.Template:
    try:
        return ENV.parse(source)
    except TemplateSyntaxError as exc:
        raise TemplateProblem(f"template syntax error: {exc.message}", exc.lineno) from None


def expression_source(expr: str) -> str:
    """An expression wrapped as a template, so one parser serves both."""
    return "{{ (" + expr + ") }}"


@lru_cache(maxsize=2048)
def references(source: str) -> frozenset[str]:
    """Every free name a template uses (not counting Jinja's own globals). Cached: finding them
    runs jinja's code generator over the template."""
    return frozenset(meta.find_undeclared_variables(parse(source))) - GLOBAL_NAMES


def unsafe_access(source: str) -> list[str]:
    """Attribute or item names that reach Python internals (``__class__`` and friends)."""
    found: list[str] = []
    for node in parse(source).find_all((nodes.Getattr, nodes.Getitem)):
        name = node.attr if isinstance(node, nodes.Getattr) else None
        if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
            name = node.arg.value if isinstance(node.arg.value, str) else None
        if name and name.startswith("_"):
            found.append(name)
    return found


@lru_cache(maxsize=1024)
def compiled(source: str) -> Any:
    """A compiled template, its loops, ``~`` and ``set`` guarded; compiling costs about a
    millisecond, so each source compiles once. (A parse of its own: the guard changes the tree,
    and ``parse``'s tree is shared.)"""
    parse(source)  # syntax errors with a clear message
    tree = _Guard().visit(ENV.parse(source))
    return ENV.from_string(tree)


@lru_cache(maxsize=1024)
def compiled_expression(expr: str) -> Any:
    parse(expression_source(expr))  # syntax errors with a clear message
    # jinja's compile_expression, with the guard applied to the tree
    try:
        parser = Parser(ENV, expr, state="variable")
        node = parser.parse_expression()
    except TemplateSyntaxError as exc:
        raise TemplateProblem(f"expression syntax error: {exc.message}") from None
    if not parser.stream.eos:
        raise TemplateProblem("expression syntax error: chunk after expression")
    node.set_environment(ENV)
    tree = nodes.Template([nodes.Assign(nodes.Name("result", "store"), node, lineno=1)], lineno=1)
    return TemplateExpression(ENV.from_string(_Guard().visit(tree)), undefined_to_none=False)


@lru_cache(maxsize=1024)
def _plain(source: str) -> tuple[tuple[bool, str], ...] | None:
    """Most prompts only put names into text (``Critique: {{ draft }}``). For those, the parts:
    ``(False, text)`` or ``(True, name)``; None for any other template. Rendering them takes a
    join instead of jinja's context set-up, with the same output: jinja prints a name as
    ``str(value)``, and its text nodes already have the whitespace options applied."""
    try:
        body = parse(source).body
    except TemplateProblem:
        return None
    if not body:
        return ()
    if len(body) != 1 or not isinstance(body[0], nodes.Output):
        return None
    parts: list[tuple[bool, str]] = []
    for node in body[0].nodes:
        if isinstance(node, nodes.TemplateData):
            parts.append((False, node.data))
        elif isinstance(node, nodes.Name) and node.ctx == "load":
            parts.append((True, node.name))
        else:
            return None
    return tuple(parts)


def _output(text: str) -> str:
    if len(text) > MAX_OUTPUT:
        raise TemplateLimit(f"template output is larger than {MAX_OUTPUT:,} characters "
                            f"({len(text):,}; limit {MAX_OUTPUT:,})")
    return text


def _problem(exc: Exception, kind: str = "template") -> TemplateProblem:
    if isinstance(exc, TemplateProblem):
        return exc
    if isinstance(exc, UndefinedError):
        return TemplateProblem(f"undefined name: {exc.message}")
    if isinstance(exc, SecurityError):
        return TemplateProblem(f"refused by the sandbox: {exc}")
    if isinstance(exc, TemplateSyntaxError):
        return TemplateProblem(f"{kind} syntax error: {exc.message}", exc.lineno)
    return TemplateProblem(f"{type(exc).__name__}: {exc}")  # errors inside filters and tests


def render(source: str, context: dict[str, Any]) -> str:
    """Render a template; undefined names, unsafe access and going over budget are errors."""
    plain = _plain(source)
    if plain is not None:
        try:
            return _output("".join([str(context[text]) if is_name else text for is_name, text in plain]))
        except KeyError:
            pass  # a global (range, ...) or an undefined name: jinja resolves it or says which
    token = _BUDGET.set(_Budget())
    try:
        return _output(compiled(source).render(context))
    except Exception as exc:
        raise _problem(exc) from None
    finally:
        _BUDGET.reset(token)


def evaluate(expr: str, context: dict[str, Any]) -> Any:
    """Evaluate an expression (``when``, ``until``, ``for_each``) to a Python value."""
    fn = compiled_expression(expr)
    token = _BUDGET.set(_Budget())
    try:
        return fn(**context)
    except Exception as exc:
        raise _problem(exc, "expression") from None
    finally:
        _BUDGET.reset(token)


# -- validation: constant parts evaluated through the same checks ---------------------------------

class _NotConstant(Exception):
    pass


_FOLD_CONTEXT = types.SimpleNamespace(environment=ENV, eval_ctx=nodes.EvalContext(ENV),
                                      call=lambda f, *args, **kwargs: f(*args, **kwargs))
_SIMPLE_BINOPS: dict[str, Callable[[Any, Any], Any]] = {
    "-": lambda a, b: a - b, "/": lambda a, b: a / b, "//": lambda a, b: a // b,
}


def _fold(node: nodes.Node, memo: dict[int, Any]) -> Any:
    key = id(node)
    if key in memo:
        if memo[key] is _NotConstant:
            raise _NotConstant
        return memo[key]
    try:
        value = _fold_node(node, memo)
    except TemplateLimit:
        raise
    except Exception:
        memo[key] = _NotConstant
        raise _NotConstant from None
    memo[key] = value
    return value


def _fold_node(node: nodes.Node, memo: dict[int, Any]) -> Any:
    if isinstance(node, nodes.Const):
        return node.value
    if isinstance(node, nodes.List):
        return [_fold(x, memo) for x in node.items]
    if isinstance(node, nodes.Tuple) and node.ctx == "load":
        return tuple(_fold(x, memo) for x in node.items)
    if isinstance(node, nodes.Dict):
        return {_fold(p.key, memo): _fold(p.value, memo) for p in node.items}
    if isinstance(node, nodes.Neg):
        return -_fold(node.node, memo)
    if isinstance(node, nodes.Pos):
        return +_fold(node.node, memo)
    if isinstance(node, nodes.Not):
        return not _fold(node.node, memo)
    if isinstance(node, nodes.And):
        return _fold(node.left, memo) and _fold(node.right, memo)
    if isinstance(node, nodes.Or):
        return _fold(node.left, memo) or _fold(node.right, memo)
    if isinstance(node, nodes.BinExpr):
        left, right = _fold(node.left, memo), _fold(node.right, memo)
        if node.operator in ENV.intercepted_binops:
            return ENV.call_binop(None, node.operator, left, right)  # type: ignore[arg-type]
        return _SIMPLE_BINOPS[node.operator](left, right)
    if isinstance(node, nodes.Concat):
        return _guard_concat(_FOLD_CONTEXT, *[_fold(x, memo) for x in node.nodes])  # type: ignore[arg-type]
    if isinstance(node, nodes.CondExpr):
        if _fold(node.test, memo):
            return _fold(node.expr1, memo)
        if node.expr2 is None:
            raise _NotConstant
        return _fold(node.expr2, memo)
    if isinstance(node, (nodes.Filter, nodes.Call)):
        if node.dyn_args is not None or node.dyn_kwargs is not None:
            raise _NotConstant
        args = [_fold(x, memo) for x in node.args]
        kwargs: dict[str, Any] = {str(k.key): _fold(k.value, memo) for k in node.kwargs}
        if isinstance(node, nodes.Filter):
            func = ENV.filters.get(node.name)
            original = getattr(func, "guarded_filter", None)
            if node.node is None or original is None or original[1] is _PassArg.context:
                raise _NotConstant
            return func(_FOLD_CONTEXT, _fold(node.node, memo), *args, **kwargs)  # type: ignore[misc, operator]
        if not isinstance(node.node, nodes.Getattr):
            raise _NotConstant  # macros and globals: at run time
        method = ENV.getattr(_fold(node.node.node, memo), node.node.attr)
        if not isinstance(method, types.BuiltinMethodType) and getattr(method, "__name__", "") not in (
                "format", "format_map"):
            raise _NotConstant
        return ENV.call(_FOLD_CONTEXT, method, *args, **kwargs)  # type: ignore[arg-type]
    if isinstance(node, nodes.Getattr):
        value = ENV.getattr(_fold(node.node, memo), node.attr)
        if isinstance(value, Undefined) or callable(value):
            raise _NotConstant
        return value
    if isinstance(node, nodes.Getitem) and not isinstance(node.arg, nodes.Slice):
        value = ENV.getitem(_fold(node.node, memo), _fold(node.arg, memo))
        if isinstance(value, Undefined):
            raise _NotConstant
        return value
    raise _NotConstant


def constant_problem(source: str) -> TemplateProblem | None:
    """The first constant part of a template that is over a limit (``{{ 'x' * 10**10 }}``), as
    a problem with its line; None when there is none. Parts that depend on names, and errors
    other than limits, are left to run time."""
    tree = parse(source)
    memo: dict[int, Any] = {}
    token = _BUDGET.set(_Budget())
    try:
        for node in tree.find_all((nodes.BinExpr, nodes.Filter, nodes.Concat, nodes.Call)):
            try:
                _fold(node, memo)
            except _NotConstant:
                continue
            except TemplateLimit as exc:
                return TemplateLimit(exc.message, node.lineno)
    finally:
        _BUDGET.reset(token)
    return None
