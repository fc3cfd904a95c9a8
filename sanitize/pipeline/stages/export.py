"""The export stage: the kept rows as a manifest with the input's own columns, and the removed uids with reasons.

```
OUT/
  kept/<input shard name>.parquet   input rows that no stage removed, columns and order as in the input
  removed.parquet                   uid, stages (list), reasons ("; "-joined), one row per removed uid
  _done/00000 …                     per-shard completion markers (with the shard's counts), written last
```
A row is removed when any finished source or filter stage wrote ``keep == False`` for its uid. Rows a stage never
saw (e.g. not embedded) are not removed by that stage. The input is only read. The removed set is part of the
stage's fingerprint: when a stage's decisions change (a rerun with another config), every shard is written again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from sanitize.errors import DataError
from sanitize.io import atomic
from sanitize.io.manifest import read_parquet
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
        removed = removed_rows(run)
        digest = hashlib.sha256("\n".join(removed["uid"].to_list()).encode()).hexdigest()
        run.begin_stage(STAGE, {"out": run.relative(out), "removed_sha256": digest}, role=self.role, folder=out,
                        clear=(out / "_done",))
        atomic.write_parquet(out / "removed.parquet", removed.to_arrow())
        todo = run.todo(STAGE, len(run.manifest().files))
        sets = run.decision_sets("filter") + run.decision_sets("source")
        context.engine.map_shards(ExportShardWorker(run.path, out, sets), todo)
        counts = stored_counts(run, STAGE)
        logger.info("export: %s", counts)
        return context.result(self, started, counts, details={"out": str(out)}, outputs={"kept_manifest": str(out)})


def export_folder(run: RunFolder, config: ExportConfig) -> Path:
    """Where the export of `run` goes: ``config.out``, else RUN/export."""
    return Path(config.out) if config.out is not None else run.path / "export"


def removed_rows(run: RunFolder) -> pl.DataFrame:
    """Every uid some stage removed: columns uid, stages (list[str]), reasons (str), sorted by uid."""
    import polars as pl

    frames = []
    for name in run.decision_sets("filter") + run.decision_sets("source"):
        for _, table in run.read_stage(name, columns=["uid", "keep", "reason"]):
            df = pl.from_arrow(table)
            frames.append(df.filter(~pl.col("keep")).select("uid", pl.lit(name).alias("stage"), "reason"))
    if not frames:
        return pl.DataFrame(schema={"uid": pl.String, "stages": pl.List(pl.String), "reasons": pl.String})
    return (
        pl.concat(frames)
        .sort("uid", "stage")
        .group_by("uid", maintain_order=True)
        .agg(pl.col("stage").alias("stages"), pl.col("reason").fill_null("").str.join("; ").alias("reasons"))
    )


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

    def removed_in_shard(self, index: int) -> pa.Array:
        """The uids of shard `index` that some decision set removed (may repeat)."""
        import pyarrow.compute as pc

        parts = [pa.array([], pa.string())]
        for name in self.decision_sets:
            if self.run.is_done(name, index):
                table = read_parquet(self.run.shard_path(name, index), columns=["uid", "keep"])
                parts.append(table.filter(pc.invert(table["keep"]))["uid"].combine_chunks().cast(pa.string()))
        return pa.concat_arrays(parts)

    def __call__(self, index: int) -> int:
        import pyarrow.compute as pc

        self.setup()
        shard = self.manifest.read_shard(index)
        removed_uids = pc.unique(self.removed_in_shard(index))
        removed = pc.fill_null(pc.is_in(shard.table["uid"], value_set=removed_uids), False)  # a hash set per shard
        if (pc.sum(removed).as_py() or 0) != len(removed_uids):
            raise DataError(f"{self.run.path}: a stage's shard {index:05d} removes uids that input shard {index:05d} "
                            "does not hold; the stage's shards are not aligned with the input's")
        kept = self.manifest.read_raw_shard(index).filter(pc.invert(removed))
        atomic.write_parquet(self.out / "kept" / f"{shard.name}.parquet", kept)
        rows = shard.table.num_rows
        counts = ShardStats(rows_in=rows, kept=kept.num_rows, dropped={REMOVED: rows - kept.num_rows})
        self.run.mark_done(STAGE, index, counts.to_dict())
        return rows
