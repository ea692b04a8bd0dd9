"""Every filter wrapped: it takes the context (so jinja never folds it at compile time) and checks
the size of what it would build before building it."""


from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from jinja2 import pass_context
from jinja2.utils import _PassArg

from .limits import (
    _BUDGET,
    _PLAIN,
    MAX_BUILT,
    MAX_OUTPUT,
    MAX_SLOW_ITEMS,
    MAX_SLOW_TEXT,
    MAX_STEPS,
    TemplateLimit,
    _account,
    _check_value,
    _counted,
    _need_chars,
    _need_items,
    _printf_size,
    _weigh,
)

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
