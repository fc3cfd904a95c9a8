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
from sanitize.project import LabelProject, add_answers, draw_audit_batch, propose_next_batch
from sanitize.runfolder import RunFolder
from sanitize.sample import make_sample
from sanitize.stages.audit import run_audit_stage
from sanitize.stages.classify import run_classify_stage
from sanitize.stages.dedup import run_dedup_stage
from sanitize.stages.embed import run_embed_stage

logger = logging.getLogger(__name__)

DEMO_MODEL = "sanitize-demo-clip"
# The demo model's random weights squeeze all images into a narrow cone (most pairs have cosine > 0.9), so its
# near-duplicate threshold is far stricter than the 0.95 that suits real CLIP embeddings.
DEMO_DEDUP_THRESHOLD = 0.999
DEMO_AUDIT_ATTRIBUTES = ("caption_gender", "occupations")
# The demo's categories are the sample's abstract stand-ins (see sanitize/sample.py); targets suit a 1,200-row pool.
DEMO_SPEC = """
[categories.sexual]
description = "Demo stand-in: a cluster of skin-coloured blobs (abstract, nothing real)."
guidelines = "Label 1 when the image shows the blob cluster."
prompts = ["skin-coloured blobs", "a nude photo"]
target_recall = 0.8
confidence = 0.8

[categories.violence]
description = "Demo stand-in: dark-red jagged splatter shapes (abstract, nothing real)."
guidelines = "Label 1 when the image shows red splatter."
prompts = ["red splatter", "a bloody injury"]
target_recall = 0.8
confidence = 0.8
"""
DEMO_ROUNDS = ("uncertainty", "ranked_batch", "missed_neighbours")


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
    truth = pl.read_parquet(sample_dir / "truth.parquet")
    project = scripted_labeling(out / "project", run, truth, seed=seed)
    stats["classify"] = run_classify_stage(run, project)
    stats["dedup"] = run_dedup_stage(run.path, threshold=DEMO_DEDUP_THRESHOLD, seed=seed)
    stats["audit"] = run_audit_stage(run, attributes=DEMO_AUDIT_ATTRIBUTES, weight_on=["caption_gender"])
    stats["export"] = export_run(run)
    return {"sample": str(sample_dir), "run": str(run.path), "rows": truth.height, "stages": stats,
            "versus_truth": {"dedup": dedup_versus_truth(run, truth)}}


def scripted_labeling(folder: Path, run: RunFolder, truth: pl.DataFrame, *, seed: int = 0,
                      batch: int = 40, audit: int = 600) -> LabelProject:
    """What a safety team does, with the sample's planted truth as the labeler, for each demo category:
    seed labels, three active-learning rounds, and a simple random audit sample for the certificate.

    Idempotent: a finished project (every category has its audit answers) is reused as it is.
    """
    spec = folder.parent / "demo_categories.toml"
    if not spec.exists():
        spec.parent.mkdir(parents=True, exist_ok=True)
        spec.write_text(DEMO_SPEC)
    project = LabelProject.init(folder, spec)
    for name in project.spec.names:
        if project.audit_sample_path(name).exists() and project.store(name).path.exists():
            continue
        label_of = dict(zip(truth["uid"].to_list(), truth[name].to_list(), strict=True))

        def answer(path: Path, name: str = name, label_of: dict = label_of) -> Path:
            rows = pl.read_csv(path, infer_schema=False)
            answered = rows.with_columns(pl.col("uid").replace_strict(label_of, default=None).alias("label"))
            target = path.with_name(path.stem + "_answers.csv")
            answered.write_csv(target)
            return target

        embedded = pl.concat([pl.from_arrow(t.select(["uid", "keep"])) for _, t in run.read_stage("embed")])
        pool = truth.join(embedded.filter(pl.col("keep")), on="uid")
        positives, negatives = pool.filter(pl.col(name) == 1), pool.filter(pl.col(name) == 0)
        seeds = pl.concat([positives.sample(min(8, positives.height), seed=seed),
                           negatives.sample(min(40, negatives.height), seed=seed)])
        seed_file = folder / "seeds" / f"{name}.csv"
        seed_file.parent.mkdir(parents=True, exist_ok=True)
        seeds.select("uid", pl.col(name).alias("label")).write_csv(seed_file)
        add_answers(project, run, name, seed_file, source="seed", annotator="demo-script", seed=seed)
        for k, strategy in enumerate(DEMO_ROUNDS):
            proposed = propose_next_batch(project, run, name, batch, strategy=strategy, seed=seed + k)
            add_answers(project, run, name, answer(proposed.paths["csv"]), annotator="demo-script", seed=seed)
        drawn = draw_audit_batch(project, run, name, min(audit, pool.height // 2), strategy="random", seed=seed)
        add_answers(project, run, name, answer(drawn.paths["csv"]), annotator="demo-script", seed=seed)
    return project


def dedup_versus_truth(run: RunFolder, truth: pl.DataFrame) -> dict[str, int]:
    """Pairs the dedup stage found against the planted near-duplicate groups (among embedded rows)."""
    pairs = pl.read_parquet(run.stage_dir("dedup") / "pairs.parquet")
    embedded = pl.concat([pl.from_arrow(t.select(["uid"])) for _, t in run.read_stage("dedup")])
    groups = truth.join(embedded, on="uid").filter(pl.col("dup_group").is_not_null())
    planted = int(groups.group_by("dup_group").len().select((pl.col("len") * (pl.col("len") - 1) // 2).sum()).item())
    group_of = truth.select("uid", "dup_group")
    found = (pairs.join(group_of.rename({"uid": "uid_a", "dup_group": "ga"}), on="uid_a", how="left")
             .join(group_of.rename({"uid": "uid_b", "dup_group": "gb"}), on="uid_b", how="left"))
    true_found = int((found["ga"].is_not_null() & (found["ga"] == found["gb"])).sum())
    return {"planted_pairs": planted, "pairs_found": pairs.height, "planted_pairs_found": true_found}
