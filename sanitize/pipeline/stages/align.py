"""The align stage: image–text alignment (CLIP score) per row; keep by a threshold or the top fraction of rows.

DataComp's strongest simple baseline keeps pairs by CLIP score, the cosine of the image and caption embeddings that
the embed stage already wrote: rows at or above a threshold (LAION used 0.28 for ViT-B/32), or the top fraction of
the whole dataset (DataComp keeps 30%). The fraction's cut is the exact k-th largest score (k = ⌈fraction · rows⌉),
found from per-shard histograms (`sanitize.quantiles`), so it is the same on every engine and never needs every
score in one place; rows tied with the cut are all kept.

Per embedding shard it writes ``RUN/stages/align/scores/NNNNN.parquet`` (uid, float32 score), then
``RUN/stages/align/NNNNN.parquet`` (uid, keep, reason ``align:0.213<0.280``, score) and the shard's marker. Opt-in:
add ``align`` to ``run.stages``. It needs caption embeddings (the embed stage writes them); a run without them is
refused with one line. A row whose caption is missing or blank has no text to agree with (its caption embedding is
the empty string's): it is not scored (score NaN), it is removed with reason ``align:no_caption``, counted apart
(``dropped.no_caption``), and the top fraction is taken over the rows that have a caption.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from sanitize.errors import ConfigError, DataError
from sanitize.io import atomic
from sanitize.io.embeddings import open_embeddings
from sanitize.io.manifest import read_parquet
from sanitize.io.runfolder import RunFolder
from sanitize.pipeline.options import option, section_dict
from sanitize.pipeline.stage import ShardStats, Stage, StageContext, StageResult, stored_counts
from sanitize.quantiles import (
    Counts,
    add_counts,
    high_counts,
    kth_largest_key,
    low_counts,
    sortable_keys,
    value_of_key,
)

STAGE = "align"


@dataclass(frozen=True)
class AlignConfig:
    """The ``[align]`` section: keep rows by CLIP score."""

    by: str = option("threshold", "Keep rows by a CLIP-score threshold, or keep the top fraction of rows.",
                     choices=("threshold", "fraction"))
    threshold: float = option(0.28, "CLIP score (cosine of image and caption embeddings) a kept row reaches "
                              "(LAION used 0.28 for ViT-B/32).", low=-1, high=1)
    fraction: float = option(0.3, "Share of rows with the highest CLIP scores to keep (DataComp's baseline: 0.3).",
                             low=0, high=1)


class AlignStage(Stage):
    """Rows whose image and caption disagree (low CLIP score) are dropped."""

    name = STAGE
    Config = AlignConfig
    runs_by_default = False
    summary = "image–text alignment: CLIP score by threshold or top fraction"

    def check_plan(self, running: set[str], finished: set[str], out: str, config) -> None:
        super().check_plan(running, finished, out, config)
        if "embed" in running and not config["embed"].text:
            raise ConfigError("the align stage needs caption embeddings, but embed.text is false (--no-text); "
                              "embed the captions or leave align out of run.stages")

    def run(self, context: StageContext) -> StageResult:
        started = time.perf_counter()
        run, c = context.run, self.config
        if c.by == "fraction" and c.fraction <= 0:
            raise ConfigError(f"align.fraction must be in (0, 1], got {c.fraction}")
        source = open_embeddings(run.path)
        run.begin_stage(STAGE, section_dict(c))
        indices = list(range(source.n_shards))
        # Pass 1: every shard's scores (kept for the later passes and the decisions); shards already scored are read.
        high = add_counts(context.engine.map_tasks(score_shard, indices, (str(run.path),)))
        rows = int(high.sum())
        if rows == 0:
            raise DataError(f"{run.path}: no embedded rows with a caption to align")
        key = (int(sortable_keys(np.array([c.threshold], np.float32))[0]) if c.by == "threshold"
               else cut_key(context, run, indices, high, math.ceil(c.fraction * rows)))
        todo = run.todo(STAGE, len(indices))
        context.engine.map_shards(AlignShardWorker(run.path, key), todo)
        counts = stored_counts(run, STAGE)
        details = {"by": c.by, "threshold": value_of_key(key),
                   "kept_fraction": counts.kept / counts.rows_in if counts.rows_in else None}
        return context.result(self, started, counts, details=details)


def cut_key(context: StageContext, run: RunFolder, indices: list[int], high: np.ndarray, k: int) -> int:
    """The key of the k-th largest score, given the summed high-bit counts (pass 2 counts the low bits of the one
    bin that holds it)."""

    def low_of(bin_: int) -> np.ndarray:
        return add_counts(context.engine.map_tasks(low_shard_counts, indices, (str(run.path), bin_)))

    return kth_largest_key(high, low_of, k)


def clip_scores(shard) -> np.ndarray:
    """float32 cosine of each row's image and caption embeddings (both stored L2-normalised); NaN for a row whose
    caption (in the shard's metadata) is missing or blank."""
    if shard.text_emb is None:
        raise ConfigError(f"{shard.source}: no caption embeddings (text_emb); the align stage needs them")
    img = np.asarray(shard.img_emb, dtype=np.float32)
    txt = np.asarray(shard.text_emb, dtype=np.float32)
    scores = np.einsum("ij,ij->i", img, txt).astype(np.float32)
    if shard.metadata is not None and "caption" in shard.metadata.column_names:
        captions = shard.metadata["caption"].to_pylist()
        scores[[not (c and str(c).strip()) for c in captions]] = np.nan
    return scores


def scores_path(run_path: str | os.PathLike, index: int) -> Path:
    return RunFolder(run_path).stage_dir(STAGE) / "scores" / f"{index:05d}.parquet"


def read_scores(run_path: str | os.PathLike, index: int) -> tuple[np.ndarray, np.ndarray]:
    """(uids, float32 scores) of embedding shard `index`, as pass 1 wrote them."""
    table = read_parquet(scores_path(run_path, index))
    return np.asarray(table["uid"].to_pylist(), dtype=object), table["score"].to_numpy().astype(np.float32)


def score_shard(run_path: str, index: int) -> Counts:
    """Pass 1 for embedding shard `index`: its uids and scores, written once (atomic), and their `high_counts`."""
    path = scores_path(run_path, index)
    if path.exists():
        scores = read_scores(run_path, index)[1]
    else:
        shard = open_embeddings(run_path).read_shard(index)
        scores = clip_scores(shard)
        atomic.write_parquet(path, pa.table({"uid": pa.array(shard.uids.tolist(), pa.string()),
                                             "score": pa.array(scores, pa.float32())}))
    return high_counts(scores[~np.isnan(scores)])


def low_shard_counts(run_path: str, bin_: int, index: int) -> Counts:
    """Pass 2 for shard `index`: `low_counts` of its scores in bin `bin_`."""
    scores = read_scores(run_path, index)[1]
    return low_counts(scores[~np.isnan(scores)], bin_)


def decision_table(uids: np.ndarray, scores: np.ndarray, key: int) -> pa.Table:
    """uid, keep (score at or above the cut, compared as exact keys; a row without a caption, score NaN, is not
    kept), reason for dropped rows, score."""
    captioned = ~np.isnan(scores)
    keep = captioned & (sortable_keys(np.where(captioned, scores, 0)) >= np.uint32(key))
    cut = value_of_key(key)
    reasons = [None if k else (f"align:{s:.3f}<{cut:.3f}" if c else "align:no_caption")
               for s, k, c in zip(scores.tolist(), keep.tolist(), captioned.tolist(), strict=True)]
    return pa.table({"uid": pa.array(np.asarray(uids).tolist(), pa.string()), "keep": pa.array(keep),
                     "reason": pa.array(reasons, pa.string()), "score": pa.array(scores, pa.float32())})


class AlignShardWorker:
    """The stage's `ShardWorker`: decides one embedding shard from its scores, writes decisions and counts."""

    uses_gpu = False

    def __init__(self, run_path: str | os.PathLike, key: int) -> None:
        self.run = RunFolder(run_path)
        self.key = key

    def setup(self) -> None:
        """Nothing to load: each shard's scores file holds all it needs."""

    def __call__(self, index: int) -> int:
        uids, scores = read_scores(self.run.path, index)
        table = decision_table(uids, scores, self.key)
        kept = int(np.count_nonzero(table["keep"].to_numpy(zero_copy_only=False)))
        no_caption = int(np.count_nonzero(np.isnan(scores)))
        dropped = {"misaligned": len(uids) - kept - no_caption, **({"no_caption": no_caption} if no_caption else {})}
        counts = ShardStats(rows_in=len(uids), kept=kept, dropped=dropped)
        self.run.write_shard(STAGE, index, table, counts.to_dict())
        return len(uids)
