"""The eval statistics against values computed by hand (scipy is not installed: each comment
gives the scipy/statsmodels call that returns the same number, for whoever checks elsewhere)."""

from __future__ import annotations

import math
import time

import pytest

from deliberate.eval.stats import (
    FLOW_BETTER,
    FLOW_WORSE,
    NO_DIFFERENCE,
    _percentile,
    adjust_holm,
    compare,
    holm,
    mcnemar_exact,
    normal_quantile,
    paired_bootstrap,
    sign_test,
    verdict,
    wilson,
)


def test_mcnemar_ten_against_two_is_0_0386() -> None:
    # n = 12 discordant pairs; P(X <= 2) = (C(12,0) + C(12,1) + C(12,2)) / 2^12 = 79 / 4096
    # two-sided: 158 / 4096 = 0.03857421875 (scipy.stats.binomtest(2, 12, 0.5).pvalue)
    assert round(mcnemar_exact(10, 2), 4) == 0.0386
    assert mcnemar_exact(10, 2) == pytest.approx(158 / 4096, abs=1e-15)
    assert mcnemar_exact(2, 10) == mcnemar_exact(10, 2)


@pytest.mark.parametrize(
    ("b", "c", "expected"),
    [
        (0, 0, 1.0),  # no discordant pair: no evidence either way
        (5, 5, 1.0),  # 2 * 638/1024 > 1, capped
        (0, 6, 2 / 64),  # 2 * (1/2)^6 = 0.03125 (binomtest(0, 6).pvalue)
        (1, 7, 2 * 9 / 256),  # 2 * (1 + 8) / 2^8 = 0.0703125 (binomtest(1, 8).pvalue)
        (3, 4, 1.0),  # 2 * (1+7+21+35)/128 = 1.0
    ],
)
def test_mcnemar_by_hand(b: int, c: int, expected: float) -> None:
    assert mcnemar_exact(b, c) == pytest.approx(expected, abs=1e-15)


def test_mcnemar_is_exact_for_many_pairs() -> None:
    # 2 * P(X <= 400) for Binomial(1000, 1/2): the normal approximation gives z = (400.5-500)/sqrt(250)
    # = -6.293, p = 2 * 1.56e-10 = 3.1e-10; the exact tail is close to that and far above 0
    p = mcnemar_exact(400, 600)
    assert 1e-10 < p < 1e-9
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 3)


def test_wilson_eight_of_ten() -> None:
    # z = 1.959964; centre = (0.8 + z^2/20) / (1 + z^2/10) = 0.716728
    # half = z * sqrt(0.016 + z^2/400) / (1 + z^2/10) = 0.226578
    # statsmodels proportion_confint(8, 10, method="wilson") -> (0.4902, 0.9433)
    low, high = wilson(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)


def test_wilson_edges_and_symmetry() -> None:
    # 0 of 10: centre = half = (z^2/20) / (1 + z^2/10) = 0.138767 -> (0, 0.2775)
    low, high = wilson(0, 10)
    assert low == 0.0 and round(high, 4) == 0.2775
    low, high = wilson(10, 10)
    assert round(low, 4) == 0.7225 and high == 1.0
    assert wilson(0, 0) == (0.0, 1.0)
    a, b = wilson(3, 17, 0.9), wilson(14, 17, 0.9)
    assert a[0] == pytest.approx(1 - b[1]) and a[1] == pytest.approx(1 - b[0])
    # a wider confidence gives a wider interval
    assert wilson(8, 10, 0.99)[0] < wilson(8, 10)[0] < wilson(8, 10, 0.8)[0]
    for bad in ((11, 10), (-1, 10), (1, -1)):
        with pytest.raises(ValueError):
            wilson(*bad)
    with pytest.raises(ValueError):
        wilson(1, 2, 1.0)


def test_normal_quantile() -> None:
    assert normal_quantile(0.975) == pytest.approx(1.959964, abs=1e-6)
    assert normal_quantile(0.5) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError):
        normal_quantile(1.0)


def test_sign_test_by_hand() -> None:
    # six positive, one negative, one tie (dropped): n = 7, 2 * (C(7,0) + C(7,1)) / 2^7 = 0.125
    assert sign_test([0.5, 0.2, -0.1, 0.3, 0.0, 0.7, 0.4, 0.9]) == pytest.approx(0.125, abs=1e-15)
    # five positive of five: 2 / 32 = 0.0625 (binomtest(5, 5).pvalue)
    assert sign_test([0.1, 0.2, 0.3, 0.4, 0.5]) == pytest.approx(0.0625, abs=1e-15)
    # the magnitude does not matter, only the sign
    assert sign_test([100.0, -0.001, 3.0]) == sign_test([0.001, -100.0, 0.2])
    assert sign_test([]) == 1.0


def test_sign_test_float_noise_is_a_tie() -> None:
    noise = 0.1 + 0.2 - 0.3  # 5.5e-17, not a real difference
    assert noise != 0.0
    assert sign_test([noise] * 10) == 1.0
    assert sign_test([1.0] * 6 + [noise] * 10) == pytest.approx(2 / 64)


def test_holm_known_example() -> None:
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> raised to 0.06
    # statsmodels multipletests([0.01, 0.04, 0.03, 0.005], method="holm")[1]
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_holm_caps_at_one_and_keeps_order() -> None:
    assert holm([0.5, 0.6]) == [1.0, 1.0]
    assert holm([0.2]) == [0.2]
    assert holm([]) == []
    adjusted = holm([0.04, 0.001, 0.02, 0.3])
    # non-decreasing along the order of the raw p-values, never below the raw value
    assert adjusted == pytest.approx([0.08, 0.004, 0.06, 0.3])
    with pytest.raises(ValueError):
        holm([0.1, 1.5])


def test_percentile_matches_numpys_linear_method() -> None:
    # numpy.percentile([1, 2, 3, 4], 25) == 1.75; 50 -> 2.5; 100 -> 4
    assert _percentile([1.0, 2.0, 3.0, 4.0], 0.25) == 1.75
    assert _percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert _percentile([1.0, 2.0, 3.0, 4.0], 1.0) == 4.0
    assert _percentile([7.0], 0.3) == 7.0


def test_bootstrap_is_reproducible_and_seeded() -> None:
    a = [0.91, 0.42, 0.77, 0.65, 0.12, 0.88, 0.97, 0.53, 0.31, 0.74, 0.05, 0.66, 0.81, 0.59, 0.93]
    b = [0.35, 0.48, 0.70, 0.20, 0.15, 0.80, 0.61, 0.44, 0.36, 0.71, 0.52, 0.18, 0.79, 0.27, 0.90]
    first = paired_bootstrap(a, b, resamples=2000, seed=7)
    assert paired_bootstrap(a, b, resamples=2000, seed=7) == first
    other = paired_bootstrap(a, b, resamples=2000, seed=8)
    assert other != first
    difference, low, high = first
    assert difference == pytest.approx((sum(a) - sum(b)) / 15)
    assert low < difference < high
    assert other[0] == difference  # the point estimate does not depend on the seed


def test_bootstrap_zero_width_when_all_differences_equal() -> None:
    assert paired_bootstrap([1.0, 1.0, 1.0], [0.0, 0.0, 0.0], resamples=500) == (1.0, 1.0, 1.0)
    assert paired_bootstrap([0.7, 0.9], [0.2, 0.4], resamples=100) == pytest.approx((0.5, 0.5, 0.5))


def test_bootstrap_interval_matches_the_normal_interval() -> None:
    # 60 of 100 differences are 1, the rest 0: mean 0.6, standard error sqrt(0.24/100) = 0.049,
    # so the 95% interval is about 0.6 -+ 0.096 = (0.504, 0.696)
    a = [1] * 60 + [0] * 40
    b = [0] * 100
    difference, low, high = paired_bootstrap(a, b, resamples=4000, seed=1)
    assert difference == pytest.approx(0.6)
    assert low == pytest.approx(0.504, abs=0.025)
    assert high == pytest.approx(0.696, abs=0.025)
    # a 50% interval is much narrower (about -+ 0.033)
    _, low50, high50 = paired_bootstrap(a, b, resamples=4000, seed=1, confidence=0.5)
    assert 0.04 < high50 - low50 < 0.1


def test_bootstrap_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        paired_bootstrap([1, 0], [1])
    with pytest.raises(ValueError):
        paired_bootstrap([], [])
    with pytest.raises(ValueError):
        paired_bootstrap([1], [0], resamples=0)


def test_bootstrap_is_fast_enough_for_a_large_eval() -> None:
    a = [(i * 7919) % 3 / 2 for i in range(1000)]
    b = [(i * 104729) % 5 / 4 for i in range(1000)]
    start = time.perf_counter()
    difference, low, high = paired_bootstrap(a, b, resamples=10000)
    elapsed = time.perf_counter() - start
    assert low < difference < high
    # about 0.7 s on one free core; generous for a shared machine
    assert elapsed < 6.0, elapsed


def _binary_arms() -> tuple[list[int], list[int]]:
    """10 items only the flow gets right, 2 only the baseline, 8 both, 5 neither (25 items)."""
    flow = [1] * 10 + [0] * 2 + [1] * 8 + [0] * 5
    baseline = [0] * 10 + [1] * 2 + [1] * 8 + [0] * 5
    return flow, baseline


def test_compare_binary_counts_the_discordant_pairs() -> None:
    flow, baseline = _binary_arms()
    result = compare(flow, baseline, binary=True, resamples=2000)
    assert result.n == 25
    assert (result.flow_wins, result.baseline_wins) == (10, 2)
    assert result.test == "mcnemar"
    assert round(result.p_value, 4) == 0.0386 and result.p_adjusted == result.p_value
    assert result.flow_mean == pytest.approx(18 / 25) and result.baseline_mean == pytest.approx(10 / 25)
    assert result.difference == pytest.approx(8 / 25)
    assert result.low < result.difference < result.high
    assert result.verdict == FLOW_BETTER
    assert compare(flow, baseline, binary=True, resamples=2000) == result  # seeded


def test_compare_says_when_the_flow_loses() -> None:
    flow, baseline = _binary_arms()
    result = compare(baseline, flow, binary=True, resamples=500)
    assert (result.flow_wins, result.baseline_wins) == (2, 10)
    assert result.difference == pytest.approx(-8 / 25)
    assert result.verdict == FLOW_WORSE


def test_holm_adjustment_can_remove_significance() -> None:
    flow, baseline = _binary_arms()
    strong = compare(flow, baseline, binary=True, resamples=500)
    weak = compare([1, 0, 1, 0], [0, 1, 1, 0], binary=True, resamples=500)  # 1 vs 1: p = 1
    adjusted = adjust_holm([strong, weak])
    # 0.0386 * 2 = 0.0771 > 0.05: no longer significant once two baselines are tested
    assert adjusted[0].p_value == strong.p_value
    assert adjusted[0].p_adjusted == pytest.approx(2 * 158 / 4096)
    assert adjusted[0].verdict == NO_DIFFERENCE
    assert adjusted[1].p_adjusted == 1.0 and adjusted[1].verdict == NO_DIFFERENCE
    assert strong.adjusted(0.01).verdict == FLOW_BETTER


def test_compare_graded_uses_the_sign_test() -> None:
    flow = [0.9, 0.8, 0.7, 0.95, 0.6, 0.85, 0.5]
    baseline = [0.5, 0.4, 0.7, 0.3, 0.2, 0.1, 0.6]
    result = compare(flow, baseline, binary=False, resamples=1000)
    # wins 5, losses 1, one tie: 2 * (1 + 6) / 64 = 0.21875
    assert result.test == "sign"
    assert (result.flow_wins, result.baseline_wins) == (5, 1)
    assert result.p_value == pytest.approx(0.21875)
    assert result.verdict == NO_DIFFERENCE
    assert result.difference == pytest.approx(sum(flow) / 7 - sum(baseline) / 7)


def test_verdict_direction_follows_the_wins() -> None:
    assert verdict(0.01, 9, 1) == FLOW_BETTER
    assert verdict(0.01, 1, 9) == FLOW_WORSE
    assert verdict(0.05, 9, 1) == NO_DIFFERENCE  # alpha is strict
    assert verdict(0.01, 3, 3) == NO_DIFFERENCE
    assert verdict(0.09, 9, 1, alpha=0.1) == FLOW_BETTER


def test_compare_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        compare([1, 0], [1], binary=True)
    with pytest.raises(ValueError):
        compare([], [], binary=True)
    with pytest.raises(ValueError):
        compare([0.5, 1], [1, 0], binary=True)
    assert not math.isnan(compare([True, False], [False, False], binary=True, resamples=10).difference)
