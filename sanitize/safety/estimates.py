"""Estimates with confidence intervals at a fixed threshold: precision, recall and removal rate.

Everything here is a pure function over numpy arrays. Inputs are the *random audit* labels only (see
`sanitize.safety.audit_sample.audit_labels`): rows chosen by active learning are picked because they are
informative, so counting them would bias every number below.

Intervals:

- A simple random sample gives exact Clopper–Pearson intervals (`clopper_pearson`).
- A weighted sample (``weights`` = 1 / inclusion probability, e.g. from a score-stratified draw) gives the
  weighted (Horvitz–Thompson ratio) point estimate and a Clopper–Pearson interval on Kish's effective sample
  size, ``n_eff = (sum w)^2 / sum w^2`` over the rows in the denominator. This is the usual survey
  approximation (Korn & Graubard, 1998); it is not exact, and is reported with ``method="kish-cp"``.

`removal_rate` over *all* scored rows is an exact count, not an estimate.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import special

from sanitize.errors import ConfigError, DataError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Estimate:
    """A proportion with a two-sided confidence interval.

    ``n`` is the number of labelled rows behind the estimate (the denominator count; for a weighted estimate,
    ``n_effective`` is Kish's effective sample size). ``value`` is NaN when ``n`` is 0 and the interval is then
    the uninformative [0, 1].
    """

    value: float
    lower: float
    upper: float
    confidence: float
    n: int
    n_effective: float
    method: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RemovalCount:
    """Exact removal at a threshold over every scored row: ``removed`` of ``total`` rows have score >= t."""

    removed: int
    total: int
    rate: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_level(value: float, name: str) -> float:
    """Return `value` as a float if it lies strictly inside (0, 1); else raise ConfigError naming `name`."""
    try:
        level = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number in (0, 1), got {value!r}") from None
    if not 0.0 < level < 1.0:  # also false for NaN
        raise ConfigError(f"{name} must be in (0, 1), got {value!r}")
    return level


def check_scores(scores: ArrayLike, name: str = "scores") -> np.ndarray:
    """Return `scores` as a 1-D float64 array; raise DataError on NaN/inf, naming the first bad row."""
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim != 1:
        raise DataError(f"{name} must be one-dimensional, got shape {arr.shape}")
    bad = ~np.isfinite(arr)
    if bad.any():
        first = int(np.argmax(bad))
        raise DataError(f"{name}: {int(bad.sum())} non-finite values (NaN or inf), first at row {first}")
    return arr


def check_audit_arrays(
    scores: ArrayLike, labels: ArrayLike, weights: ArrayLike | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Validate audit arrays: finite scores, labels in {0, 1}, equal lengths, weights >= 1 (1 / probability).

    Returns (scores float64, labels bool, weights float64 or None). Raises DataError on the first problem,
    naming the array and the row; an empty audit raises DataError too (there is nothing to estimate from).
    """
    s = check_scores(scores)
    raw = np.asarray(labels)
    if raw.ndim != 1:
        raise DataError(f"labels must be one-dimensional, got shape {raw.shape}")
    if raw.shape[0] != s.shape[0]:
        raise DataError(f"scores has {s.shape[0]} rows but labels has {raw.shape[0]}")
    if s.shape[0] == 0:
        raise DataError("no audit labels: the random-audit sample is empty")
    if raw.dtype == bool:
        y = raw
    else:
        try:
            num = raw.astype(np.float64)
        except (TypeError, ValueError):
            raise DataError(f"labels must be 0 or 1, got values of type {raw.dtype}") from None
        bad = ~((num == 0) | (num == 1))
        if bad.any():
            first = int(np.argmax(bad))
            raise DataError(f"labels must be 0 or 1, got {raw[first].item()!r} at row {first}")
        y = num == 1
    return s, y, check_weights(weights, s.shape[0])


def check_weights(weights: ArrayLike | None, n_rows: int) -> np.ndarray | None:
    """Validate weights (1 / inclusion probability: finite, >= 1, one per row); None passes through."""
    if weights is None:
        return None
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n_rows,):
        raise DataError(f"scores has {n_rows} rows but weights has shape {w.shape}")
    bad = ~np.isfinite(w) | (w < 1.0)
    if bad.any():
        first = int(np.argmax(bad))
        raise DataError(
            f"weights must be 1 / inclusion probability (finite, >= 1), got {w[first].item()!r} at row {first}"
        )
    return w


def clopper_pearson(
    successes: ArrayLike, trials: ArrayLike, confidence: float, *, side: str = "two-sided"
) -> tuple[np.ndarray, np.ndarray]:
    """Exact (Clopper–Pearson) binomial interval for successes / trials; vectorised.

    ``side="two-sided"`` splits 1 - confidence between both tails; ``"lower"`` / ``"upper"`` give a one-sided
    bound at the full confidence and the other end at 0 / 1. Successes may be non-integer (effective counts).
    Rows with 0 trials give [0, 1]. Returns (lower, upper) arrays.
    """
    confidence = check_level(confidence, "confidence")
    if side not in ("two-sided", "lower", "upper"):
        raise ConfigError(f"side must be 'two-sided', 'lower' or 'upper', got {side!r}")
    x = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    x, n = np.broadcast_arrays(x, n)
    alpha = 1.0 - confidence
    tail = alpha / 2 if side == "two-sided" else alpha
    with np.errstate(invalid="ignore", divide="ignore"):
        lower = np.where(x > 0, special.betaincinv(np.maximum(x, 1e-300), n - x + 1, tail), 0.0)
        upper = np.where(x < n, special.betaincinv(x + 1, np.maximum(n - x, 1e-300), 1 - tail), 1.0)
    if side == "lower":
        upper = np.ones_like(upper)
    elif side == "upper":
        lower = np.zeros_like(lower)
    empty = n <= 0
    lower = np.where(empty, 0.0, lower)
    upper = np.where(empty, 1.0, upper)
    return lower, upper


def weighted_proportion(hit: np.ndarray, weights: np.ndarray | None, confidence: float) -> Estimate:
    """Share of rows where `hit` is true, with an interval; weighted rows use Kish's effective size.

    `hit` is a boolean array over the denominator rows; `weights` the matching 1 / inclusion probabilities
    (None for a simple random sample, which gives the exact Clopper–Pearson interval).
    """
    n = int(hit.shape[0])
    if n == 0:
        return Estimate(float("nan"), 0.0, 1.0, confidence, 0, 0.0, "empty")
    if weights is None:
        k = int(hit.sum())
        lo, hi = clopper_pearson(k, n, confidence)
        return Estimate(k / n, float(lo), float(hi), confidence, n, float(n), "clopper-pearson")
    total = weights.sum()
    value = float(weights[hit].sum() / total)
    n_eff = float(total * total / np.square(weights).sum())
    lo, hi = clopper_pearson(value * n_eff, n_eff, confidence)
    return Estimate(value, float(lo), float(hi), confidence, n, n_eff, "kish-cp")


def precision_at(
    scores: ArrayLike,
    labels: ArrayLike,
    threshold: float,
    *,
    confidence: float = 0.95,
    weights: ArrayLike | None = None,
) -> Estimate:
    """Precision among audit rows flagged at `threshold` (score >= threshold): share that are positive."""
    confidence = check_level(confidence, "confidence")
    s, y, w = check_audit_arrays(scores, labels, weights)
    flagged = s >= threshold
    return weighted_proportion(y[flagged], None if w is None else w[flagged], confidence)


def recall_at(
    scores: ArrayLike,
    labels: ArrayLike,
    threshold: float,
    *,
    confidence: float = 0.95,
    weights: ArrayLike | None = None,
) -> Estimate:
    """Recall at a *fixed* `threshold`: share of audit positives with score >= threshold.

    The interval holds for a threshold chosen without looking at these labels. For a threshold chosen from
    them, use the certificate from `sanitize.safety.thresholds.certified_threshold`.
    """
    confidence = check_level(confidence, "confidence")
    s, y, w = check_audit_arrays(scores, labels, weights)
    return weighted_proportion(s[y] >= threshold, None if w is None else w[y], confidence)


def removal_rate(scores: ArrayLike, threshold: float) -> RemovalCount:
    """Exact count and share of *all* scored rows with score >= threshold (what the filter removes).

    NaN scores raise DataError (a NaN would silently count as kept). Linear in rows, one pass.
    """
    s = np.asarray(scores)
    if s.ndim != 1:
        raise DataError(f"scores must be one-dimensional, got shape {s.shape}")
    if np.issubdtype(s.dtype, np.floating):
        nan = np.isnan(s)
        if nan.any():
            raise DataError(f"scores: {int(nan.sum())} NaN values, first at row {int(np.argmax(nan))}")
    total = int(s.shape[0])
    removed = int(np.count_nonzero(s >= threshold))
    return RemovalCount(removed, total, removed / total if total else float("nan"))


def estimate_removal_rate(
    sample_scores: ArrayLike,
    threshold: float,
    *,
    confidence: float = 0.95,
    weights: ArrayLike | None = None,
) -> Estimate:
    """Removal rate estimated from a random sample of scored rows (labels not needed), with an interval.

    Useful before scoring every row; once all rows are scored, `removal_rate` gives the exact number.
    """
    confidence = check_level(confidence, "confidence")
    s = check_scores(sample_scores, "sample_scores")
    return weighted_proportion(s >= threshold, check_weights(weights, s.shape[0]), confidence)
