"""Confidence intervals shared by the stages (audit removal rates, dedup recall)."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats


def normal_quantile(confidence: float) -> float:
    """z such that a standard normal lies within ±z with probability ``confidence`` (1.959964 at 0.95)."""
    return float(stats.norm.ppf(0.5 + confidence / 2))


def wilson_interval(successes: ArrayLike, trials: ArrayLike, confidence: float = 0.95
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided Wilson score interval for successes / trials, elementwise, within [0, 1].

    ``trials`` may be non-integer (an effective sample size), also at or below 1. Entries with trials == 0 give
    (NaN, NaN); callers that want another convention for an empty sample apply it themselves. The interval
    holds successes / trials: it starts at exactly 0 when successes == 0 and ends at exactly 1 when successes
    == trials. Raises ValueError when a success count is negative or above its trials (so also for negative
    trials): a caller's bug, not an empty sample.
    """
    k = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    if np.any((k < 0) | (k > n)):
        raise ValueError("wilson_interval: successes must lie between 0 and trials")
    z = normal_quantile(confidence)
    z2 = z * z
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n  # NaN where n == 0, which carries through to both ends
        centre = (k + z2 / 2) / (n + z2)
        # p (1 - p) n + z2 / 4 >= z2 / 4 > 0 for 0 <= k <= n: nothing to clip under the root. At k = 0 the two
        # terms below are equal bit for bit, so the interval starts at 0.
        half = z * np.sqrt(p * (1 - p) * n + z2 / 4) / (n + z2)
    # Rounding can leave either end an ulp outside [0, 1] (centre + half is 1 + 2e-16 at k = n = 16, and
    # centre - half is -3e-17 for a tiny fractional k), and can put the end an ulp below 1 at k = n.
    lo = np.maximum(centre - half, 0.0)
    hi = np.where(k == n, 1.0, np.minimum(centre + half, 1.0))
    return lo, np.where(n > 0, hi, np.nan)
