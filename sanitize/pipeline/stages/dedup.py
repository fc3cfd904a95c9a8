"""The dedup stage: embeddings from any supported source in, pairs and keep decisions (by uid) out.

SOURCE is a run folder, a clip-retrieval folder, a parquet file/glob/folder with an embedding column, or a
``.npy`` file. For a run folder the decisions go into the run: ``stages/dedup/NNNNN.parquet`` (row-aligned
with the embedding shards, then markers), ``stages/dedup/pairs.parquet`` and ``stages/dedup/checkpoints/``.
Otherwise they go into ``--out``: ``decisions.parquet``, ``pairs.parquet``, ``stats.json``, ``checkpoints/``.
Each clustering is checkpointed, so a rerun after a crash resumes from the last finished clustering and
ends with identical files.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sanitize.dedup import find_duplicates
from sanitize.engines import Engine, resolve_engine
from sanitize.errors import ConfigError, DataError
from sanitize.io import atomic
from sanitize.io.embeddings import EmbeddingSource, open_embeddings
from sanitize.io.manifest import read_parquet
from sanitize.io.runfolder import RunFolder, peak_memory_mb

logger = logging.getLogger(__name__)

STAGE = "dedup"


def run_dedup_stage(
    source: str | os.PathLike,
    *,
    out: str | os.PathLike | None = None,
    threshold: float = 0.95,
    n_clusterings: int = 5,
    n_clusters: int | None = None,
    seed: int = 0,
    keep_by: str | None = None,
    keep: str = "max",
    refuse_chains: bool = False,
    hash_col: str | None = "sha256",
    require_normalized: bool = False,
    recall_sample: int = 1000,
    embedding_col: str | None = None,
    id_col: str | None = None,
    progress: Callable[[str, int, int], Any] | None = None,
    engine: Engine | None = None,
) -> dict[str, Any]:
    """Deduplicate the embeddings at ``source``; returns the stats (also written to stats.json).

    ``keep_by``: a column (of the run's manifest, the parquet source or the clip-retrieval metadata) whose
    largest (``keep="max"``) or smallest value wins in each group; default: the first row. ``hash_col``: rows
    with equal values (e.g. sha256) are exact duplicates, when the column exists. ``engine`` (default: local
    threads) runs the assignment, per-cluster pair search and recall search; k-means training, the union of
    pairs and the groups run here. Every engine gives the same files.
    """
    engine = resolve_engine(engine)
    is_run = Path(source, "run.json").is_file()
    if not is_run and out is None:
        raise ConfigError("--out is needed when SOURCE is not a run folder")
    embeddings = open_embeddings(source, embedding_col=embedding_col, id_col=id_col,
                                 require_normalized=require_normalized)
    config = {"threshold": threshold, "n_clusterings": n_clusterings, "n_clusters": n_clusters, "seed": seed,
              "keep_by": keep_by, "keep": keep, "refuse_chains": refuse_chains, "hash_col": hash_col,
              "recall_sample": recall_sample}
    run = RunFolder.open(source) if is_run else None
    folder = run.stage_dir(STAGE) if run else Path(out)
    if run is not None:
        reusable = run.begin_stage(STAGE, config)
        if reusable and run.stats().get(STAGE) and _all_done(run, embeddings):
            return run.stats()[STAGE]

    uids, x, shard_sizes = _load(embeddings)
    if len(set(uids.tolist())) != len(uids):
        raise DataError(f"{source}: uids are not unique; deduplication needs one uid per row")
    side = _side_columns(source, run, embeddings, uids, [c for c in (keep_by, hash_col) if c])
    if keep_by and keep_by not in side:
        raise ConfigError(f"--keep-by column {keep_by!r} not found in {source}")
    result = find_duplicates(
        x, threshold=threshold, n_clusterings=n_clusterings, n_clusters=n_clusters, seed=seed,
        keep_values=side.get(keep_by) if keep_by else None, keep=keep, refuse_chains=refuse_chains,
        hashes=side.get(hash_col) if hash_col else None, require_normalized=require_normalized,
        recall_sample=min(recall_sample, len(x)), checkpoint_dir=folder / "checkpoints", progress=progress,
        task_map=engine.map_tasks,
    )
    decisions = decision_table(uids, result.rows)
    atomic.write_parquet(folder / "pairs.parquet", pair_table(uids, result.pairs))
    stats = {**result.stats, "rows_in": len(x), "engine": engine.name, "peak_memory_mb": round(peak_memory_mb(), 1)}
    if run is not None:
        start = 0
        for index, size in enumerate(shard_sizes):
            run.write_shard(STAGE, index, decisions.slice(start, size))
            start += size
        run.record_stats(STAGE, stats)
    else:
        atomic.write_parquet(folder / "decisions.parquet", decisions)
        atomic.write_json(folder / "stats.json", stats)
    return stats


def decision_table(uids: np.ndarray, rows: pa.Table) -> pa.Table:
    """Row-aligned decisions with uids: uid, keep, reason, group_id, duplicate_of (uid), cosine_to_kept."""
    uid_arr = pa.array(uids.tolist(), pa.string())
    dup_index = rows["duplicate_of"].combine_chunks()
    dup_uid = pc.take(uid_arr, dup_index)
    cos = rows["cosine_to_kept"].combine_chunks()
    reason = pc.binary_join_element_wise(
        pa.scalar("duplicate_of:"), dup_uid, pc.cast(pc.round(cos, 4), pa.string()), "")
    reason = pc.if_else(pc.is_null(dup_uid), pa.scalar(None, pa.string()), reason)
    return pa.table({"uid": uid_arr, "keep": rows["keep"], "reason": reason, "group_id": rows["group_id"],
                     "duplicate_of": dup_uid, "cosine_to_kept": cos})


def pair_table(uids: np.ndarray, pairs: pa.Table) -> pa.Table:
    """pairs.parquet: uid_a, uid_b, cosine, clustering (first clustering that found it; -1 = exact path)."""
    uid_arr = pa.array(uids.tolist(), pa.string())
    return pa.table({"uid_a": pc.take(uid_arr, pairs["a"]), "uid_b": pc.take(uid_arr, pairs["b"]),
                     "cosine": pairs["cosine"], "clustering": pairs["clustering"]})


def _load(embeddings: EmbeddingSource) -> tuple[np.ndarray, np.ndarray, list[int]]:
    uids, xs, sizes = [], [], []
    for shard in embeddings.shards():
        uids.append(shard.uids)
        xs.append(np.asarray(shard.img_emb))
        sizes.append(len(shard))
    if not xs or sum(sizes) == 0:
        raise DataError("no embeddings to deduplicate")
    return np.concatenate(uids), np.concatenate(xs), sizes


def _all_done(run: RunFolder, embeddings: EmbeddingSource) -> bool:
    return all(run.is_done(STAGE, i) for i in range(embeddings.n_shards))


def _side_columns(source, run: RunFolder | None, embeddings: EmbeddingSource, uids: np.ndarray,
                  columns: list[str]) -> dict[str, np.ndarray]:
    """Columns aligned with ``uids`` from wherever the rows' other fields live (manifest, parquet, metadata)."""
    if not columns:
        return {}
    if run is not None:
        manifest = run.manifest()
        tables = []
        for index in range(len(manifest.files)):
            raw = manifest.read_raw_shard(index)
            wanted = [c for c in columns if c in raw.column_names]
            uid = manifest.read_shard(index).table["uid"]
            tables.append(pl.from_arrow(pa.table({"uid": uid, **{c: raw[c] for c in wanted}})))
        frame = pl.concat(tables, how="diagonal")
    elif embeddings.kind == "parquet":
        frames = []
        for path in embeddings.parquet_files:
            names = pq.read_schema(path).names
            wanted = [c for c in columns if c in names]
            id_name = embeddings.id_col or next((c for c in ("uid", "key", "id") if c in names), None)
            if not id_name:
                return {}
            frames.append(pl.from_arrow(read_parquet(path, columns=[id_name, *wanted]))
                          .rename({id_name: "uid"}).with_columns(pl.col("uid").cast(pl.String)))
        frame = pl.concat(frames, how="diagonal")
    elif embeddings.kind == "clip-retrieval":
        frames = []
        for shard in embeddings.shards():
            meta = shard.metadata
            wanted = [c for c in columns if c in meta.column_names]
            frames.append(pl.from_arrow(pa.table({"uid": pa.array(shard.uids.tolist(), pa.string()),
                                                  **{c: meta[c] for c in wanted}})))
        frame = pl.concat(frames, how="diagonal")
    else:
        return {}
    aligned = pl.DataFrame({"uid": uids.tolist()}, schema={"uid": pl.String}).join(
        frame, on="uid", how="left", maintain_order="left")
    return {c: aligned[c].to_numpy() for c in columns if c in aligned.columns}
