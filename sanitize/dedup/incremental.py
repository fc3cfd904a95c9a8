"""Incremental dedup: a new batch against an earlier, finished dedup, without recomputing the earlier one.

A finished out-of-core dedup (`find_duplicates_sharded`) can keep its **index** (`save_index`): the projection and
every clustering's centroids, and its distinct rows grouped by cluster (the assign phase's part files, kept instead
of deleted), plus the uid of every row. `find_duplicates_since` then takes a new batch of rows:

1. **scan** and **exact** copies within the batch, as the full dedup does;
2. **assign** the batch's distinct rows to the index's centroids in every clustering (one read of the batch);
3. **pairs**, per clustering, only in the clusters that received new rows: new × new and new × earlier rows of the
   same cluster, in blocks, confirmed by exact cosine (earlier × earlier pairs are never recomputed);
4. **decisions** for the new rows only (the earlier rows' decisions stand): a new row with an earlier near-duplicate
   is removed as a duplicate of its most similar earlier row; the new rows' own groups are decided as the full
   dedup decides them, and a group that holds a row with an earlier duplicate keeps none of its rows;
5. **recall**, self-reported as the full dedup does: a seeded sample of new rows is searched exhaustively against
   every earlier and new row, and the share of those true pairs that the clusterings found is the pair recall.

Work is proportional to the batch: per clustering, Σ over clusters of new·(new + earlier) products, plus one read of
the earlier rows for the recall sample. The earlier rows are read from the index, never from their source.
Row ids: earlier rows keep their ids (0..N-1, as in the earlier run), new rows are N + their position in the batch.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sanitize.dedup.bound import block_hits
from sanitize.dedup.buckets import (
    BUCKET_ROWS,
    MIN_BUCKETS,
    PART_ROWS,
    AssignPlan,
    assign_part,
    read_cluster_range,
    read_clusters,
    split_parts,
    true_pairs,
)
from sanitize.dedup.clock import PhaseClock
from sanitize.dedup.components import compact_ids
from sanitize.dedup.defaults import DEFAULT_BLOCK_ROWS, DEFAULT_KEEP, DEFAULT_RECALL_SAMPLE, DEFAULT_THRESHOLD
from sanitize.dedup.groups import decide_groups, keep_priority
from sanitize.dedup.options import RECALL_STREAM, stream_seed
from sanitize.dedup.pairs import CANDIDATE_MARGIN, PairUnion
from sanitize.dedup.parallel import TaskMap, thread_map
from sanitize.dedup.recall import RecallEstimate
from sanitize.dedup.run import EXACT
from sanitize.dedup.scan import scan_shards
from sanitize.dedup.shards import ShardedRows, shard_offsets, unit_rows, write_node_rows
from sanitize.errors import ConfigError, DataError
from sanitize.io import atomic

logger = logging.getLogger(__name__)

INDEX_LAYOUT = 1  # version of the index folder's files
INDEX_FILE = "index.json"


# -- the index of a finished dedup ---------------------------------------------------------------------------


def save_index(index_dir: Path, parts_dir: Path, rows: ShardedRows, *, n_parts: int, centroids: list[np.ndarray],
               projection: np.ndarray | None, dim: int, n_rows: int, threshold: float, seed: int) -> None:
    """Keep a finished dedup's clusterings in `index_dir`: its part files (moved from `parts_dir`, not copied),
    centroids, projection and the uid of every row (`uids.parquet`, row id order); index.json written last."""
    index_dir = Path(index_dir)
    if index_dir.exists():
        shutil.rmtree(index_dir)
    index_dir.mkdir(parents=True)
    shutil.move(str(parts_dir), str(index_dir / "parts"))
    for c, centre in enumerate(centroids):
        atomic.write_npy(index_dir / f"centroids_{c:03d}.npy", centre)
    if projection is not None:
        atomic.write_npy(index_dir / "projection.npy", projection)
    with atomic.atomic_path(index_dir / "uids.parquet") as tmp:
        writer = pq.ParquetWriter(tmp, pa.schema([("uid", pa.string())]), compression="zstd")
        for s, size in enumerate(rows.shard_sizes()):
            uids = rows.uids(s)
            if uids is None:
                start = int(shard_offsets(rows.shard_sizes())[s])
                uids = pa.array([str(i) for i in range(start, start + size)], pa.string())
            writer.write_table(pa.table({"uid": uids.cast(pa.string())}))
        writer.close()
    atomic.write_json(index_dir / INDEX_FILE, {
        "layout": INDEX_LAYOUT, "rows": int(n_rows), "dim": int(dim), "n_parts": int(n_parts),
        "n_clusterings": len(centroids), "n_clusters": len(centroids[0]), "threshold": float(threshold),
        "seed": int(seed), "source": rows.fingerprint()})


@dataclass(frozen=True)
class DedupIndex:
    """A kept index (see `save_index`), opened: its metadata; arrays are read when needed."""

    path: Path
    rows: int
    dim: int
    n_parts: int
    n_clusterings: int
    n_clusters: int
    threshold: float

    @classmethod
    def open(cls, path: str | Path) -> DedupIndex:
        """The index in `path`: a folder holding index.json, an output folder with an `index/` folder in it, or a
        run folder whose dedup stage kept one (`stages/dedup/index/`). Raises DataError naming the folder when
        there is none or it is of another layout."""
        path = Path(path)
        for inside in (Path("index"), Path("stages", "dedup", "index")):
            if not (path / INDEX_FILE).is_file() and (path / inside / INDEX_FILE).is_file():
                path = path / inside
        if not (path / INDEX_FILE).is_file():
            raise DataError(f"{path}: no dedup index here (index.json); make one with `sanitize dedup ... "
                            "--keep-index` (or dedup.keep_index = true in a run)")
        try:
            meta = json.loads((path / INDEX_FILE).read_text())
            if meta.get("layout") != INDEX_LAYOUT:
                raise DataError(f"{path / INDEX_FILE}: index layout {meta.get('layout')}, this version reads "
                                f"{INDEX_LAYOUT}; rebuild it with --keep-index")
            return cls(path, int(meta["rows"]), int(meta["dim"]), int(meta["n_parts"]), int(meta["n_clusterings"]),
                       int(meta["n_clusters"]), float(meta["threshold"]))
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"{path / INDEX_FILE}: not a dedup index ({e})") from None

    @property
    def parts(self) -> Path:
        return self.path / "parts"

    def centroids(self) -> list[np.ndarray]:
        return [np.load(self.path / f"centroids_{c:03d}.npy") for c in range(self.n_clusterings)]

    def projection(self) -> np.ndarray | None:
        path = self.path / "projection.npy"
        return np.load(path) if path.exists() else None

    def counts(self, c: int) -> np.ndarray:
        """(parts, clusters) rows of each part in each cluster of clustering c."""
        return np.stack([np.load(self.parts / f"part_{p:05d}" / f"counts_{c:03d}.npy") for p in range(self.n_parts)])

    def uids(self, ids: np.ndarray) -> pa.Array:
        """The uids of earlier rows `ids` (any order), in that order. Reads only the row groups of uids.parquet (one
        or more per earlier shard) that hold them, one at a time: memory grows with `ids`, not with the index."""
        ids = np.asarray(ids, dtype=np.int64)
        file = pq.ParquetFile(self.path / "uids.parquet")
        sizes = [file.metadata.row_group(g).num_rows for g in range(file.metadata.num_row_groups)]
        starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        if len(ids) and (ids.min() < 0 or ids.max() >= starts[-1]):
            raise DataError(f"{self.path / 'uids.parquet'}: holds {starts[-1]} rows, asked for row {ids.max()}")
        order = np.argsort(ids, kind="stable")
        group = np.searchsorted(starts, ids[order], side="right") - 1
        chunks = [pa.array([], pa.string())]
        for piece in np.split(np.arange(len(ids)), np.flatnonzero(np.diff(group)) + 1):
            if len(piece):
                g = int(group[piece[0]])
                column = file.read_row_group(g, columns=["uid"])["uid"].combine_chunks()
                chunks.append(column.take(pa.array(ids[order[piece]] - starts[g])).cast(pa.string()))
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        return pa.concat_arrays(chunks).take(pa.array(inverse))


# -- the incremental run -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IncrementalResult:
    """What `find_duplicates_since` found. Row ids: earlier rows 0..index.rows-1, new rows index.rows + position.

    pairs: a < b int64 (a may be an earlier row), cosine float32, clustering int16 (first that found it; -1 =
        exact copies within the batch), sorted.
    nodes: every new row in a pair, sorted by id: id, group_id, keep, duplicate_of (row id, earlier or new; null
        when kept), cosine_to_kept. New rows not in the table are kept.
    """

    pairs: pa.Table
    nodes: pa.Table
    offset: int
    stats: dict

    def rows_table(self, start: int, stop: int) -> pa.Table:
        """Decisions of new rows start..stop-1 (positions in the batch): group_id, keep, duplicate_of (row id),
        cosine_to_kept, row-aligned."""
        from sanitize.dedup.sharded import ShardedDedupResult

        view = ShardedDedupResult(pairs=self.pairs, nodes=self.nodes, shard_sizes=[], stats={})
        return view.rows_table(self.offset + start, self.offset + stop)


def find_duplicates_since(
    rows: ShardedRows,
    index: DedupIndex,
    workdir: str | Path,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    seed: int = 0,
    keep: str = DEFAULT_KEEP,
    refuse_chains: bool = False,
    require_normalized: bool = False,
    recall_sample: int = DEFAULT_RECALL_SAMPLE,
    block_rows: int = DEFAULT_BLOCK_ROWS,
    part_rows: int = PART_ROWS,
    task_map: TaskMap | None = None,
) -> IncrementalResult:
    """Near-duplicates of the new rows `rows`, among themselves and against the earlier rows of `index`.

    Options as `find_duplicates_sharded` (the clusterings are the index's: their number, size and projection).
    Guarantees: every pair reported has cosine >= threshold (or is an exact copy within the batch); every removed
    row is a duplicate of an earlier row or of a kept new row; earlier rows are never read from their source nor
    changed; same rows, index and options, same result. `workdir` holds the phase files (deleted by the caller).
    Raises DataError for bad rows or a batch of another dimension than the index, ConfigError for bad options.
    """
    from sanitize.dedup.sharded import DistinctRows, Workdir, saved_exact_copies

    tasks = task_map or thread_map
    if not -1 <= threshold <= 1:
        raise ConfigError(f"threshold must be in [-1, 1], got {threshold}")
    clock = PhaseClock()
    sizes = [int(s) for s in rows.shard_sizes()]
    offsets = shard_offsets(sizes)
    n = int(offsets[-1])
    if n == 0:
        raise DataError("no embeddings to deduplicate")
    work = Workdir(Path(workdir), {"layout": INDEX_LAYOUT, "incremental": str(index.path), "source":
                                   rows.fingerprint(), "sizes": sizes, "threshold": float(threshold), "seed": seed,
                                   "recall_sample": recall_sample, "part_rows": part_rows,
                                   "require_normalized": require_normalized})
    dim = scan_shards(rows, work / "scan", offsets, require_normalized, tasks)
    if dim != index.dim:
        raise DataError(f"the new rows have dimension {dim}, the index {index.path} has {index.dim}: another "
                        "embedding model")
    members, member_reps = saved_exact_copies(rows, work, offsets, tasks)
    reps = DistinctRows(n, members)
    clock.lap("exact")

    parts = split_parts(sizes, part_rows)
    plan = AssignPlan(parts=parts, offsets=offsets, members=members, centroids=index.centroids(),
                      projection=index.projection(), sample=np.empty(0, np.int64),
                      queries=np.empty((0, dim), np.float32), threshold=threshold)
    todo = [p for p in range(len(parts)) if not (work / f"parts/part_{p:05d}.done").exists()]
    tasks(assign_part, todo, (rows, str(work / "parts"), plan))
    clock.lap("assign")

    found, candidates = _pairs(index, work / "parts", len(parts), threshold, block_rows, tasks)
    clock.lap("pairs")
    # Exact copies within the batch join the new-row pairs (cosine 1: equal rows).
    found.add(member_reps + index.rows, members + index.rows, np.ones(len(members)), source=EXACT)
    a, b, cos, source = found.a, found.b, found.cos, found.source

    nodes = _decide(rows, work, a, b, cos, index.rows, offsets, threshold, keep, refuse_chains, tasks)
    clock.lap("groups")
    recall = None
    if recall_sample > 0:
        rng = np.random.default_rng(stream_seed(seed, RECALL_STREAM, 0))
        sample = reps.sample(rng, min(recall_sample, len(reps)))
        recall = _recall(rows, index, work, sample, members, a[source >= 0], b[source >= 0], threshold,
                         len(reps), tasks)
        clock.lap("recall")

    removed = int(np.count_nonzero(~nodes["keep"].to_numpy(zero_copy_only=False)))
    against = int(np.count_nonzero(a < index.rows))
    stats = {"rows": n, "distinct_rows": len(reps), "pairs": len(a), "pairs_with_earlier_rows": against,
             "exact_pairs": int(np.count_nonzero(source == EXACT)),
             "pairs_first_found_by_clustering": [int(np.count_nonzero(source == c))
                                                 for c in range(index.n_clusterings)],
             "candidates": candidates, "removed": removed, "kept": n - removed, "threshold": float(threshold),
             "n_clusterings": index.n_clusterings, "n_clusters": index.n_clusters, "seed": int(seed),
             "refuse_chains": bool(refuse_chains), "index": str(index.path), "index_rows": index.rows,
             "seconds": clock.stop(), "recall": recall.to_dict() if recall is not None else None}
    pair_table = pa.table({"a": pa.array(a, pa.int64()), "b": pa.array(b, pa.int64()),
                           "cosine": pa.array(np.minimum(cos, 1.0).astype(np.float32)),
                           "clustering": pa.array(source.astype(np.int16))})
    return IncrementalResult(pairs=pair_table, nodes=nodes, offset=index.rows, stats=stats)


def _pairs(index: DedupIndex, new_parts: Path, n_new_parts: int, threshold: float, block_rows: int,
           tasks: TaskMap) -> tuple[PairUnion, int]:
    """Every confirmed pair (a < b, cosine, first clustering) with a new row in it, over all clusterings; and the
    number of candidates checked."""
    union, candidates = PairUnion(), 0
    for c in range(index.n_clusterings):
        new_counts = np.stack([np.load(new_parts / f"part_{p:05d}" / f"counts_{c:03d}.npy")
                               for p in range(n_new_parts)])
        old_counts = index.counts(c)
        new_sizes, old_sizes = new_counts.sum(axis=0), old_counts.sum(axis=0)
        bucket_rows = max(block_rows, min(BUCKET_ROWS, -(-int((new_sizes + old_sizes).sum()) // MIN_BUCKETS)))
        items = _pair_tasks(new_sizes, old_sizes, bucket_rows)
        found = tasks(_pair_task, items, (str(index.parts), str(new_parts), c, old_counts, new_counts,
                                          index.rows, threshold, block_rows, bucket_rows))
        union.add(np.concatenate([np.empty(0, np.int64), *(f[0] for f in found)]),
                  np.concatenate([np.empty(0, np.int64), *(f[1] for f in found)]),
                  np.concatenate([np.empty(0, np.float64), *(f[2] for f in found)]), source=c)
        candidates += sum(f[3] for f in found)
    return union, candidates


def _pair_tasks(new_sizes: np.ndarray, old_sizes: np.ndarray, bucket_rows: int) -> list[tuple[int, int, int]]:
    """(first cluster, stop cluster, first earlier row) tasks over the clusters that received new rows: runs of
    such clusters with at most `bucket_rows` rows in all (first earlier row -1: all of them), or, for a cluster
    with more earlier rows than that, one task per `bucket_rows` of its earlier rows (the one at 0 also searches
    the new rows among themselves)."""
    items: list[tuple[int, int, int]] = []
    first, total = -1, 0

    def close(stop: int) -> None:
        nonlocal first, total
        if first >= 0:
            items.append((first, stop, -1))
        first, total = -1, 0

    for q in range(len(new_sizes)):
        if new_sizes[q] == 0:
            close(q)
            continue
        if old_sizes[q] > bucket_rows:
            close(q)
            items.extend((q, q + 1, start) for start in range(0, int(old_sizes[q]), bucket_rows))
            continue
        size = int(new_sizes[q] + old_sizes[q])
        if first >= 0 and total + size > bucket_rows:
            close(q)
        if first < 0:
            first = q
        total += size
    close(len(new_sizes))
    return items


def _pair_task(old_folder: str, new_folder: str, c: int, old_counts: np.ndarray, new_counts: np.ndarray,
               offset: int, threshold: float, block_rows: int, bucket_rows: int, item: tuple[int, int, int]
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """One task's pairs: in each of its clusters, the new rows against the earlier rows and against each other
    (for a giant cluster's task: against earlier rows start..start+bucket_rows, and each other when start is 0).
    Returns (a, b, cosine, candidates), ids global."""
    q0, q1, start = item
    new_ids, new_x = read_clusters(new_folder, c, new_counts, q0, q1)
    new_ids = new_ids + offset
    new_bounds = np.concatenate([[0], np.cumsum(new_counts[:, q0:q1].sum(axis=0))])
    if start < 0:
        old_ids, old_x = read_clusters(old_folder, c, old_counts, q0, q1)
        old_bounds = np.concatenate([[0], np.cumsum(old_counts[:, q0:q1].sum(axis=0))])
    else:
        stop = min(int(old_counts[:, q0].sum()), start + bucket_rows)
        old_ids, old_x = read_cluster_range(old_folder, c, old_counts, q0, start, stop)
        old_bounds = np.array([0, len(old_ids)])
    found: list[tuple[np.ndarray, ...]] = []
    candidates = 0
    for j in range(q1 - q0):
        ni, nx = new_ids[new_bounds[j] : new_bounds[j + 1]], new_x[new_bounds[j] : new_bounds[j + 1]]
        oi, ox = old_ids[old_bounds[j] : old_bounds[j + 1]], old_x[old_bounds[j] : old_bounds[j + 1]]
        for i0 in range(0, len(ni), block_rows):
            for j0 in range(0, len(oi), block_rows):
                pairs, n_cand = _block_pairs(nx[i0 : i0 + block_rows], ox[j0 : j0 + block_rows], threshold,
                                             upper=False)
                candidates += n_cand
                found.append((oi[j0 + pairs[1]], ni[i0 + pairs[0]], pairs[2]))
            if start <= 0:
                for j0 in range(i0, len(ni), block_rows):
                    pairs, n_cand = _block_pairs(nx[i0 : i0 + block_rows], nx[j0 : j0 + block_rows], threshold,
                                                 upper=j0 == i0)
                    candidates += n_cand
                    found.append((ni[i0 + pairs[0]], ni[j0 + pairs[1]], pairs[2]))
    empty = [np.empty(0, np.int64)]
    return (np.concatenate(empty + [f[0] for f in found]), np.concatenate(empty + [f[1] for f in found]),
            np.concatenate([np.empty(0, np.float64)] + [f[2] for f in found]), candidates)


def _block_pairs(xi: np.ndarray, xj: np.ndarray, threshold: float, *, upper: bool
                 ) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], int]:
    """((i, j, cosine) of the pairs of unit rows xi × xj with exact cosine >= threshold (i < j when `upper`: a
    block against itself), candidates nominated by the float32 product)."""
    li, lj, _ = block_hits(xi, xj, threshold - CANDIDATE_MARGIN, same=upper)
    cos = np.einsum("ij,ij->i", xi[li].astype(np.float64), xj[lj].astype(np.float64))
    true = cos >= threshold
    return (li[true], lj[true], cos[true]), len(li)


def _decide(rows: ShardedRows, work: Path, a: np.ndarray, b: np.ndarray, cos: np.ndarray, offset: int,
            offsets: np.ndarray, threshold: float, keep: str, refuse_chains: bool, tasks: TaskMap) -> pa.Table:
    """The nodes table: new rows with an earlier duplicate are removed as duplicates of their most similar
    earlier row; the new rows' own graph is decided by `decide_groups` with those rows first in priority, and
    a group whose top row has an earlier duplicate keeps none."""
    from sanitize.dedup.sharded import keep_values_at

    earlier = a < offset
    new_a, new_b = a[~earlier] - offset, b[~earlier] - offset
    # Each new row's best earlier match: highest cosine, then smallest earlier id.
    ea, eb, ec = a[earlier], b[earlier] - offset, cos[earlier]
    order = np.lexsort((ea, -ec, eb))
    ea, eb, ec = ea[order], eb[order], ec[order]
    best = np.ones(len(eb), dtype=bool)
    best[1:] = eb[1:] != eb[:-1]
    matched, match_of, match_cos = eb[best], ea[best], ec[best]

    nodes, la, lb = compact_ids(np.concatenate([new_a, matched]), np.concatenate([new_b, matched]))
    la, lb = la[: len(new_a)], lb[: len(new_a)]
    graph_rows = write_node_rows(rows, nodes, work / "graph_rows", tasks)
    has_earlier = np.isin(nodes, matched)
    values = keep_values_at(rows, nodes, offsets)
    rank = keep_priority(len(nodes), values, keep)
    priority = np.lexsort((rank, ~has_earlier))  # rows with an earlier duplicate first, then the keep rule
    inverse = np.empty_like(priority)
    inverse[priority] = np.arange(len(priority))
    decisions = decide_groups(graph_rows, la, lb, threshold, priority=inverse, refuse_chains=refuse_chains)
    keep_row = decisions.keep.copy()
    dup = np.where(keep_row, -1, nodes[np.maximum(decisions.duplicate_of, 0)] + offset)
    dup_cos = np.minimum(decisions.cosine_to_kept, 1.0)
    at = np.searchsorted(nodes, matched)
    keep_row[at] = False
    dup[at] = match_of
    dup_cos[at] = np.minimum(match_cos, 1.0)
    group = decisions.group_id
    return pa.table({
        "id": pa.array(nodes + offset, pa.int64()),
        "group_id": pa.array(group, pa.int64(), mask=group < 0),
        "keep": pa.array(keep_row, pa.bool_()),
        "duplicate_of": pa.array(dup, pa.int64(), mask=keep_row),
        "cosine_to_kept": pa.array(dup_cos.astype(np.float32), pa.float32(), mask=keep_row),
    })


def _recall(rows: ShardedRows, index: DedupIndex, work: Path, sample: np.ndarray, members: np.ndarray,
            found_a: np.ndarray, found_b: np.ndarray, threshold: float, n_distinct: int, tasks: TaskMap
            ) -> RecallEstimate:
    """Pair recall from `sample` (new distinct rows): its true pairs, found exhaustively among every earlier
    distinct row (the index's parts) and every new distinct row (all but the exact copies `members`), against the
    pairs the clusterings found, as the full dedup counts them."""
    from sanitize.dedup.sharded import recall_of_true_pairs

    queries_rows = write_node_rows(rows, sample, work / "recall_rows", tasks)
    queries = queries_rows.unit(queries_rows.local_of(sample))
    sample_ids = sample + index.rows
    found = tasks(_true_pairs_in_part, list(range(index.n_parts)),
                  (str(index.parts), queries, sample_ids, threshold))
    found += tasks(_true_pairs_in_shard, list(range(len(rows.shard_sizes()))),
                   (rows, queries, sample_ids, members, threshold, index.rows))
    q, a, b = (np.concatenate([np.empty(0, np.int64)] + [f[k] for f in found]) for k in range(3))
    return recall_of_true_pairs(q, a, b, found_a, found_b, len(sample), exact=len(sample) == n_distinct)


def _true_pairs_in_part(folder: str, queries: np.ndarray, sample_ids: np.ndarray, threshold: float, p: int
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    part = Path(folder) / f"part_{p:05d}"
    ids = np.load(part / "ids.npy")
    raw = np.load(part / "rows.npy", mmap_mode="r")
    inv = np.load(part / "inv_norms.npy")
    out = []
    for i in range(0, len(ids), 65536):
        x = np.asarray(raw[i : i + 65536], dtype=np.float32) * inv[i : i + 65536, None]
        out.append(true_pairs(queries, sample_ids, x, ids[i : i + 65536], threshold))
    del raw
    return tuple(np.concatenate([np.empty(0, np.int64)] + [o[k] for o in out]) for k in range(3))


def _true_pairs_in_shard(rows: ShardedRows, queries: np.ndarray, sample_ids: np.ndarray, members: np.ndarray,
                         threshold: float, offset: int, s: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    sizes = rows.shard_sizes()
    start = int(np.sum(sizes[:s]))
    raw = rows.read(s)
    distinct = np.setdiff1d(np.arange(start, start + len(raw), dtype=np.int64), members, assume_unique=True)
    unit, _ = unit_rows(raw[distinct - start])
    return true_pairs(queries, sample_ids, unit, distinct + offset, threshold)
