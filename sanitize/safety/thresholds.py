"""Certified recall-favouring thresholds: the highest score cut whose recall is >= target with known confidence.

A filter flags a row when ``score >= threshold``. Recall at t is the share of all true positives in the pool
with score >= t. From a random audit sample we pick the *highest* t whose one-sided lower confidence bound on
recall is >= ``target_recall``; a higher threshold removes less clean data, a lower one is safer.

Simple random sample (``weights=None``), the order-statistic certificate
    Let x_(1) <= ... <= x_(n) be the scores of the n audit positives. At a fixed t the number of audit
    positives below t is Binomial(n, 1 - recall(t)) given n, so the one-sided Clopper–Pearson bound is exact.
    That bound depends on t only through the miss count and falls as t rises, so "the highest t whose
    bound is >= target" is always t = x_(k+1), where k (``misses_allowed``) is the largest miss count whose
    bound still reaches the target. k depends on n, the target and the confidence alone, never on the score
    values: choosing t from the same labels is choosing a fixed order statistic. For continuous scores the
    pool miss rate at x_(k+1) is distributed exactly as the (k+1)-th smallest of n uniforms, Beta(k+1, n-k),
    and P(Beta(k+1, n-k) <= 1 - L) = confidence for L the Clopper–Pearson bound with k misses, so
    P(recall(x_(k+1)) >= L) = confidence. With ties the miss rate at x_(k+1) can only be smaller, so the
    bound is conservative. It holds given n, hence for every number of positives the sample happens to hold.
    Example: 299 positives and no miss certify recall >= 0.99 at 95% (0.99^299 < 0.05).

Weighted (stratified) sample, stratum-wise bounds combined with Bonferroni
    Each stratum h (N_h rows, n_h drawn at random, weight N_h / n_h) gives, at a fixed t, binomial counts
    of audit rows that are positives below t (missed) and positives at or above t (caught). One-sided
    Clopper–Pearson bounds at level alpha / (2 H) for each of the 2 H counts (H strata sampled below
    100%; fully labelled strata are exact) hold together with probability >= confidence, and give
    recall(t) >= C_low / (C_low + M_high) with C_low = sum N_h * caught_low_h and M_high = sum N_h *
    missed_high_h. This bound falls as t rises, and a bound that is valid at every fixed t and monotone in
    t stays valid for the highest t passing it (if recall(t*) < target, then some fixed t' <= t* with
    recall(t') < target also passed). Assumptions: strata are sampled independently and at random, N_h is
    known (weight * labelled rows), and drawing without replacement is treated as binomial (accurate when a
    stratum is much larger than its sample; fully labelled strata are handled exactly). Rare positives in
    big, thinly sampled low-score strata make this bound loose: that is what the data can and cannot say.
    Bonferroni makes it conservative (violation rates simulated with `sanitize.testing.simulation` are well
    under 1 - confidence); a simple random sample of the same size usually certifies a higher threshold.

Not certifiable (too few positives): the certificate falls back to the lowest audit positive score
(``fallback="min-positive-score"``: every labelled positive is flagged), reports the recall bound that
threshold really has, and says how many more random labels are needed; with no audit positive at all it
flags every row (``fallback="flag-all"``, threshold -inf), the only threshold with known recall.

Only random-audit labels may go in: get them through `sanitize.safety.audit_sample.audit_labels`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import special

from sanitize.errors import ConfigError, DataError
from sanitize.safety.estimates import check_audit_arrays, check_level

logger = logging.getLogger(__name__)

ORDER_STATISTIC = "order-statistic"
STRATIFIED_BONFERRONI = "stratified-bonferroni"


@dataclass(frozen=True)
class ThresholdCertificate:
    """The chosen threshold and everything needed to trust (or distrust) it.

    ``threshold``: flag rows with score >= threshold (the certified one, or the fallback when not certified).
    ``certified``: recall >= target_recall holds with probability >= confidence at this threshold.
    ``recall_lower_bound``: the one-sided lower confidence bound on recall at ``threshold``.
    ``recall_estimate``: the audit sample's (weighted) recall at ``threshold``.
    ``misses_allowed``: audit positives the certificate lets fall below the threshold.
    ``more_labels_needed``: when not certified, how many more random audit labels, at the observed
    prevalence, are expected to give enough positives to certify with zero misses (None when certified, or
    when no positive has been seen so no prevalence is known).
    ``fallback``: None when certified, else the rule that chose ``threshold``.
    """

    threshold: float
    certified: bool
    target_recall: float
    confidence: float
    recall_lower_bound: float
    recall_estimate: float
    n_positives: int
    n_labels: int
    misses_allowed: int
    more_labels_needed: int | None
    method: str
    fallback: str | None

    def flags(self, scores: ArrayLike) -> np.ndarray:
        """Boolean mask of rows this threshold removes (score >= threshold)."""
        return np.asarray(scores) >= self.threshold

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def min_positives(target_recall: float, confidence: float) -> int:
    """Fewest random audit positives that can certify `target_recall` at `confidence` (with zero misses).

    The smallest n with target_recall ** n <= 1 - confidence, e.g. 299 for 0.99 at 95%.
    """
    target = check_level(target_recall, "target_recall")
    alpha = 1.0 - check_level(confidence, "confidence")
    n = math.ceil(math.log(alpha) / math.log(target))  # >= 1: both logs are negative
    # Agree exactly with the bound certified_threshold computes, whatever the rounding of the logs.
    while n > 1 and _cp_lower_misses(n - 1, 0, alpha) >= target:
        n -= 1
    while _cp_lower_misses(n, 0, alpha) < target:
        n += 1
    return n


def _cp_lower_misses(n_pos: int | np.ndarray, misses: int | np.ndarray, alpha: float) -> np.ndarray:
    """One-sided Clopper–Pearson lower bound on recall with `misses` of `n_pos` positives missed."""
    return special.betaincinv(n_pos - misses, misses + 1, alpha)


def certified_threshold(
    scores: ArrayLike,
    labels: ArrayLike,
    *,
    target_recall: float,
    confidence: float,
    weights: ArrayLike | None = None,
    strata: ArrayLike | None = None,
) -> ThresholdCertificate:
    """Choose the highest threshold whose recall >= target_recall is certified at `confidence`.

    In: the scores and 0/1 labels of the random-audit rows (never actively chosen rows), and for a weighted
    sample ``weights`` = 1 / inclusion probability, optionally with the ``strata`` the rows were drawn in
    (without them, rows of equal weight form one stratum). Out: a `ThresholdCertificate`.
    Guaranteed: see the module docstring — for a simple random sample P(recall(threshold) >= target) >=
    confidence whenever ``certified`` is true, for any score distribution.
    Raises ConfigError for target_recall / confidence outside (0, 1); DataError for no audit labels, NaN
    scores, labels other than 0/1, mismatched lengths, bad weights or strata with mixed weights.
    """
    target = check_level(target_recall, "target_recall")
    conf = check_level(confidence, "confidence")
    s, y, w = check_audit_arrays(scores, labels, weights)
    groups = _strata(w, strata, s.size)
    cert = _order_statistic(s, y, target, conf) if groups is None else _stratified(s, y, w, groups, target, conf)
    logger.info(
        "threshold %.6g (%s): recall >= %.4f at %.0f%% from %d positives of %d labels%s",
        cert.threshold, cert.method, cert.recall_lower_bound, 100 * conf, cert.n_positives, cert.n_labels,
        "" if cert.certified else f", NOT certified for {target} (fallback {cert.fallback})",
    )
    return cert


def _strata(w: np.ndarray | None, strata: ArrayLike | None, n_rows: int) -> np.ndarray | None:
    """Stratum index per row, or None when the sample is one simple random sample (equal weights)."""
    if w is None:
        if strata is not None:
            raise ConfigError("strata given without weights; pass weights = 1 / inclusion_probability too")
        return None
    if strata is None:
        _, groups = np.unique(w, return_inverse=True)
    else:
        raw = np.asarray(strata)
        if raw.shape != (n_rows,):
            raise DataError(f"scores has {n_rows} rows but strata has shape {raw.shape}")
        _, groups = np.unique(raw, return_inverse=True)
    n_groups = int(groups.max()) + 1
    if n_groups == 1:
        return None
    lo = np.full(n_groups, np.inf)
    hi = np.full(n_groups, -np.inf)
    np.minimum.at(lo, groups, w)
    np.maximum.at(hi, groups, w)
    mixed = np.flatnonzero(hi - lo > 1e-9 * hi)
    if mixed.size:
        raise DataError(f"weights differ inside stratum {int(mixed[0])}; a stratum has one inclusion probability")
    return groups


def _order_statistic(s: np.ndarray, y: np.ndarray, target: float, conf: float) -> ThresholdCertificate:
    alpha = 1.0 - conf
    pos = np.sort(s[y])
    n_pos, n_labels = int(pos.size), int(s.size)
    if n_pos == 0:
        return _flag_all(target, conf, n_labels, ORDER_STATISTIC)
    # At confidence >= 1/2 the bound lies below the point recall, so it can only pass when the point recall does:
    # misses beyond n(1 - target) (< n) need no check. Below 1/2 the bound can lie above it: check them all.
    k = np.arange(math.floor(n_pos * (1 - target)) + 1 if conf >= 0.5 else n_pos)
    bounds = _cp_lower_misses(n_pos, k, alpha)
    passing = int(np.cumprod(bounds >= target).sum())
    if passing == 0:
        needed = min_positives(target, conf) - n_pos
        return ThresholdCertificate(
            threshold=float(pos[0]), certified=False, target_recall=target, confidence=conf,
            recall_lower_bound=float(bounds[0]), recall_estimate=1.0, n_positives=n_pos, n_labels=n_labels,
            misses_allowed=0, more_labels_needed=math.ceil(needed * n_labels / n_pos),
            method=ORDER_STATISTIC, fallback="min-positive-score",
        )
    k_max = passing - 1
    threshold = float(pos[k_max])
    missed = int(np.searchsorted(pos, threshold, side="left"))
    return ThresholdCertificate(
        threshold=threshold, certified=True, target_recall=target, confidence=conf,
        recall_lower_bound=float(bounds[k_max]), recall_estimate=(n_pos - missed) / n_pos,
        n_positives=n_pos, n_labels=n_labels, misses_allowed=k_max, more_labels_needed=None,
        method=ORDER_STATISTIC, fallback=None,
    )


def _flag_all(target: float, conf: float, n_labels: int, method: str) -> ThresholdCertificate:
    # No positive seen: nothing tells where positives score, so only flagging everything has known recall.
    return ThresholdCertificate(
        threshold=-math.inf, certified=False, target_recall=target, confidence=conf, recall_lower_bound=1.0,
        recall_estimate=1.0, n_positives=0, n_labels=n_labels, misses_allowed=0, more_labels_needed=None,
        method=method, fallback="flag-all",
    )


def _stratified(
    s: np.ndarray, y: np.ndarray, w: np.ndarray, groups: np.ndarray, target: float, conf: float
) -> ThresholdCertificate:
    n_groups = int(groups.max()) + 1
    n_labels = int(s.size)
    n_h = np.bincount(groups, minlength=n_groups)
    w_h = np.zeros(n_groups)
    w_h[groups] = w
    size_h = w_h * n_h
    pos_h = np.bincount(groups[y], minlength=n_groups)
    n_pos = int(pos_h.sum())
    if n_pos == 0:
        return _flag_all(target, conf, n_labels, STRATIFIED_BONFERRONI)

    census = np.isclose(w_h, 1.0)  # fully labelled strata are known exactly and spend no confidence
    alpha_each = (1.0 - conf) / max(2 * int(np.count_nonzero(~census)), 1)
    candidates = np.unique(s[y])  # the bound only changes at positive scores; see the module docstring
    pos_by_stratum = [np.sort(s[y & (groups == h)]) for h in range(n_groups)]
    positives_weighted = float((w_h * pos_h).sum())

    def missed_at(j: int) -> np.ndarray:
        return np.array([np.searchsorted(p, candidates[j], side="left") for p in pos_by_stratum])

    def bound_at(j: int) -> float:
        a = missed_at(j)
        b = pos_h - a
        with np.errstate(invalid="ignore", divide="ignore"):
            up = np.where(a < n_h, special.betaincinv(a + 1, n_h - a, 1 - alpha_each), 1.0)
            lo = np.where(b > 0, special.betaincinv(b, n_h - b + 1, alpha_each), 0.0)
        up = np.where(census, a / n_h, up)
        lo = np.where(census, b / n_h, lo)
        c_low, m_high = float((size_h * lo).sum()), float((size_h * up).sum())
        return c_low / (c_low + m_high)  # c_low > 0: at a positive score some stratum catches one

    def estimate_at(j: int) -> float:
        return 1.0 - float((missed_at(j) * w_h).sum()) / positives_weighted

    first = bound_at(0)
    if first < target:
        prevalence = positives_weighted / float(size_h.sum())
        return ThresholdCertificate(
            threshold=float(candidates[0]), certified=False, target_recall=target, confidence=conf,
            recall_lower_bound=first, recall_estimate=estimate_at(0), n_positives=n_pos, n_labels=n_labels,
            misses_allowed=0,
            # A fresh simple random sample certifies with zero misses once it holds min_positives positives.
            more_labels_needed=math.ceil(min_positives(target, conf) / prevalence),
            method=STRATIFIED_BONFERRONI, fallback="min-positive-score",
        )
    # The bound falls as the threshold rises, so bisect for the last passing candidate: O(log n) bounds.
    j, failing = 0, candidates.size
    while failing - j > 1:
        mid = (j + failing) // 2
        if bound_at(mid) >= target:
            j = mid
        else:
            failing = mid
    return ThresholdCertificate(
        threshold=float(candidates[j]), certified=True, target_recall=target, confidence=conf,
        recall_lower_bound=bound_at(j), recall_estimate=estimate_at(j), n_positives=n_pos, n_labels=n_labels,
        misses_allowed=int(missed_at(j).sum()), more_labels_needed=None,
        method=STRATIFIED_BONFERRONI, fallback=None,
    )
