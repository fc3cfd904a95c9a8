"""The offline demo: generate a sample, run the pipeline (`sanitize run`) on it, score it against the planted truth.

Nothing is downloaded. CLIP weights cannot be assumed on a fresh machine, so the demo embeds with
`sanitize-demo-clip`, a small open_clip architecture shipped as data (sanitize/resources/models) with seeded random
weights. Its embeddings show the machinery, not CLIP's semantics; use real weights (README) for real data.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl

from sanitize.demo.sample import make_sample
from sanitize.errors import ConfigError
from sanitize.io import atomic
from sanitize.io.runfolder import RunFolder
from sanitize.pipeline.config import PipelineConfig, default_config, to_toml
from sanitize.pipeline.runner import run_pipeline
from sanitize.safety.project import LabelProject
from sanitize.safety.workflow import add_answers, draw_audit_batch, propose_next_batch

logger = logging.getLogger(__name__)

DEMO_MODEL = "sanitize-demo-clip"
# The demo model's random weights squeeze all images into a narrow cone (most pairs have cosine > 0.9), so its
# near-duplicate threshold is far stricter than the 0.95 that suits real CLIP embeddings.
DEMO_DEDUP_THRESHOLD = 0.999
DEMO_AUDIT_ATTRIBUTES = ("caption_gender", "occupations")
# The demo's categories are the sample's abstract stand-ins (see demo/sample.py); targets suit a 1,200-row pool.
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


def demo_config(out: Path, *, seed: int = 0, workers: int = 2, engine: str = "local") -> PipelineConfig:
    """The pipeline config of the demo (written to OUT/sanitize.toml): the demo model, the scripted project,
    the demo's dedup threshold and audit attributes."""
    return (default_config()
            .replace("run", seed=seed, engine=engine)
            .replace("embed", model=DEMO_MODEL, pretrained="none", device="cpu", batch_size=64, workers=workers)
            .replace("classify", project=str(out / "project"))
            .replace("dedup", threshold=DEMO_DEDUP_THRESHOLD)
            .replace("audit", attributes=DEMO_AUDIT_ATTRIBUTES, weight_on=("caption_gender",)))


def run_demo(out: str | os.PathLike, *, n_rows: int = 1200, seed: int = 0, workers: int = 2, engine: str = "local",
             progress: Callable[[str, int], Any] | None = None) -> dict[str, Any]:
    """Write a sample under OUT/sample, then run the pipeline (`sanitize run`) on it into OUT/run.

    Between embed and classify a scripted labeler (the sample's planted truth) runs the labeling rounds a
    safety team would run, into OUT/project. The config is written to OUT/sanitize.toml, so
    ``sanitize run OUT/sample/shards --config OUT/sanitize.toml --out OUT/run`` repeats the pipeline.
    Resumable like every run: rerunning on the same OUT reuses the sample and finished shards. Returns the
    pipeline's summary plus paths and the dedup result against the planted truth.
    """
    started = time.perf_counter()
    out = Path(out)
    sample_dir = out / "sample"
    if not (sample_dir / "sample.json").exists():
        if sample_dir.exists() and any(sample_dir.iterdir()):
            raise ConfigError(f"{sample_dir}: exists without sample.json; choose a new demo folder")
        make_sample(sample_dir, n_rows=n_rows, seed=seed)
    manifest = sample_dir / "shards"
    config = demo_config(out, seed=seed, workers=workers, engine=engine)
    atomic.write_text(out / "sanitize.toml", to_toml(config))
    embed_only = config.replace("run", stages=("embed",))
    embedded = run_pipeline(manifest, embed_only, out / "run", progress=progress)
    run = RunFolder.open(out / "run")
    truth = pl.read_parquet(sample_dir / "truth.parquet")
    scripted_labeling(out / "project", run, truth, seed=seed)
    summary = run_pipeline(manifest, config, out / "run")
    # The second call only confirms the finished embed shards; report the call that embedded them.
    summary["stages"] = [embedded["stages"][0] if r["stage"] == "embed" else r for r in summary["stages"]]
    summary["totals"]["seconds"] = round(time.perf_counter() - started, 3)  # sample, both calls, the labeling
    return {**summary, "sample": str(sample_dir), "config": str(out / "sanitize.toml"), "rows": truth.height,
            "categories": run.stats().get("classify", {}).get("categories", {}),
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
