"""Jinja2 templates and expressions, in the sandbox, with undefined names as errors.

References are found statically (``jinja2.meta``), which is how edges are inferred and how a
flow that mentions a step that does not exist is refused before any model call.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, meta, nodes
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment


class TemplateProblem(Exception):
    """A template or expression that cannot be parsed or rendered."""

    def __init__(self, message: str, line: int | None = None) -> None:
        self.message = message
        self.line = line
        super().__init__(message)


def _make_env() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False,
        trim_blocks=True, lstrip_blocks=True,
    )
    return env


ENV = _make_env()
GLOBAL_NAMES = frozenset(ENV.globals)


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
    """A compiled template; compiling costs about a millisecond, so each source compiles once."""
    return ENV.from_string(parse(source))


@lru_cache(maxsize=1024)
def compiled_expression(expr: str) -> Any:
    parse(expression_source(expr))  # syntax errors with a clear message
    return ENV.compile_expression(expr, undefined_to_none=False)


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


def render(source: str, context: dict[str, Any]) -> str:
    """Render a template; undefined names and unsafe access are errors."""
    plain = _plain(source)
    if plain is not None:
        try:
            return "".join([str(context[text]) if is_name else text for is_name, text in plain])
        except KeyError:
            pass  # a global (range, ...) or an undefined name: jinja resolves it or says which
    try:
        return compiled(source).render(context)  # type: ignore[no-any-return]
    except UndefinedError as exc:
        raise TemplateProblem(f"undefined name: {exc.message}") from None
    except SecurityError as exc:
        raise TemplateProblem(f"refused by the sandbox: {exc}") from None
    except TemplateSyntaxError as exc:
        raise TemplateProblem(f"template syntax error: {exc.message}", exc.lineno) from None
    except Exception as exc:  # errors inside filters and tests of user templates
        raise TemplateProblem(f"{type(exc).__name__}: {exc}") from None


def evaluate(expr: str, context: dict[str, Any]) -> Any:
    """Evaluate an expression (``when``, ``until``, ``for_each``) to a Python value."""
    fn = compiled_expression(expr)
    try:
        return fn(**context)
    except UndefinedError as exc:
        raise TemplateProblem(f"undefined name: {exc.message}") from None
    except SecurityError as exc:
        raise TemplateProblem(f"refused by the sandbox: {exc}") from None
    except TemplateSyntaxError as exc:
        raise TemplateProblem(f"expression syntax error: {exc.message}") from None
    except Exception as exc:
        raise TemplateProblem(f"{type(exc).__name__}: {exc}") from None
