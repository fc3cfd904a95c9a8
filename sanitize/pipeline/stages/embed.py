"""The embed stage over a run folder: manifest shards in, clip-retrieval embeddings + per-row status out.

For shard i it writes ``embeddings/{img_emb,text_emb,metadata}/*_{i:05d}.*`` (only rows whose image embedded)
and ``stages/embed/{i:05d}.parquet`` (every row: uid, keep, reason, status, error), then the marker. A rerun
skips shards with a marker, so a run killed at any point resumes and ends byte-identical to an uninterrupted one.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from sanitize.clip.embed import OK, embed_shard
from sanitize.clip.models import ClipModel
from sanitize.engines import Engine, resolve_engine
from sanitize.io.embeddings import write_embedding_shard
from sanitize.io.images import DEFAULT_MAX_PIXELS
from sanitize.io.manifest import Manifest
from sanitize.io.runfolder import RunFolder, peak_memory_mb

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
    engine: Engine | None = None,
) -> dict[str, Any]:
    """Embed every shard of ``manifest`` not yet done in ``run``; returns the stage's stats (also in stats.json).

    The manifest's uids are checked for duplicates first (DataError with examples). Per-row failures (missing,
    corrupt, too large) are recorded, never raised. ``engine`` (default: local, in this process with
    ``model``) runs the shards; the Ray engine loads the same model (name, weights, precision, seed) once
    per actor, and the run folder must then be on storage every worker can reach.
    """
    started = time.perf_counter()
    engine = resolve_engine(engine)
    rows = manifest.check_unique_uids()
    run.begin_stage(STAGE, embed_config(model, batch_size=batch_size, max_pixels=max_pixels))
    todo = []
    for index in range(len(manifest.files)):
        if not run.is_done(STAGE, index):
            todo.append(index)
        elif progress is not None:
            progress(pq.ParquetFile(manifest.files[index]).metadata.num_rows)
    worker = EmbedShardWorker(manifest, run.path, model_config(model), batch_size=batch_size,
                              num_workers=num_workers, max_pixels=max_pixels, model=model, progress=progress)
    engine.map_shards(worker, todo, progress=(lambda n: progress(n) if n else None) if progress else None)
    stats = embed_stats(run, rows, time.perf_counter() - started)
    stats["engine"] = engine.name
    run.record_stats(STAGE, stats)
    return stats


def model_config(model: ClipModel) -> dict[str, Any]:
    """What `load_clip` needs to build ``model`` again in another process (not its device)."""
    return {"model": model.name, "pretrained": model.pretrained, "precision": model.precision, "seed": model.seed}


def embed_one_shard(manifest: Manifest, run: RunFolder, index: int, model: ClipModel, *, batch_size: int,
                    num_workers: int, max_pixels: int, progress: Callable[[int], Any] | None = None) -> int:
    """Embed shard ``index`` of ``manifest`` into ``run``: embedding files, the stage sidecar, then the marker.

    The one function both engines call per shard. Returns the shard's number of rows.
    """
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
    return shard.table.num_rows


class EmbedShardWorker:
    """The embed stage's `ShardWorker`: embeds one manifest shard per call with `embed_one_shard`.

    Built with the driver's loaded ``model`` (used as it is when the worker runs in this process); a copy sent
    to another process carries only ``model_config`` and loads the model in `setup()` (on that process's
    GPU when it has one, else CPU). ``progress`` too stays behind: a call returns the number of rows it did
    not report through ``progress``, so the engine can report them.
    """

    uses_gpu = True

    def __init__(self, manifest: Manifest, run_path: str | os.PathLike, model_config: dict[str, Any], *,
                 batch_size: int, num_workers: int, max_pixels: int, model: ClipModel | None = None,
                 progress: Callable[[int], Any] | None = None) -> None:
        self.manifest = manifest
        self.run_path = Path(run_path)
        self.model_config = model_config
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.max_pixels = max_pixels
        self.model = model
        self.progress = progress

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "model": None, "progress": None}

    def setup(self) -> None:
        if self.model is None:
            from sanitize.clip.models import load_clip

            c = self.model_config
            self.model = load_clip(c["model"], c["pretrained"], precision=c["precision"], seed=c["seed"])

    def __call__(self, index: int) -> int:
        self.setup()
        rows = embed_one_shard(self.manifest, RunFolder(self.run_path), index, self.model,
                               batch_size=self.batch_size, num_workers=self.num_workers,
                               max_pixels=self.max_pixels, progress=self.progress)
        return 0 if self.progress is not None else rows


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
    from sanitize.clip.models import load_clip
    from sanitize.errors import ConfigError

    config = run.stage_config(STAGE)
    if config is None:
        raise ConfigError(f"{run.path}: this run has no embed stage, so no CLIP model to load")
    pretrained = None if config["pretrained"] == "None" else config["pretrained"]
    return load_clip(config["model"], pretrained, device=device, seed=config.get("seed", 0))
