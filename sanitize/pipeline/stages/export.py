"""Export a run: the kept rows as a manifest with the input's own columns, and the removed uids with reasons.

```
OUT/
  kept/<input shard name>.parquet   input rows that no stage removed, columns and order as in the input
  removed.parquet                   uid, stages (list), reasons ("; "-joined), one row per removed uid
  _done/00000 …                     per-shard completion markers, written last
  _removed.sha256                   digest of the removed uids the markers were written for
```
A row is removed when any finished stage wrote ``keep == False`` for its uid. Rows a stage never saw (e.g. not
embedded) are not removed by that stage. The input is only read. When a stage's decisions change (a rerun with
another config), the removed set changes, its digest no longer matches, and every shard is written again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path

import polars as pl

from sanitize.io import atomic
from sanitize.io.runfolder import RunFolder

logger = logging.getLogger(__name__)


def removed_rows(run: RunFolder) -> pl.DataFrame:
    """Every uid some stage removed: columns uid, stages (list[str]), reasons (str), sorted by uid."""
    frames = []
    for stage in run.finished_stages() + (["embed"] if (run.stage_dir("embed") / "_done").is_dir() else []):
        for _, table in run.read_stage(stage):
            df = pl.from_arrow(table.select(["uid", "keep", "reason"]))
            frames.append(df.filter(~pl.col("keep")).select("uid", pl.lit(stage).alias("stage"), "reason"))
    if not frames:
        return pl.DataFrame(schema={"uid": pl.String, "stages": pl.List(pl.String), "reasons": pl.String})
    return (
        pl.concat(frames)
        .sort("uid", "stage")
        .group_by("uid", maintain_order=True)
        .agg(pl.col("stage").alias("stages"), pl.col("reason").fill_null("").str.join("; ").alias("reasons"))
    )


def export_run(run: RunFolder, out: str | os.PathLike | None = None) -> dict:
    """Write the kept manifest and removed.parquet under ``out`` (default RUN/export). Returns a summary dict.

    Resumable: shards whose marker exists are skipped; output is identical on a rerun.
    """
    out = Path(out) if out is not None else run.path / "export"
    manifest = run.manifest()
    removed = removed_rows(run)
    removed_set = pl.Series("uid", removed["uid"])
    digest = hashlib.sha256("\n".join(removed["uid"].to_list()).encode()).hexdigest()
    state = out / "_removed.sha256"
    if state.exists() and state.read_text().strip() != digest:
        logger.info("%s: the removed rows changed; writing every shard again", out)
        shutil.rmtree(out / "_done", ignore_errors=True)
    atomic.write_parquet(out / "removed.parquet", removed.to_arrow())
    atomic.write_text(state, digest + "\n")
    kept_total = rows_total = 0
    for index, _ in enumerate(manifest.files):
        shard = manifest.read_shard(index)
        rows_total += shard.table.num_rows
        keep_mask = ~pl.Series(shard.table.column("uid").to_pylist(), dtype=pl.String).is_in(removed_set.implode())
        kept_total += int(keep_mask.sum())
        marker = out / "_done" / f"{index:05d}"
        if marker.exists():
            continue
        raw = manifest.read_raw_shard(index)
        kept = raw.filter(keep_mask.to_arrow())
        atomic.write_parquet(out / "kept" / f"{shard.name}.parquet", kept)
        atomic.write_text(marker, "done\n")
    summary = {"rows": rows_total, "kept": kept_total, "removed": rows_total - kept_total, "out": str(out)}
    logger.info("export: %s", summary)
    return summary
