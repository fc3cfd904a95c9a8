"""The embed stage over a run folder: manifest shards in, clip-retrieval embeddings + per-row status out.

For shard i it writes ``embeddings/{img_emb,text_emb,metadata}/*_{i:05d}.*`` (only rows whose image embedded)
and ``stages/embed/{i:05d}.parquet`` (every row: uid, keep, reason, status, error), then the marker. A rerun
skips shards with a marker, so a run killed at any point resumes and ends byte-identical to an uninterrupted one.
When the run folder holds results of the hashlist stage, the rows it removed are skipped: never read, embedded or
listed here (and a change in which rows it removed re-embeds the run).
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from sanitize.clip.defaults import DEFAULT_BATCH_SIZE, DEFAULT_DECODE_WORKERS, DEFAULT_MODEL, DEFAULT_PRETRAINED
from sanitize.io.embeddings import write_embedding_shard
from sanitize.io.images import DEFAULT_MAX_PIXELS
from sanitize.io.manifest import Manifest
from sanitize.io.runfolder import RunFolder
from sanitize.pipeline.options import option
from sanitize.pipeline.stage import ShardStats, Stage, StageContext, StageResult, stored_counts

if TYPE_CHECKING:  # torch and open_clip load when a model is built or used, not when the config is read
    from sanitize.clip.models import ClipModel

logger = logging.getLogger(__name__)

STAGE = "embed"


@dataclass(frozen=True)
class EmbedConfig:
    """The ``[embed]`` section: which CLIP model, on what device, in what batches."""

    model: str = option(DEFAULT_MODEL, "open_clip architecture, local-dir:PATH or hf-hub:ORG/REPO.")
    pretrained: str | None = option(DEFAULT_PRETRAINED,
                                    "Weights tag or checkpoint path; 'none' for random weights (tests only).")
    device: str | None = option(None, "cpu, cuda, cuda:1 … (unset: CUDA when present, else CPU).", example="cuda")
    precision: str | None = option(None, "fp32, fp16 or bf16 (unset: fp16 on GPU, fp32 on CPU; bf16 on a CPU with "
                                         "bf16 instructions is ~2x faster, embeddings at cosine >= 0.9999 of fp32).",
                                   choices=("fp32", "fp16", "bf16"), example="fp16")
    batch_size: int = option(DEFAULT_BATCH_SIZE, "Images per forward pass.", low=1)
    workers: int = option(DEFAULT_DECODE_WORKERS, "Decoding processes per model.", low=0)
    max_pixels: int = option(DEFAULT_MAX_PIXELS, "Larger images are recorded as too_large (decompression-bomb guard).",
                             low=1)
    draft_decode: bool = option(False, "Decode large JPEGs at the model's input scale (Pillow draft mode): faster "
                                       "decoding and resizing; embeddings change slightly (README).")
    text: bool = option(True, "Embed the captions too (text_emb/). --no-text skips the text tower (~10% of the "
                              "embedding time, README) when no stage reads caption embeddings; the align stage "
                              "does, and refuses a plan without them.", flag="--text/--no-text")


class EmbedStage(Stage):
    """CLIP image + caption embeddings of every manifest row; rows that cannot be embedded are dropped by status."""

    name = STAGE
    Config = EmbedConfig
    role = "source"
    requires = ()
    summary = "CLIP image and caption embeddings (clip-retrieval layout), per-row status"

    def __init__(self, config: EmbedConfig | None = None, *, model: ClipModel | None = None) -> None:
        super().__init__(config)
        self.model = model

    def fingerprint(self, config) -> dict[str, Any]:
        return {"input": config.section_dict("input"), "embed": config.section_dict(self.name)}

    def prepare(self, seed: int) -> None:
        """Load the model (fails fast on missing weights, before the run folder is touched)."""
        if self.model is None:
            from sanitize.clip.models import load_clip

            c = self.config
            self.model = load_clip(c.model, c.pretrained, device=c.device, precision=c.precision, seed=seed)

    def run(self, context: StageContext) -> StageResult:
        """Embed every shard of the run's manifest not yet done (uids checked unique first); per-row failures
        (missing, corrupt, too large) are recorded, never raised. The Ray engine loads the same model once per
        actor, and the run folder must then be on storage every worker can reach."""
        self.prepare(context.seed)
        started = time.perf_counter()
        run, c = context.run, self.config
        manifest = run.manifest()
        progress = context.progress
        bar = (lambda n: progress(self.name, n)) if progress else None
        manifest.check_unique_uids()
        from sanitize.pipeline.stages.hashlist import screening_digest

        screened = screening_digest(run, len(manifest.files))
        config = embed_config(self.model, batch_size=c.batch_size, max_pixels=c.max_pixels,
                              draft_decode=c.draft_decode, text=c.text)
        run.begin_stage(STAGE, {**config, "screened": screened} if screened else config,
                        role=self.role, clear=(run.stage_dir(STAGE), run.embeddings_dir))
        todo = run.todo(STAGE, len(manifest.files))
        if bar is not None:  # finished shards count as progress
            for index in sorted(set(range(len(manifest.files))) - set(todo)):
                bar(pq.ParquetFile(manifest.files[index]).metadata.num_rows)
        worker = EmbedShardWorker(manifest, run.path, model_config(self.model), batch_size=c.batch_size,
                                  num_workers=c.workers, max_pixels=c.max_pixels, draft_decode=c.draft_decode,
                                  text=c.text, model=self.model, progress=bar,
                                  screened=screened is not None)
        context.engine.map_shards(worker, todo, progress=(lambda n: bar(n) if n else None) if bar else None)
        return context.result(self, started, stored_counts(run, STAGE))


def embed_config(model: ClipModel, *, batch_size: int, max_pixels: int, draft_decode: bool = False,
                 text: bool = True) -> dict[str, Any]:
    """What decides the embed stage's output (its fingerprint): model, weights, precision, batch size, limits,
    and draft decoding when it is on and captions when they are off (so runs made without these keys keep their
    fingerprint)."""
    config = {"model": model.name, "pretrained": str(model.pretrained), "precision": model.precision,
              "dim": model.dim, "seed": model.seed, "batch_size": batch_size, "max_pixels": max_pixels}
    if draft_decode:
        config["draft_decode"] = True
    if not text:
        config["text"] = False
    return config


def model_config(model: ClipModel) -> dict[str, Any]:
    """What `load_clip` needs to build ``model`` again in another process (not its device)."""
    return {"model": model.name, "pretrained": model.pretrained, "precision": model.precision, "seed": model.seed}


def embed_one_shard(manifest: Manifest, run: RunFolder, index: int, model: ClipModel, *, batch_size: int,
                    num_workers: int, max_pixels: int, draft_decode: bool = False, text: bool = True,
                    progress: Callable[[int], Any] | None = None,
                    screened: bool = False) -> int:
    """Embed shard ``index`` of ``manifest`` into ``run``: embedding files, the stage sidecar, then the marker.

    The one function both engines call per shard. Returns the shard's number of rows. With `screened`, the rows
    the hashlist stage removed are left out before any image is read (and counted as done for `progress`).
    """
    from sanitize.clip.embed import OK, embed_shard

    shard = manifest.read_shard(index)
    rows = shard.table.num_rows
    if screened:
        shard.table = _without_screened(shard.table, run, index)
        if progress is not None and rows - shard.table.num_rows:
            progress(rows - shard.table.num_rows)
    result = embed_shard(shard.table, model, image_root=manifest.image_root, tar_path=shard.tar_path,
                         batch_size=batch_size, num_workers=num_workers, max_pixels=max_pixels,
                         draft_decode=draft_decode, text=text,
                         progress=progress)
    meta = shard.table.take(pa.array(result.ok_rows)).select(["uid", "caption", "url", "image", "key",
                                                               "shard", "row"])
    write_embedding_shard(run.embeddings_dir, index, result.img_emb, result.text_emb, meta)
    ok = pa.array([s == OK for s in result.status], pa.bool_())  # typed: a shard the hashlist emptied has no rows
    reasons = [None if s == OK else f"embed:{s}" for s in result.status]
    statuses = Counter(result.status)
    counts = ShardStats(rows_in=len(result.status), kept=statuses.pop(OK, 0), dropped=dict(statuses))
    run.write_shard(STAGE, index, pa.table({
        "uid": shard.table["uid"], "keep": ok, "reason": pa.array(reasons, pa.string()),
        "status": pa.array(result.status, pa.string()), "error": pa.array(result.error, pa.string()),
    }), counts.to_dict())
    return rows


def _without_screened(table: pa.Table, run: RunFolder, index: int) -> pa.Table:
    """`table` less the rows the hashlist stage removed from manifest shard `index`."""
    import pyarrow.compute as pc

    from sanitize.pipeline.stages.hashlist import removed_uids

    removed = removed_uids(run, index)
    if not removed:
        return table
    return table.filter(pc.invert(pc.is_in(table["uid"], value_set=pa.array(sorted(removed), pa.string()))))


class EmbedShardWorker:
    """The embed stage's `ShardWorker`: embeds one manifest shard per call with `embed_one_shard`.

    Built with the driver's loaded ``model`` (used as it is when the worker runs in this process); a copy sent
    to another process carries only ``model_config`` and loads the model in `setup()` (on that process's
    GPU when it has one, else CPU). ``progress`` too stays behind: a call returns the number of rows it did
    not report through ``progress``, so the engine can report them.
    """

    uses_gpu = True

    def __init__(self, manifest: Manifest, run_path: str | os.PathLike, model_config: dict[str, Any], *,
                 batch_size: int, num_workers: int, max_pixels: int, draft_decode: bool = False,
                 text: bool = True, model: ClipModel | None = None,
                 progress: Callable[[int], Any] | None = None, screened: bool = False) -> None:
        self.manifest = manifest
        self.run_path = Path(run_path)
        self.model_config = model_config
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.max_pixels = max_pixels
        self.draft_decode = draft_decode
        self.text = text
        self.model = model
        self.progress = progress
        self.screened = screened

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
                               max_pixels=self.max_pixels, draft_decode=self.draft_decode, text=self.text,
                               progress=self.progress,
                               screened=self.screened)
        return 0 if self.progress is not None else rows


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
