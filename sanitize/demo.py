"""The offline demo: generate a sample, run the pipeline on it, and score the result against the planted truth.

Nothing is downloaded. CLIP weights cannot be assumed on a fresh machine, so the demo embeds with
`sanitize-demo-clip`, a small open_clip architecture shipped as data (sanitize/resources/models) with seeded random
weights. Its embeddings show the machinery, not CLIP's semantics; use real weights (README) for real data.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl

from sanitize.errors import ConfigError
from sanitize.export import export_run
from sanitize.manifest import open_manifest
from sanitize.models import load_clip
from sanitize.runfolder import RunFolder
from sanitize.sample import make_sample
from sanitize.stages.embed import run_embed_stage

logger = logging.getLogger(__name__)

DEMO_MODEL = "sanitize-demo-clip"


def run_demo(out: str | os.PathLike, *, n_rows: int = 1200, seed: int = 0, workers: int = 2,
             progress: Callable[[str, int], Any] | None = None) -> dict[str, Any]:
    """Write a sample under OUT/sample and a run under OUT/run; return a summary with paths and stage stats.

    Resumable like every run: rerunning on the same OUT reuses the sample and finished shards.
    """
    out = Path(out)
    sample_dir = out / "sample"
    if not (sample_dir / "sample.json").exists():
        if sample_dir.exists() and any(sample_dir.iterdir()):
            raise ConfigError(f"{sample_dir}: exists without sample.json; choose a new demo folder")
        make_sample(sample_dir, n_rows=n_rows, seed=seed)
    manifest = open_manifest(sample_dir / "shards")
    run = RunFolder.create(out / "run", manifest)
    model = load_clip(DEMO_MODEL, None, device="cpu", seed=seed)
    bar = (lambda n: progress("embed", n)) if progress else None
    stats = {"embed": run_embed_stage(manifest, run, model, batch_size=64, num_workers=workers, progress=bar)}
    stats["export"] = export_run(run)
    truth = pl.read_parquet(sample_dir / "truth.parquet")
    return {"sample": str(sample_dir), "run": str(run.path), "rows": truth.height, "stages": stats}
