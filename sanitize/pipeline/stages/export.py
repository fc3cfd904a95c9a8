"""The export stage: the kept rows as a manifest with the input's own columns, and the removed uids with reasons.

```
OUT/
  kept/<input shard name>.parquet   input rows that no stage removed, columns and order as in the input
  removed.parquet                   uid, stages (list), reasons ("; "-joined), one row per removed uid, by input
                                    shard, sorted by uid within a shard
  removed/00000.parquet …           the same, one file per input shard (what removed.parquet is joined from)
  _done/00000 …                     per-shard completion markers (with the shard's counts), written last
```
A row is removed when any finished source or filter stage wrote ``keep == False`` for its uid. Rows a stage never
saw (e.g. not embedded) are not removed by that stage. The input is only read. Each shard is decided by a worker from
its own decision files, and removed.parquet is joined from the per-shard files one at a time, so nothing on the driver
grows with the corpus. The fingerprint holds every decision set's stage fingerprint and finished shards: when a
stage's decisions change (a rerun with another config, more finished shards), every shard is written again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from sanitize.errors import DataError
from sanitize.io import atomic
from sanitize.io.manifest import read_parquet, uid_column
from sanitize.io.runfolder import RunFolder
from sanitize.pipeline.options import option
from sanitize.pipeline.stage import (
    ManifestShardWorker,
    ShardStats,
    Stage,
    StageContext,
    StageResult,
    stored_counts,
)

if TYPE_CHECKING:  # polars and pyarrow.compute load when the stage runs, not when its config is read
    import polars as pl

logger = logging.getLogger(__name__)

STAGE = "export"
REMOVED = "removed by a stage"


@dataclass(frozen=True)
class ExportConfig:
    """The ``[export]`` section: where the kept manifest goes."""

    out: str | None = option(None, "Folder of the kept manifest (unset: RUN/export).", example="kept/")


class ExportStage(Stage):
    """The rows no stage removed, with the input's own columns, and removed.parquet with every reason."""

    name = STAGE
    Config = ExportConfig
    role = "sink"
    summary = "kept manifest (input's own columns) + removed uids with reasons"

    def run(self, context: StageContext) -> StageResult:
        started = time.perf_counter()
        run = context.run
        out = export_folder(run, self.config)
        sets = run.decision_sets("filter") + run.decision_sets("source")
        run.begin_stage(STAGE, {"out": run.relative(out), "decisions": decisions_digest(run, sets)}, role=self.role,
                        folder=out, clear=(out / "_done", out / "removed"))
        n_shards = len(run.manifest().files)
        context.engine.map_shards(ExportShardWorker(run.path, out, sets), run.todo(STAGE, n_shards))
        _join_removed(out, n_shards)
        counts = stored_counts(run, STAGE)
        logger.info("export: %s", counts)
        return context.result(self, started, counts, details={"out": str(out)}, outputs={"kept_manifest": str(out)})


def export_folder(run: RunFolder, config: ExportConfig) -> Path:
    """Where the export of `run` goes: ``config.out``, else RUN/export."""
    return Path(config.out) if config.out is not None else run.path / "export"


def decisions_digest(run: RunFolder, sets: list[str]) -> str:
    """sha256 of what the export depends on: each decision set's stage fingerprint and finished shards."""
    stages = run.info().get("stages", {})
    state = {name: [stages.get(run.owner(name), {}).get("fingerprint"), sorted(run.done_shards(name))]
             for name in sets}
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()


def read_decisions(path: Path) -> pa.Table:
    """uid (as text), keep and reason of one decision file; DataError naming the file when keep is not boolean or
    reason not text."""
    table = read_parquet(path, columns=["uid", "keep", "reason"])
    keep, reason = table.schema.field("keep").type, table.schema.field("reason").type
    if not pa.types.is_boolean(keep):
        raise DataError(f"{path}: decision column 'keep' has type {keep}, not bool")
    if not (pa.types.is_string(reason) or pa.types.is_large_string(reason) or pa.types.is_null(reason)):
        raise DataError(f"{path}: decision column 'reason' has type {reason}, not text")
    return table.set_column(0, "uid", uid_column(table, "uid", path=path))


def removed_rows(tables: list[tuple[str, pa.Table]]) -> pl.DataFrame:
    """The removed rows of (decision set, decision table) pairs: columns uid, stages (list[str]), reasons (str),
    sorted by uid, one row per uid."""
    import polars as pl

    frames = [pl.from_arrow(table).filter(~pl.col("keep")).select("uid", pl.lit(name).alias("stage"), "reason")
              for name, table in tables]
    if not frames:
        return pl.DataFrame(schema={"uid": pl.String, "stages": pl.List(pl.String), "reasons": pl.String})
    return (
        pl.concat(frames)
        .with_columns(pl.col("uid").cast(pl.String), pl.col("reason").cast(pl.String))
        .sort("uid", "stage")
        .group_by("uid", maintain_order=True)
        .agg(pl.col("stage").alias("stages"), pl.col("reason").fill_null("").str.join("; ").alias("reasons"))
    )


def _join_removed(out: Path, n_shards: int) -> None:
    """removed.parquet from removed/NNNNN.parquet in shard order, one shard in memory at a time."""
    import pyarrow.parquet as pq

    schema = removed_rows([]).to_arrow().schema
    with atomic.atomic_path(out / "removed.parquet") as tmp, pq.ParquetWriter(tmp, schema, compression="zstd") as w:
        for index in range(n_shards):
            w.write_table(read_parquet(out / "removed" / f"{index:05d}.parquet").cast(schema))


class ExportShardWorker(ManifestShardWorker):
    """The export stage's `ShardWorker`: writes one input shard's kept rows, then its marker with the counts.

    A row is removed when one of `decision_sets` removed it in the same shard (every stage's shard `index` holds
    rows of input shard `index` only), so a shard is decided from its own decision files: work and memory per
    shard do not grow with the corpus.
    """

    def __init__(self, run_path: str | os.PathLike, out: str | os.PathLike, decision_sets: list[str]) -> None:
        super().__init__(run_path)
        self.out = Path(out)
        self.decision_sets = decision_sets

    def removed_in_shard(self, index: int) -> pl.DataFrame:
        """The rows of shard `index` that some decision set removed (`removed_rows` of its decision files)."""
        tables = [(name, read_decisions(self.run.shard_path(name, index)))
                  for name in self.decision_sets if self.run.is_done(name, index)]
        return removed_rows(tables)

    def __call__(self, index: int) -> int:
        import pyarrow.compute as pc

        self.setup()
        shard = self.manifest.read_shard(index)
        removed_rows_here = self.removed_in_shard(index)
        removed_uids = removed_rows_here.to_arrow()["uid"].combine_chunks().cast(pa.string())
        removed = pc.fill_null(pc.is_in(shard.table["uid"], value_set=removed_uids), False)  # a hash set per shard
        if (pc.sum(removed).as_py() or 0) != len(removed_uids):
            raise DataError(f"{self.run.path}: a stage's shard {index:05d} removes uids that input shard {index:05d} "
                            "does not hold; the stage's shards are not aligned with the input's")
        kept = self.manifest.read_raw_shard(index).filter(pc.invert(removed))
        atomic.write_parquet(self.out / "kept" / f"{shard.name}.parquet", kept)
        atomic.write_parquet(self.out / "removed" / f"{index:05d}.parquet", removed_rows_here.to_arrow())
        rows = shard.table.num_rows
        counts = ShardStats(rows_in=rows, kept=kept.num_rows, dropped={REMOVED: rows - kept.num_rows})
        self.run.mark_done(STAGE, index, counts.to_dict())
        return rows
