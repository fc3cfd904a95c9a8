"""Every pair of rows with cosine >= threshold inside each cluster, on bounded matrix blocks.

A cluster of m rows is searched with (block × block) matrix products, so memory stays at a few
block² floats even when one cluster holds a fifth of the data. With the clusterings' projection, each block is
searched on the projected-space bound first (`sanitize.dedup.bound`: a quarter of the arithmetic, the same pairs).
The products only nominate candidates (with a small margin below the threshold); `confirm_pairs` then decides each
candidate by its exact cosine (`pair_cosines`), so the answer does not depend on block sizes, thread counts, the
bound or the device.
"""

from __future__ import annotations

import logging

import numpy as np

from sanitize.dedup.bound import block_hits, bound_rows
from sanitize.dedup.defaults import DEFAULT_BLOCK_ROWS
from sanitize.dedup.parallel import TaskMap, thread_map
from sanitize.dedup.vectors import UnitRows, pair_cosines
from sanitize.errors import ConfigError

logger = logging.getLogger(__name__)

# float32 matrix products of unit rows of a few thousand dimensions are off by < 1e-5.
CANDIDATE_MARGIN = 1e-4


def within_cluster_candidates(
    x: UnitRows | np.ndarray,
    labels: np.ndarray,
    threshold: float,
    *,
    rows: np.ndarray | None = None,
    block_rows: int = DEFAULT_BLOCK_ROWS,
    workers: int | None = None,
    task_map: TaskMap | None = None,
    projection: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Candidate pairs (a < b, global row ids, int64) in the same cluster with cosine >= threshold - margin.

    `x`: (n, d) unit rows (UnitRows or float32 array). `labels[i]`: cluster of row `rows[i]` (`rows`
    sorted, default all rows). Contains every same-cluster pair whose exact cosine is >= threshold, plus
    possibly a few just below; pass the result to `confirm_pairs`. Runs on `workers` threads (default: all
    cores) or as `task_map`'s tasks (default `thread_map`); memory: O(workers · block_rows²) floats. The output
    order does not depend on `workers` or `task_map`. `projection`: the clusterings' (d, p) projection, to search
    each block on the projected-space bound first (`sanitize.dedup.bound`); the candidates are the same.
    """
    rows = np.arange(len(labels), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    order = np.argsort(labels, kind="stable")  # within a cluster, ascending row id
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    starts = np.concatenate([[0], bounds])
    stops = np.concatenate([bounds, [len(order)]])
    # One task per block row of each cluster, so a giant cluster is shared between workers too.
    tasks = [
        (rows[order[start:stop]], i0)
        for start, stop in zip(starts, stops, strict=True)
        if stop - start >= 2
        for i0 in range(0, stop - start, block_rows)
    ]
    cut = threshold - CANDIDATE_MARGIN
    found = (task_map or thread_map)(_block_row_task, tasks, (x, cut, block_rows, projection), workers)
    if not found:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    return np.concatenate([a for a, _ in found]), np.concatenate([b for _, b in found])


def _block_row_task(x, cut: float, block_rows: int, projection: np.ndarray | None, task: tuple[np.ndarray, int]
                    ) -> tuple[np.ndarray, np.ndarray]:
    """One task of `within_cluster_candidates`: (ids of one cluster, first row of the block)."""
    return _block_row_pairs(x, task[0], task[1], cut, block_rows, projection)


def _block_row_pairs(x, ids: np.ndarray, i0: int, cut: float, block_rows: int, projection: np.ndarray | None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (a, b) between block ids[i0 : i0 + block_rows] and itself or any later block of `ids`.

    `ids` ascending, so a < b for every pair.
    """
    ids_i = ids[i0 : i0 + block_rows]
    xi = x[ids_i]
    bi = None if projection is None else bound_rows(xi, projection)
    found_a, found_b = [np.empty(0, dtype=np.int64)], [np.empty(0, dtype=np.int64)]
    for j0 in range(i0, len(ids), block_rows):
        if j0 == i0:
            ids_j, xj, bj = ids_i, xi, bi
        else:
            ids_j = ids[j0 : j0 + block_rows]
            xj = x[ids_j]
            bj = None if projection is None else bound_rows(xj, projection)
        li, lj, _ = block_hits(xi, xj, cut, same=j0 == i0, bi=bi, bj=bj)
        found_a.append(ids_i[li])
        found_b.append(ids_j[lj])
    return np.concatenate(found_a), np.concatenate(found_b)


def same_cluster_pairs(sizes: np.ndarray) -> int:
    """Pairs of rows that share a cluster, given the rows per cluster: what a clustering's pair search compares."""
    sizes = np.asarray(sizes, dtype=np.int64)
    return int((sizes * (sizes - 1) // 2).sum())


def confirm_pairs(
    x: UnitRows | np.ndarray, a: np.ndarray, b: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep the candidate pairs whose exact cosine (`pair_cosines`) is >= threshold.

    Returns (a, b, cosine): int64, int64, float64 arrays of the kept pairs, in the input order.
    """
    cos = pair_cosines(x, a, b)
    keep = cos >= threshold
    return a[keep], b[keep], cos[keep]


# a · n + b must fit in an int64 for every a, b < n.
MAX_KEYED_ROWS = int(np.sqrt(np.iinfo(np.int64).max))


def pair_keys(a: np.ndarray, b: np.ndarray, n_rows: int) -> np.ndarray:
    """One int64 per unordered pair (a < b): a · n_rows + b.

    Raises ConfigError when `n_rows` exceeds `MAX_KEYED_ROWS` (about 3.04·10⁹), where the key would overflow:
    deduplicate such a corpus in parts (the in-memory dedup holds every row anyway).
    """
    if n_rows > MAX_KEYED_ROWS:
        raise ConfigError(f"{n_rows:,} rows: more than the {MAX_KEYED_ROWS:,} that one int64 pair key can index; "
                          "deduplicate the corpus in parts")
    return np.asarray(a, dtype=np.int64) * n_rows + np.asarray(b, dtype=np.int64)


class PairUnion:
    """Pairs found by several sources (the exact copies, then each clustering), each pair kept once: `a`, `b` sorted
    by (a, b), with the `cos` and `source` of the smallest source that found it. Add one source at a time: only the
    union and that source's pairs are held, never every source's copy of a pair (most pairs are found by all)."""

    def __init__(self) -> None:
        self.a, self.b = np.empty(0, np.int64), np.empty(0, np.int64)
        self.cos, self.source = np.empty(0, np.float64), np.empty(0, np.int64)

    def add(self, a: np.ndarray, b: np.ndarray, cos: np.ndarray, *, source: int) -> None:
        """Merge the pairs (a[i], b[i]) with cosines `cos` found by `source`, in any order of sources."""
        a, b = np.concatenate([self.a, a]), np.concatenate([self.b, b])
        sources = np.concatenate([self.source, np.full(len(a) - len(self.a), source, np.int64)])
        order = np.lexsort((sources, b, a))
        a, b = a[order], b[order]
        first = np.ones(len(a), dtype=bool)
        first[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
        kept = order[first]
        self.a, self.b = a[first], b[first]
        self.cos = np.concatenate([self.cos, cos])[kept]
        self.source = sources[kept]
