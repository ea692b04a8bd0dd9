"""The real CLI in a subprocess under an address-space limit, timed: how the hostile-input tests
run a command, so a bomb that got past its guard fails the test instead of the machine."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time

GB = 1024**3


def limited_cli(*args: str, limit: int = 2 * GB, input: str | None = None,
                env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run ``deliberate ARGS`` in a subprocess capped at ``limit`` bytes of address space; return
    the result and its wall time (printed, so ``pytest -s`` shows it)."""
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "deliberate", *args], capture_output=True, text=True,
                       input=input, env={**os.environ, **(env or {})}, preexec_fn=cap, timeout=60)
    wall = time.perf_counter() - t0
    print(f"{' '.join(args)[:60]}: exit {r.returncode} in {wall:.2f}s")
    return r, wall
