"""The dedup stage: embeddings from any supported source in, pairs and keep decisions (by uid) out.

SOURCE is a run folder, a clip-retrieval folder, a parquet file/glob/folder with an embedding column, or a
``.npy`` file. For a run folder (`DedupStage`) the decisions go into the run: ``stages/dedup/NNNNN.parquet``
(row-aligned with the embedding shards, then markers with each shard's counts), ``stages/dedup/pairs.parquet``,
``stages/dedup/result.json`` and ``stages/dedup/checkpoints/``. Otherwise (`dedup_folder`) they go into an output
folder: ``decisions.parquet``, ``pairs.parquet``, ``stats.json``, ``checkpoints/``. Each clustering is
checkpointed, so a rerun after a crash resumes from the last finished clustering and ends with identical files.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sanitize.dedup.defaults import (
    DEFAULT_CLUSTERINGS,
    DEFAULT_KEEP,
    DEFAULT_RECALL_SAMPLE,
    DEFAULT_THRESHOLD,
    KEEP_POLICIES,
)
from sanitize.engines import Engine, resolve_engine
from sanitize.errors import ConfigError, DataError
from sanitize.io import atomic
from sanitize.io.embeddings import EmbeddingSource, open_embeddings
from sanitize.io.manifest import read_parquet
from sanitize.io.runfolder import RunFolder, peak_memory_mb
from sanitize.pipeline.options import option, section_dict
from sanitize.pipeline.stage import ShardStats, Stage, StageContext, StageResult, stored_counts

if TYPE_CHECKING:  # FAISS, SciPy, polars and pyarrow.compute load when the stage runs, not when its config is read
    import polars as pl

logger = logging.getLogger(__name__)

STAGE = "dedup"
Progress = Callable[[str, int, int], Any]


@dataclass(frozen=True)
class DedupConfig:
    """The ``[dedup]`` section: near-duplicates by the union of several k-means clusterings."""

    threshold: float = option(DEFAULT_THRESHOLD, "Cosine at or above which two rows are near-duplicates.",
                              low=-1, high=1)
    clusterings: int = option(DEFAULT_CLUSTERINGS,
                              "Independent k-means clusterings whose pairs are united (1 = a SemDeDup-style pass).",
                              low=1)
    clusters: int | None = option(None, "Clusters per clustering (unset: from the row count).", example=4096, low=1)
    keep_by: str | None = option(None, "Column whose largest (keep = 'max') or smallest value is kept in each group.",
                                 example="width")
    keep: str = option(DEFAULT_KEEP, "Which end of keep_by wins.", choices=KEEP_POLICIES)
    refuse_chains: bool = option(False, "Remove only rows within threshold of the kept row.")
    hash_col: str | None = option("sha256", "Rows with equal values are exact duplicates.")
    require_normalized: bool = option(False, "Refuse rows that are not L2-normalised.")
    recall_sample: int = option(DEFAULT_RECALL_SAMPLE,
                                "Rows searched exhaustively to estimate pair recall (0: skip).", low=0)


class DedupStage(Stage):
    """Near-duplicates of the run's image embeddings; one row of each group is kept."""

    name = STAGE
    Config = DedupConfig
    summary = "near-duplicates: exact path, k-means x clusterings, within-cluster pairs, union, groups"

    def __init__(self, config: DedupConfig | None = None, *, progress: Progress | None = None) -> None:
        super().__init__(config)
        self.progress = progress

    def fingerprint(self, config) -> dict[str, Any]:
        return {**config.section_dict(self.name), "seed": config.run.seed}

    def run(self, context: StageContext) -> StageResult:
        """Deduplicate the run's embeddings, or reuse the finished result of the same config and seed."""
        started = time.perf_counter()
        run = context.run
        embeddings = open_embeddings(run.path, require_normalized=self.config.require_normalized)
        folder = run.stage_dir(STAGE)
        reusable = run.begin_stage(STAGE, {**section_dict(self.config), "seed": context.seed})
        result_file = folder / "result.json"
        if reusable and result_file.exists() and _all_done(run, embeddings):
            details = json.loads(result_file.read_text())
        else:
            details, decisions, pairs, sizes = deduplicate(
                embeddings, self.config, seed=context.seed, side=_run_columns(run), checkpoint_dir=folder /
                "checkpoints", engine=context.engine, progress=self.progress, where=str(run.path))
            atomic.write_parquet(folder / "pairs.parquet", pairs)
            atomic.write_json(result_file, lasting_details(details))
            start = 0
            for index, size in enumerate(sizes):
                shard = decisions.slice(start, size)
                run.write_shard(STAGE, index, shard, shard_counts(shard).to_dict())
                start += size
        return context.result(self, started, stored_counts(run, STAGE), details=details)


def dedup_folder(source: str | os.PathLike, out: str | os.PathLike, config: DedupConfig, *, seed: int = 0,
                 embedding_col: str | None = None, id_col: str | None = None, progress: Progress | None = None,
                 engine: Engine | None = None) -> dict[str, Any]:
    """Deduplicate the embeddings at `source` (not a run folder) into the folder `out`: decisions.parquet,
    pairs.parquet, stats.json. Returns the stats (also in stats.json)."""
    started = time.perf_counter()
    engine = resolve_engine(engine)
    embeddings = open_embeddings(source, embedding_col=embedding_col, id_col=id_col,
                                 require_normalized=config.require_normalized)
    out = Path(out)
    details, decisions, pairs, _ = deduplicate(
        embeddings, config, seed=seed, side=_source_columns(embeddings), checkpoint_dir=out / "checkpoints",
        engine=engine, progress=progress, where=str(source))
    atomic.write_parquet(out / "pairs.parquet", pairs)
    counts = shard_counts(decisions)
    stats = {**counts.to_dict(), "seconds": round(time.perf_counter() - started, 3), "engine": engine.name,
             "peak_memory_mb": round(peak_memory_mb(), 1), **details}
    atomic.write_parquet(out / "decisions.parquet", decisions)
    atomic.write_json(out / "stats.json", stats)
    return stats


def deduplicate(embeddings: EmbeddingSource, config: DedupConfig, *, seed: int,
                side: Callable[[np.ndarray, list[str]], dict[str, np.ndarray]], checkpoint_dir: Path,
                engine: Engine, progress: Progress | None, where: str
                ) -> tuple[dict[str, Any], pa.Table, pa.Table, list[int]]:
    """Load every embedding, run `find_duplicates` with `config`, and return (details, decision table, pair table,
    shard sizes). `side(uids, columns)` gives the keep_by / hash columns aligned with the uids."""
    from sanitize.dedup import find_duplicates

    uids, x, shard_sizes = _load(embeddings)
    if len(set(uids.tolist())) != len(uids):
        raise DataError(f"{where}: uids are not unique; deduplication needs one uid per row")
    c = config
    columns = side(uids, [col for col in (c.keep_by, c.hash_col) if col])
    if c.keep_by and c.keep_by not in columns:
        raise ConfigError(f"--keep-by column {c.keep_by!r} not found in {where}")
    result = find_duplicates(
        x, threshold=c.threshold, n_clusterings=c.clusterings, n_clusters=c.clusters, seed=seed,
        keep_values=columns.get(c.keep_by) if c.keep_by else None, keep=c.keep, refuse_chains=c.refuse_chains,
        hashes=columns.get(c.hash_col) if c.hash_col else None, require_normalized=c.require_normalized,
        recall_sample=min(c.recall_sample, len(x)), checkpoint_dir=checkpoint_dir, progress=progress,
        task_map=engine.map_tasks,
    )
    details = {k: v for k, v in result.stats.items() if k not in ("rows", "kept", "removed", "seconds")}
    details["phase_seconds"] = result.stats["seconds"]
    return details, decision_table(uids, result.rows), pair_table(uids, result.pairs), shard_sizes


def lasting_details(details: dict[str, Any]) -> dict[str, Any]:
    """What result.json keeps of `details`: the same on every machine and engine, whether or not clusterings were
    resumed from checkpoints (so without the seconds per phase and the per-clustering log, which stats.json has)."""
    return {k: v for k, v in details.items() if k not in ("phase_seconds", "clusterings")}


def shard_counts(decisions: pa.Table) -> ShardStats:
    """Rows, kept and duplicates of a decision table."""
    import pyarrow.compute as pc

    kept = int(pc.sum(decisions["keep"]).as_py() or 0)
    return ShardStats(rows_in=decisions.num_rows, kept=kept, dropped={"duplicate": decisions.num_rows - kept})


def decision_table(uids: np.ndarray, rows: pa.Table) -> pa.Table:
    """Row-aligned decisions with uids: uid, keep, reason, group_id, duplicate_of (uid), cosine_to_kept."""
    import pyarrow.compute as pc

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
    import pyarrow.compute as pc

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
    return not run.todo(STAGE, embeddings.n_shards)


def _run_columns(run: RunFolder) -> Callable[[np.ndarray, list[str]], dict[str, np.ndarray]]:
    """Side columns from the run's input manifest."""

    def columns(uids: np.ndarray, wanted: list[str]) -> dict[str, np.ndarray]:
        import polars as pl

        if not wanted:
            return {}
        manifest = run.manifest()
        tables = []
        for index in range(len(manifest.files)):
            raw = manifest.read_raw_shard(index)
            present = [c for c in wanted if c in raw.column_names]
            uid = manifest.read_shard(index).table["uid"]
            tables.append(pl.from_arrow(pa.table({"uid": uid, **{c: raw[c] for c in present}})))
        return _aligned(uids, pl.concat(tables, how="diagonal"), wanted)

    return columns


def _source_columns(embeddings: EmbeddingSource) -> Callable[[np.ndarray, list[str]], dict[str, np.ndarray]]:
    """Side columns from where a non-run source keeps its rows' other fields (parquet, clip-retrieval metadata)."""

    def columns(uids: np.ndarray, wanted: list[str]) -> dict[str, np.ndarray]:
        import polars as pl

        if not wanted:
            return {}
        frames = []
        if embeddings.kind == "parquet":
            for path in embeddings.parquet_files:
                names = pq.read_schema(path).names
                present = [c for c in wanted if c in names]
                id_name = embeddings.id_col or next((c for c in ("uid", "key", "id") if c in names), None)
                if not id_name:
                    return {}
                frames.append(pl.from_arrow(read_parquet(path, columns=[id_name, *present]))
                              .rename({id_name: "uid"}).with_columns(pl.col("uid").cast(pl.String)))
        elif embeddings.kind == "clip-retrieval":
            for shard in embeddings.shards():
                meta = shard.metadata
                present = [c for c in wanted if c in meta.column_names]
                frames.append(pl.from_arrow(pa.table({"uid": pa.array(shard.uids.tolist(), pa.string()),
                                                      **{c: meta[c] for c in present}})))
        else:
            return {}
        return _aligned(uids, pl.concat(frames, how="diagonal"), wanted)

    return columns


def _aligned(uids: np.ndarray, frame: pl.DataFrame, wanted: list[str]) -> dict[str, np.ndarray]:
    import polars as pl

    aligned = pl.DataFrame({"uid": uids.tolist()}, schema={"uid": pl.String}).join(
        frame, on="uid", how="left", maintain_order="left")
    return {c: aligned[c].to_numpy() for c in wanted if c in aligned.columns}
