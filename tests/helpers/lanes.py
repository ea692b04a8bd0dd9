"""The two test lanes: ``make test`` (everything, full fuzzing) and ``make test-fast``
(``DELIBERATE_TEST_LANE=fast``: no built-in model, no Chromium, a quarter of the fuzz examples).
The fast lane runs every property with fewer examples, never skips one."""

from __future__ import annotations

import os

FAST = os.environ.get("DELIBERATE_TEST_LANE") == "fast"


def examples(n: int) -> int:
    """How many hypothesis examples a property gets in this lane: ``n``, or a quarter in the fast lane."""
    return max(10, n // 4) if FAST else n
