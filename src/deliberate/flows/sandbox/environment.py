"""The guarded sandbox: intercepted operators, allow-listed methods of builtin types, a guarded
``str.format``, and the environment every flow template renders in."""


from __future__ import annotations

import math
import types
from collections.abc import Callable
from typing import Any

from jinja2 import StrictUndefined
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context, LoopContext, Macro
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedEscapeFormatter, SandboxedFormatter
from markupsafe import Markup

from .filters import _guard_filter, _replace_size, _size
from .guards import _GUARDS, _finalize
from .limits import (
    _BUDGET,
    MAX_OUTPUT,
    _account,
    _check_value,
    _Counted,
    _counted,
    _need_bits,
    _need_chars,
    _need_items,
    _printf_size,
    _spec_size,
    _weigh,
)

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
