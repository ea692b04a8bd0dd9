"""Validation: a template's constant parts evaluated through the same checks, so a constant bomb
is found in milliseconds without building it."""


from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

from jinja2 import nodes
from jinja2.runtime import Undefined
from jinja2.utils import _PassArg

from .environment import ENV
from .guards import _guard_concat
from .limits import _BUDGET, TemplateLimit, TemplateProblem, _Budget

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
    from ..templates import parse  # the one parser (cached); templates imports this module

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
