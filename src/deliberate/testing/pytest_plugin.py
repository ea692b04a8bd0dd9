"""The pytest plugin (entry point ``pytest11``): flow-test files as pytest items, and the
``flow_test`` fixture.

pytest collects ``*.test.yaml`` and ``flows/tests/*.yaml`` (when they are on the paths it is given:
``pytest flows/tests``), one item per case, with the same checks and messages as
``deliberate test``. The fixture runs a flow on scripted replies from Python::

    def test_stops_early(flow_test):
        result = flow_test("challenge", {"creator": "Draft", "challenger": "NO ISSUES", "refiner": "Done"},
                           inputs={"prompt": "x"}, expect={"output": "Done"})
        assert result.passed, result.failures
        assert result.actual["calls"]["total"] == 3

This module is imported by every pytest run in an environment where deliberate is installed:
it imports nothing of deliberate until a flow-test file or the fixture is used.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

_TEST_SUFFIX = ".test.yaml"


def _is_test_file(path: Path) -> bool:
    # the rule of deliberate.testing.report.is_test_file, repeated so this module imports nothing
    return path.name.endswith(_TEST_SUFFIX) or (
        path.suffix in (".yaml", ".yml") and path.parent.name == "tests" and path.parent.parent.name == "flows")


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    """A flow-test file becomes a :class:`FlowTestFile`; anything else is left alone."""
    if _is_test_file(file_path):
        return FlowTestFile.from_parent(parent, path=file_path)  # type: ignore[no-any-return]
    return None


class FlowTestFailed(Exception):
    """A case whose expectations did not hold (its failures, as ``deliberate test`` shows them)."""


class FlowTestFile(pytest.File):
    """One flow-test file: checked like ``deliberate test`` checks it, one item per case."""

    def collect(self) -> Iterator[pytest.Item]:
        from ..errors import FlowError
        from .api import case_registry
        from .spec import load_tests

        registry = case_registry()
        try:
            tests = load_tests(self.path, registry)
        except FlowError as exc:
            raise self.CollectError("\n".join(str(p) for p in exc.problems)) from None
        for i, case in enumerate(tests.spec.cases):
            yield FlowTestItem.from_parent(self, name=case.name, tests=tests, index=i, registry=registry)


class FlowTestItem(pytest.Item):
    """One case of a flow-test file."""

    def __init__(self, *, tests: Any, index: int, registry: Any, **kw: Any) -> None:
        super().__init__(**kw)
        self.tests, self.index, self.registry = tests, index, registry

    def runtest(self) -> None:
        from .runner import Runner

        result = asyncio.run(Runner(self.registry).run_case(self.tests, self.index))
        if not result.passed or result.unused:
            from .report import failure_text

            raise FlowTestFailed("\n\n".join([*(failure_text(f) for f in result.failures), *result.unused]))

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, FlowTestFailed):
            return f"case {self.name!r} of {self.path}:\n{excinfo.value}"
        return str(super().repr_failure(excinfo, style))

    def reportinfo(self) -> tuple[Path, int | None, str]:
        line = self.tests.where(("cases", self.index)).line
        return self.path, (line - 1 if line else None), f"flow test: {self.name}"


@pytest.fixture
def flow_test() -> Callable[..., Any]:
    """Run a flow on scripted replies, no model called: ``flow_test(flow, replies, inputs=...,
    expect=..., models=..., strategy=..., rounds=...)`` returns the case's result (``passed``,
    ``failures``, ``actual``). In an async test, await
    :func:`deliberate.testing.api.run_flow_test` instead."""
    from .api import run_flow_test

    def run(flow: str | Path, replies: dict[str, Any], **kw: Any) -> Any:
        return asyncio.run(run_flow_test(flow, replies, **kw))

    return run
