"""The flow-test service: find, check and run test files (``deliberate test`` and the pytest
plugin are faces over it), and run one flow with scripted replies from Python."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Settings, get_settings
from ..errors import FlowError, InputError, Problem
from ..registry import Registry
from .runner import CaseResult, Runner, replies_registry
from .spec import Case, Expect, LoadedTests, TestFile, load_tests


@dataclass
class TestRun:
    """The outcome of a test session: results per case, the problems of bad files."""

    __test__ = False  # not a pytest test class

    files: list[Path]
    results: list[CaseResult] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def unused(self) -> list[str]:
        return [u for r in self.results for u in r.unused]

    @property
    def exit_code(self) -> int:
        """0 all passed, 1 a case failed, 2 a bad file (unused replies included)."""
        if self.problems or self.unused:
            return 2
        return 1 if any(not r.passed for r in self.results) else 0

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.exit_code == 0, "exit_code": self.exit_code,
                "passed": sum(r.passed for r in self.results), "failed": sum(not r.passed for r in self.results),
                "files": [str(f) for f in self.files], "problems": [p.to_dict() for p in self.problems],
                "unused_replies": self.unused, "cases": [r.to_json() for r in self.results]}


def case_registry(settings: Settings | None = None) -> Registry:
    """The user's registry (keys, windows, prices, strategies) served by the replies backend."""
    return replies_registry(Registry.load(settings or get_settings()))


def load_files(files: list[Path], registry: Registry) -> tuple[list[LoadedTests], list[Problem]]:
    """Every file checked; the problems of all the bad ones together."""
    loaded: list[LoadedTests] = []
    problems: list[Problem] = []
    for f in files:
        try:
            loaded.append(load_tests(f, registry))
        except FlowError as exc:
            problems += exc.problems
        except InputError as exc:
            problems.append(Problem(str(f), None, None, exc.line()))
    return loaded, problems


async def run_tests(files: list[Path], keyword: str | None = None, settings: Settings | None = None,
                    concurrency: int = 8) -> TestRun:
    """Check every file, then (when all are good) run their cases (``keyword``: as ``-k``)."""
    settings = settings or get_settings()
    registry = case_registry(settings)
    outcome = TestRun(files)
    loaded, outcome.problems = load_files(files, registry)
    if outcome.problems:
        return outcome
    outcome.results = await Runner(registry, settings, concurrency).run_all(loaded, keyword)
    return outcome


async def run_flow_test(flow: str | Path, replies: dict[str, Any], inputs: dict[str, Any] | None = None,
                        expect: dict[str, Any] | None = None, **case: Any) -> CaseResult:
    """Run ``flow`` once with scripted ``replies`` (no model called) and check ``expect``; the
    result's ``actual`` holds what the run did (output, calls, prompts, rounds, the record).
    ``case`` takes the other keys of a test case (``models``, ``strategy``, ``rounds``)."""
    from ..flows.loader import load_flow
    from .expect import Failure
    from .replies import Problems
    from .spec import _check_case

    settings = get_settings()
    registry = case_registry(settings)
    loaded = load_flow(str(flow), registry)
    spec = Case.model_validate({"name": case.pop("name", "run_flow_test"), "inputs": inputs or {},
                                "replies": replies, "expect": Expect.model_validate(expect or {}), **case})
    problems: Problems = []
    _check_case(loaded, spec, (), lambda loc, msg, hint=None: problems.append((loc, msg)), registry)
    if problems:
        where = ".".join(str(p) for p in problems[0][0])
        raise InputError(f"{where}: {problems[0][1]}")
    tests = LoadedTests(Path(str(loaded.source)), TestFile(flow=str(flow), cases=[spec]), loaded, {})
    result = await Runner(registry, settings).run_case(tests, 0)
    result.failures += [Failure("replies", u) for u in result.unused]
    return result
