"""`find_duplicates_sharded`: the `find_duplicates` algorithm as phases over files, never holding every row.

Same options, same pairs, decisions and recall estimate as `find_duplicates` on the concatenated rows (row ids are
global: shard offset + row). Every phase is a list of independent tasks run by the `task_map` (threads here, Ray
tasks across machines); tasks read shards and phase files from `workdir` and write their own files, so only small
things pass through the driver: samples, centroids, counts per cluster, and the duplicate graph (pairs touch a small
share of rows). Each phase ends with a file written last, so a rerun after a crash resumes at the phase it stopped in:

1. **scan** (per shard, `scan`): rows are finite and nonzero; hashes of rows, content hashes and uids by partition.
2. **exact** (per partition, `scan`): rows with equal hashes, checked against the rows; uids must not repeat.
3. **samples** (one pass): every sample the run draws (PCA, each clustering's training rows, recall queries), drawn
   up front exactly as `find_duplicates` draws them; **projection** and **train** on the driver (a fixed cost).
4. **assign** (per part, `buckets`): one read of each distinct row for all clusterings and the recall search.
5. **pairs** (per clustering, per bucket of clusters or block row of a giant cluster, `buckets`).
6. **union** and **groups** (driver, on the duplicate graph only): pairs of all sources, first source kept;
   components and keepers on compact ids (`decide_groups`), the graph's rows read from a node file.
7. **recall**: the assign tasks' true pairs of the sample against the pairs found.

Disk: one copy of the distinct rows (as stored), their float16 bound rows (`sanitize.dedup.bound`: 2 · (dims + 1)
bytes per row) and 8 bytes per row and clustering, deleted at the end.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from sanitize.dedup.buckets import BUCKET_ROWS, PART_ROWS, AssignPlan, assign_part, search_pairs, split_parts
from sanitize.dedup.clock import PhaseClock
from sanitize.dedup.clustering import (
    default_n_clusters,
    kmeans_centroids,
    one_blas_thread,
    principal_directions,
    project_sample,
)
from sanitize.dedup.components import compact_ids
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
from sanitize.dedup.groups import decide_groups, keep_priority
from sanitize.dedup.options import SearchOptions
from sanitize.dedup.pairs import PairUnion
from sanitize.dedup.parallel import TaskMap, thread_map
from sanitize.dedup.recall import RecallEstimate, recall_from_sample
from sanitize.dedup.run import EXACT
from sanitize.dedup.scan import exact_copies, scan_shards
from sanitize.dedup.shards import NodeRows, ShardedRows, shard_offsets, write_node_rows
from sanitize.dedup.vectors import pair_cosines
from sanitize.errors import ConfigError, DataError
from sanitize.io import atomic

logger = logging.getLogger(__name__)

LAYOUT = 2  # version of the workdir's files
_PAIR_COUNTS = ("candidates", "largest_cluster_rows", "same_cluster_pairs")  # saved with each clustering's pairs

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class ShardedDedupResult:
    """What `find_duplicates_sharded` found, by global row id.

    pairs: as `DedupResult.pairs` (a < b int64, cosine float32, clustering int16; -1 = exact path), sorted.
    nodes: every row in a pair, sorted: id, group_id, keep, duplicate_of (row id, null when kept),
        cosine_to_kept (null when kept). Rows not in the table have no duplicate and are kept.
    shard_sizes: rows per shard. stats: as `DedupResult.stats`.
    """

    pairs: pa.Table
    nodes: pa.Table
    shard_sizes: list[int]
    stats: dict

    def rows_table(self, start: int, stop: int) -> pa.Table:
        """Decisions of rows start..stop-1, row-aligned: the columns (and values) of `DedupResult.rows`."""
        n = stop - start
        ids = self.nodes["id"].to_numpy()
        lo, hi = np.searchsorted(ids, [start, stop])
        at = ids[lo:hi] - start
        group = np.full(n, -1, dtype=np.int64)
        keep = np.ones(n, dtype=bool)
        dup = np.full(n, -1, dtype=np.int64)
        cos = np.full(n, np.nan, dtype=np.float32)
        part = self.nodes.slice(lo, hi - lo)
        group[at] = part["group_id"].fill_null(-1).to_numpy()
        keep[at] = part["keep"].to_numpy(zero_copy_only=False)
        dup[at] = part["duplicate_of"].fill_null(-1).to_numpy()
        cos[at] = part["cosine_to_kept"].fill_null(np.nan).to_numpy()
        return pa.table({
            "group_id": pa.array(group, pa.int64(), mask=group < 0),
            "keep": pa.array(keep, pa.bool_()),
            "duplicate_of": pa.array(dup, pa.int64(), mask=keep),
            "cosine_to_kept": pa.array(cos, pa.float32(), mask=keep),
        })


def find_duplicates_sharded(
    rows: ShardedRows,
    workdir: str | Path,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    n_clusterings: int = DEFAULT_CLUSTERINGS,
    n_clusters: int | None = None,
    seed: int = 0,
    keep: str = DEFAULT_KEEP,
    refuse_chains: bool = False,
    require_normalized: bool = False,
    recall_sample: int = DEFAULT_RECALL_SAMPLE,
    block_rows: int = DEFAULT_BLOCK_ROWS,
    max_points_per_centroid: int = DEFAULT_POINTS_PER_CENTROID,
    kmeans_iterations: int = DEFAULT_KMEANS_ITERATIONS,
    clustering_dims: int | None = DEFAULT_CLUSTERING_DIMS,
    part_rows: int = PART_ROWS,
    bucket_rows: int = BUCKET_ROWS,
    progress: Progress | None = None,
    task_map: TaskMap | None = None,
    index_dir: str | Path | None = None,
) -> ShardedDedupResult:
    """Near-duplicates of the rows of `rows`, found phase by phase through files in `workdir`.

    Options and guarantees are those of `find_duplicates` (hashes and keep values come from `rows.hashes` and
    `rows.keep_values`); the pairs and decisions equal its result on the concatenated rows. Memory: a few
    parts or buckets per worker, plus the duplicate graph on the driver. `workdir` keeps each finished phase;
    a rerun with the same rows and options resumes from it (another run's workdir is cleared first).
    `part_rows` / `bucket_rows` size the assign and pair-search tasks (they do not change the result).
    `index_dir`: keep the clusterings there (`sanitize.dedup.incremental.save_index`: the assign phase's part
    files, centroids, projection, uids) for a later `find_duplicates_since`, instead of deleting them.
    Raises ConfigError for bad options, DataError for bad rows.
    """
    options = SearchOptions(
        threshold=threshold, n_clusterings=n_clusterings, n_clusters=n_clusters, seed=seed,
        refuse_chains=refuse_chains, recall_sample=recall_sample, block_rows=block_rows,
        max_points_per_centroid=max_points_per_centroid, kmeans_iterations=kmeans_iterations,
        clustering_dims=clustering_dims,
    )
    if bucket_rows < block_rows or part_rows < 1:
        raise ConfigError(f"bucket_rows must be >= block_rows ({block_rows}) and part_rows >= 1")
    tasks = task_map or thread_map
    report = progress or (lambda phase, done, total: None)
    clock = PhaseClock()
    sizes = [int(s) for s in rows.shard_sizes()]
    offsets = shard_offsets(sizes)
    n = int(offsets[-1])
    if n == 0:
        raise DataError("no embeddings to deduplicate")
    searched = {k: v for k, v in options.to_dict().items() if k != "refuse_chains"}  # chains: decided at the end
    work = Workdir(Path(workdir), {"layout": LAYOUT, "source": rows.fingerprint(), "sizes": sizes, **searched,
                                    "part_rows": part_rows, "require_normalized": require_normalized})

    dim = scan_shards(rows, work / "scan", offsets, require_normalized, tasks)
    clock.lap("check")
    members, member_reps = saved_exact_copies(rows, work, offsets, tasks)  # raises first when uids repeat
    report("check", 1, 1)
    reps = DistinctRows(n, members)
    if n > 1 and len(reps) == 1:
        raise DataError(f"embeddings: all {n} rows are identical (byte-equal embeddings or equal hashes); "
                        "the embedding or hashing step probably failed")
    clock.lap("exact")
    report("exact", 1, 1)

    k = int(n_clusters) if n_clusters is not None else default_n_clusters(len(reps))
    if k > len(reps):
        raise ConfigError(f"n_clusters={k} is more than the {len(reps)} distinct rows; use at most {len(reps)}")
    samples = _Samples.draw(reps, k, dim, options)
    sample_rows = write_node_rows(rows, samples.all_ids(), work / "samples", tasks)  # one pass for every sample
    projection = _projection(work, samples, sample_rows, options)
    clock.lap("projection")
    centroids, train_seconds = _centroids(work, samples, sample_rows, k, projection, options)
    clock.lap("train")
    parts = split_parts(sizes, part_rows)
    plan = AssignPlan(parts=parts, offsets=offsets, members=members, centroids=centroids, projection=projection,
                      sample=samples.recall, queries=sample_rows.unit(sample_rows.local_of(samples.recall)),
                      threshold=threshold)
    todo = [p for p in range(len(parts)) if not (work / f"parts/part_{p:05d}.done").exists()]
    tasks(assign_part, todo, (rows, str(work / "parts"), plan))
    clock.lap("assign")
    found, clustering_stats = PairUnion(), []
    found.add(member_reps, members, np.full(len(members), np.nan), source=EXACT)  # cosines measured in _union
    for c in range(n_clusterings):
        pairs_c, info = _clustering_pairs(c, work, len(parts), k, projection, options, bucket_rows, tasks)
        logger.info("clustering %d/%d: %d pairs", c + 1, n_clusterings, len(pairs_c[0]))
        found.add(*pairs_c, source=c)
        del pairs_c
        clustering_stats.append({**info, "train_seconds": train_seconds[c],
                                 "seconds": train_seconds[c] + info["pairs_seconds"]})
        report("clustering", c + 1, n_clusterings)
    clock.lap("pairs")

    a, b, cos, source, graph_rows = _union(rows, work, found, tasks)
    clock.lap("confirm")
    nodes = _groups(rows, graph_rows, a, b, members, member_reps, threshold, keep, refuse_chains, offsets)
    clock.lap("groups")
    report("groups", 1, 1)

    recall = None
    if recall_sample > 0:
        found = source != EXACT
        recall = _recall(work, len(parts), a[found], b[found], len(samples.recall), len(reps))
        clock.lap("recall")
        report("recall", 1, 1)
    if index_dir is not None:
        from sanitize.dedup.incremental import save_index

        save_index(Path(index_dir), work / "parts", rows, n_parts=len(parts), centroids=centroids,
                   projection=projection, dim=dim, n_rows=n, threshold=threshold, seed=seed)
        clock.lap("index")
    shutil.rmtree(work / "parts", ignore_errors=True)
    seconds = clock.stop()

    removed = int(np.count_nonzero(~nodes["keep"].to_numpy(zero_copy_only=False)))
    stats = {
        "rows": n, "distinct_rows": len(reps), "pairs": len(a),
        "exact_pairs": int(np.count_nonzero(source == EXACT)),
        "pairs_first_found_by_clustering": [int(np.count_nonzero(source == c)) for c in range(n_clusterings)],
        "groups": int(nodes["group_id"].fill_null(-1).to_numpy().max(initial=-1)) + 1,
        "removed": removed, "kept": n - removed, "threshold": float(threshold),
        "n_clusterings": int(n_clusterings), "n_clusters": k, "seed": int(seed),
        "refuse_chains": bool(refuse_chains), "device": device_name(),
        "clusterings": clustering_stats, "seconds": seconds,
        "recall": recall.to_dict() if recall is not None else None,
    }
    pair_table = pa.table({
        "a": pa.array(a, pa.int64()), "b": pa.array(b, pa.int64()),
        "cosine": pa.array(np.minimum(cos, 1.0).astype(np.float32)),
        "clustering": pa.array(source.astype(np.int16)),
    })
    return ShardedDedupResult(pairs=pair_table, nodes=nodes, shard_sizes=sizes, stats=stats)


class Workdir:
    """Phase files of one run: cleared when the run's key (rows and options) differs from the one saved."""

    def __init__(self, path: Path, key: dict) -> None:
        self.path = path
        key_file = path / "key.json"
        if key_file.exists() and json.loads(key_file.read_text()) != key:
            logger.info("%s: files of another dedup run; starting over", path)
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
        if not key_file.exists():
            atomic.write_json(key_file, key)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def done(self, name: str) -> bool:
        return (self.path / f"{name}.done").exists()

    def mark(self, name: str, payload: dict | None = None) -> None:
        atomic.write_json(self.path / f"{name}.done", payload or {})


def saved_exact_copies(rows: ShardedRows, work: Workdir, offsets: np.ndarray, tasks: TaskMap
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Phase 2, resumable: (exact copies, their representatives) from `scan.exact_copies`, read back from `work`
    when this run saved them already. Shared with the incremental dedup."""
    if work.done("exact"):
        saved = np.load(work / "exact.npz")
        return saved["members"], saved["reps"]
    members, reps = exact_copies(rows, work / "scan", work / "exact_rows", offsets, tasks)
    atomic.write_npz(work / "exact.npz", {"members": members, "reps": reps})
    work.mark("exact")
    return members, reps


class DistinctRows:
    """The distinct rows (every row but the exact copies `members`), addressed by position without listing them."""

    def __init__(self, n: int, members: np.ndarray) -> None:
        self.n = n
        self.members = members
        self._shifted = members - np.arange(len(members))  # non-decreasing

    def __len__(self) -> int:
        return self.n - len(self.members)

    def at(self, positions: np.ndarray) -> np.ndarray:
        """Row ids of the distinct rows at `positions` (what `reps[positions]` would be)."""
        positions = np.asarray(positions, dtype=np.int64)
        return positions + np.searchsorted(self._shifted, positions, side="right")

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """Sorted ids of `size` distinct rows, drawn as `np.sort(rng.choice(reps, size, replace=False))` draws them."""
        if size >= len(self):
            return self.at(np.arange(len(self)))
        return self.at(np.sort(rng.choice(len(self), size=size, replace=False)))


# -- phase 3: projection and training ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Samples:
    """Every sample the run draws, drawn up front as `find_duplicates` draws them (same seeds, same rows), so one
    pass over the shards reads them all: PCA rows, each clustering's training rows and FAISS seed, recall queries.
    """

    projection: np.ndarray
    train: list[np.ndarray]
    kmeans_seeds: list[int]
    recall: np.ndarray

    @classmethod
    def draw(cls, reps: DistinctRows, k: int, dim: int, options: SearchOptions) -> _Samples:
        from sanitize.dedup.clustering import PROJECTION_SAMPLE_ROWS

        dims = options.clustering_dims
        projection = np.empty(0, np.int64)
        if dims is not None and dims < dim:
            rng = np.random.default_rng(options.projection_seed())
            projection = reps.sample(rng, PROJECTION_SAMPLE_ROWS)
        train, seeds = [], []
        for c in range(options.n_clusterings):
            rng = np.random.default_rng(options.clustering_seed(c))
            train.append(reps.sample(rng, k * options.max_points_per_centroid))
            seeds.append(int(rng.integers(0, 2**31 - 1)))
        recall = np.empty(0, np.int64)
        if options.recall_sample > 0:
            rng = np.random.default_rng(options.recall_seed())
            recall = reps.sample(rng, min(options.recall_sample, len(reps)))
        return cls(projection, train, seeds, recall)

    def all_ids(self) -> np.ndarray:
        return np.unique(np.concatenate([self.projection, *self.train, self.recall]))


def _projection(work: Workdir, samples: _Samples, sample_rows: NodeRows, options: SearchOptions) -> np.ndarray | None:
    """The PCA projection all clusterings share (None: cluster in full dimension), saved in the workdir."""
    if not len(samples.projection):
        return None
    path = work / "projection.npy"
    if path.exists():
        return np.load(path)
    block = sample_rows.unit(sample_rows.local_of(samples.projection))
    projection = principal_directions(block, options.clustering_dims)
    atomic.write_npy(path, projection)
    return projection


def _centroids(work: Workdir, samples: _Samples, sample_rows: NodeRows, k: int, projection: np.ndarray | None,
               options: SearchOptions) -> tuple[list[np.ndarray], list[float]]:
    """Each clustering's centroids (trained on its sample, saved in the workdir) and seconds spent training."""
    centroids, seconds = [], []
    for c, (ids, seed) in enumerate(zip(samples.train, samples.kmeans_seeds, strict=True)):
        t0 = time.perf_counter()
        path = work / f"centroids_{c:03d}.npy"
        if path.exists():
            centroids.append(np.load(path))
        else:
            with one_blas_thread():
                train = project_sample(lambda some: sample_rows.unit(sample_rows.local_of(some)), ids, projection)
            centroids.append(kmeans_centroids(train, k, seed=seed, n_iter=options.kmeans_iterations,
                                              max_points_per_centroid=options.max_points_per_centroid))
            atomic.write_npy(path, centroids[-1])
        seconds.append(time.perf_counter() - t0)
    return centroids, seconds


def _clustering_pairs(c: int, work: Workdir, n_parts: int, k: int, projection: np.ndarray | None,
                      options: SearchOptions, bucket_rows: int, tasks: TaskMap) -> tuple[tuple, dict]:
    """Clustering `c`'s confirmed pairs (a, b, cosine), sorted by (a, b), saved in the workdir; and its stats."""
    name = f"clustering_{c:03d}"
    seed = options.clustering_seed(c)
    if work.done(name):
        saved = np.load(work / f"{name}.npz")
        counts = {key: int(saved[key]) for key in _PAIR_COUNTS}
        return (saved["a"], saved["b"], saved["cosine"]), {"index": c, "seed": seed, "resumed": True,
                                                            "pairs_seconds": 0.0, **counts}
    t0 = time.perf_counter()
    a, b, cos, counts = search_pairs(work / "parts", c, n_parts, k, options.threshold, options.block_rows,
                                     bucket_rows, tasks, projection)
    atomic.write_npz(work / f"{name}.npz", {"a": a, "b": b, "cosine": cos,
                                            **{key: np.int64(counts[key]) for key in _PAIR_COUNTS}})
    work.mark(name)
    return (a, b, cos), {"index": c, "seed": seed, "resumed": False, "pairs_seconds": time.perf_counter() - t0,
                         **counts}


# -- phase 6: union and groups -------------------------------------------------------------------------------


def _union(rows: ShardedRows, work: Workdir, found: PairUnion, tasks: TaskMap) -> tuple[np.ndarray, ...]:
    """All pairs (`found`), with the exact copies' cosines measured; the node file of their rows."""
    a, b, cos, source = found.a, found.b, found.cos, found.source
    graph_ids = np.unique(np.concatenate([a, b]))
    graph_rows = write_node_rows(rows, graph_ids, work / f"graph_rows_{_digest(graph_ids)}", tasks)
    exact = source == EXACT
    if exact.any():
        cos[exact] = pair_cosines(graph_rows, graph_rows.local_of(a[exact]), graph_rows.local_of(b[exact]))
    return a, b, cos, source, graph_rows


def _digest(ids: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(ids, dtype=np.int64).tobytes()).hexdigest()[:16]


def _groups(rows: ShardedRows, graph_rows: NodeRows, a: np.ndarray, b: np.ndarray, members: np.ndarray,
            member_reps: np.ndarray, threshold: float, keep: str, refuse_chains: bool, offsets: np.ndarray
            ) -> pa.Table:
    """`decide_groups` on the compact graph: the nodes table of `ShardedDedupResult`."""
    nodes, la, lb = compact_ids(a, b)
    values = keep_values_at(rows, nodes, offsets)
    priority = keep_priority(len(nodes), values, keep)
    exact_rep = nodes.copy()
    at = np.searchsorted(nodes, members)
    exact_rep[at] = member_reps
    decisions = decide_groups(graph_rows, la, lb, threshold, priority=priority, refuse_chains=refuse_chains,
                              exact_rep=exact_rep)
    removed = ~decisions.keep
    dup = np.where(removed, nodes[np.maximum(decisions.duplicate_of, 0)], -1)
    return pa.table({
        "id": pa.array(nodes, pa.int64()),
        "group_id": pa.array(decisions.group_id, pa.int64(), mask=decisions.group_id < 0),
        "keep": pa.array(decisions.keep, pa.bool_()),
        "duplicate_of": pa.array(dup, pa.int64(), mask=~removed),
        "cosine_to_kept": pa.array(np.minimum(decisions.cosine_to_kept, 1.0).astype(np.float32), pa.float32(),
                                   mask=~removed),
    })


def keep_values_at(rows: ShardedRows, ids: np.ndarray, offsets: np.ndarray) -> np.ndarray | None:
    """Keep-by values of rows `ids` (sorted), float64, or None when the rows have none."""
    shard_of = np.searchsorted(offsets, ids, side="right") - 1
    out = np.empty(len(ids), dtype=np.float64)
    for s in np.unique(shard_of):
        values = rows.keep_values(int(s))
        if values is None:
            return None
        values = np.asarray(values)
        if not np.issubdtype(values.dtype, np.number) and values.dtype != bool:
            raise DataError(f"keep_values: expected numbers, got dtype {values.dtype}")
        out[shard_of == s] = values[ids[shard_of == s] - offsets[s]]
    return out


# -- phase 7: recall -----------------------------------------------------------------------------------------


def _recall(work: Workdir, n_parts: int, found_a: np.ndarray, found_b: np.ndarray, n_queries: int,
            n_distinct: int) -> RecallEstimate:
    """Share of the sampled distinct rows' true pairs (found by the assign tasks) that the clusterings found."""
    parts = [np.load(work / f"parts/part_{p:05d}" / "recall.npz") for p in range(n_parts)]
    q, a, b = (np.concatenate([part[k] for part in parts]) for k in "qab")
    return recall_of_true_pairs(q, a, b, found_a, found_b, n_queries, exact=n_queries == n_distinct)


def recall_of_true_pairs(q: np.ndarray, a: np.ndarray, b: np.ndarray, found_a: np.ndarray, found_b: np.ndarray,
                         n_queries: int, *, exact: bool) -> RecallEstimate:
    """The recall estimate from the sample's true pairs (query q, pair a < b; a pair may come twice) and the pairs
    found (found_a, found_b): each true pair once, credited to the first of its sampled rows, as in memory."""
    order = np.lexsort((q, b, a))
    q, a, b = q[order], a[order], b[order]
    first = np.ones(len(a), dtype=bool)
    first[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
    q, a, b = q[first], a[first], b[first]
    # Which true pairs were found: both lists sorted by (a, b); compare as pairs, not as a·n + b.
    found_order = np.lexsort((found_b, found_a))
    fa, fb = found_a[found_order], found_b[found_order]
    lo = np.searchsorted(fa, a, side="left")
    hi = np.searchsorted(fa, a, side="right")
    hit = np.array([bool(np.any(fb[i:j] == b_i)) for i, j, b_i in zip(lo, hi, b, strict=True)], dtype=bool)
    return recall_from_sample(q, hit, n_queries, exact=exact)
