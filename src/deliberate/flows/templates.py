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
The guards live in :mod:`deliberate.flows.sandbox`; this module is the API over them.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from jinja2 import TemplateSyntaxError, meta, nodes
from jinja2.environment import TemplateExpression
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.parser import Parser

from .sandbox.environment import ENV, GLOBAL_NAMES
from .sandbox.fold import constant_problem
from .sandbox.guards import _Guard
from .sandbox.limits import _BUDGET, MAX_OUTPUT, TemplateLimit, TemplateProblem, _Budget

__all__ = ["ENV", "GLOBAL_NAMES", "MAX_OUTPUT", "TemplateLimit", "TemplateProblem", "compiled",
           "compiled_expression", "constant_problem", "evaluate", "expression_source", "parse",
           "references", "render", "unsafe_access"]


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
    tree = _Guard(ENV).visit(ENV.parse(source))
    return _flat(ENV.from_string(tree))


def _flat(template: Any) -> Any:
    """``template`` with its globals in one dict. Jinja layers a template's globals over the
    environment's in a ``ChainMap``, which every render copies key by key in Python; the sandbox's
    globals are fixed when it is made, so one dict holds the same (a fan-out's merge template:
    8.9 -> 5.1 us a render; every ``when`` and ``until`` as much)."""
    template.globals = dict(template.globals)
    return template


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
    return TemplateExpression(_flat(ENV.from_string(_Guard(ENV).visit(tree))), undefined_to_none=False)


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
