"""What compiled templates call: the guards of loops, concatenation and stored values, and the
rewrite of a parsed template that puts them in."""


from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jinja2 import nodes, pass_context
from jinja2.runtime import Context, markup_join
from jinja2.visitor import NodeTransformer

from .limits import _BUDGET, _CONTAINERS, _check_value, _Counted, _need_chars, _weigh

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

    def __init__(self, environment: Any) -> None:
        self.environment = environment

    def _call(self, fn: Callable[..., Any], args: list[Any], like: nodes.Node) -> nodes.Call:
        call = nodes.Call(_guard_name(fn), args, [], None, None)
        call.set_lineno(like.lineno or 1)
        call.set_environment(self.environment)
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
