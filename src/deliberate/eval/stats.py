"""Paired statistics for ``deliberate eval``: pure Python, exact where it can be.

scipy needs Python 3.12 and we support 3.11, so the few tests an eval needs live here:

- :func:`wilson`: a score's confidence interval (Wilson score interval, good near 0 and 1).
- :func:`mcnemar_exact`: pass/fail outcomes of the flow and a baseline on the same items; only the
  discordant pairs (one right, the other wrong) carry information, and under "no difference" each
  falls either way with probability 1/2. Exact binomial, two-sided.
- :func:`sign_test`: the same exact binomial on the signs of graded paired differences.
- :func:`paired_bootstrap`: the mean paired difference with a percentile interval, resampling
  items (not scores) so the pairing is kept; seeded, so a report is reproducible.
- :func:`holm`: Holm's step-down correction when one flow is compared with several baselines.
- :func:`compare`: all of the above for one flow/baseline pair, as a :class:`PairedComparison`
  with a plain verdict; :func:`adjust_holm` applies Holm across a list of them.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from statistics import NormalDist

#: Paired differences this close to zero count as ties (float noise in graded scores).
TIE_TOLERANCE = 1e-12
#: Significance level of the verdicts.
ALPHA = 0.05

FLOW_BETTER = "flow better"
FLOW_WORSE = "flow worse"
NO_DIFFERENCE = "no significant difference"


def normal_quantile(p: float) -> float:
    """The standard normal quantile: ``normal_quantile(0.975)`` is 1.95996..."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"quantile needs 0 < p < 1, got {p}")
    return NormalDist().inv_cdf(p)


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1 (exclusive), got {confidence}")


def wilson(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for ``successes`` out of ``n``; ``(0.0, 1.0)`` when ``n`` is 0."""
    _check_confidence(confidence)
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return (0.0, 1.0)
    z = normal_quantile(1.0 - (1.0 - confidence) / 2.0)
    p = successes / n
    denominator = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1.0 - p) / n + z * z / (4 * n * n)) / denominator
    # exact bounds at the edges (centre - half is 0 in theory, 3e-17 in floating point)
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return (low, high)


def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value for ``b`` and ``c`` discordant pairs:
    ``min(1, 2 * P(X <= min(b, c)))`` with ``X ~ Binomial(b + c, 1/2)``; 1.0 when there are none."""
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got {b} and {c}")
    n = b + c
    if n == 0:
        return 1.0
    # integer arithmetic keeps the tail exact however many pairs there are
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)


def _signs(diffs: Sequence[float]) -> tuple[int, int]:
    positive = sum(1 for d in diffs if d > TIE_TOLERANCE)
    negative = sum(1 for d in diffs if d < -TIE_TOLERANCE)
    return positive, negative


def sign_test(diffs: Sequence[float]) -> float:
    """Exact two-sided sign test on paired differences; zero differences (ties) are dropped."""
    return mcnemar_exact(*_signs(diffs))


def _percentile(ordered: Sequence[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default "linear" method)."""
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def paired_bootstrap(
    a: Sequence[float],
    b: Sequence[float],
    *,
    resamples: int = 10000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """Mean paired difference ``mean(a - b)`` and its percentile bootstrap interval
    ``(difference, low, high)``. Items are resampled with replacement by ``random.Random(seed)``,
    so the same inputs and seed give the same interval."""
    _check_confidence(confidence)
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} and {len(b)}")
    if not a:
        raise ValueError("paired bootstrap needs at least one item")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    diffs = [float(x) - float(y) for x, y in zip(a, b, strict=True)]
    n = len(diffs)
    rng = random.Random(seed)
    # only the sum of each resample matters: no per-item objects, one C-level draw per resample
    means = sorted(sum(rng.choices(diffs, k=n)) / n for _ in range(resamples))
    tail = (1.0 - confidence) / 2.0
    return (sum(diffs) / n, _percentile(means, tail), _percentile(means, 1.0 - tail))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values, in the order given: the i-th smallest p (from 0) is
    multiplied by ``m - i``, made non-decreasing along that order, and capped at 1."""
    for p in pvalues:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p-values must lie in [0, 1], got {p}")
    m = len(pvalues)
    adjusted = [0.0] * m
    running = 0.0
    for rank, index in enumerate(sorted(range(m), key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (m - rank) * pvalues[index]))
        adjusted[index] = running
    return adjusted


def verdict(p_value: float, flow_wins: int, baseline_wins: int, alpha: float = ALPHA) -> str:
    """"flow better" / "flow worse" when ``p_value < alpha`` (direction from who wins more of the
    discordant items, which is what the test measured), else "no significant difference"."""
    if p_value < alpha and flow_wins != baseline_wins:
        return FLOW_BETTER if flow_wins > baseline_wins else FLOW_WORSE
    return NO_DIFFERENCE


@dataclass(frozen=True)
class PairedComparison:
    """The flow against one baseline on the same ``n`` items.

    ``flow_wins``: items where the flow is right and the baseline wrong (binary scores) or the flow
    scores higher (graded); ``baseline_wins``: the reverse. ``difference`` is ``flow_mean -
    baseline_mean`` with its bootstrap interval ``[low, high]``. ``p_value`` is the raw p of
    ``test`` ("mcnemar" or "sign"); ``p_adjusted`` the one the verdict uses (the raw p until
    :meth:`adjusted` or :func:`adjust_holm` sets it).
    """

    n: int
    flow_mean: float
    baseline_mean: float
    difference: float
    low: float
    high: float
    test: str
    p_value: float
    p_adjusted: float
    flow_wins: int
    baseline_wins: int
    verdict: str

    def adjusted(self, p_adjusted: float, alpha: float = ALPHA) -> PairedComparison:
        """This comparison with an adjusted p-value (e.g. from :func:`holm`) and its verdict."""
        return replace(
            self,
            p_adjusted=p_adjusted,
            verdict=verdict(p_adjusted, self.flow_wins, self.baseline_wins, alpha),
        )


def compare(
    flow_scores: Sequence[float],
    baseline_scores: Sequence[float],
    *,
    binary: bool,
    seed: int = 0,
    resamples: int = 10000,
) -> PairedComparison:
    """Compare per-item scores of the flow and a baseline (same items, same order). ``binary``:
    scores are 0/1 (pass/fail, McNemar); else graded (sign test). Unadjusted verdict."""
    if len(flow_scores) != len(baseline_scores):
        raise ValueError(f"score lists differ in length: {len(flow_scores)} and {len(baseline_scores)}")
    if not flow_scores:
        raise ValueError("cannot compare zero items")
    if binary:
        for score in (*flow_scores, *baseline_scores):
            if score not in (0, 1):
                raise ValueError(f"binary scores must be 0 or 1, got {score!r}")
    n = len(flow_scores)
    difference, low, high = paired_bootstrap(flow_scores, baseline_scores, resamples=resamples, seed=seed)
    flow_wins, baseline_wins = _signs([f - b for f, b in zip(flow_scores, baseline_scores, strict=True)])
    p_value = mcnemar_exact(flow_wins, baseline_wins)
    return PairedComparison(
        n=n,
        flow_mean=sum(flow_scores) / n,
        baseline_mean=sum(baseline_scores) / n,
        difference=difference,
        low=low,
        high=high,
        test="mcnemar" if binary else "sign",
        p_value=p_value,
        p_adjusted=p_value,
        flow_wins=flow_wins,
        baseline_wins=baseline_wins,
        verdict=verdict(p_value, flow_wins, baseline_wins),
    )


def adjust_holm(comparisons: Sequence[PairedComparison], alpha: float = ALPHA) -> list[PairedComparison]:
    """Holm-adjust the raw p-values of the comparisons of one flow against several baselines and
    recompute each verdict; same order as given."""
    adjusted = holm([c.p_value for c in comparisons])
    return [c.adjusted(p, alpha) for c, p in zip(comparisons, adjusted, strict=True)]
