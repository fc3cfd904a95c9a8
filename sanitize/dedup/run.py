"""`find_duplicates`: exact path, several k-means clusterings, their union, groups, and a recall check."""

from __future__ import annotations

import logging
import math
import numbers
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from sanitize.dedup.checkpoint import data_fingerprint, load_clustering, save_clustering
from sanitize.dedup.clustering import (
    assign_clusters,
    default_n_clusters,
    faiss_gpu_count,
    fit_projection,
    train_centroids,
)
from sanitize.dedup.exact import exact_representatives
from sanitize.dedup.groups import decide_groups, keep_priority
from sanitize.dedup.pairs import DEFAULT_BLOCK_ROWS, pair_keys, within_cluster_candidates
from sanitize.dedup.parallel import TaskMap
from sanitize.dedup.recall import sampled_pair_recall
from sanitize.dedup.vectors import checked_unit_rows, pair_cosines
from sanitize.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

EXACT = -1  # `clustering` value of pairs found by the exact path
_CLUSTERING_STREAM, _RECALL_STREAM, _PROJECTION_STREAM = 0, 1, 2

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


def find_duplicates(
    x: np.ndarray,
    *,
    threshold: float = 0.95,
    n_clusterings: int = 5,
    n_clusters: int | None = None,
    seed: int = 0,
    keep_values: np.ndarray | None = None,
    keep: str = "max",
    refuse_chains: bool = False,
    hashes: Sequence | np.ndarray | pa.Array | None = None,
    require_normalized: bool = False,
    recall_sample: int = 1000,
    block_rows: int = DEFAULT_BLOCK_ROWS,
    max_points_per_centroid: int = 32,
    kmeans_iterations: int = 10,
    clustering_dims: int | None = 128,
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
    _check_options(threshold, n_clusterings, n_clusters, seed, recall_sample, block_rows,
                   max_points_per_centroid, kmeans_iterations, clustering_dims)
    report = progress or (lambda phase, done, total: None)
    seconds: dict[str, float] = {}
    t_start = t = time.perf_counter()

    view = checked_unit_rows(x, require_normalized=require_normalized)
    n = len(view)
    priority = keep_priority(n, keep_values, keep)
    seconds["check"], t = _lap(t)
    report("check", 1, 1)

    exact_rep = exact_representatives(x, hashes)
    reps = np.flatnonzero(exact_rep == np.arange(n))
    if n > 1 and len(reps) == 1:
        raise DataError(
            f"embeddings: all {n} rows are identical (byte-equal embeddings or equal hashes); "
            "the embedding or hashing step probably failed"
        )
    members = np.flatnonzero(exact_rep != np.arange(n))
    exact_a, exact_b = exact_rep[members], members
    seconds["exact"], t = _lap(t)
    logger.info("exact path: %d of %d rows are exact copies of another row", len(members), n)
    report("exact", 1, 1)

    k = int(n_clusters) if n_clusters is not None else default_n_clusters(len(reps))
    if k > len(reps):
        raise ConfigError(f"n_clusters={k} is more than the {len(reps)} distinct rows; use at most {len(reps)}")
    key_base = {
        "data": data_fingerprint(x, exact_rep),
        "threshold": float(threshold),
        "n_clusters": k,
        "max_points_per_centroid": int(max_points_per_centroid),
        "kmeans_iterations": int(kmeans_iterations),
        "clustering_dims": None if clustering_dims is None else int(clustering_dims),
    }
    projection = None
    if clustering_dims is not None and clustering_dims < view.shape[1]:
        projection = fit_projection(view, clustering_dims, rows=reps, seed=_stream_seed(seed, _PROJECTION_STREAM, 0))
    seconds["projection"], t = _lap(t)
    candidate_keys, clustering_stats = [], []
    for c in range(n_clusterings):
        c_seed = _stream_seed(seed, _CLUSTERING_STREAM, c)
        key = {**key_base, "clustering": c, "seed": c_seed}
        saved = load_clustering(checkpoint_dir, c, key) if checkpoint_dir is not None else None
        if saved is None:
            ca, cb, info = _one_clustering(
                view, reps, k, threshold, seed=c_seed, projection=projection, block_rows=block_rows,
                workers=workers, max_points_per_centroid=max_points_per_centroid, n_iter=kmeans_iterations,
                task_map=task_map,
            )
            if checkpoint_dir is not None:
                save_clustering(checkpoint_dir, c, key, ca, cb)
        else:
            ca, cb = saved
            info = {"seconds": 0.0}
        info = {"index": c, "seed": c_seed, "resumed": saved is not None, "candidates": len(ca), **info}
        candidate_keys.append(pair_keys(ca, cb, n))
        clustering_stats.append(info)
        logger.info("clustering %d/%d: %d candidate pairs in %.1f s", c + 1, n_clusterings, len(ca),
                    info["seconds"])
        report("clustering", c + 1, n_clusterings)
    t = time.perf_counter()
    for name in ("train", "assign", "pairs"):
        seconds[name] = sum(info.get(f"{name}_seconds", 0.0) for info in clustering_stats)

    a, b, cosine, source = _union_pairs(view, exact_a, exact_b, candidate_keys, threshold, n)
    seconds["confirm"], t = _lap(t)

    decisions = decide_groups(view, a, b, threshold, priority=priority, refuse_chains=refuse_chains,
                              exact_rep=exact_rep)
    seconds["groups"], t = _lap(t)
    report("groups", 1, 1)

    recall = None
    if recall_sample > 0:
        found = source != EXACT
        recall = sampled_pair_recall(view, pair_keys(a[found], b[found], n), threshold, rows=reps,
                                     sample_size=recall_sample, seed=_stream_seed(seed, _RECALL_STREAM, 0),
                                     workers=workers, task_map=task_map)
        seconds["recall"], t = _lap(t)
        _log_recall(recall)
        report("recall", 1, 1)
    seconds["total"] = time.perf_counter() - t_start

    pairs, rows = _result_tables(a, b, cosine, source, decisions)
    removed = ~decisions.keep
    stats = {
        "rows": n,
        "distinct_rows": len(reps),
        "pairs": len(a),
        "exact_pairs": int(np.count_nonzero(source == EXACT)),
        "pairs_first_found_by_clustering": [int(np.count_nonzero(source == c)) for c in range(n_clusterings)],
        "groups": decisions.n_groups,
        "removed": int(removed.sum()),
        "kept": int(decisions.keep.sum()),
        "threshold": float(threshold),
        "n_clusterings": int(n_clusterings),
        "n_clusters": k,
        "seed": int(seed),
        "refuse_chains": bool(refuse_chains),
        "device": "gpu" if faiss_gpu_count() > 0 else "cpu",
        "clusterings": clustering_stats,
        "seconds": seconds,
        "recall": recall.to_dict() if recall is not None else None,
    }
    logger.info("dedup: %d rows, %d pairs, %d groups, %d removed in %.1f s", n, len(a),
                decisions.n_groups, stats["removed"], seconds["total"])
    return DedupResult(pairs=pairs, rows=rows, stats=stats)


def _one_clustering(view, reps, k, threshold, *, seed, projection, block_rows, workers, max_points_per_centroid,
                    n_iter, task_map=None):
    """Train, assign and search one clustering of the distinct rows `reps`: candidate pairs and timings."""
    t0 = time.perf_counter()
    centroids = train_centroids(view, k, rows=reps, seed=seed, max_points_per_centroid=max_points_per_centroid,
                                n_iter=n_iter, projection=projection)
    t1 = time.perf_counter()
    all_rows = len(reps) == len(view)
    labels = assign_clusters(view, centroids, rows=None if all_rows else reps, projection=projection,
                             workers=workers, task_map=task_map)
    t2 = time.perf_counter()
    a, b = within_cluster_candidates(view, labels, threshold, rows=reps, block_rows=block_rows, workers=workers,
                                     task_map=task_map)
    t3 = time.perf_counter()
    info = {
        "train_seconds": t1 - t0,
        "assign_seconds": t2 - t1,
        "pairs_seconds": t3 - t2,
        "seconds": t3 - t0,
        "largest_cluster_rows": int(np.bincount(labels).max()),
    }
    return a, b, info


def _result_tables(a, b, cosine, source, decisions) -> tuple[pa.Table, pa.Table]:
    removed = ~decisions.keep
    pairs = pa.table({
        "a": pa.array(a, pa.int64()),
        "b": pa.array(b, pa.int64()),
        "cosine": pa.array(np.minimum(cosine, 1.0).astype(np.float32)),
        "clustering": pa.array(source.astype(np.int16)),
    })
    rows = pa.table({
        "group_id": pa.array(decisions.group_id, pa.int64(), mask=decisions.group_id < 0),
        "keep": pa.array(decisions.keep, pa.bool_()),
        "duplicate_of": pa.array(decisions.duplicate_of, pa.int64(), mask=~removed),
        "cosine_to_kept": pa.array(np.minimum(decisions.cosine_to_kept, 1.0).astype(np.float32), pa.float32(),
                                   mask=~removed),
    })
    return pairs, rows


def _union_pairs(view, exact_a, exact_b, candidate_keys, threshold, n):
    """Union of exact pairs and confirmed candidates; each pair credited to the first source that found it."""
    sources = [np.full(len(exact_a), EXACT, dtype=np.int64)]
    sources += [np.full(len(keys), c, dtype=np.int64) for c, keys in enumerate(candidate_keys)]
    keys = np.concatenate([pair_keys(exact_a, exact_b, n), *candidate_keys])
    unique_keys, first = np.unique(keys, return_index=True)  # first occurrence = earliest source
    source = np.concatenate(sources)[first]
    a, b = np.divmod(unique_keys, n)
    cosine = pair_cosines(view, a, b)
    confirmed = (cosine >= threshold) | (source == EXACT)
    return a[confirmed], b[confirmed], cosine[confirmed], source[confirmed]


def _check_options(threshold, n_clusterings, n_clusters, seed, recall_sample, block_rows,
                   max_points_per_centroid, kmeans_iterations, clustering_dims) -> None:
    if (
        not isinstance(threshold, numbers.Real)
        or isinstance(threshold, bool)
        or math.isnan(threshold)
        or not -1.0 <= threshold <= 1.0
    ):
        raise ConfigError(f"threshold must be a cosine in [-1, 1], got {threshold!r}")
    for name, value, low in (
        ("n_clusterings", n_clusterings, 1),
        ("seed", seed, 0),
        ("recall_sample", recall_sample, 0),
        ("block_rows", block_rows, 1),
        ("max_points_per_centroid", max_points_per_centroid, 1),
        ("kmeans_iterations", kmeans_iterations, 1),
    ):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
    for name, value in (("n_clusters", n_clusters), ("clustering_dims", clustering_dims)):
        if value is not None and (not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1):
            raise ConfigError(f"{name} must be a positive integer or None, got {value!r}")


def _stream_seed(seed: int, stream: int, index: int) -> int:
    """Independent seed for (stream, index): clustering c gets the same seed whatever n_clusterings is."""
    return int(np.random.SeedSequence([seed, stream, index]).generate_state(1)[0] & 0x7FFFFFFF)


def _lap(t: float) -> tuple[float, float]:
    now = time.perf_counter()
    return now - t, now


def _log_recall(recall) -> None:
    if recall.recall is None:
        logger.warning("recall check: the %d sampled rows have no true pair; recall unknown",
                       recall.sampled_rows)
        return
    logger.info("pair recall %.4f (%.0f%% CI %.4f–%.4f) over %d true pairs of %d sampled rows",
                recall.recall, 100 * recall.confidence, recall.ci_low, recall.ci_high, recall.true_pairs,
                recall.sampled_rows)
