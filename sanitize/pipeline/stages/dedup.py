"""The dedup stage: embeddings from any supported source in, pairs and keep decisions (by uid) out.

SOURCE is a run folder, a clip-retrieval folder, a parquet file/glob/folder with an embedding column, or a
``.npy`` file. For a run folder (`DedupStage`) the decisions go into the run: ``stages/dedup/NNNNN.parquet``
(row-aligned with the embedding shards, then markers with each shard's counts), ``stages/dedup/pairs.parquet`` and
``stages/dedup/result.json``. Otherwise (`dedup_folder`) they go into an output folder: ``decisions.parquet``,
``pairs.parquet``, ``stats.json``. The search runs out of core (`sanitize.dedup.sharded`): one part of the source
per task, phase files under ``work/`` beside the outputs, so a rerun after a crash resumes at the phase it stopped
in and ends with identical files; ``work/`` is deleted once the outputs are written. The decision files are written
by engine tasks, one per embedding shard.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
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
from sanitize.dedup.shards import ShardedRows, file_fingerprint
from sanitize.engines import Engine, resolve_engine
from sanitize.errors import ConfigError, DataError
from sanitize.io import atomic
from sanitize.io.embeddings import EmbeddingSource, open_embeddings
from sanitize.io.manifest import read_parquet, read_schema
from sanitize.io.runfolder import RunFolder, peak_memory_mb
from sanitize.pipeline.options import option, section_dict
from sanitize.pipeline.stage import ShardStats, Stage, StageContext, StageResult, stored_counts

if TYPE_CHECKING:  # FAISS, SciPy, polars and pyarrow.compute load when the stage runs, not when its config is read
    from sanitize.dedup.incremental import DedupIndex, IncrementalResult
    from sanitize.dedup.sharded import ShardedDedupResult

logger = logging.getLogger(__name__)

STAGE = "dedup"
NPY_SHARD_ROWS = 100_000  # a single .npy source is read as shards of at most this many rows,
NPY_SHARDS = 16  # and at least this many, so every core has work,
NPY_MIN_SHARD_ROWS = 1000  # unless that makes shards smaller than this
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
    keep_index: bool = option(False, "Keep the clusterings (about one more copy of the embeddings) in "
                                     "stages/dedup/index (OUT/index) for a later incremental dedup (since).")
    since: str | None = option(None, "Deduplicate these rows as a new batch against an earlier dedup kept with "
                                     "keep_index (its run folder or output folder): only new rows are searched and "
                                     "decided, in the earlier clusterings.", example="earlier-run/")


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
            source = SourceShards(embeddings, self.config, run_path=str(run.path))
            details, result, named = deduplicate(
                source, self.config, seed=context.seed, workdir=folder / "work", engine=context.engine,
                progress=self.progress, where=str(run.path),
                index_dir=folder / "index" if self.config.keep_index else None)
            atomic.write_parquet(folder / "pairs.parquet", pair_table(result, named))
            atomic.write_json(result_file, lasting_details(details))
            context.engine.map_tasks(_write_run_decisions, list(range(embeddings.n_shards)),
                                     (str(run.path), source, result, named))
            shutil.rmtree(folder / "work", ignore_errors=True)
        return context.result(self, started, stored_counts(run, STAGE), details=details)


def dedup_folder(source: str | os.PathLike, out: str | os.PathLike, config: DedupConfig, *, seed: int = 0,
                 embedding_col: str | None = None, id_col: str | None = None, progress: Progress | None = None,
                 engine: Engine | None = None) -> dict[str, Any]:
    """Deduplicate the embeddings at `source` (not a run folder) into the folder `out`: decisions.parquet,
    pairs.parquet, stats.json; with `config.keep_index`, also ``index/`` (the clusterings); with `config.since`,
    as a new batch against that earlier index (decisions for these rows only; ``duplicate_of`` may be an earlier
    row's uid). Returns the stats (also in stats.json). Memory: one part of the source at a time, plus the
    duplicate graph."""
    started = time.perf_counter()
    engine = resolve_engine(engine)
    embeddings = open_embeddings(source, embedding_col=embedding_col, id_col=id_col,
                                 require_normalized=config.require_normalized)
    out = Path(out)
    rows = SourceShards(embeddings, config)
    details, result, named = deduplicate(rows, config, seed=seed, workdir=out / "work", engine=engine,
                                         progress=progress, where=str(source),
                                         index_dir=out / "index" if config.keep_index else None)
    atomic.write_parquet(out / "pairs.parquet", pair_table(result, named))
    counts = ShardStats(rows_in=result.stats["rows"], kept=result.stats["kept"],
                        dropped={"duplicate": result.stats["removed"]})
    stats = {**counts.to_dict(), "seconds": round(time.perf_counter() - started, 3), "engine": engine.name,
             "peak_memory_mb": round(peak_memory_mb(), 1), **details}
    _write_decisions_file(out / "decisions.parquet", rows, result, named)
    atomic.write_json(out / "stats.json", stats)
    shutil.rmtree(out / "work", ignore_errors=True)
    return stats


def deduplicate(rows: SourceShards, config: DedupConfig, *, seed: int, workdir: Path, engine: Engine,
                progress: Progress | None, where: str, index_dir: Path | None = None
                ) -> tuple[dict[str, Any], ShardedDedupResult | IncrementalResult, Named]:
    """Run `find_duplicates_sharded` over `rows` with `config` (phase files in `workdir`; the clusterings kept in
    `index_dir` when given), or `find_duplicates_since` when `config.since` names an earlier index; return the
    details for stats.json, the result and the uids of the row ids it names. Raises DataError naming `where` when
    uids repeat, ConfigError for keep_index with since (an index covers the one run that made it)."""
    from sanitize.dedup.incremental import DedupIndex, find_duplicates_since
    from sanitize.dedup.sharded import find_duplicates_sharded

    c = config
    rows.check_side_columns(where)
    if sum(rows.shard_sizes()) == 0:
        raise DataError(f"{where}: no embeddings (every shard has 0 rows)")
    if c.since and index_dir is not None:
        raise ConfigError("keep_index with since is not supported: an index covers the one run that made it")
    index = DedupIndex.open(c.since) if c.since else None
    try:
        if index is not None:
            result = find_duplicates_since(
                rows, index, workdir, threshold=c.threshold, seed=seed, keep=c.keep, refuse_chains=c.refuse_chains,
                require_normalized=c.require_normalized, recall_sample=c.recall_sample, task_map=engine.map_tasks)
        else:
            result = find_duplicates_sharded(
                rows, workdir, threshold=c.threshold, n_clusterings=c.clusterings, n_clusters=c.clusters,
                seed=seed, keep=c.keep, refuse_chains=c.refuse_chains, require_normalized=c.require_normalized,
                recall_sample=c.recall_sample, progress=progress, task_map=engine.map_tasks, index_dir=index_dir)
    except DataError as e:
        if "one uid per row" in str(e):
            raise DataError(f"{where}: uids are not unique ({e})") from None
        raise
    details = {k: v for k, v in result.stats.items() if k not in ("rows", "kept", "removed", "seconds")}
    details["phase_seconds"] = result.stats["seconds"]
    named = _since_named(rows, result, index) if index is not None else _node_named(rows, result)
    return details, result, named


@dataclass(frozen=True)
class Named:
    """The uid of each row id a result names (in its pairs and decisions): `ids` sorted, `uids` aligned."""

    ids: np.ndarray
    uids: pa.Array

    def take(self, ids: pa.Array) -> pa.Array:
        """The uids of row ids `ids` (an int64 array; nulls stay null)."""
        import pyarrow.compute as pc

        at = pa.array(np.searchsorted(self.ids, ids.fill_null(0).to_numpy()),
                      mask=ids.is_null().to_numpy(zero_copy_only=False))
        return pc.take(self.uids, at)


def _since_named(rows: SourceShards, result: IncrementalResult, index: DedupIndex) -> Named:
    """Every row id in the incremental result's pairs with its uid: earlier rows from the index, new rows (ids
    index.rows + position) from the source, part by part."""
    ids = np.unique(np.concatenate([result.pairs["a"].to_numpy(), result.pairs["b"].to_numpy()]))
    earlier = ids[ids < index.rows]
    out = [index.uids(earlier)] if len(earlier) else []
    new = ids[ids >= index.rows] - index.rows
    for part in range(rows.embeddings.n_shards):
        start, stop = rows.part_range(part)
        lo, hi = np.searchsorted(new, [start, stop])
        if hi > lo:
            out.append(pa.array(rows.embeddings.read_uids(part)[new[lo:hi] - start].tolist(), pa.string()))
    return Named(ids, pa.concat_arrays([a.cast(pa.string()) for a in out]) if out else pa.array([], pa.string()))


def lasting_details(details: dict[str, Any]) -> dict[str, Any]:
    """What result.json keeps of `details`: the same on every machine and engine, whether or not clusterings were
    resumed from checkpoints (so without the seconds per phase and the per-clustering log, which stats.json has)."""
    return {k: v for k, v in details.items() if k not in ("phase_seconds", "clusterings")}


def shard_counts(decisions: pa.Table) -> ShardStats:
    """Rows, kept and duplicates of a decision table."""
    import pyarrow.compute as pc

    kept = int(pc.sum(decisions["keep"]).as_py() or 0)
    return ShardStats(rows_in=decisions.num_rows, kept=kept, dropped={"duplicate": decisions.num_rows - kept})


def decision_table(uids: np.ndarray, rows: pa.Table, dup_uids: pa.Array) -> pa.Table:
    """Row-aligned decisions with uids: uid, keep, reason (``duplicate_of:<uid>:<cosine to it, 4 decimals>``, null
    when kept), group_id, duplicate_of (uid), cosine_to_kept.

    `rows`: `ShardedDedupResult.rows_table` of these rows; `dup_uids`: the uid of each row's kept row (null for kept
    rows).
    """
    import pyarrow.compute as pc

    cos = rows["cosine_to_kept"].combine_chunks()
    reason = pc.binary_join_element_wise(  # duplicate_of:<uid>:<cosine>
        pa.scalar("duplicate_of"), dup_uids, pc.cast(pc.round(cos, 4), pa.string()), ":")
    reason = pc.if_else(pc.is_null(dup_uids), pa.scalar(None, pa.string()), reason)
    return pa.table({"uid": pa.array(uids.tolist(), pa.string()), "keep": rows["keep"], "reason": reason,
                     "group_id": rows["group_id"], "duplicate_of": dup_uids, "cosine_to_kept": cos})


def pair_table(result: ShardedDedupResult | IncrementalResult, named: Named) -> pa.Table:
    """pairs.parquet: uid_a, uid_b, cosine, clustering (first clustering that found it; -1 = exact path)."""
    return pa.table({"uid_a": named.take(result.pairs["a"].combine_chunks()),
                     "uid_b": named.take(result.pairs["b"].combine_chunks()),
                     "cosine": result.pairs["cosine"], "clustering": result.pairs["clustering"]})


def _decisions_of_part(rows: SourceShards, result: ShardedDedupResult | IncrementalResult, named: Named,
                       part: int) -> pa.Table:
    """The decision table of the source's part `part` (all of its rows)."""
    start, stop = rows.part_range(part)
    table = result.rows_table(start, stop)
    return decision_table(rows.embeddings.read_uids(part), table, named.take(table["duplicate_of"].combine_chunks()))


def _write_run_decisions(run_path: str, rows: SourceShards, result: ShardedDedupResult | IncrementalResult,
                         named: Named, part: int) -> None:
    """One task: stages/dedup/NNNNN.parquet of the run's embedding shard `part`, then its marker."""
    decisions = _decisions_of_part(rows, result, named, part)
    RunFolder(run_path).write_shard(STAGE, part, decisions, shard_counts(decisions).to_dict())


def _write_decisions_file(path: Path, rows: SourceShards, result: ShardedDedupResult | IncrementalResult,
                          named: Named) -> None:
    """decisions.parquet of a non-run source, written part by part (one part in memory at a time)."""
    writer = None
    with atomic.atomic_path(path) as tmp:
        for part in range(rows.embeddings.n_shards):
            table = _decisions_of_part(rows, result, named, part)
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema, compression="zstd")
            writer.write_table(table)
        if writer is not None:
            writer.close()


def _node_named(rows: SourceShards, result: ShardedDedupResult) -> Named:
    """The uid of every row in the duplicate graph (`result.nodes`), read part by part."""
    nodes = result.nodes["id"].to_numpy()
    out: list[str] = []
    for part in range(rows.embeddings.n_shards):
        start, stop = rows.part_range(part)
        lo, hi = np.searchsorted(nodes, [start, stop])
        if hi > lo:
            uids = rows.embeddings.read_uids(part)
            out.extend(uids[nodes[lo:hi] - start].tolist())
    return Named(nodes, pa.array(out, pa.string()))


def _all_done(run: RunFolder, embeddings: EmbeddingSource) -> bool:
    return not run.todo(STAGE, embeddings.n_shards)


class SourceShards(ShardedRows):
    """An `EmbeddingSource` read as `ShardedRows`: one shard per part (a single `.npy` is cut into `NPY_SHARDS` to
    `NPY_SHARD_ROWS`-row shards), with uids and the config's `hash_col` / `keep_by` side columns.

    Side columns come from the run's input manifest (joined by uid; `run_path`), from the parquet files themselves,
    or from a clip-retrieval folder's metadata. Pickles as paths, so engine tasks elsewhere read the same files.
    """

    def __init__(self, embeddings: EmbeddingSource, config: DedupConfig, *, run_path: str | None = None) -> None:
        self.embeddings = embeddings
        self.hash_col = config.hash_col or None
        self.keep_by = config.keep_by or None
        self.run_path = run_path
        self._part_sizes = [embeddings.part_rows(i) for i in range(embeddings.n_shards)]
        step = None  # a part is a shard, except a single .npy: shards of NPY_SHARD_ROWS, and at least NPY_SHARDS
        if embeddings.kind == "npy":
            step = max(NPY_MIN_SHARD_ROWS, min(NPY_SHARD_ROWS, -(-self._part_sizes[0] // NPY_SHARDS)))
        self.pieces = [(part, start, min(size, start + (step or max(size, 1))))
                       for part, size in enumerate(self._part_sizes)
                       for start in range(0, max(size, 1), step or max(size, 1))]
        self._cache: dict[int, pa.Table] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_cache": {}}

    def shard_sizes(self) -> list[int]:
        return [stop - start for _, start, stop in self.pieces]

    def part_range(self, part: int) -> tuple[int, int]:
        """Global row ids start..stop of the source's part `part`."""
        start = sum(self._part_sizes[:part])
        return start, start + self._part_sizes[part]

    def fingerprint(self) -> str:
        e = self.embeddings
        files = [f for i in range(e.n_shards) for f in e.part_files(i).values()]
        if self.run_path:
            files += [f for f in RunFolder(self.run_path).manifest().files]
        return file_fingerprint(files) + f"|{self.hash_col}|{self.keep_by}|{e.embedding_col}|{e.id_col}"

    def read(self, shard: int) -> np.ndarray:
        part, start, stop = self.pieces[shard]
        # A copy per read: EmbeddingSource remembers the first dimension it saw, and tasks read shards in any
        # order; the dedup scan compares dimensions itself, in shard order.
        return np.asarray(copy.copy(self.embeddings).read_shard(part, start, stop).img_emb)

    def name(self, shard: int) -> str:
        part, start, _ = self.pieces[shard]
        files = self.embeddings.part_files(part)
        path = files.get("img") or files.get("path")
        return f"{path}" + (f" (rows from {start})" if start else "")

    def uids(self, shard: int) -> pa.Array:
        part, start, stop = self.pieces[shard]
        return pa.array(self.embeddings.read_uids(part, start, stop).tolist(), pa.string())

    def hashes(self, shard: int) -> pa.Array | None:
        return self._side(shard, self.hash_col) if self.hash_col else None

    def keep_values(self, shard: int) -> np.ndarray | None:
        if not self.keep_by:
            return None
        values = self._side(shard, self.keep_by)
        if pa.types.is_integer(values.type) or pa.types.is_floating(values.type) or pa.types.is_boolean(
                values.type) or pa.types.is_null(values.type):
            return values.cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)
        return np.asarray(values.to_pylist(), dtype=object)

    def check_side_columns(self, where: str) -> None:
        """Raise ConfigError when the keep-by column is in no part of the source."""
        if self.keep_by and not any(self.keep_by in names for names in self._side_names()):
            raise ConfigError(f"--keep-by column {self.keep_by!r} not found in {where}")

    def _side_names(self) -> list[list[str]]:
        e = self.embeddings
        if self.run_path:
            return [read_schema(f).names for f in RunFolder(self.run_path).manifest().files]
        if e.kind == "parquet":
            return [read_schema(f).names for f in e.parquet_files]
        if e.kind == "clip-retrieval":
            return [read_schema(e.part_files(i)["meta"]).names for i in range(e.n_shards)]
        return []

    def _side(self, shard: int, column: str) -> pa.Array:
        """Column `column` for the rows of `shard`, aligned by uid (nulls where a row has no value)."""
        part, start, stop = self.pieces[shard]
        if part not in self._cache:
            self._cache = {part: self._side_table(part)}  # one part at a time
        table = self._cache[part]
        if column not in table.column_names:
            return pa.nulls(stop - start)
        return table[column].slice(start, stop - start).combine_chunks()

    def _side_table(self, part: int) -> pa.Table:
        """The side columns of part `part`, row-aligned with its embeddings."""
        import polars as pl

        e = self.embeddings
        wanted = [c for c in (self.hash_col, self.keep_by) if c]
        uids = e.read_uids(part)
        if self.run_path:
            manifest = RunFolder(self.run_path).manifest()
            number = e.part_number(part)
            if number >= len(manifest.files):
                return pa.table({"uid": pa.array(uids.tolist(), pa.string())})
            raw = manifest.read_raw_shard(number)
            side = pa.table({"uid": manifest.read_shard(number).table["uid"],
                             **{c: raw[c] for c in wanted if c in raw.column_names}})
        elif e.kind == "parquet":
            path = e.parquet_files[part]
            names = read_schema(path).names
            side = read_parquet(path, columns=[c for c in wanted if c in names])
            side = side.append_column("uid", pa.array(uids.tolist(), pa.string()))
        elif e.kind == "clip-retrieval":
            meta = read_parquet(e.part_files(part)["meta"])
            side = pa.table({"uid": pa.array(uids.tolist(), pa.string()),
                             **{c: meta[c] for c in wanted if c in meta.column_names}})
        else:
            return pa.table({"uid": pa.array(uids.tolist(), pa.string())})
        aligned = pl.DataFrame({"uid": uids.tolist()}, schema={"uid": pl.String}).join(
            pl.from_arrow(side).with_columns(pl.col("uid").cast(pl.String)), on="uid", how="left",
            maintain_order="left")
        return aligned.to_arrow()
