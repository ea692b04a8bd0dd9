"""Templates that would take the machine with them (``'x' * 10**10``, nested ``range(99999)``
loops, an exponential macro, ``center(9999999999)``, a string doubled in a loop) are refused
within the render budget: a validation error (exit 2) where the template is constant, else a
failed step with one clear line (exit 1), in well under a second and a few hundred MB.

Every case runs in a forked child under an address-space limit, so that a regression fails the
test instead of eating the machine. The time bounds asserted here are hang guards only; the
figures measured are printed (``pytest -s``)."""

from __future__ import annotations

import os
import pickle
import resource
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from deliberate.flows import templates
from deliberate.flows.templates import MAX_OUTPUT, TemplateLimit, TemplateProblem, constant_problem, render

CLI_MEMORY = 2 * 1024**3  # address space the CLI may add to what the parent maps (no torch: no local model)
RENDER_MEMORY = 1024**3  # address space a forked render may add to what the parent already maps
HANG_GUARD_S = 10.0

CONTEXT: dict[str, Any] = {"prompt": "hello " * 100, "items": ["a", "b", "c"]}


def _limit(memory: int) -> Any:
    def set_limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    return set_limit


def _mapped_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _forked(work: Any, memory: int, alarm_s: int) -> tuple[Any, float, int, int]:
    """``work()`` in a forked child allowed ``memory`` bytes more than the parent maps (a heavy
    parent, torch imported by earlier tests, already maps gigabytes) and an alarm: (its result,
    or None when the child died without one; seconds; peak RSS in MB; the wait status)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns to pytest
        os.close(read)
        try:
            _limit(_mapped_bytes() + memory)()
            signal.alarm(alarm_s)
            t0 = time.perf_counter()
            result = work()
            with os.fdopen(write, "wb") as f:
                pickle.dump((result, time.perf_counter() - t0), f)
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        data = f.read()
    _, status, usage = os.wait4(pid, 0)
    result, took = pickle.loads(data) if data else (None, 0.0)
    return result, took, usage.ru_maxrss // 1024, status


def _in_child(fn: Any, *args: Any) -> tuple[str, Any, float, int]:
    """Run ``fn(*args)`` under RENDER_MEMORY (see :func:`_forked`). Returns (kind, value,
    seconds, peak RSS in MB): kind "ok" (value: the result's length), "limit" or "problem"
    (value: the message), "error" (value: repr of the exception), or "killed"."""
    def work() -> tuple[str, Any]:
        try:
            out = fn(*args)
            return "ok", len(out) if hasattr(out, "__len__") else out
        except TemplateLimit as exc:
            return "limit", exc.message
        except TemplateProblem as exc:
            return "problem", exc.message
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            return "error", repr(exc)[:300]

    result, took, rss, _status = _forked(work, RENDER_MEMORY, int(HANG_GUARD_S) * 2)
    return (*result, took, rss) if result else ("killed", None, 0.0, rss)


# -- render() directly ----------------------------------------------------------------------------

RENDER_BOMBS = [
    # (template, a part of the one-line message)
    ("{{ 'x' * 10**10 }}", "string of 10,000,000,000 characters with '*'"),
    ("{{ prompt * 1000000000 }}", "string of 600,000,000,000 characters with '*'"),
    ("{% for i in range(99999) %}{% for j in range(99999) %}.{% endfor %}{% endfor %}",
     "more than 1,000,000 loop iterations"),
    ("{% for i in range(99999) %}{% for j in range(99999) %}{{ prompt }}{% endfor %}{% endfor %}",
     "characters in all"),
    ("{{ 'x' | center(9999999999) }}", "with filter 'center'"),
    ("{{ prompt | center(9999999999) }}", "with filter 'center'"),
    ("{{ '%9999999999s' | format('x') }}", "with filter 'format'"),
    ("{{ '%.999999999f' | format(1.5) }}", "with filter 'format'"),
    ("{{ '%9999999999s' % prompt }}", "with '%'"),
    ("{{ 'x'.ljust(10**9) }}", "with str.ljust()"),
    ("{{ prompt.zfill(10**10) }}", "with str.zfill()"),
    ("{{ ('\t' * 1000).expandtabs(10**9) }}", "with str.expandtabs()"),
    ("{{ prompt.replace('', prompt * 600) }}", "with str.replace()"),
    ("{{ '{:9999999999}'.format('x') }}", "with str.format()"),
    ("{{ ('{0}' * 1000000).format(prompt) }}", "with str.format()"),
    ("{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}"
     "{{ ns.s }}", "with '~'"),
    ("{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}"
     "{{ ns.s }}", "with '+'"),
    ("{% set ns = namespace(l=[1]) %}{% for i in range(60) %}{% set ns.l = [ns.l, ns.l] %}{% endfor %}"
     "{{ ns.l }}", "more than 4,000,000 characters"),
    ("{% set ns = namespace(n=3) %}{% for i in range(40) %}{% set ns.n = ns.n * ns.n %}{% endfor %}"
     "{{ ns.n }}", "bits with '*'"),
    ("{{ 2 ** 999999 }}", "bits with '**'"),
    ("{% macro f(n) %}{% if n > 0 %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}{{ f(40) }}",
     "to render"),
    ("{% macro f(n) %}{% if n > 0 %}{{ f(n-1) }}{{ f(n-1) }}{% else %}xx{% endif %}{% endmacro %}{{ f(40) }}",
     "to render"),
    ("{{ [1] | batch(999999999, 'x') | list }}", "list of 999,999,999 items with filter 'batch'"),
    ("{{ [1] | slice(999999999) | list }}", "list of 999,999,999 items with filter 'slice'"),
    ("{{ prompt | indent(999999999, true) }}", "with filter 'indent'"),
    ("{{ prompt | replace('l', prompt * 1000) }}", "with filter 'replace'"),
    ("{{ prompt | wordwrap(1, wrapstring=prompt * 100) }}", "with filter 'wordwrap'"),
    ("{{ ([prompt] * 5000) | join(prompt) }}", "with filter 'join'"),
    ("{{ 5 | round(-999999999) }}", "filter 'round'"),
    ("{{ (range(100000) | list) * 100 }}", "list of 10,000,000 items with '*'"),
    ("{{ [prompt] * 100000 }}", "with '*'"),
    ("{{ range(100000) | map('center', 4000000) | list | length }}", "characters in all"),
    ("{% for c in prompt * 6000 %}{% endfor %}", "more than 1,000,000 loop iterations"),
    ("{{ (prompt * 1000) | title }}", "filter 'title'"),
    ("{{ (prompt * 300) | list | sort }}", "filter 'sort'"),
    ("{{ prompt ~ prompt * 6666 }}", "with '~'"),
    ("{% for i in range(4) %}{{ prompt * 6600 }}{% endfor %}", "output is larger than 4,000,000"),
]


def freeze_the_render_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fake clock for the render budget that never moves: only the other limits can trip, so
    a bomb meant for the step or size limit meets it even on a machine busy enough that the
    0.5 s wall-clock limit would come first. (A fork inherits it.)"""
    from types import SimpleNamespace

    from deliberate.flows.sandbox import limits

    monkeypatch.setattr(limits, "time", SimpleNamespace(perf_counter=lambda: 0.0))


@pytest.mark.parametrize("source,needle", RENDER_BOMBS, ids=range(len(RENDER_BOMBS)))
def test_render_refuses_within_budget(source: str, needle: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if "to render" not in needle:
        freeze_the_render_clock(monkeypatch)  # a busy machine must not trip the 0.5 s limit first
    kind, message, took, rss = _in_child(render, source, CONTEXT)
    print(f"\n{took * 1000:7.1f} ms {rss:5d} MB  {source[:70]!r}: {message}")
    assert kind == "limit", (kind, message)
    assert needle in message and "\n" not in message
    assert "limit" in message  # each refusal names its limit
    assert took < HANG_GUARD_S


def test_lipsum_is_gone() -> None:
    kind, message, _took, _rss = _in_child(render, "{{ lipsum(999999999) }}", {})
    assert kind == "problem" and "'lipsum' is undefined" in message, (kind, message)


@pytest.mark.parametrize("source", [
    "{{ ({}).fromkeys(range(100000), prompt) }}", "{{ dict.fromkeys(range(100000), prompt) }}",
    "{{ prompt.translate({}) }}", "{{ (5).to_bytes(10**9) }}", "{% set d = {} %}{{ dict.update(d, a=1) }}",
])
def test_methods_outside_the_allow_list_are_refused(source: str) -> None:
    kind, message, _took, _rss = _in_child(render, source, CONTEXT)
    assert kind == "problem" and "refused by the sandbox" in message, (kind, message)


@pytest.mark.parametrize("expr,needle", [
    ("'x' * 10**10", "with '*'"), ("prompt * 10**9", "with '*'"), ("(prompt | center(10**10)) != ''", "center"),
])
def test_expressions_have_the_budget_too(expr: str, needle: str) -> None:
    kind, message, _took, _rss = _in_child(templates.evaluate, expr, CONTEXT)
    assert kind == "limit" and needle in message, (kind, message)


# -- what stays allowed ---------------------------------------------------------------------------

def test_sizes_under_the_limits_render() -> None:
    assert render("{{ 'x' * 1000 }}", {}) == "x" * 1000
    assert len(render("{{ prompt * 6000 }}", CONTEXT)) == 3_600_000
    assert render("{{ 'x' | center(9) }}|{{ 'x'.ljust(3) }}|{{ '%5s' | format('x') }}|{{ '{:>3}'.format('x') }}",
                  {}) == "    x    |x  |    x|  x"
    assert render("{{ 2 ** 100 }}", {}) == str(2**100)
    assert render("{% for i in range(1000) %}{% for j in range(500) %}{% endfor %}{% endfor %}ok", {}) == "ok"
    ns = "{% set ns = namespace(s='x') %}{% for i in range(20) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}"
    assert len(render(ns + "{{ ns.s }}", {})) == 2**20


def test_the_output_limit_is_the_module_constant() -> None:
    assert len(render("{{ 'x' * n }}", {"n": MAX_OUTPUT})) == MAX_OUTPUT
    with pytest.raises(TemplateLimit, match="characters with '\\*'"):
        render("{{ 'x' * n }}", {"n": MAX_OUTPUT + 1})
    with pytest.raises(TemplateLimit, match="output is larger than 4,000,000"):
        render("{{ a }}{{ a }}", {"a": "x" * (MAX_OUTPUT // 2 + 1)})  # the fast path checks it too


def test_each_render_has_its_own_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    # this is about the step budget (3 x 400,000 > 1,000,000): a busy machine (parallel workers)
    # must not trip the 0.5 s one instead
    freeze_the_render_clock(monkeypatch)
    source = "{% for i in range(40000) %}{% for j in range(9) %}{% endfor %}{% endfor %}ok"  # 400,000 steps
    for _ in range(3):
        assert render(source, {}) == "ok"


# -- validation: constant bombs are found without building them -----------------------------------

@pytest.mark.parametrize("source,needle", [
    ("{{ 'x' * 10**10 }}", "with '*'"), ("{{ 'x' | center(9999999999) }}", "filter 'center'"),
    ("{{ '%9999999999s' | format('x') }}", "filter 'format'"), ("{{ 'x'.ljust(10**9) }}", "str.ljust()"),
    ("a\nb\n{{ [1] | batch(10**9, 0) | list }}", "filter 'batch'"), ("{{ ('a' ~ 'b') * 10**8 }}", "'*'"),
    ("{% if prompt %}{{ 'x'.zfill(10**10) }}{% endif %}", "str.zfill()"),
    ("{{ '{:9999999999}'.format('x') }}", "str.format()"), ("{{ 7 ** 1000000000 }}", "bits with '**'"),
])
def test_constant_bombs_are_found_statically(source: str, needle: str) -> None:
    kind, problem, took, rss = _in_child(constant_problem, source)
    print(f"\n{took * 1000:7.1f} ms {rss:5d} MB  {source[:70]!r}")
    assert kind == "ok"  # the child returned the problem itself
    problem = constant_problem(source)  # known safe now: measured above
    assert problem is not None and needle in problem.message, problem
    assert problem.line == source.count("\n") + 1


@pytest.mark.parametrize("source", [
    "{{ prompt * 10**10 }}", "{{ 'x' * 1000 }}", "{{ 1 / 0 }}", "{{ 'x' | center(n) }}", "plain",
    "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}",
])
def test_what_depends_on_values_is_left_to_run_time(source: str) -> None:
    assert constant_problem(source) is None


# -- the real CLI ---------------------------------------------------------------------------------

def _cli(*args: str) -> tuple[int, str, float, int]:
    """The real CLI (``helpers.inproc.run_cli``: the entry point ``python -m deliberate`` runs)
    under CLI_MEMORY (see :func:`_forked`): (exit code, stderr, seconds, peak RSS in MB). A fork,
    not a new interpreter: it starts with deliberate imported, a CPU-second cheaper per case, and
    is as contained."""
    from helpers.inproc import run_cli

    def work() -> tuple[int, str]:
        done = run_cli(*args)
        return done.returncode, done.stderr

    result, took, rss, status = _forked(work, CLI_MEMORY, int(HANG_GUARD_S) * 3)
    if result is None:  # killed (the alarm, or the memory limit where Python could not even raise)
        return -1, f"the child ended with status {status} and said nothing", 0.0, rss
    return (*result, took, rss)


def _flow(path: Path, prompt: str) -> str:
    path.write_text("name: bomb\ninputs: {prompt: {}}\nsteps:\n  a:\n    prompt: " + repr(prompt) + "\n")
    return str(path)


CONSTANT = [
    ("{{ 'x' * 10**10 }}", "with '*'"),
    ("{{ 'x' | center(9999999999) }}", "filter 'center'"),
    ("{{ '%9999999999s' | format('x') }}", "filter 'format'"),
    ("{{ 'x'.ljust(10**9) }}", "str.ljust()"),
    ("{{ lipsum(999999999) }}", "unknown name 'lipsum'"),
]


@pytest.mark.parametrize("source,needle", CONSTANT, ids=[c[1] for c in CONSTANT])
def test_cli_validate_refuses_constant_bombs(isolated: Path, source: str, needle: str) -> None:
    path = _flow(isolated / "bomb.yaml", source)
    code, err, took, rss = _cli("flows", "validate", path)
    print(f"\nvalidate: {took:.2f} s {rss} MB  {source!r}")
    assert code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0] and f"{path}:5" in errors[0], err
    assert "Traceback" not in err
    assert took < HANG_GUARD_S


RUNTIME = [
    # steps or time, whichever runs out first
    ("{% for i in range(99999) %}{% for j in range(99999) %}{{ i }}{% endfor %}{% endfor %}", "per render"),
    ("{{ prompt * 1000000000 }}", "with '*'"),
    ("{{ prompt | center(9999999999) }}", "filter 'center'"),
    ("{{ '%9999999999s' | format(prompt) }}", "filter 'format'"),
    ("{{ prompt.ljust(10**9) }}", "str.ljust()"),
    ("{% set ns = namespace(s=prompt) %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}"
     "{{ ns.s }}", "with '~'"),
    ("{% macro f(n) %}{% if n > 0 %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}{{ f(40) ~ prompt }}",
     "to render"),
]


@pytest.mark.parametrize("source,needle", RUNTIME, ids=[c[1] for c in RUNTIME])
def test_cli_run_fails_the_step_with_one_line(scripted: Any, isolated: Path, source: str, needle: str) -> None:
    scripted.write([])
    path = _flow(isolated / "bomb.yaml", source)
    code, err, took, rss = _cli("run", path, "x")
    print(f"\nrun: {took:.2f} s {rss} MB  {source[:70]!r}")
    assert code == 1, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: step 'a': template ") and needle in errors[0], err
    assert "Traceback" not in err and not scripted.calls()  # refused before any model call
    assert took < HANG_GUARD_S
