"""The house rules, checked over every module of src/ (read as source, so a rule holds for code
no test runs):

- no function takes more than 8 parameters, the Typer command functions of the CLI excepted
  (their parameters are the command's options);
- no module passes 400 lines;
- no module imports the package root upward: the root (``deliberate/__init__.py``) is the
  library's face, and a module inside the package that reads its names depends on everything
  the face re-exports (the version comes from the leaf ``deliberate._version``).

Each test names every offender, not only the first."""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "deliberate"
MAX_PARAMS = 8
MAX_LINES = 400


def modules() -> list[Path]:
    """Every Python module of the package."""
    found = sorted(PACKAGE.rglob("*.py"))
    assert len(found) > 20, found  # the walk found the package, not an empty folder
    return found


def dotted(path: Path) -> str:
    """The module's import name: src/deliberate/records/report.py -> deliberate.records.report."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def functions(tree: ast.Module) -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """Every function and method of a module with its ``__qualname__`` (nested ones too)."""

    def walk(node: ast.AST, prefix: str) -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                yield prefix + child.name, child
                yield from walk(child, f"{prefix}{child.name}.<locals>.")
            elif isinstance(child, ast.ClassDef):
                yield from walk(child, f"{prefix}{child.name}.")
            else:  # functions defined under an if, a try, a with
                yield from walk(child, prefix)

    yield from walk(tree, "")


def parameters(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Every parameter (positional-only, plain, keyword-only, *args, **kwargs), less a leading
    ``self`` or ``cls``."""
    a = fn.args
    named = [*a.posonlyargs, *a.args]
    count = len(named) + len(a.kwonlyargs) + (a.vararg is not None) + (a.kwarg is not None)
    if named and named[0].arg in ("self", "cls"):
        count -= 1
    return count


def typer_commands() -> set[tuple[str, str]]:
    """(module, qualname) of every function the CLI registered with Typer as a command or a
    group callback, read from the app itself (commands are registered by decorator and by
    ``app.command(name)(function)`` alike)."""
    from deliberate.cli.app import app

    found: set[tuple[str, str]] = set()

    def add(callback: Any) -> None:
        # a group added without a callback of its own holds Typer's DefaultPlaceholder
        if callable(callback) and hasattr(callback, "__qualname__"):
            found.add((callback.__module__, callback.__qualname__))

    def visit(typer_app: Any) -> None:
        for info in [*typer_app.registered_commands, typer_app.registered_callback]:
            if info is not None:
                add(info.callback)
        for group in typer_app.registered_groups:
            add(group.callback)
            visit(group.typer_instance)

    visit(app)
    assert len(found) > 10, found  # the walk found the commands
    return found


def test_no_function_takes_more_than_eight_parameters() -> None:
    commands = typer_commands()
    offenders = []
    for path in modules():
        module = dotted(path)
        for qualname, fn in functions(ast.parse(path.read_text(encoding="utf-8"))):
            n = parameters(fn)
            if n > MAX_PARAMS and not (module.startswith("deliberate.cli") and (module, qualname) in commands):
                offenders.append(f"{module}.{qualname} ({n} parameters, line {fn.lineno})")
    assert not offenders, "more than 8 parameters:\n" + "\n".join(offenders)


def test_the_parameter_count_sees_every_kind() -> None:
    """The counter itself: a method's self does not count; *args, **kwargs and keyword-only do."""
    tree = ast.parse("class C:\n def m(self, a, /, b, *c, d, **e): pass\ndef f(cls): pass\n")
    found = dict(functions(tree))
    assert sorted(found) == ["C.m", "f"]
    assert parameters(found["C.m"]) == 5 and parameters(found["f"]) == 0


def test_no_module_passes_four_hundred_lines() -> None:
    offenders = []
    for path in modules():
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_LINES:
            offenders.append(f"{path.relative_to(ROOT)} ({lines} lines)")
    assert not offenders, "over 400 lines:\n" + "\n".join(offenders)


def root_imports(module: str, source: str, is_package: bool = False) -> list[str]:
    """The imports in ``source`` (of the module named ``module``) that read the package root:
    ``import deliberate`` (also ``import deliberate.x``, which binds the root), and ``from
    deliberate import NAME`` or its relative spelling (``from .. import NAME`` in a subpackage)
    where NAME is not a submodule, wherever they are (under TYPE_CHECKING or inside a function)."""
    package = module.split(".") if is_package else module.split(".")[:-1]  # where relative imports start
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [f"line {node.lineno}: import {a.name}" for a in node.names
                      if a.name.split(".")[0] == "deliberate"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target != "deliberate":
                continue
            names = [a.name for a in node.names if not is_submodule(a.name)]
            if names:
                found.append(f"line {node.lineno}: from {'.' * node.level}{node.module or ''} import "
                             + ", ".join(names))
    return found


def is_submodule(name: str) -> bool:
    """Whether ``deliberate.<name>`` is a module or subpackage (importing it is not reading the root)."""
    return (PACKAGE / f"{name}.py").is_file() or (PACKAGE / name / "__init__.py").is_file()


def test_no_module_imports_the_package_root() -> None:
    offenders = [f"{path.relative_to(ROOT)} {line}" for path in modules()
                 for line in root_imports(dotted(path), path.read_text(encoding="utf-8"), path.name == "__init__.py")]
    assert not offenders, "imports of the package root:\n" + "\n".join(offenders)


def test_the_root_import_check_sees_every_spelling() -> None:
    """The checker itself, on made-up modules of the package."""
    cases = [
        ("deliberate.cli.x", "from .. import __version__", True),
        ("deliberate.gateway.backends.x", "from ... import run_flow", True),
        ("deliberate.gateway.backends.x", "from .. import contracts", False),  # deliberate.gateway
        ("deliberate.x", "from . import __version__", True),
        ("deliberate.x", "from . import config", False),  # a sibling module, not a name of the root
        ("deliberate.x", "def f():\n    import deliberate.engine", True),
        ("deliberate.x", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from deliberate import Engine", True),
        ("deliberate.x", "from ._version import __version__\nfrom .engine import events", False),
        ("deliberate.x", "from deliberate.engine import events", False),
    ]
    for module, source, bad in cases:
        assert bool(root_imports(module, source)) is bad, (module, source)
    assert root_imports("deliberate.records", "from .. import __version__", is_package=True)
    assert not root_imports("deliberate", "from ._version import __version__", is_package=True)


def test_the_version_has_one_value() -> None:
    """The leaf module's version is pyproject's, and the root re-exports it."""
    import deliberate
    from deliberate._version import __version__

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert __version__ == deliberate.__version__
    assert "version" in project.get("dynamic", []) or project["version"] == __version__
