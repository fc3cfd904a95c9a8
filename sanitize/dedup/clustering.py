"""Spherical k-means with FAISS: train on a seeded sample, assign every row in streaming batches.

A clustering is only a partition that limits where pairs are searched; the pairs themselves are checked
exactly (`sanitize.dedup.pairs`). Training uses FAISS k-means, on the GPU when FAISS sees one. Assignment
is a nearest-centroid search by blockwise matrix products on worker threads (`sanitize.dedup.device`: numpy, or
torch on a GPU; numpy measured 1.5–2× faster than faiss-cpu 1.15's flat search on the 2-core dev machine).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import faiss
import numpy as np
from threadpoolctl import threadpool_limits

from sanitize.dedup.defaults import DEFAULT_KMEANS_ITERATIONS, DEFAULT_POINTS_PER_CENTROID
from sanitize.dedup.device import matmul_device, nearest_centroids
from sanitize.dedup.parallel import TaskMap, thread_map
from sanitize.dedup.vectors import UnitRows, row_norms
from sanitize.errors import ConfigError

logger = logging.getLogger(__name__)

# × 1000 centroids: 16 MB of similarities per worker. Small enough that the allocator reuses the block's float32
# temporaries (fresh pages for larger ones cost as much as the products); measured 20% faster than 16384 here.
ASSIGN_BATCH_ROWS = 4096
PROJECTION_SAMPLE_ROWS = 16384
PROJECT_BLOCK_ROWS = 16384  # k-means samples are projected this many rows at a time
# Below this many rows per cluster the per-cluster matrix products are too small to run at BLAS speed,
# and the partition buys nothing over one exact pass.
MIN_CLUSTER_ROWS = 1000


def default_n_clusters(n_rows: int) -> int:
    """Number of clusters for `n_rows` rows: clusters of about max(1000, √n_rows) rows.

    √n balances the two costs of a clustering, assignment (n·k) and within-cluster pairs (n²/k); below a
    million rows that would make clusters too small to be worth it, so they hold about 1000 rows.
    Always between 1 and n_rows.
    """
    if n_rows < 1:
        raise ConfigError(f"n_rows must be positive, got {n_rows}")
    target = max(MIN_CLUSTER_ROWS, math.isqrt(n_rows))
    return max(1, min(n_rows, round(n_rows / target)))


def faiss_gpu_count() -> int:
    """Number of GPUs FAISS can use (0 with faiss-cpu)."""
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


def fit_projection(
    x: UnitRows | np.ndarray, dims: int, *, rows: np.ndarray | None = None, seed: int = 0,
    sample_rows: int = PROJECTION_SAMPLE_ROWS,
) -> np.ndarray:
    """(d, dims) float32 orthonormal projection onto the `dims` leading principal directions of the rows.

    Directions are the top eigenvectors of the uncentred second moment of a seeded sample of
    `sample_rows` rows (uncentred: unit embeddings share a large mean direction, and keeping it keeps
    cosines meaningful). Clustering in this subspace costs dims/d of clustering in full; the pairs are
    still checked in full dimension. Raises ConfigError unless 1 <= dims <= d.
    """
    d = x.shape[1]
    if not 1 <= dims <= d:
        raise ConfigError(f"clustering_dims={dims} must be between 1 and the embedding dimension {d}")
    rows = np.arange(len(x), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(rows, size=min(len(rows), sample_rows), replace=False))
    return principal_directions(x[sample], dims)


def principal_directions(block: np.ndarray, dims: int) -> np.ndarray:
    """(d, dims) float32: the `dims` leading eigenvectors of the uncentred second moment of the unit rows
    `block` (float32), each signed so its largest component is positive. Same block, same bits."""
    with one_blas_thread():
        _, vectors = np.linalg.eigh((block.T @ block).astype(np.float64))  # ascending eigenvalues
    top = vectors[:, ::-1][:, :dims]
    top *= np.where(top[np.abs(top).argmax(axis=0), np.arange(dims)] < 0, -1.0, 1.0)  # fix the sign
    return np.ascontiguousarray(top, dtype=np.float32)


def one_blas_thread() -> threadpool_limits:
    """Context: BLAS on one thread, so the driver's products (the PCA, the k-means samples' projection, FAISS k-means)
    have the same bits whatever the machine's core count (the tasks' products already run one thread each). Measured
    on 1M rows: k-means with BLAS on two threads gave other centroids than on one (FAISS's OpenMP threads did not
    change them), and a dedup run 87,161 pairs on two cores against 87,153 on one."""
    return threadpool_limits(limits=1, user_api="blas")


def project(block: np.ndarray, projection: np.ndarray | None) -> np.ndarray:
    """Rows of `block` projected (when `projection` is given) and scaled back to unit length."""
    if projection is None:
        return block
    return unit_length(block @ projection)


def project_sample(take: Callable[[np.ndarray], np.ndarray], ids: np.ndarray, projection: np.ndarray | None,
                   block_rows: int = PROJECT_BLOCK_ROWS) -> np.ndarray:
    """`project(take(ids), projection)`, `block_rows` ids at a time (`take`: float32 unit rows of ids).

    Memory: the projected rows plus one block of full rows, not every full row (a k-means sample is k · 32 rows:
    101k full float32 rows, ~0.5 GB with their temporaries, at 10M rows). Both dedup paths train through here, so
    they project the same blocks and get the same bits. Without a projection, the rows themselves."""
    if projection is None:
        return take(ids)
    out = np.empty((len(ids), projection.shape[1]), dtype=np.float32)
    for start in range(0, len(ids), block_rows):
        out[start : start + block_rows] = project(take(ids[start : start + block_rows]), projection)
    return out


def unit_length(projected: np.ndarray) -> np.ndarray:
    """`projected` (float32 rows) scaled to unit length in place, and returned; an all-zero row stays zero."""
    norms = row_norms(projected)[:, None]
    projected /= np.maximum(norms, 1e-12)  # a row orthogonal to the subspace stays zero, matching no centroid better
    return projected


def train_centroids(
    x: UnitRows | np.ndarray,
    n_clusters: int,
    *,
    rows: np.ndarray | None = None,
    seed: int = 0,
    max_points_per_centroid: int = DEFAULT_POINTS_PER_CENTROID,
    n_iter: int = DEFAULT_KMEANS_ITERATIONS,
    projection: np.ndarray | None = None,
) -> np.ndarray:
    """Spherical k-means centroids ((n_clusters, dims) float32, unit rows) of the unit rows `x[rows]`.

    Trains on a seeded sample of at most n_clusters · max_points_per_centroid rows (drawn here, so only
    the sample is ever read). `rows` (sorted int64 row ids, default all) restricts the rows clustered.
    `projection` (from `fit_projection`): cluster the projected rows (dims = its columns; default d).
    Raises ConfigError when there are fewer rows than clusters. Same inputs and seed, same centroids.
    """
    rows = np.arange(len(x), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    if not 1 <= n_clusters <= len(rows):
        raise ConfigError(f"n_clusters={n_clusters} must be between 1 and the {len(rows)} distinct rows")
    rng = np.random.default_rng(seed)
    n_train = min(len(rows), n_clusters * max_points_per_centroid)
    sample = np.sort(rng.choice(rows, size=n_train, replace=False)) if n_train < len(rows) else rows
    with one_blas_thread():
        train = project_sample(lambda ids: x[ids], sample, projection)
    return kmeans_centroids(train, n_clusters, seed=int(rng.integers(0, 2**31 - 1)),
                            max_points_per_centroid=max_points_per_centroid, n_iter=n_iter)


def kmeans_centroids(train: np.ndarray, n_clusters: int, *, seed: int,
                     max_points_per_centroid: int = DEFAULT_POINTS_PER_CENTROID,
                     n_iter: int = DEFAULT_KMEANS_ITERATIONS) -> np.ndarray:
    """Spherical k-means centroids ((n_clusters, dims) float32, unit rows) of the (projected) unit rows `train`,
    all of which are used (the caller draws the sample). `seed` seeds FAISS. Same rows and seed, same centroids."""
    d = train.shape[1]
    if n_clusters == 1:
        centroid = train.astype(np.float64).sum(axis=0)
        return (centroid / np.linalg.norm(centroid)).astype(np.float32)[None, :]
    kmeans = faiss.Kmeans(
        d,
        n_clusters,
        niter=n_iter,
        spherical=True,
        seed=seed,
        max_points_per_centroid=max_points_per_centroid,
        min_points_per_centroid=1,  # we choose the sample size; silence FAISS's "too few points" warning
        gpu=matmul_device() is not None and faiss_gpu_count() > 0,
        verbose=False,
    )
    with one_blas_thread():  # FAISS's OpenMP threads stay; its BLAS on several threads changes the centroids
        kmeans.train(train)
    return np.ascontiguousarray(kmeans.centroids, dtype=np.float32)


def assign_clusters(
    x: UnitRows | np.ndarray,
    centroids: np.ndarray,
    *,
    rows: np.ndarray | None = None,
    batch_rows: int = ASSIGN_BATCH_ROWS,
    projection: np.ndarray | None = None,
    workers: int | None = None,
    task_map: TaskMap | None = None,
) -> np.ndarray:
    """Nearest centroid (largest inner product) of each row in `x[rows]`, as (len(rows),) int32.

    Streams `batch_rows` rows at a time on `workers` threads (default: all cores), so memory stays at
    a few batches for memmapped inputs. `projection`: the one the centroids were trained with. Ties go
    to the lower centroid number. The products run where `sanitize.dedup.device` says. `task_map` (default
    `thread_map`) runs the batches, e.g. as Ray tasks; the result does not depend on it.
    """
    return assign_to_clusterings(x, [centroids], rows=rows, batch_rows=batch_rows, projection=projection,
                                 workers=workers, task_map=task_map)[0]


def assign_to_clusterings(
    x: UnitRows | np.ndarray,
    centroid_sets: list[np.ndarray],
    *,
    rows: np.ndarray | None = None,
    batch_rows: int = ASSIGN_BATCH_ROWS,
    projection: np.ndarray | None = None,
    workers: int | None = None,
    task_map: TaskMap | None = None,
) -> list[np.ndarray]:
    """`assign_clusters` for several clusterings sharing one projection, in one read of the rows: for each
    (k_c, dims) array of `centroid_sets`, the (len(rows),) int32 nearest centroids. Each batch is read, converted
    and projected once for all of them; each result equals `assign_clusters` with that clustering alone."""
    n_rows = len(x) if rows is None else len(rows)
    centroid_sets = [np.ascontiguousarray(c, dtype=np.float32) for c in centroid_sets]
    batches = (task_map or thread_map)(_nearest_centroids, list(range(0, n_rows, batch_rows)),
                                       (x, centroid_sets, rows, projection, batch_rows), workers)
    return [np.concatenate([batch[c] for batch in batches]) if batches else np.empty(0, dtype=np.int32)
            for c in range(len(centroid_sets))]


def _batch(x, rows: np.ndarray | None, projection: np.ndarray | None, batch_rows: int, start: int) -> np.ndarray:
    """Projected rows start .. start + batch_rows of `x[rows]` (of `x` when rows is None)."""
    n_rows = len(x) if rows is None else len(rows)
    stop = min(n_rows, start + batch_rows)
    return project(x[start:stop] if rows is None else x[rows[start:stop]], projection)


def _nearest_centroids(x, centroid_sets: list[np.ndarray], rows: np.ndarray | None, projection: np.ndarray | None,
                       batch_rows: int, start: int) -> list[np.ndarray]:
    """One task of `assign_to_clusterings`: each clustering's nearest centroids of the batch starting at `start`."""
    block = _batch(x, rows, projection, batch_rows, start)
    return [nearest_centroids(block, centroids) for centroids in centroid_sets]
