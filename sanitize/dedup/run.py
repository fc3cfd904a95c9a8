"""`find_duplicates`: exact path, several k-means clusterings, their union, groups, and a recall check.

`find_duplicates` runs these phases in order, each a function below:

1. `SearchOptions`, `_checked_input`: options and rows are valid; unit-length view, keep priority.
2. `_exact_path`: byte-equal or hash-equal rows pair up without any search.
3. `_clustering_passes`: k-means clusterings of the distinct rows, each resumed from its checkpoint when saved
   there; the others trained, assigned in one read of the rows for all of them (`_assign_pending`), and searched.
4. `_union_pairs`, then `decide_groups`: confirmed pairs of all passes, grouped, one row kept per group.
5. `_recall_check`: exhaustive search of a row sample, to estimate the share of true pairs found.
6. `_result_tables`, `_result_stats`: the `DedupResult`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from sanitize.dedup.checkpoint import data_fingerprint, load_clustering, save_clustering
from sanitize.dedup.clock import PhaseClock
from sanitize.dedup.clustering import (
    assign_to_clusterings,
    default_n_clusters,
    fit_projection,
    train_centroids,
)
from sanitize.dedup.defaults import (
    DEFAULT_BLOCK_ROWS,
    DEFAULT_CLUSTERING_DIMS,
    DEFAULT_CLUSTERINGS,
    DEFAULT_KEEP,
    DEFAULT_KMEANS_ITERATIONS,
    DEFAULT_POINTS_PER_CENTROID,
    DEFAULT_RECALL_SAMPLE,
    DEFAULT_THRESHOLD,
)
from sanitize.dedup.device import device_name
from sanitize.dedup.exact import exact_representatives
from sanitize.dedup.groups import GroupDecisions, decide_groups, keep_priority
from sanitize.dedup.options import SearchOptions
from sanitize.dedup.pairs import pair_keys, same_cluster_pairs, within_cluster_candidates
from sanitize.dedup.parallel import TaskMap
from sanitize.dedup.recall import RecallEstimate, sampled_pair_recall
from sanitize.dedup.vectors import UnitRows, checked_unit_rows, pair_cosines
from sanitize.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

EXACT = -1  # `clustering` value of pairs found by the exact path
_PASS_PHASES = ("train", "assign", "pairs")  # timed inside each clustering pass, summed over the passes

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class DedupResult:
    """What `find_duplicates` found, by row index (0..n-1).

    pairs: Arrow table sorted by (a, b): a, b (int64, a < b), cosine (float32, exact), clustering (int16:
        first clustering that found the pair, -1 for the exact path).
    rows: row-aligned Arrow table: group_id (int64, null for rows without duplicates), keep (bool),
        duplicate_of (int64 kept row, null for kept rows), cosine_to_kept (float32, null for kept rows).
    stats: JSON-ready dict: counts, options, per-clustering details, seconds per phase, recall estimate.
    """

    pairs: pa.Table
    rows: pa.Table
    stats: dict

    @property
    def keep(self) -> np.ndarray:
        """(n,) bool: True for rows that stay."""
        return self.rows["keep"].to_numpy(zero_copy_only=False)


@dataclass(frozen=True)
class _ExactPath:
    """Byte-equal or hash-equal rows.

    rep: (n,) the row each row is an exact copy of (itself for a distinct row). reps: the distinct rows, in
    order; only they are clustered and sampled. (a, b): the exact pairs, one per copy (rep, copy).
    """

    rep: np.ndarray
    reps: np.ndarray
    a: np.ndarray
    b: np.ndarray


@dataclass(frozen=True)
class _UnitedPairs:
    """Every confirmed pair, sorted by (a, b): exact cosine and the first source that found it (EXACT or c)."""

    a: np.ndarray
    b: np.ndarray
    cosine: np.ndarray
    source: np.ndarray


def find_duplicates(
    x: np.ndarray,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    n_clusterings: int = DEFAULT_CLUSTERINGS,
    n_clusters: int | None = None,
    seed: int = 0,
    keep_values: np.ndarray | None = None,
    keep: str = DEFAULT_KEEP,
    refuse_chains: bool = False,
    hashes: Sequence | np.ndarray | pa.Array | None = None,
    require_normalized: bool = False,
    recall_sample: int = DEFAULT_RECALL_SAMPLE,
    block_rows: int = DEFAULT_BLOCK_ROWS,
    max_points_per_centroid: int = DEFAULT_POINTS_PER_CENTROID,
    kmeans_iterations: int = DEFAULT_KMEANS_ITERATIONS,
    clustering_dims: int | None = DEFAULT_CLUSTERING_DIMS,
    workers: int | None = None,
    checkpoint_dir: str | Path | None = None,
    progress: Progress | None = None,
    task_map: TaskMap | None = None,
) -> DedupResult:
    """Find near-duplicate rows of `x` and decide which to keep.

    `x`: (n, d) float embeddings (array or np.memmap; float16/32/64), never modified; rows are normalised
    on the fly (with a warning) unless `require_normalized`, which refuses rows not of unit length.
    A pair is a duplicate when its cosine is >= `threshold`, or the two rows are byte-equal, or their
    `hashes` (e.g. sha256 strings, one per row) are equal. Near-duplicates are searched inside the
    clusters of `n_clusterings` spherical k-means clusterings (`n_clusters` each, default
    `default_n_clusters`), each with its own seed derived from `seed`, run on the `clustering_dims` leading
    principal directions (None: all; pairs are always checked in full dimension); the union of pairs is grouped
    into connected components and one row per group is kept: the largest (`keep="max"`) or smallest
    `keep_values`, ties and the default going to the smallest row index. `refuse_chains`: see
    `decide_groups`. `recall_sample` rows (0: skip) are searched exhaustively to estimate the share of true
    pairs found (stats["recall"]). `checkpoint_dir`: each finished clustering is saved there and skipped
    when the run is repeated. `workers`: threads for the matrix products (default: all cores; the output
    does not depend on it). `progress(phase, done, total)` is called as phases finish. `task_map` runs
    the assignment batches, the per-cluster pair search and the recall search (default `thread_map`, threads
    of this process; `sanitize.engines` gives a Ray one); k-means training stays here (a sample: fixed cost).
    The output does not depend on it.

    Guarantees: same input and options, same output (the clusterings' order of discovery included);
    every pair reported has cosine >= threshold (or is exact); every removed row is a duplicate of a kept
    row. Raises ConfigError for bad options, DataError for bad data (NaN/inf or zero rows, wrong shape,
    all rows identical, hashes or keep_values not one per row).
    """
    options = SearchOptions(
        threshold=threshold, n_clusterings=n_clusterings, n_clusters=n_clusters, seed=seed,
        refuse_chains=refuse_chains, recall_sample=recall_sample, block_rows=block_rows,
        max_points_per_centroid=max_points_per_centroid, kmeans_iterations=kmeans_iterations,
        clustering_dims=clustering_dims,
    )
    report = progress or _no_progress
    clock = PhaseClock()

    view, priority = _checked_input(x, keep_values, keep, require_normalized)
    clock.lap("check")
    report("check", 1, 1)

    exact = _exact_path(x, hashes)
    clock.lap("exact")
    report("exact", 1, 1)

    k = _cluster_count(n_clusters, len(exact.reps))
    projection = _clustering_projection(view, exact.reps, options)
    clock.lap("projection")
    candidate_keys, clustering_stats = _clustering_passes(x, view, exact, k, projection, options, report,
                                                          workers=workers, task_map=task_map,
                                                          checkpoint_dir=checkpoint_dir)
    clock.record(_pass_seconds(clustering_stats))

    pairs = _union_pairs(view, exact, candidate_keys, threshold)
    clock.lap("confirm")
    decisions = decide_groups(view, pairs.a, pairs.b, threshold, priority=priority, refuse_chains=refuse_chains,
                              exact_rep=exact.rep)
    clock.lap("groups")
    report("groups", 1, 1)

    recall = None
    if recall_sample > 0:
        recall = _recall_check(view, pairs, exact.reps, projection, options, workers=workers, task_map=task_map)
        clock.lap("recall")
        _log_recall(recall)
        report("recall", 1, 1)
    seconds = clock.stop()

    pair_table, row_table = _result_tables(pairs, decisions)
    stats = _result_stats(exact, pairs, decisions, k, options, clustering_stats, seconds, recall)
    logger.info("dedup: %d rows, %d pairs, %d groups, %d removed in %.1f s", stats["rows"], stats["pairs"],
                stats["groups"], stats["removed"], seconds["total"])
    return DedupResult(pairs=pair_table, rows=row_table, stats=stats)


def _no_progress(phase: str, done: int, total: int) -> None:
    """The default `progress`: report nothing."""


def _checked_input(
    x: np.ndarray, keep_values: np.ndarray | None, keep: str, require_normalized: bool
) -> tuple[UnitRows, np.ndarray]:
    """Phase 1: the rows as a unit-length view (checked: finite, nonzero, 2-D) and each row's keep priority."""
    view = checked_unit_rows(x, require_normalized=require_normalized)
    return view, keep_priority(len(view), keep_values, keep)


def _exact_path(x: np.ndarray, hashes: Sequence | np.ndarray | pa.Array | None) -> _ExactPath:
    """Phase 2: byte-equal (or hash-equal) rows. Raises DataError when every row of several is the same."""
    n = len(x)
    rep = exact_representatives(x, hashes)
    reps = np.flatnonzero(rep == np.arange(n))
    if n > 1 and len(reps) == 1:
        raise DataError(
            f"embeddings: all {n} rows are identical (byte-equal embeddings or equal hashes); "
            "the embedding or hashing step probably failed"
        )
    members = np.flatnonzero(rep != np.arange(n))
    logger.info("exact path: %d of %d rows are exact copies of another row", len(members), n)
    return _ExactPath(rep=rep, reps=reps, a=rep[members], b=members)


def _cluster_count(n_clusters: int | None, n_distinct: int) -> int:
    """Clusters per clustering: `n_clusters`, or the default for `n_distinct` rows; at most `n_distinct`."""
    k = int(n_clusters) if n_clusters is not None else default_n_clusters(n_distinct)
    if k > n_distinct:
        raise ConfigError(f"n_clusters={k} is more than the {n_distinct} distinct rows; use at most {n_distinct}")
    return k


def _clustering_projection(view: UnitRows, reps: np.ndarray, options: SearchOptions) -> np.ndarray | None:
    """The principal directions all clusterings share (fit on the distinct rows), or None for full dimension."""
    dims = options.clustering_dims
    if dims is None or dims >= view.shape[1]:
        return None
    return fit_projection(view, dims, rows=reps, seed=options.projection_seed())


def _clustering_passes(
    x: np.ndarray, view: UnitRows, exact: _ExactPath, k: int, projection: np.ndarray | None, options: SearchOptions,
    report: Progress, *, workers: int | None, task_map: TaskMap | None, checkpoint_dir: str | Path | None,
) -> tuple[list[np.ndarray], list[dict]]:
    """Phase 3: for each of the `n_clusterings` clusterings, the `pair_keys` of its candidates and its stats.

    Clusterings saved in `checkpoint_dir` are loaded; the others are trained one after another, their rows
    assigned in one read for all of them (`assign_to_clusterings`), then searched one by one, each saved as it
    finishes.
    """
    n, folder = options.n_clusterings, checkpoint_dir
    key_base = _checkpoint_key(x, exact.rep, k, options)
    seeds = [options.clustering_seed(c) for c in range(n)]
    keys = [{**key_base, "clustering": c, "seed": seeds[c]} for c in range(n)]
    saved = [load_clustering(folder, c, keys[c]) if folder is not None else None for c in range(n)]
    pending = [c for c in range(n) if saved[c] is None]
    labels, train_seconds, assign_seconds = _assign_pending(view, exact.reps, k, projection, seeds, pending, options,
                                                            workers=workers, task_map=task_map)
    candidate_keys, clustering_stats = [], []
    for c in range(n):
        if saved[c] is None:
            t0 = time.perf_counter()
            ca, cb = within_cluster_candidates(view, labels[c], options.threshold, rows=exact.reps,
                                               block_rows=options.block_rows, workers=workers,
                                               task_map=task_map, projection=projection)
            pairs_seconds = time.perf_counter() - t0
            if folder is not None:
                save_clustering(folder, c, keys[c], ca, cb)
            timings = {"train_seconds": train_seconds[c], "assign_seconds": assign_seconds,
                       "pairs_seconds": pairs_seconds, "seconds": train_seconds[c] + assign_seconds + pairs_seconds,
                       **_cluster_sizes(labels.pop(c))}
        else:
            (ca, cb), timings = saved[c], {"seconds": 0.0}
        info = {"index": c, "seed": seeds[c], "resumed": saved[c] is not None, "candidates": len(ca), **timings}
        candidate_keys.append(pair_keys(ca, cb, len(view)))
        clustering_stats.append(info)
        logger.info("clustering %d/%d: %d candidate pairs in %.1f s", c + 1, n, len(ca), info["seconds"])
        report("clustering", c + 1, n)
    return candidate_keys, clustering_stats


def _cluster_sizes(labels: np.ndarray) -> dict[str, int]:
    """The largest cluster's rows and the pairs of rows that share a cluster (what the pair search compares)."""
    sizes = np.bincount(labels)
    return {"largest_cluster_rows": int(sizes.max()), "same_cluster_pairs": same_cluster_pairs(sizes)}


def _assign_pending(
    view: UnitRows, reps: np.ndarray, k: int, projection: np.ndarray | None, seeds: list[int], pending: list[int],
    options: SearchOptions, *, workers: int | None, task_map: TaskMap | None,
) -> tuple[dict[int, np.ndarray], dict[int, float], float]:
    """Centroids of each pending clustering (trained on its own sample), then every distinct row's cluster in each,
    in one read. Returns the labels and training seconds by clustering, and the assignment's seconds per clustering.
    """
    centroids, train_seconds = {}, {}
    if not pending:  # every clustering resumed: nothing to read
        return {}, train_seconds, 0.0
    for c in pending:
        t0 = time.perf_counter()
        centroids[c] = train_centroids(view, k, rows=reps, seed=seeds[c], projection=projection,
                                       max_points_per_centroid=options.max_points_per_centroid,
                                       n_iter=options.kmeans_iterations)
        train_seconds[c] = time.perf_counter() - t0
    t0 = time.perf_counter()
    all_rows = len(reps) == len(view)
    labels = assign_to_clusterings(view, [centroids[c] for c in pending], rows=None if all_rows else reps,
                                   projection=projection, workers=workers, task_map=task_map)
    assign_seconds = (time.perf_counter() - t0) / max(len(pending), 1)
    return dict(zip(pending, labels, strict=True)), train_seconds, assign_seconds


def _checkpoint_key(x: np.ndarray, exact_rep: np.ndarray, k: int, options: SearchOptions) -> dict:
    """What a saved clustering must match to be resumed: the data and the options that shape the clusterings."""
    return {
        "data": data_fingerprint(x, exact_rep),
        "threshold": float(options.threshold),
        "n_clusters": k,
        "max_points_per_centroid": int(options.max_points_per_centroid),
        "kmeans_iterations": int(options.kmeans_iterations),
        "clustering_dims": None if options.clustering_dims is None else int(options.clustering_dims),
    }


def _pass_seconds(clustering_stats: list[dict]) -> dict[str, float]:
    """Seconds of each phase inside the clustering passes, summed over the passes (0 for resumed ones)."""
    return {name: sum(info.get(f"{name}_seconds", 0.0) for info in clustering_stats) for name in _PASS_PHASES}


def _union_pairs(view: UnitRows, exact: _ExactPath, candidate_keys: list[np.ndarray], threshold: float
                 ) -> _UnitedPairs:
    """Phase 4: exact pairs and confirmed candidates; each pair credited to the first source that found it."""
    n = len(view)
    sources = [np.full(len(exact.a), EXACT, dtype=np.int64)]
    sources += [np.full(len(keys), c, dtype=np.int64) for c, keys in enumerate(candidate_keys)]
    keys = np.concatenate([pair_keys(exact.a, exact.b, n), *candidate_keys])
    unique_keys, first = np.unique(keys, return_index=True)  # first occurrence = earliest source
    source = np.concatenate(sources)[first]
    a, b = np.divmod(unique_keys, n)
    cosine = pair_cosines(view, a, b)
    confirmed = (cosine >= threshold) | (source == EXACT)
    return _UnitedPairs(a=a[confirmed], b=b[confirmed], cosine=cosine[confirmed], source=source[confirmed])


def _recall_check(view: UnitRows, pairs: _UnitedPairs, reps: np.ndarray, projection: np.ndarray | None,
                  options: SearchOptions, *, workers: int | None, task_map: TaskMap | None) -> RecallEstimate:
    """Phase 5: share of the true pairs among the distinct rows that the clusterings found (exact pairs aside)."""
    found = pairs.source != EXACT
    return sampled_pair_recall(view, pair_keys(pairs.a[found], pairs.b[found], len(view)), options.threshold,
                               rows=reps, sample_size=options.recall_sample,
                               seed=options.recall_seed(), workers=workers, task_map=task_map,
                               projection=projection)


def _result_tables(pairs: _UnitedPairs, decisions: GroupDecisions) -> tuple[pa.Table, pa.Table]:
    """Phase 6: the `DedupResult` pairs and rows tables (cosines capped at 1, null where they do not apply)."""
    removed = ~decisions.keep
    pair_table = pa.table({
        "a": pa.array(pairs.a, pa.int64()),
        "b": pa.array(pairs.b, pa.int64()),
        "cosine": pa.array(np.minimum(pairs.cosine, 1.0).astype(np.float32)),
        "clustering": pa.array(pairs.source.astype(np.int16)),
    })
    row_table = pa.table({
        "group_id": pa.array(decisions.group_id, pa.int64(), mask=decisions.group_id < 0),
        "keep": pa.array(decisions.keep, pa.bool_()),
        "duplicate_of": pa.array(decisions.duplicate_of, pa.int64(), mask=~removed),
        "cosine_to_kept": pa.array(np.minimum(decisions.cosine_to_kept, 1.0).astype(np.float32), pa.float32(),
                                   mask=~removed),
    })
    return pair_table, row_table


def _result_stats(
    exact: _ExactPath, pairs: _UnitedPairs, decisions: GroupDecisions, k: int, options: SearchOptions,
    clustering_stats: list[dict], seconds: dict[str, float], recall: RecallEstimate | None,
) -> dict:
    """Phase 6: the JSON-ready `DedupResult.stats` (keys in the order they are written)."""
    return {
        "rows": len(exact.rep),
        "distinct_rows": len(exact.reps),
        "pairs": len(pairs.a),
        "exact_pairs": int(np.count_nonzero(pairs.source == EXACT)),
        "pairs_first_found_by_clustering": [
            int(np.count_nonzero(pairs.source == c)) for c in range(options.n_clusterings)
        ],
        "groups": decisions.n_groups,
        "removed": int((~decisions.keep).sum()),
        "kept": int(decisions.keep.sum()),
        "threshold": float(options.threshold),
        "n_clusterings": int(options.n_clusterings),
        "n_clusters": k,
        "seed": int(options.seed),
        "refuse_chains": bool(options.refuse_chains),
        "device": device_name(),
        "clusterings": clustering_stats,
        "seconds": seconds,
        "recall": recall.to_dict() if recall is not None else None,
    }


def _log_recall(recall: RecallEstimate) -> None:
    if recall.recall is None:
        logger.warning("recall check: the %d sampled rows have no true pair; recall unknown",
                       recall.sampled_rows)
        return
    logger.info("pair recall %.4f (%.0f%% CI %.4f–%.4f) over %d true pairs of %d sampled rows",
                recall.recall, 100 * recall.confidence, recall.ci_low, recall.ci_high, recall.true_pairs,
                recall.sampled_rows)
