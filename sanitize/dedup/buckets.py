"""Phases 4 and 5 of the out-of-core dedup: assign rows to every clustering in one pass, then search each cluster.

An assign task takes a part (a run of whole shards, ~`PART_ROWS` rows). It reads the part's distinct rows once,
projects them once, and finds their nearest centroid in every clustering; it writes the rows (as stored, with their
inverse norms) and, per clustering, the order that sorts them by cluster and the count per cluster. The same read
also searches the recall sample against the part's rows. Rows of one cluster are then a run of each part's order,
and ascending by row id across parts in part order: the order the in-memory search uses. A pair task reads a bucket
of whole clusters (at most `bucket_rows` rows in all) from every part and searches each cluster in `block_rows`
blocks; a cluster larger than a bucket is split into one task per block row, each reading its blocks in turn.
Blocks are searched on the projected-space bound first (`sanitize.dedup.bound`; same pairs, a quarter of the
arithmetic when it prunes). Candidates are confirmed by exact cosine in the task, so only pairs come back.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sanitize.dedup.bound import STORED_DTYPE, block_hits, bound_rows, bound_rows_of_projected, nominees
from sanitize.dedup.clustering import ASSIGN_BATCH_ROWS, unit_length
from sanitize.dedup.device import nearest_centroids
from sanitize.dedup.pairs import CANDIDATE_MARGIN, same_cluster_pairs
from sanitize.dedup.parallel import TaskMap
from sanitize.dedup.shards import ShardedRows, unit_rows
from sanitize.io import atomic

PART_ROWS = 131072  # rows per assign task (and per part file): ~128 MB of float16 512-d rows
MIN_PARTS = 8  # at least this many parts when there are as many shards
BUCKET_ROWS = 131072  # rows per pair-search task; a larger cluster is searched one block row per task
MIN_BUCKETS = 16  # at least this many pair-search tasks (smaller buckets) on a small source
TRY_BLOCKS = 8  # blocks a pair task searches on the bound before it judges whether the bound pays on its data


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
    between them and the recall sample; written to `folder`/part_PPPPP/ (with the rows' bound rows, as float16,
    when there is a projection), then part_PPPPP.done."""
    first, stop = plan.parts[p]
    ids, raws, invs, stored_bounds = [], [], [], []
    labels: list[list[np.ndarray]] = [[] for _ in plan.centroids]
    hits: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    query_bounds = (bound_rows(plan.queries, plan.projection)
                    if plan.projection is not None and len(plan.sample) else None)
    for s in range(first, stop):
        raw = rows.read(s)
        start = int(plan.offsets[s])
        lo, hi = np.searchsorted(plan.members, [start, start + len(raw)])
        distinct = np.setdiff1d(np.arange(len(raw), dtype=np.int64), plan.members[lo:hi] - start,
                                assume_unique=True)
        kept = raw if len(distinct) == len(raw) else raw[distinct]
        # Batch by batch: float32 temporaries of a few MB are reused by the allocator, where a whole shard's
        # would be fresh pages each time (page faults cost as much as the arithmetic here).
        for i in range(0, len(kept), ASSIGN_BATCH_ROWS):
            block, inv = unit_rows(kept[i : i + ASSIGN_BATCH_ROWS])
            invs.append(inv)
            if plan.projection is None:
                projected, bounds = block, None
            else:  # one product for the bound rows and the clusterings' unit projected rows
                projected = block @ plan.projection
                block_bounds = bound_rows_of_projected(projected)
                stored_bounds.append(block_bounds.astype(STORED_DTYPE))
                bounds = (query_bounds, block_bounds) if len(plan.sample) else None
                projected = unit_length(projected)
            for c, centroids in enumerate(plan.centroids):
                labels[c].append(nearest_centroids(projected, centroids))
            if len(plan.sample):
                hits.append(true_pairs(plan.queries, plan.sample, block, distinct[i : i + len(block)] + start,
                                       plan.threshold, bounds=bounds))
        ids.append(distinct + start)
        raws.append(kept)
    out = Path(folder) / f"part_{p:05d}"
    out.mkdir(parents=True, exist_ok=True)
    part_ids = np.concatenate(ids)
    atomic.write_npy(out / "ids.npy", part_ids, durable=False)
    atomic.write_npy(out / "rows.npy", np.concatenate(raws), durable=False)
    unit_inv = np.concatenate(invs)
    atomic.write_npy(out / "inv_norms.npy", unit_inv, durable=False)
    if plan.projection is not None:
        atomic.write_npy(out / "bounds.npy", np.concatenate(stored_bounds) if stored_bounds else
                         np.empty((0, plan.projection.shape[1] + 1), STORED_DTYPE), durable=False)
    for c, chunks in enumerate(labels):
        label = np.concatenate(chunks) if chunks else np.empty(0, np.int32)
        atomic.write_npy(out / f"order_{c:03d}.npy", np.argsort(label, kind="stable").astype(np.int32),
                         durable=False)
        atomic.write_npy(out / f"counts_{c:03d}.npy",
                         np.bincount(label, minlength=len(plan.centroids[c])).astype(np.int64), durable=False)
    found = [np.concatenate([np.empty(0, np.int64)] + [h[k] for h in hits]) for k in range(3)]
    atomic.write_npz(out / "recall.npz", dict(zip("qab", found, strict=True)), durable=False)
    atomic.write_json(Path(folder) / f"part_{p:05d}.done", {})


def true_pairs(queries: np.ndarray, sample: np.ndarray, block: np.ndarray, ids: np.ndarray, threshold: float,
               *, bounds: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(query position, a, b) of every pair between the unit rows `queries` (row ids `sample`) and the unit rows
    `block` (row ids `ids`) whose exact cosine is >= threshold, a sampled row itself left out (as
    `true_pairs_of_sample` finds them). `bounds`: the bound rows of queries and block, to search on them first."""
    bi, bj = bounds if bounds is not None else (None, None)
    q, j, _ = block_hits(queries, block, threshold - CANDIDATE_MARGIN, same=False, bi=bi, bj=bj)
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
               projection: np.ndarray | None, item: tuple[int, int, int]
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """One pair-search task: confirmed pairs (a, b, cosine) and the candidate count of its clusters."""
    q0, q1, i0 = item
    if i0 >= 0:
        return _giant_block_row(folder, c, counts, threshold, block_rows, projection, q0, i0)
    if projection is not None:
        return _bucket_on_bounds(folder, c, counts, threshold, block_rows, q0, q1)
    cut = threshold - CANDIDATE_MARGIN
    ids, unit = read_clusters(folder, c, counts, q0, q1)
    found_a, found_b = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
    starts = np.concatenate([[0], np.cumsum(counts[:, q0:q1].sum(axis=0))])
    for j in range(q1 - q0):
        lo, hi = int(starts[j]), int(starts[j + 1])
        for start in range(0, hi - lo, block_rows):
            la, lb = _block_row_hits(unit[lo:hi], None, start, cut, block_rows)
            found_a.append(la + lo)
            found_b.append(lb + lo)
    la, lb = np.concatenate(found_a), np.concatenate(found_b)
    cos = np.einsum("ij,ij->i", unit[la].astype(np.float64), unit[lb].astype(np.float64))
    keep = cos >= threshold
    return ids[la[keep]], ids[lb[keep]], cos[keep], len(la)


def _bucket_on_bounds(folder: str, c: int, counts: np.ndarray, threshold: float, block_rows: int, q0: int, q1: int
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """A bucket's pairs from its stored bound rows: only the bounds are read for every row; the rows themselves
    only for the pairs the bounds nominate, and for the whole of a cluster in which some block has too many
    nominees to settle (that block is then searched in full). Once the bounds have failed to settle more than half
    of the task's blocks (after `TRY_BLOCKS`), the remaining blocks are searched in full at once (same pairs)."""
    cut = threshold - CANDIDATE_MARGIN
    got = _gather(folder, c, counts, q0, q1, ("ids", "bounds"))
    bounds = got["bounds"]
    starts = np.concatenate([[0], np.cumsum(counts[:, q0:q1].sum(axis=0))])
    nominated_a, nominated_b = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
    checked: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (a, b, float64 cosine) of blocks in full
    tried = unsettled = 0
    for j in range(q1 - q0):
        lo, hi = int(starts[j]), int(starts[j + 1])
        cluster = bounds[lo:hi]
        unit = None  # the cluster's rows, read at its first block that the bounds do not settle
        for i0 in range(0, hi - lo, block_rows):
            for j0 in range(i0, hi - lo, block_rows):
                found = None
                if tried < TRY_BLOCKS or 2 * unsettled <= tried:  # else the bound has been wasted work here
                    bi, bj = cluster[i0 : i0 + block_rows], cluster[j0 : j0 + block_rows]
                    found = nominees(bi, bj, cut, same=j0 == i0)
                    tried, unsettled = tried + 1, unsettled + (found is None)
                if found is not None:
                    nominated_a.append(found[0] + lo + i0)
                    nominated_b.append(found[1] + lo + j0)
                    continue
                if unit is None:
                    unit = _unit_rows_at(folder, got["part"][lo:hi], got["pos"][lo:hi])
                xi, xj = unit[i0 : i0 + block_rows], unit[j0 : j0 + block_rows]
                li, lj, _ = block_hits(xi, xj, cut, same=j0 == i0)
                checked.append((li + lo + i0, lj + lo + j0, np.einsum("ij,ij->i", xi[li].astype(np.float64),
                                                                      xj[lj].astype(np.float64))))
    la, lb = np.concatenate(nominated_a), np.concatenate(nominated_b)
    rows_of, inverse = np.unique(np.concatenate([la, lb]), return_inverse=True)
    unit = _unit_rows_at(folder, got["part"][rows_of], got["pos"][rows_of])
    ua, ub = unit[inverse[: len(la)]], unit[inverse[len(la) :]]
    candidate = np.einsum("ij,ij->i", ua, ub) >= cut  # the pairs the full product would have nominated
    cos = np.einsum("ij,ij->i", ua[candidate].astype(np.float64), ub[candidate].astype(np.float64))
    la = np.concatenate([la[candidate], *(a for a, _, _ in checked)])
    lb = np.concatenate([lb[candidate], *(b for _, b, _ in checked)])
    cos = np.concatenate([cos, *(full_cos for _, _, full_cos in checked)])
    keep = cos >= threshold
    return got["ids"][la[keep]], got["ids"][lb[keep]], cos[keep], len(la)


def _giant_block_row(folder: str, c: int, counts: np.ndarray, threshold: float, block_rows: int,
                     projection: np.ndarray | None, q: int, i0: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """One block row of a cluster too large for a bucket: its block, then each later block, read in turn."""
    cut = threshold - CANDIDATE_MARGIN
    size = int(counts[:, q].sum())
    ids_i, xi = read_cluster_range(folder, c, counts, q, i0, min(size, i0 + block_rows))
    bi = None if projection is None else bound_rows(xi, projection)
    out_a, out_b, out_cos, n_candidates = [], [], [], 0
    for j0 in range(i0, size, block_rows):
        if j0 == i0:
            ids_j, xj, bj = ids_i, xi, bi
        else:
            ids_j, xj = read_cluster_range(folder, c, counts, q, j0, min(size, j0 + block_rows))
            bj = None if projection is None else bound_rows(xj, projection)
        li, lj, _ = block_hits(xi, xj, cut, same=j0 == i0, bi=bi, bj=bj)
        n_candidates += len(li)
        cos = np.einsum("ij,ij->i", xi[li].astype(np.float64), xj[lj].astype(np.float64))
        keep = cos >= threshold
        out_a.append(ids_i[li[keep]])
        out_b.append(ids_j[lj[keep]])
        out_cos.append(cos[keep])
    return np.concatenate(out_a), np.concatenate(out_b), np.concatenate(out_cos), n_candidates


def _block_row_hits(x: np.ndarray, bounds: np.ndarray | None, i0: int, cut: float, block_rows: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Positions (i < j) in block row i0 of `x` (one cluster's rows; `bounds` their bound rows, or None) whose
    product is >= cut."""
    xi = x[i0 : i0 + block_rows]
    bi = None if bounds is None else bounds[i0 : i0 + block_rows]
    found_a, found_b = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
    for j0 in range(i0, len(x), block_rows):
        xj = xi if j0 == i0 else x[j0 : j0 + block_rows]
        bj = bi if j0 == i0 or bounds is None else bounds[j0 : j0 + block_rows]
        li, lj, _ = block_hits(xi, xj, cut, same=j0 == i0, bi=bi, bj=bj)
        found_a.append(li + i0)
        found_b.append(lj + j0)
    return np.concatenate(found_a), np.concatenate(found_b)


def read_clusters(folder: str, c: int, counts: np.ndarray, q0: int, q1: int) -> tuple[np.ndarray, np.ndarray]:
    """Ids and unit rows of clusters q0..q1-1 of clustering c from every part, grouped by cluster, ascending ids
    within one."""
    got = _gather(folder, c, counts, q0, q1, ("ids", "rows", "inv_norms"))
    return got["ids"], _unit(got["rows"], got["inv_norms"])


def _gather(folder: str, c: int, counts: np.ndarray, q0: int, q1: int, names: tuple[str, ...]) -> dict:
    """The part arrays `names` at the rows of clusters q0..q1-1 of clustering c, from every part, grouped by cluster
    and ascending by id within one; with "part" and "pos", where each row is (part and position in it)."""
    ends = np.cumsum(counts, axis=1)
    starts = ends - counts
    chunks: dict[str, list[np.ndarray]] = {name: [] for name in (*names, "part", "pos", "label")}
    for p in range(len(counts)):
        lo, hi = int(starts[p, q0]), int(ends[p, q1 - 1])
        if hi > lo:
            pos, arrays = _part_slice(folder, p, c, lo, hi, names)
            for name, array in zip(names, arrays, strict=True):
                chunks[name].append(array)
            chunks["pos"].append(pos)
            chunks["part"].append(np.full(len(pos), p, np.int32))
            chunks["label"].append(np.repeat(np.arange(q0, q1), counts[p, q0:q1]))
    order = np.argsort(np.concatenate(chunks.pop("label")), kind="stable")  # parts in id order: ids ascend
    return {name: np.concatenate(parts)[order] for name, parts in chunks.items()}


def _unit_rows_at(folder: str, part: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Unit rows (float32) of the rows at (part, position), in that order."""
    out = np.empty((len(pos), 0), np.float32)
    for p in np.unique(part):
        at = np.flatnonzero(part == p)
        sort = np.argsort(pos[at], kind="stable")
        rows, inv = (_read_at(Path(folder) / f"part_{p:05d}" / f"{name}.npy", pos[at][sort])
                     for name in ("rows", "inv_norms"))
        unit = _unit(rows, inv)
        if out.shape[1] != unit.shape[1]:
            out = np.empty((len(pos), unit.shape[1]), np.float32)
        out[at[sort]] = unit
    return out


def _unit(raw: np.ndarray, inv: np.ndarray) -> np.ndarray:
    """Rows as stored, scaled by their inverse norms: float32 unit rows, the bits `UnitRows` gives them."""
    return np.ascontiguousarray(np.asarray(raw, dtype=np.float32) * inv[:, None])


def read_cluster_range(folder: str, c: int, counts: np.ndarray, q: int, first: int, stop: int
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
            _, (i, r, v) = _part_slice(folder, p, c, base + lo, base + hi, ("ids", "rows", "inv_norms"))
            ids.append(i)
            units.append(_unit(r, v))
    return np.concatenate(ids), np.ascontiguousarray(np.concatenate(units))


def _part_slice(folder: str, p: int, c: int, lo: int, hi: int, names: tuple[str, ...]
                ) -> tuple[np.ndarray, list[np.ndarray]]:
    """Rows lo..hi-1 of part p in clustering c's cluster order: their positions in the part, and the part's arrays
    `names` at them (read from maps that close at once, so no page of the part stays in this process)."""
    part = Path(folder) / f"part_{p:05d}"
    order = np.load(part / f"order_{c:03d}.npy", mmap_mode="r")
    pos = np.array(order[lo:hi], dtype=np.int64)
    del order
    sort = np.argsort(pos, kind="stable")  # read in file order, then put back in cluster order
    back = np.empty_like(sort)
    back[sort] = np.arange(len(sort))
    return pos, [_read_at(part / f"{name}.npy", pos[sort])[back] for name in names]


def _read_at(path: Path, positions: np.ndarray) -> np.ndarray:
    """Entries of the .npy file at `path` at the ascending `positions`, read through a map closed at once."""
    x = np.load(path, mmap_mode="r")
    out = np.asarray(x[positions])
    del x
    return out


def search_pairs(folder: Path, c: int, n_parts: int, n_clusters: int, threshold: float, block_rows: int,
                 bucket_rows: int, tasks: TaskMap, projection: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Every pair with cosine >= threshold inside a cluster of clustering c, from the part files in `folder`.
    `projection`: the clusterings' projection, to search each block on its bound first (same pairs).

    Buckets hold at most `bucket_rows` rows, and at most 1/`MIN_BUCKETS` of all rows (but at least a block).
    Returns (a, b, cosine, counts), the pairs sorted by (a, b); counts: `candidates` (nominated by the block
    products), `largest_cluster_rows` and `same_cluster_pairs` (pairs of rows sharing a cluster: the search's size).
    """
    counts = np.stack([np.load(folder / f"part_{p:05d}" / f"counts_{c:03d}.npy") for p in range(n_parts)])
    sizes = counts.sum(axis=0)
    bucket_rows = max(block_rows, min(bucket_rows, -(-int(sizes.sum()) // MIN_BUCKETS)))
    found = tasks(_pair_task, _pair_tasks(sizes, bucket_rows, block_rows),
                  (str(folder), c, counts, threshold, block_rows, projection))
    a = np.concatenate([np.empty(0, np.int64)] + [f[0] for f in found])
    b = np.concatenate([np.empty(0, np.int64)] + [f[1] for f in found])
    cos = np.concatenate([np.empty(0, np.float64)] + [f[2] for f in found])
    order = np.lexsort((b, a))
    counts = {"candidates": int(sum(f[3] for f in found)), "largest_cluster_rows": int(sizes.max(initial=0)),
              "same_cluster_pairs": same_cluster_pairs(sizes)}
    return a[order], b[order], cos[order], counts

