"""The two test lanes: ``make test`` (everything, full fuzzing) and ``make test-fast``
(``DELIBERATE_TEST_LANE=fast``: no built-in model, no Chromium, a quarter of the fuzz examples,
fewer processes in the concurrency tests). The fast lane runs every property with fewer examples
or processes, never skips one."""

from __future__ import annotations

import os

FAST = os.environ.get("DELIBERATE_TEST_LANE") == "fast"


def examples(n: int) -> int:
    """How many hypothesis examples a property gets in this lane: ``n``, or a quarter in the fast lane."""
    return max(10, n // 4) if FAST else n


def processes(n: int, fast: int) -> int:
    """How many processes a concurrency test starts at once: ``n``, or ``fast`` in the fast lane
    (each CLI process costs about a CPU-second to start on this project's 2-core machines)."""
    return fast if FAST else n
