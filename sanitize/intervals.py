"""Confidence intervals shared by the stages (audit removal rates, dedup recall)."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

Z95 = 1.959963984540054


def normal_quantile(confidence: float) -> float:
    """z such that a standard normal lies within ±z with probability ``confidence``."""
    return Z95 if confidence == 0.95 else float(stats.norm.ppf(0.5 + confidence / 2))


def wilson_interval(successes: ArrayLike, trials: ArrayLike, confidence: float = 0.95
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided Wilson score interval for successes / trials, elementwise, clipped to [0, 1].

    ``trials`` may be non-integer (an effective sample size). Entries with trials <= 0 give (NaN, NaN); callers
    that want another convention for an empty sample apply it themselves.
    """
    k = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    z = normal_quantile(confidence)
    z2 = z * z
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(n > 0, k / n, np.nan)
        centre = (k + z2 / 2) / (n + z2)
        half = z * np.sqrt(np.clip(p * (1 - p) * n + z2 / 4, 0, None)) / (n + z2)
    lo = np.where(n > 0, np.clip(centre - half, 0.0, 1.0), np.nan)
    hi = np.where(n > 0, np.clip(centre + half, 0.0, 1.0), np.nan)
    return lo, hi
