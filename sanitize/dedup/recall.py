"""Self-reported recall: how many of the true duplicate pairs did the clusterings find?

A seeded sample of rows is searched exhaustively against all rows (what a FAISS IndexFlatIP range
search computes, done here as blockwise matrix products on worker threads). Every true pair (cosine >=
threshold) that touches a sampled row is one trial; the share of trials the clusterings found estimates
the pair recall. Pairs of one sampled row are not independent (a group of ten copies gives nine pairs
that are found or missed together), so the Wilson interval is computed on the effective number of trials
(Kish design effect of the row-clustered sample).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np

from sanitize import intervals
from sanitize.dedup.bound import block_hits, bound_rows
from sanitize.dedup.pairs import CANDIDATE_MARGIN, pair_keys
from sanitize.dedup.parallel import TaskMap, thread_map
from sanitize.dedup.vectors import UnitRows, pair_cosines
from sanitize.errors import ConfigError

logger = logging.getLogger(__name__)

SEARCH_BLOCK_ROWS = 16384


@dataclass(frozen=True)
class RecallEstimate:
    """Share of true pairs found. recall/ci_low/ci_high are None when the sample touched no true pair.

    exact: the sample was every row, so recall is the true value and the interval is that point.
    """

    recall: float | None
    ci_low: float | None
    ci_high: float | None
    confidence: float
    sampled_rows: int
    true_pairs: int
    found_pairs: int
    effective_trials: float
    exact: bool

    def to_dict(self) -> dict:
        return asdict(self)


def true_pairs_of_sample(
    x: UnitRows | np.ndarray,
    sample: np.ndarray,
    threshold: float,
    *,
    rows: np.ndarray | None = None,
    block_rows: int = SEARCH_BLOCK_ROWS,
    workers: int | None = None,
    task_map: TaskMap | None = None,
    projection: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair (sampled row, any row in `rows`) with exact cosine >= threshold, by exhaustive search.

    Returns (query, a, b): for each pair the position in `sample` of the row that found it, and the pair
    as a < b global row ids, sorted. A pair between two sampled rows appears once, credited to the first.
    Cost: len(sample) × len(rows) dot products on `workers` threads (default: all cores) or as `task_map`'s
    tasks; memory: per worker one block of `block_rows` rows and its similarities to the sample. `projection`:
    search each block on the projected-space bound first (`sanitize.dedup.bound`; same pairs).
    """
    rows = np.arange(len(x), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    queries = x[sample]
    cut = threshold - CANDIDATE_MARGIN

    query_bounds = None if projection is None else bound_rows(queries, projection)
    found = (task_map or thread_map)(_search_block, list(range(0, len(rows), block_rows)),
                                     (x, queries, query_bounds, rows, cut, block_rows, projection), workers)
    q = np.concatenate([q for q, _ in found])
    j = np.concatenate([j for _, j in found])
    not_self = j != sample[q]
    q, j = q[not_self], j[not_self]
    a = np.minimum(sample[q], j)
    b = np.maximum(sample[q], j)
    cos = pair_cosines(x, a, b)
    true = cos >= threshold
    q, a, b = q[true], a[true], b[true]
    # One entry per pair, sorted by (a, b); a pair of two sampled rows is credited to the first of them, so the
    # result does not depend on how the rows were cut into blocks.
    keys = pair_keys(a, b, len(x))
    order = np.lexsort((q, keys))
    first = order[np.concatenate([[True], keys[order][1:] != keys[order][:-1]])] if len(order) else order
    return q[first], a[first], b[first]


def _search_block(x, queries: np.ndarray, query_bounds: np.ndarray | None, rows: np.ndarray, cut: float,
                  block_rows: int, projection: np.ndarray | None, start: int) -> tuple[np.ndarray, np.ndarray]:
    """One task of `true_pairs_of_sample`: (query position, row id) of every hit in one block of rows (searched on
    the bound rows when `projection` is given; `query_bounds`: the queries' bound rows, made once)."""
    ids = rows[start : start + block_rows]
    block = x[ids]
    block_bounds = None if projection is None else bound_rows(block, projection)
    q, j, _ = block_hits(queries, block, cut, same=False, bi=query_bounds, bj=block_bounds)
    return q, ids[j]


def sampled_pair_recall(
    x: UnitRows | np.ndarray,
    found_keys: np.ndarray,
    threshold: float,
    *,
    rows: np.ndarray | None = None,
    sample_size: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    workers: int | None = None,
    task_map: TaskMap | None = None,
    projection: np.ndarray | None = None,
) -> RecallEstimate:
    """Estimate the share of true pairs among `rows` (default all) that `found_keys` contains.

    `found_keys`: `pair_keys` of the pairs found. Samples min(sample_size, len(rows)) rows with `seed`,
    finds their true pairs exactly (`true_pairs_of_sample`, on the bound of `projection` when given) and reports
    the found share with a Wilson interval on the effective number of trials.
    """
    rows = np.arange(len(x), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    if sample_size < 1:
        raise ConfigError(f"recall_sample must be at least 1, got {sample_size}")
    m = min(sample_size, len(rows))
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(rows, size=m, replace=False))
    q, a, b = true_pairs_of_sample(x, sample, threshold, rows=rows, workers=workers, task_map=task_map,
                                   projection=projection)
    hit = np.isin(pair_keys(a, b, len(x)), found_keys)
    return recall_from_sample(q, hit, m, exact=m == len(rows), confidence=confidence)


def recall_from_sample(
    query: np.ndarray, hit: np.ndarray, n_queries: int, *, exact: bool = False, confidence: float = 0.95
) -> RecallEstimate:
    """Recall estimate from the true pairs of a row sample.

    `query[i]`: which of the `n_queries` sampled rows true pair i belongs to; `hit[i]`: whether it was
    found. `exact`: the sample was every row (the interval collapses to the value). Raises ConfigError for
    a `confidence` outside (0, 1).
    """
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must be in (0, 1), got {confidence}")
    n_true, n_found = len(hit), int(np.count_nonzero(hit))
    if n_true == 0:
        return RecallEstimate(None, None, None, confidence, n_queries, 0, 0, 0.0, exact)
    recall = n_found / n_true
    if exact:
        return RecallEstimate(recall, recall, recall, confidence, n_queries, n_true, n_found, float(n_true), exact)
    n_eff = _effective_trials(query, hit, n_queries)  # > 0: there is at least one true pair
    low, high = (float(v) for v in intervals.wilson_interval(recall * n_eff, n_eff, confidence))
    # The Wilson interval ends exactly at 0 when no pair was found and at 1 when all were; rounding can miss
    # these by an ulp, so pin them here.
    low = 0.0 if n_found == 0 else low
    high = 1.0 if n_found == n_true else high
    return RecallEstimate(recall, low, high, confidence, n_queries, n_true, n_found, n_eff, exact)


def _effective_trials(query: np.ndarray, hit: np.ndarray, n_queries: int) -> float:
    """Trials divided by the design effect of grouping them by sampled row (ratio estimator, linearised)."""
    t = np.bincount(query, minlength=n_queries).astype(np.float64)
    f = np.bincount(query, weights=hit.astype(np.float64), minlength=n_queries)
    total = t.sum()
    p = f.sum() / total
    var_binomial = p * (1 - p) / total
    resid = f - p * t
    var_clustered = n_queries / max(n_queries - 1, 1) * float(resid @ resid) / (total * total)
    if var_binomial == 0:
        # All found (or none): no spread to measure, so count each sampled row's pairs as one trial.
        return float(np.count_nonzero(t))
    if var_clustered <= var_binomial:
        return total
    return total * var_binomial / var_clustered
