"""Statistics of a filter's effect on groups: pure functions on count arrays.

Everything here takes counts (numpy arrays, one entry per group) and returns arrays or floats. Undefined
quantities (a rate of a group with zero rows, a ratio when the reference group lost no rows, a χ² test when a
stage removed nothing) come back as NaN — never a division-by-zero warning, never an exception — and
`group_statistics` says why in its `notes`. Wilson intervals come from `sanitize.intervals`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats as sps

from sanitize.intervals import normal_quantile, wilson_interval

_z = normal_quantile

# The reference "overall": each group's removal rate against the removal rate of all included groups together.
OVERALL = "overall"


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def rate_ratio(a, n1, c, n2, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ratio of rates (a/n1) / (c/n2) with the Katz log interval, elementwise.

    NaN where a rate is undefined, where c == 0 (ratio infinite or 0/0) or where a == 0 (log interval
    undefined; the point estimate 0 is still returned).
    """
    a = np.asarray(a, dtype=np.float64)
    c = np.asarray(c, dtype=np.float64)
    n1 = np.asarray(n1, dtype=np.float64)
    n2 = np.asarray(n2, dtype=np.float64)
    ratio = _ratio(_ratio(a, n1), _ratio(c, n2))  # NaN where c == 0 or a rate is undefined
    # Katz: var(log ratio) = 1/a - 1/n1 + 1/c - 1/n2 >= 0, NaN where any count is 0, and NaN carries through
    var = _ratio(1, a) - _ratio(1, n1) + _ratio(1, c) - _ratio(1, n2)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_r = np.log(ratio)
        half = _z(confidence) * np.sqrt(var)
        return ratio, np.exp(log_r - half), np.exp(log_r + half)


def rate_ratio_vs_overall(a, n1, total_removed: float, total: float,
                          confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ratio of each group's rate a/n1 to the overall rate total_removed/total of the rows it is part of, with a
    delta-method log interval that accounts for the group being inside the total, elementwise.

    var(log ratio) = (1-p)/a + (1-P)/A - 2(1-p)/A with p = a/n1, P = A/N, A = total_removed (0 for a group that is
    all rows). NaN where a rate is undefined or A == 0; no interval where a == 0 (the estimate 0 is returned).
    """
    a = np.asarray(a, dtype=np.float64)
    n1 = np.asarray(n1, dtype=np.float64)
    rate = _ratio(a, n1)
    overall = _ratio(total_removed, total)
    ratio = _ratio(rate, overall)
    var = (_ratio(1 - rate, a) + _ratio(1 - overall, total_removed) - 2 * _ratio(1 - rate, total_removed))
    var = np.where(np.isfinite(var), np.maximum(var, 0.0), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_r = np.log(ratio)
        half = _z(confidence) * np.sqrt(var)
        return ratio, np.exp(log_r - half), np.exp(log_r + half)


def two_proportion_p(a, n1, c, n2) -> np.ndarray:
    """Two-sided p-value of the pooled two-proportion z-test of a/n1 vs c/n2, elementwise.

    NaN when a group is empty or the pooled proportion is 0 or 1 (no variation: nothing to test).
    """
    a, n1, c, n2 = (np.asarray(x, dtype=np.float64) for x in (a, n1, c, n2))
    pooled = _ratio(a + c, n1 + n2)
    se = np.sqrt(pooled * (1 - pooled) * (_ratio(1, n1) + _ratio(1, n2)))
    z = _ratio(_ratio(a, n1) - _ratio(c, n2), se)  # NaN where se is 0 (no variation) or undefined
    return 2 * sps.norm.sf(np.abs(z))


def chi_square_test(removed, kept) -> tuple[float, int, float, float]:
    """Pearson χ² test of independence on the groups × {removed, kept} table (no continuity correction).

    Groups with zero rows are dropped first. Returns (chi2, dof, p, cramers_v); all NaN (dof 0) when fewer
    than two groups have rows or when no row (or every row) was removed. For a G×2 table Cramér's V is
    sqrt(chi2 / n).
    """
    removed = np.asarray(removed, dtype=np.float64)
    kept = np.asarray(kept, dtype=np.float64)
    rows = removed + kept
    mask = rows > 0
    removed, kept, rows = removed[mask], kept[mask], rows[mask]
    n = rows.sum()
    if mask.sum() < 2 or removed.sum() == 0 or kept.sum() == 0:
        return math.nan, 0, math.nan, math.nan
    observed = np.stack([removed, kept], axis=1)
    expected = np.outer(rows, observed.sum(axis=0)) / n
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    dof = int(len(rows) - 1)
    return chi2, dof, float(sps.chi2.sf(chi2, dof)), math.sqrt(chi2 / n)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm step-down adjusted p-values (family-wise error control); NaN inputs stay NaN and do not count."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    m = len(idx)
    order = idx[np.argsort(p[idx], kind="stable")]
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(adjusted, 1.0)
    return out


def benjamini_hochberg(pvalues: Sequence[float]) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (false discovery rate); NaN inputs stay NaN and do not count."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    m = len(idx)
    order = idx[np.argsort(p[idx], kind="stable")]
    scaled = p[order] * m / np.arange(1, m + 1)
    # The running minimum from the largest p down starts at that p itself, so nothing exceeds 1.
    out[order] = np.minimum.accumulate(scaled[::-1])[::-1]
    return out


def adjust_pvalues(pvalues: Sequence[float], method: str = "holm") -> np.ndarray:
    """Adjust p-values with "holm" or "bh"."""
    if method == "holm":
        return holm(pvalues)
    if method in ("bh", "fdr_bh"):
        return benjamini_hochberg(pvalues)
    raise ValueError(f"unknown correction method {method!r} (holm, bh)")


def kish_ess(weights, counts=None) -> float:
    """Kish effective sample size (Σw)² / Σw²; `counts` repeats weight i counts[i] times. 0 for no weight."""
    w = np.asarray(weights, dtype=np.float64)
    c = np.ones_like(w) if counts is None else np.asarray(counts, dtype=np.float64)
    s2 = float((c * w * w).sum())
    return float((c * w).sum()) ** 2 / s2 if s2 > 0 else 0.0


@dataclass
class GroupStatistics:
    """Effect of one stage on the groups of one attribute (or intersection); arrays align with `groups`.

    `included` marks groups that enter shares and tests (not "unknown", not not-applicable, not suppressed);
    shares are among included groups. Removal-rate ratios and p-values compare each group with `reference` (a
    group, or OVERALL: the rate of all included groups together, each group tested against the rest);
    `reference_rate` is the reference's removal rate (NaN when undefined).
    """

    groups: list[str]
    before: np.ndarray
    kept: np.ndarray
    included: np.ndarray
    reference: str | None
    removed: np.ndarray = field(init=False)
    removal_rate: np.ndarray = field(init=False)
    removal_ci: tuple[np.ndarray, np.ndarray] = field(init=False)
    share_before: np.ndarray = field(init=False)
    share_after: np.ndarray = field(init=False)
    share_change_pp: np.ndarray = field(init=False)
    share_change_rel: np.ndarray = field(init=False)
    ratio: np.ndarray = field(init=False)
    ratio_ci: tuple[np.ndarray, np.ndarray] = field(init=False)
    p_value: np.ndarray = field(init=False)
    reference_rate: float = field(init=False)
    chi2: float = field(init=False)
    dof: int = field(init=False)
    chi2_p: float = field(init=False)
    cramers_v: float = field(init=False)
    notes: list[str] = field(init=False)


def group_statistics(
    groups: Sequence[str],
    before,
    kept,
    included=None,
    reference: str | None = None,
    confidence: float = 0.95,
) -> GroupStatistics:
    """Counts before and kept per group -> removal rates (Wilson), shares before/after (pp and relative),
    removal-rate ratios vs `reference` (Katz interval, pooled z-test p), and the χ² test with Cramér's V.

    `included` (bool per group, default all) selects the groups for shares and tests. `reference` defaults to
    the included group with most rows before (ties: first in order). Undefined values are NaN; `notes` says why.
    """
    sizes = {len(groups), len(before), len(kept)} | ({len(included)} if included is not None else set())
    if len(sizes) > 1:
        raise ValueError("groups, before, kept and included need one entry per group")
    g = GroupStatistics(
        groups=list(groups),
        before=np.asarray(before, dtype=np.int64),
        kept=np.asarray(kept, dtype=np.int64),
        included=np.ones(len(groups), bool) if included is None else np.asarray(included, dtype=bool),
        reference=reference,
    )
    if np.any(g.kept > g.before) or np.any(g.kept < 0):
        raise ValueError("kept counts must lie between 0 and the counts before")
    g.notes = []
    g.removed = g.before - g.kept
    g.removal_rate = _ratio(g.removed, g.before)
    g.removal_ci = wilson_interval(g.removed, g.before, confidence)
    empty = [g.groups[i] for i in np.flatnonzero((g.before == 0) & g.included)]
    if empty:
        g.notes.append(f"no rows before the stage in group(s) {', '.join(empty)}: rates and ratios are undefined")

    inc = g.included & (g.before > 0)
    total_before = g.before[inc].sum()
    total_after = g.kept[inc].sum()
    g.share_before = np.where(inc, _ratio(g.before, total_before), np.nan)
    g.share_after = np.where(inc, _ratio(g.kept, total_after), np.nan)
    if inc.any() and total_after == 0:
        g.notes.append("the stage removed every row of the included groups: shares after are undefined")
    g.share_change_pp = 100 * (g.share_after - g.share_before)
    g.share_change_rel = _ratio(g.share_after - g.share_before, g.share_before)

    if g.reference is None and inc.any():
        g.reference = g.groups[int(np.argmax(g.before * inc))]  # included groups have rows, the others count 0
    if g.reference == OVERALL and OVERALL not in g.groups:
        _ratios_vs_overall(g, inc, confidence)
    else:
        _ratios_vs_group(g, inc, confidence)

    g.chi2, g.dof, g.chi2_p, g.cramers_v = chi_square_test(g.removed[inc], g.kept[inc])
    if inc.any() and g.removed[inc].sum() == 0:
        g.notes.append("the stage removed no rows of the included groups: ratios and the χ² test are undefined")
    elif inc.sum() < 2:
        g.notes.append("fewer than two groups with rows: nothing to compare")
    return g


def _ratios_vs_group(g: GroupStatistics, inc: np.ndarray, confidence: float) -> None:
    """Ratios (Katz) and pooled z-test p-values of every included group against the reference group."""
    n_ref = r_ref = 0
    if g.reference is not None:
        if g.reference not in g.groups:
            raise ValueError(f"reference group {g.reference!r} is not among the groups")
        i = g.groups.index(g.reference)
        n_ref, r_ref = g.before[i], g.removed[i]
    g.reference_rate = float(r_ref / n_ref) if n_ref else math.nan
    g.ratio, lo, hi = rate_ratio(g.removed, g.before, r_ref, n_ref, confidence)
    g.ratio = np.where(inc, g.ratio, np.nan)
    g.ratio_ci = (np.where(inc, lo, np.nan), np.where(inc, hi, np.nan))
    p = two_proportion_p(g.removed, g.before, r_ref, n_ref)
    is_ref = np.array([grp == g.reference for grp in g.groups])
    g.p_value = np.where(inc & ~is_ref, p, np.nan)
    if g.reference is not None and n_ref > 0 and r_ref == 0 and g.removed[inc].sum() > 0:
        g.notes.append(f"reference group {g.reference} lost no rows: removal-rate ratios are undefined")


def _ratios_vs_overall(g: GroupStatistics, inc: np.ndarray, confidence: float) -> None:
    """Ratios of every included group to the overall removal rate of the included groups (delta-method interval)
    and p-values of each group against the rest of them (pooled z-test)."""
    total, removed = float(g.before[inc].sum()), float(g.removed[inc].sum())
    g.reference_rate = removed / total if total else math.nan
    g.ratio, lo, hi = rate_ratio_vs_overall(g.removed, g.before, removed, total, confidence)
    g.ratio = np.where(inc, g.ratio, np.nan)
    g.ratio_ci = (np.where(inc, lo, np.nan), np.where(inc, hi, np.nan))
    # Each included group against the other included ones (groups left out get an empty comparison: NaN).
    p = two_proportion_p(g.removed, g.before, np.where(inc, removed - g.removed, 0), np.where(inc, total - g.before, 0))
    g.p_value = np.where(inc, p, np.nan)
