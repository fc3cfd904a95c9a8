"""Wilson intervals and normal quantiles at every confidence the stages use, against scipy's own."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from sanitize.intervals import normal_quantile, wilson_interval

CONFIDENCES = [0.8, 0.9, 0.95, 0.99]


@pytest.mark.parametrize("confidence", CONFIDENCES)
def test_normal_quantile_is_the_two_sided_standard_normal_point(confidence):
    # 1.2816 at 80%, 1.6449 at 90%, 1.9600 at 95%, 2.5758 at 99%: a 95% shortcut must not leak into the others
    assert normal_quantile(confidence) == pytest.approx(stats.norm.ppf(1 - (1 - confidence) / 2), rel=1e-12)


@pytest.mark.parametrize("confidence", [0.8, 0.9, 0.99])
@pytest.mark.parametrize(("k", "n"), [(0, 1), (1, 1), (1, 2), (3, 7), (5, 10), (0, 20), (20, 20), (37, 400)])
def test_wilson_interval_matches_scipy_at_other_confidences(k, n, confidence):
    reference = stats.binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    lo, hi = wilson_interval(k, n, confidence)
    assert float(lo) == pytest.approx(reference.low, abs=1e-12)
    assert float(hi) == pytest.approx(reference.high, abs=1e-12)
    assert float(lo) <= k / n <= float(hi)


def test_wider_confidence_gives_a_wider_interval():
    lo, hi = zip(*(wilson_interval(3, 10, c) for c in CONFIDENCES), strict=True)
    assert all(np.diff(np.ravel(lo)) < 0) and all(np.diff(np.ravel(hi)) > 0)
    # The 90% interval of 5 in 10 is [0.2693, 0.7307], never the other way round.
    lo90, hi90 = wilson_interval(5, 10, 0.9)
    assert (float(lo90), float(hi90)) == pytest.approx((0.2693, 0.7307), abs=1e-4)


def _wilson_roots(k: float, n: float, confidence: float) -> tuple[float, float]:
    """Both ends solve (k/n - p)^2 = z^2 p (1 - p) / n for p: the quadratic written out."""
    z2 = stats.norm.ppf(1 - (1 - confidence) / 2) ** 2
    phat = k / n
    a, b, c = 1 + z2 / n, -(2 * phat + z2 / n), phat * phat
    root = math.sqrt(b * b - 4 * a * c)
    return (-b - root) / (2 * a), (-b + root) / (2 * a)


@pytest.mark.parametrize("confidence", [0.9, 0.95])
@pytest.mark.parametrize(("k", "n"), [(0.3, 0.5), (0.5, 0.5), (0.0, 0.7), (1.0, 1.0), (0.25, 1.0), (1.2, 1.5)])
def test_effective_trials_of_one_or_fewer_still_give_an_interval(k, n, confidence):
    # Kish effective sample sizes and clustered recall trials can be at or below 1; they are not "no data".
    lo, hi = wilson_interval(k, n, confidence)
    assert np.isfinite(lo) and np.isfinite(hi)
    assert (float(lo), float(hi)) == pytest.approx(_wilson_roots(k, n, confidence), abs=1e-12)


def test_no_trials_give_nan_elementwise():
    lo, hi = wilson_interval([0, 2, 0], [0, 4, 0.0])
    assert np.isnan(lo[[0, 2]]).all() and np.isnan(hi[[0, 2]]).all()
    assert np.isfinite(lo[1]) and np.isfinite(hi[1])


def test_no_success_starts_at_zero_and_all_successes_end_at_one_exactly():
    # Rounding puts the Wilson end an ulp inside (1 - 1e-16 for 1 of 1 at 90%); the interval must still hold k/n.
    n = np.array([1, 2, 3, 10, 20, 0.5, 1000])
    for confidence in CONFIDENCES:
        lo, hi = wilson_interval(n, n, confidence)
        assert (hi == 1.0).all() and (lo < 1).all()
        lo, hi = wilson_interval(np.zeros_like(n), n, confidence)
        assert (lo == 0.0).all() and (hi > 0).all()


def test_interval_stays_in_the_unit_interval_where_rounding_would_leave_it():
    # k = n = 16: centre + half is 1 + 2e-16 before clipping; k a hair below n: the same
    assert float(wilson_interval(16, 16)[1]) == 1.0
    assert float(wilson_interval(37.34202584727987, 37.342025864920736)[1]) == 1.0
    # a tiny fractional success count: centre - half is about -3e-19 before clipping
    assert float(wilson_interval(4.182200660600041e-09, 4.520827254182408)[0]) == 0.0
    lo, hi = wilson_interval(np.arange(0, 1001), np.full(1001, 1000))
    assert (lo >= 0).all() and (hi <= 1).all()


def test_more_successes_than_trials_is_an_error():
    with pytest.raises(ValueError, match="successes"):
        wilson_interval([3, 11], [10, 10])
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(-1, 10)
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(0, -0.5)  # negative trials: no count of successes fits
