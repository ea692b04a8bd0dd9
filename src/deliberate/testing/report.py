"""Finding test files, and writing results: the expected/actual diff of a failure, JUnit XML."""

from __future__ import annotations

import difflib
import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from ..errors import InputError
from .expect import Failure
from .runner import CaseResult

#: what the test runner and the pytest plugin collect
TEST_SUFFIX = ".test.yaml"
_SKIP_DIRS = {".git", ".venv", "venv", "node_modules", "__pycache__", "build", "dist", "runs", ".tox"}


def is_test_file(path: Path) -> bool:
    """``*.test.yaml`` anywhere, or a ``.yaml`` in a ``tests`` folder of a ``flows`` folder."""
    return path.name.endswith(TEST_SUFFIX) or (
        path.suffix in (".yaml", ".yml") and path.parent.name == "tests" and path.parent.parent.name == "flows")


def discover(paths: list[Path]) -> list[Path]:
    """The test files named, or found under the folders named (default: ``./flows`` and the
    ``*.test.yaml`` of the current folder). A path that does not exist is an error."""
    if not paths:
        found = sorted(Path(".").glob(f"*{TEST_SUFFIX}"))
        return found + (discover([Path("flows")]) if Path("flows").is_dir() else [])
    out: list[Path] = []
    for p in paths:
        if p.is_file():
            out.append(p)
        elif p.is_dir():
            for root, dirs, files in os.walk(p):
                dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("."))
                here = Path(root)
                out += [here / f for f in sorted(files) if is_test_file(here / f)
                        or (here == p and p.name == "tests" and f.endswith((".yaml", ".yml")))]
        else:
            raise InputError(f"no such file or folder: {p}", hint="name test files or folders that hold them")
    return list(dict.fromkeys(out))


def diff_text(f: Failure) -> list[str]:
    """Lines showing expected against actual: a unified diff for texts, both values otherwise."""
    if f.expected is None and f.actual is None:
        return []
    if isinstance(f.expected, str) and isinstance(f.actual, str) and f.message == "differs" \
            and "\n" in f.expected + f.actual:
        lines = list(difflib.unified_diff(f.expected.splitlines(), f.actual.splitlines(), "expected", "actual",
                                          lineterm="", n=2))
        return lines or [f"- expected: {f.expected!r}", f"+ actual:   {f.actual!r}"]
    return [f"- expected: {_short(f.expected)}", f"+ actual:   {_short(f.actual)}"]


def _short(value: Any, limit: int = 600) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def failure_text(f: Failure) -> str:
    return "\n".join([f"{f.what}: {f.message}", *diff_text(f)])


def junit_xml(results: list[CaseResult], path: Path) -> None:
    """Write JUnit XML: one ``testsuite`` per test file, one ``testcase`` per case (atomically)."""
    root = ET.Element("testsuites", name="deliberate", tests=str(len(results)),
                      failures=str(sum(not r.passed for r in results)),
                      time=f"{sum(r.seconds for r in results):.3f}")
    suites: dict[str, ET.Element] = {}
    for r in results:
        suite = suites.get(r.file)
        if suite is None:
            suite = suites[r.file] = ET.SubElement(root, "testsuite", name=r.file, tests="0", failures="0")
        suite.set("tests", str(int(suite.get("tests", "0")) + 1))
        case = ET.SubElement(suite, "testcase", classname=f"flows.{r.flow}", name=r.case, file=r.file,
                             time=f"{r.seconds:.3f}")
        if r.line is not None:
            case.set("line", str(r.line))
        if not r.passed:
            suite.set("failures", str(int(suite.get("failures", "0")) + 1))
            fail = ET.SubElement(case, "failure", message="; ".join(f"{f.what}: {f.message}" for f in r.failures))
            fail.text = "\n\n".join(failure_text(f) for f in r.failures)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    ET.ElementTree(root).write(tmp, encoding="utf-8", xml_declaration=True)
    os.replace(tmp, path)
