"""Phases 4 and 5 of the out-of-core dedup: assign rows to every clustering in one pass, then search each cluster.

An assign task takes a part (a run of whole shards, ~`PART_ROWS` rows). It reads the part's distinct rows once,
projects them once, and finds their nearest centroid in every clustering; it writes the rows (as stored, with their
inverse norms) and, per clustering, the order that sorts them by cluster and the count per cluster. The same read
also searches the recall sample against the part's rows. Rows of one cluster are then a run of each part's order,
and ascending by row id across parts in part order: the order the in-memory search uses. A pair task reads a bucket
of whole clusters (at most `bucket_rows` rows in all) from every part and searches each cluster in `block_rows`
blocks; a cluster larger than a bucket is split into one task per block row, each reading its blocks in turn.
Candidates are confirmed by exact cosine in the task, so only pairs come back.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sanitize.dedup.clustering import ASSIGN_BATCH_ROWS, project
from sanitize.dedup.pairs import CANDIDATE_MARGIN
from sanitize.dedup.parallel import TaskMap
from sanitize.dedup.shards import ShardedRows, unit_rows
from sanitize.io import atomic

PART_ROWS = 131072  # rows per assign task (and per part file): ~128 MB of float16 512-d rows
MIN_PARTS = 8  # at least this many parts when there are as many shards
BUCKET_ROWS = 131072  # rows per pair-search task; a larger cluster is searched one block row per task
MIN_BUCKETS = 16  # at least this many pair-search tasks (smaller buckets) on a small source


def split_parts(sizes: list[int], part_rows: int) -> list[tuple[int, int]]:
    """Runs of whole shards [first, stop) of about `part_rows` rows each, and at least `MIN_PARTS` runs when there
    are that many shards (so every core has work on a small source). Depends only on the sizes."""
    part_rows = max(1, min(part_rows, -(-sum(sizes) // MIN_PARTS)))
    parts, first, count = [], 0, 0
    for s, size in enumerate(sizes):
        count += size
        if count >= part_rows:
            parts.append((first, s + 1))
            first, count = s + 1, 0
    if first < len(sizes):
        parts.append((first, len(sizes)))
    return parts


@dataclass(frozen=True)
class AssignPlan:
    """What every assign task shares: the parts, the exact copies to skip, the clusterings' centroids (each
    (k, dims)), their projection, and the recall sample (`sample` ids with their unit rows `queries`; empty to
    skip) searched at `threshold`."""

    parts: list[tuple[int, int]]
    offsets: np.ndarray
    members: np.ndarray
    centroids: list[np.ndarray]
    projection: np.ndarray | None
    sample: np.ndarray
    queries: np.ndarray
    threshold: float


def assign_part(rows: ShardedRows, folder: str, plan: AssignPlan, p: int) -> None:
    """One assign task: part p's distinct rows, their nearest centroid in each clustering, and the true pairs
    between them and the recall sample; written to `folder`/part_PPPPP/, then part_PPPPP.done."""
    first, stop = plan.parts[p]
    ids, raws, invs = [], [], []
    labels: list[list[np.ndarray]] = [[] for _ in plan.centroids]
    hits: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for s in range(first, stop):
        raw = rows.read(s)
        start = int(plan.offsets[s])
        lo, hi = np.searchsorted(plan.members, [start, start + len(raw)])
        distinct = np.setdiff1d(np.arange(len(raw), dtype=np.int64), plan.members[lo:hi] - start,
                                assume_unique=True)
        unit, inv = unit_rows(raw[distinct])
        for i in range(0, len(unit), ASSIGN_BATCH_ROWS):
            block = unit[i : i + ASSIGN_BATCH_ROWS]
            projected = project(block, plan.projection)
            for c, centroids in enumerate(plan.centroids):
                labels[c].append(np.argmax(projected @ centroids.T, axis=1).astype(np.int32))
            if len(plan.sample):
                hits.append(true_pairs(plan.queries, plan.sample, block, distinct[i : i + len(block)] + start,
                                       plan.threshold))
        ids.append(distinct + start)
        raws.append(raw[distinct])
        invs.append(inv)
    out = Path(folder) / f"part_{p:05d}"
    out.mkdir(parents=True, exist_ok=True)
    part_ids = np.concatenate(ids)
    atomic.write_npy(out / "ids.npy", part_ids, durable=False)
    atomic.write_npy(out / "rows.npy", np.concatenate(raws), durable=False)
    unit_inv = np.concatenate(invs)
    atomic.write_npy(out / "inv_norms.npy", unit_inv, durable=False)
    for c, chunks in enumerate(labels):
        label = np.concatenate(chunks) if chunks else np.empty(0, np.int32)
        atomic.write_npy(out / f"order_{c:03d}.npy", np.argsort(label, kind="stable").astype(np.int32),
                         durable=False)
        atomic.write_npy(out / f"counts_{c:03d}.npy",
                         np.bincount(label, minlength=len(plan.centroids[c])).astype(np.int64), durable=False)
    found = [np.concatenate([np.empty(0, np.int64)] + [h[k] for h in hits]) for k in range(3)]
    atomic.write_npz(out / "recall.npz", dict(zip("qab", found, strict=True)), durable=False)
    atomic.write_json(Path(folder) / f"part_{p:05d}.done", {})


def true_pairs(queries: np.ndarray, sample: np.ndarray, block: np.ndarray, ids: np.ndarray, threshold: float
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(query position, a, b) of every pair between the unit rows `queries` (row ids `sample`) and the unit rows
    `block` (row ids `ids`) whose exact cosine is >= threshold, a sampled row itself left out (as
    `true_pairs_of_sample` finds them)."""
    q, j = np.divmod(np.flatnonzero(queries @ block.T >= threshold - CANDIDATE_MARGIN), len(block))
    not_self = ids[j] != sample[q]
    q, j = q[not_self], j[not_self]
    cos = np.einsum("ij,ij->i", queries[q].astype(np.float64), block[j].astype(np.float64))
    true = cos >= threshold
    q, j = q[true], ids[j[true]]
    return q, np.minimum(sample[q], j), np.maximum(sample[q], j)


def _pair_tasks(sizes: np.ndarray, bucket_rows: int, block_rows: int) -> list[tuple[int, int, int]]:
    """(first cluster, stop cluster, first block row) tasks: runs of clusters of <= bucket_rows rows in all
    (block row -1: every block row), or one block row of a cluster larger than that."""
    items, first, total = [], 0, 0
    for q, size in enumerate(sizes.tolist()):
        if size > bucket_rows:
            if q > first:
                items.append((first, q, -1))
            items.extend((q, q + 1, i0) for i0 in range(0, size, block_rows))
            first, total = q + 1, 0
            continue
        if total + size > bucket_rows and q > first:
            items.append((first, q, -1))
            first, total = q, 0
        total += size
    if first < len(sizes):
        items.append((first, len(sizes), -1))
    return [item for item in items if sizes[item[0] : item[1]].sum() >= 2]


def _pair_task(folder: str, c: int, counts: np.ndarray, threshold: float, block_rows: int,
               item: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """One pair-search task: confirmed pairs (a, b, cosine) and the candidate count of its clusters."""
    q0, q1, i0 = item
    cut = threshold - CANDIDATE_MARGIN
    found_a, found_b, n_candidates = [np.empty(0, np.int64)], [np.empty(0, np.int64)], 0
    if i0 < 0:
        ids, unit = _read_clusters(folder, c, counts, q0, q1)
        bounds = np.concatenate([[0], np.cumsum(counts[:, q0:q1].sum(axis=0))])
        for j in range(q1 - q0):
            lo, hi = int(bounds[j]), int(bounds[j + 1])
            for start in range(0, hi - lo, block_rows):
                la, lb = _block_row_hits(unit[lo:hi], start, cut, block_rows)
                found_a.append(la + lo)
                found_b.append(lb + lo)
        la, lb = np.concatenate(found_a), np.concatenate(found_b)
        n_candidates = len(la)
        cos = np.einsum("ij,ij->i", unit[la].astype(np.float64), unit[lb].astype(np.float64))
        keep = cos >= threshold
        return ids[la[keep]], ids[lb[keep]], cos[keep], n_candidates
    # One block row of a cluster too large for a bucket: its block, then each later block, read in turn.
    size = int(counts[:, q0].sum())
    ids_i, xi = _read_cluster_range(folder, c, counts, q0, i0, min(size, i0 + block_rows))
    out_a, out_b, out_cos = [], [], []
    for j0 in range(i0, size, block_rows):
        ids_j, xj = (ids_i, xi) if j0 == i0 else _read_cluster_range(folder, c, counts, q0, j0,
                                                                        min(size, j0 + block_rows))
        flat = np.flatnonzero(xi @ xj.T >= cut)
        li, lj = np.divmod(flat, len(ids_j))
        if j0 == i0:
            upper = li < lj
            li, lj = li[upper], lj[upper]
        n_candidates += len(li)
        cos = np.einsum("ij,ij->i", xi[li].astype(np.float64), xj[lj].astype(np.float64))
        keep = cos >= threshold
        out_a.append(ids_i[li[keep]])
        out_b.append(ids_j[lj[keep]])
        out_cos.append(cos[keep])
    return np.concatenate(out_a), np.concatenate(out_b), np.concatenate(out_cos), n_candidates


def _block_row_hits(x: np.ndarray, i0: int, cut: float, block_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions (i < j) in block row i0 of `x` (one cluster's rows) whose product is >= cut."""
    xi = x[i0 : i0 + block_rows]
    found_a, found_b = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
    for j0 in range(i0, len(x), block_rows):
        xj = xi if j0 == i0 else x[j0 : j0 + block_rows]
        flat = np.flatnonzero(xi @ xj.T >= cut)
        li, lj = np.divmod(flat, len(xj))
        if j0 == i0:
            upper = li < lj
            li, lj = li[upper], lj[upper]
        found_a.append(li + i0)
        found_b.append(lj + j0)
    return np.concatenate(found_a), np.concatenate(found_b)


def _read_clusters(folder: str, c: int, counts: np.ndarray, q0: int, q1: int) -> tuple[np.ndarray, np.ndarray]:
    """Ids and unit rows of clusters q0..q1-1 of clustering c from every part, grouped by cluster, ascending ids
    within one."""
    ends = np.cumsum(counts, axis=1)
    starts = ends - counts
    ids, raws, invs, labels = [], [], [], []
    for p in range(len(counts)):
        lo, hi = int(starts[p, q0]), int(ends[p, q1 - 1])
        if hi > lo:
            i, r, v = _part_slice(folder, p, c, lo, hi)
            ids.append(i)
            raws.append(r)
            invs.append(v)
            labels.append(np.repeat(np.arange(q0, q1), counts[p, q0:q1]))
    order = np.argsort(np.concatenate(labels), kind="stable")  # parts in id order, so ids ascend per cluster
    unit = np.asarray(np.concatenate(raws)[order], dtype=np.float32) * np.concatenate(invs)[order][:, None]
    return np.concatenate(ids)[order], np.ascontiguousarray(unit)


def _read_cluster_range(folder: str, c: int, counts: np.ndarray, q: int, first: int, stop: int
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Ids and unit rows at positions first..stop-1 of cluster q of clustering c (its rows in ascending id order)."""
    ends = np.cumsum(counts, axis=1)
    starts = ends - counts
    before = np.concatenate([[0], np.cumsum(counts[:, q])])  # position of each part's first row of cluster q
    ids, units = [], []
    for p in range(len(counts)):
        lo, hi = max(first, int(before[p])), min(stop, int(before[p + 1]))
        if hi > lo:
            base = int(starts[p, q]) - int(before[p])
            i, r, v = _part_slice(folder, p, c, base + lo, base + hi)
            ids.append(i)
            units.append(np.asarray(r, dtype=np.float32) * v[:, None])
    return np.concatenate(ids), np.ascontiguousarray(np.concatenate(units))


def _part_slice(folder: str, p: int, c: int, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows lo..hi-1 of part p in clustering c's cluster order: ids, rows as stored, inverse norms (read from maps
    that close at once, so no page of the part stays in this process)."""
    part = Path(folder) / f"part_{p:05d}"
    order = np.load(part / f"order_{c:03d}.npy", mmap_mode="r")
    pos = np.array(order[lo:hi], dtype=np.int64)
    del order
    sort = np.argsort(pos, kind="stable")  # read in file order, then put back in cluster order
    back = np.empty_like(sort)
    back[sort] = np.arange(len(sort))
    out = []
    for name in ("ids", "rows", "inv_norms"):
        x = np.load(part / f"{name}.npy", mmap_mode="r")
        out.append(np.asarray(x[pos[sort]])[back])
        del x
    return out[0], out[1], out[2]


def search_pairs(folder: Path, c: int, n_parts: int, n_clusters: int, threshold: float, block_rows: int,
                 bucket_rows: int, tasks: TaskMap) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Every pair with cosine >= threshold inside a cluster of clustering c, from the part files in `folder`.

    Buckets hold at most `bucket_rows` rows, and at most 1/`MIN_BUCKETS` of all rows (but at least a block).
    Returns (a, b, cosine, candidates, largest cluster's rows), the pairs sorted by (a, b).
    """
    counts = np.stack([np.load(folder / f"part_{p:05d}" / f"counts_{c:03d}.npy") for p in range(n_parts)])
    sizes = counts.sum(axis=0)
    bucket_rows = max(block_rows, min(bucket_rows, -(-int(sizes.sum()) // MIN_BUCKETS)))
    found = tasks(_pair_task, _pair_tasks(sizes, bucket_rows, block_rows),
                  (str(folder), c, counts, threshold, block_rows))
    a = np.concatenate([np.empty(0, np.int64)] + [f[0] for f in found])
    b = np.concatenate([np.empty(0, np.int64)] + [f[1] for f in found])
    cos = np.concatenate([np.empty(0, np.float64)] + [f[2] for f in found])
    order = np.lexsort((b, a))
    return a[order], b[order], cos[order], int(sum(f[3] for f in found)), int(sizes.max(initial=0))
