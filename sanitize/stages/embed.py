"""The embed stage over a run folder: manifest shards in, clip-retrieval embeddings + per-row status out.

For shard i it writes ``embeddings/{img_emb,text_emb,metadata}/*_{i:05d}.*`` (only rows whose image embedded)
and ``stages/embed/{i:05d}.parquet`` (every row: uid, keep, reason, status, error), then the marker. A rerun
skips shards with a marker, so a run killed at any point resumes and ends byte-identical to an uninterrupted one.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from sanitize.embed import OK, embed_shard
from sanitize.embeddings import write_embedding_shard
from sanitize.images import DEFAULT_MAX_PIXELS
from sanitize.manifest import Manifest
from sanitize.models import ClipModel
from sanitize.runfolder import RunFolder, peak_memory_mb

logger = logging.getLogger(__name__)

STAGE = "embed"


def embed_config(model: ClipModel, *, batch_size: int, max_pixels: int) -> dict[str, Any]:
    """What decides the embed stage's output (its fingerprint): model, weights, precision, batch size, limits."""
    return {"model": model.name, "pretrained": str(model.pretrained), "precision": model.precision,
            "dim": model.dim, "seed": model.seed, "batch_size": batch_size, "max_pixels": max_pixels}


def run_embed_stage(
    manifest: Manifest,
    run: RunFolder,
    model: ClipModel,
    *,
    batch_size: int = 64,
    num_workers: int = 2,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: Callable[[int], Any] | None = None,
) -> dict[str, Any]:
    """Embed every shard of ``manifest`` not yet done in ``run``; returns the stage's stats (also in stats.json).

    The manifest's uids are checked for duplicates first (DataError with examples). Per-row failures (missing,
    corrupt, too large) are recorded, never raised.
    """
    started = time.perf_counter()
    rows = manifest.check_unique_uids()
    run.begin_stage(STAGE, embed_config(model, batch_size=batch_size, max_pixels=max_pixels))
    for index in range(len(manifest.files)):
        if run.is_done(STAGE, index):
            if progress is not None:
                progress(pq.ParquetFile(manifest.files[index]).metadata.num_rows)
            continue
        shard = manifest.read_shard(index)
        result = embed_shard(shard.table, model, image_root=manifest.image_root, tar_path=shard.tar_path,
                             batch_size=batch_size, num_workers=num_workers, max_pixels=max_pixels,
                             progress=progress)
        meta = shard.table.take(pa.array(result.ok_rows)).select(["uid", "caption", "url", "image", "key",
                                                                   "shard", "row"])
        write_embedding_shard(run.embeddings_dir, index, result.img_emb, result.text_emb, meta)
        ok = pa.array([s == OK for s in result.status])
        reasons = [None if s == OK else f"embed:{s}" for s in result.status]
        run.write_shard(STAGE, index, pa.table({
            "uid": shard.table["uid"], "keep": ok, "reason": pa.array(reasons, pa.string()),
            "status": pa.array(result.status, pa.string()), "error": pa.array(result.error, pa.string()),
        }))
    stats = embed_stats(run, rows, time.perf_counter() - started)
    run.record_stats(STAGE, stats)
    return stats


def embed_stats(run: RunFolder, rows: int, seconds: float) -> dict[str, Any]:
    """Rows in, embedded, and failures by status, counted from the stage's files (so a resumed run counts all)."""
    counts: Counter[str] = Counter()
    for _, table in run.read_stage(STAGE):
        counts.update(table["status"].to_pylist())
    return {"rows_in": rows, "kept": counts.get(OK, 0), "dropped": {k: v for k, v in sorted(counts.items()) if k != OK},
            "seconds": round(seconds, 3), "peak_memory_mb": round(peak_memory_mb(), 1)}


def load_run_model(run: RunFolder, *, device: str | None = None) -> ClipModel:
    """The CLIP model that embedded ``run`` (from its recorded config), e.g. for its text tower.

    Raises ConfigError when the run has no embed stage or the weights are not on this machine.
    """
    from sanitize.errors import ConfigError
    from sanitize.models import load_clip

    config = run.stage_config(STAGE)
    if config is None:
        raise ConfigError(f"{run.path}: this run has no embed stage, so no CLIP model to load")
    pretrained = None if config["pretrained"] == "None" else config["pretrained"]
    return load_clip(config["model"], pretrained, device=device, seed=config.get("seed", 0))
