"""The caption_length stage: drop rows whose caption is missing, too short or too long.

DataComp's "basic filtering" baseline and most LAION-style pipelines drop pairs whose caption carries too little
text to align with an image. This stage is also the worked example of adding a stage (README, "Add a stage"): one
module with a config dataclass, a per-shard worker that writes decisions and counts, and one line in
`sanitize.pipeline.registry`. It is opt-in: add it to ``run.stages`` (it is not in the default list).

Per manifest shard it writes ``RUN/stages/caption_length/NNNNN.parquet`` (uid, keep, reason, words, chars), then the
shard's marker with its counts.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from sanitize.pipeline.options import option, section_dict
from sanitize.pipeline.stage import (
    ManifestShardWorker,
    ShardStats,
    Stage,
    StageContext,
    StageResult,
    stored_counts,
)

STAGE = "caption_length"


@dataclass(frozen=True)
class CaptionLengthConfig:
    """The ``[caption_length]`` section: the caption lengths a row must have to be kept."""

    min_words: int = option(2, "Fewest whitespace-separated words a kept caption has.", low=0)
    min_chars: int = option(5, "Fewest characters (after stripping spaces) a kept caption has.", low=0)
    max_chars: int | None = option(None, "Most characters a kept caption has (unset: no limit).", example=1000,
                                   low=1)


class CaptionLengthStage(Stage):
    """Rows whose caption is missing, shorter than min_words / min_chars, or longer than max_chars are dropped."""

    name = STAGE
    Config = CaptionLengthConfig
    requires = ()
    runs_by_default = False
    summary = "captions that are missing, too short or too long"

    def run(self, context: StageContext) -> StageResult:
        started = time.perf_counter()
        run = context.run
        run.begin_stage(STAGE, section_dict(self.config))
        todo = run.todo(STAGE, len(run.manifest().files))
        context.engine.map_shards(CaptionLengthWorker(run.path, self.config), todo)
        return context.result(self, started, stored_counts(run, STAGE))


def caption_decisions(captions: list[str | None], config: CaptionLengthConfig) -> tuple[np.ndarray, list[str | None]]:
    """(keep mask, reason per row) for `captions`: reasons ``caption_missing``, ``caption_too_short:<n> words``,
    ``caption_too_short:<n> chars`` or ``caption_too_long:<n> chars`` (the first that applies); None when kept."""
    reasons: list[str | None] = []
    for caption in captions:
        text = (caption or "").strip()
        words, chars = len(text.split()), len(text)
        if not text:
            reasons.append("caption_missing")
        elif words < config.min_words:
            reasons.append(f"caption_too_short:{words} words")
        elif chars < config.min_chars:
            reasons.append(f"caption_too_short:{chars} chars")
        elif config.max_chars is not None and chars > config.max_chars:
            reasons.append(f"caption_too_long:{chars} chars")
        else:
            reasons.append(None)
    return np.array([r is None for r in reasons], dtype=bool), reasons


class CaptionLengthWorker(ManifestShardWorker):
    """The stage's `ShardWorker`: decides one manifest shard's rows and writes their decisions and counts."""

    def __init__(self, run_path: str | os.PathLike, config: CaptionLengthConfig) -> None:
        super().__init__(run_path)
        self.config = config

    def __call__(self, index: int) -> int:
        self.setup()
        table = self.manifest.read_shard(index).table
        captions = table["caption"].to_pylist()
        keep, reasons = caption_decisions(captions, self.config)
        texts = [(c or "").strip() for c in captions]
        decisions = pa.table({
            "uid": table["uid"], "keep": pa.array(keep), "reason": pa.array(reasons, pa.string()),
            "words": pa.array([len(t.split()) for t in texts], pa.int32()),
            "chars": pa.array([len(t) for t in texts], pa.int32()),
        })
        dropped: dict[str, int] = {}
        for reason in reasons:
            if reason is not None:
                kind = reason.split(":")[0]
                dropped[kind] = dropped.get(kind, 0) + 1
        counts = ShardStats(rows_in=len(captions), kept=int(keep.sum()), dropped=dropped)
        self.run.write_shard(STAGE, index, decisions, counts.to_dict())
        return len(captions)
