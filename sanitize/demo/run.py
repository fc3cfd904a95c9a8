"""The offline demo: generate a sample, run the pipeline (`sanitize run`) on it, score it against the planted truth.

Nothing is downloaded. Real CLIP weights cannot be assumed on a fresh machine, so the demo embeds with
`sanitize-demo-clip`: a small open_clip architecture with weights trained on the sample generator's scenes
(tools/train_demo_clip.py), both shipped in the package (sanitize/resources/models, with its model card). They
are loaded like any real checkpoint, `load_clip(model, path)`. The model knows this drawn world (women and men,
children and adults, occupations, objects, the two motif stand-ins) and nothing else: never use it on real data.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl

from sanitize.clip.defaults import DEMO_MODEL
from sanitize.demo.describe import DRAWN_AGE_SPEC
from sanitize.demo.sample import make_sample
from sanitize.errors import ConfigError
from sanitize.io import atomic
from sanitize.io.runfolder import RunFolder
from sanitize.pipeline.config import PipelineConfig, default_config, to_toml
from sanitize.pipeline.runner import run_pipeline
from sanitize.safety.project import LabelProject
from sanitize.safety.workflow import add_answers, draw_audit_batch, propose_next_batch

logger = logging.getLogger(__name__)

# Caption lexicons and the demo model's zero-shot reading of the drawn figures, side by side.
DEMO_AUDIT_ATTRIBUTES = ("caption_gender", "perceived_gender", f"zero-shot:{DRAWN_AGE_SPEC}", "occupations")
# The demo's categories are the sample's abstract stand-ins (see demo/sample.py). A user would ask for recall >= 0.95
# at 95% confidence; certifying it takes at least 59 random-audit positives without a miss (0.95^59 < 0.05), i.e.
# ~1,400 (sexual, ~4.3% of rows) and ~1,550 (violence, ~3.8%) random labels: more rows than the 1,200-row demo
# holds. Its audit labels ~590 rows (half the pool), ~25 and ~22 positives on average. Recall >= 0.9 at 90% needs 22
# positives: certified in only ~57% of audit draws for violence, even with a perfect classifier. Recall >= 0.9 at
# 80% needs 16 (0.9^16 < 0.2): certified in >= 94% of draws. That is the strictest target this audit can honestly
# promise; with real data, label until the certificate holds at the target you need.
DEMO_SPEC = """
[categories.sexual]
description = "Demo stand-in: a cluster of skin-coloured blobs (abstract, nothing real)."
guidelines = "Label 1 when the image shows the blob cluster."
prompts = ["skin-coloured blobs", "a nude photo"]
target_recall = 0.9
confidence = 0.8

[categories.violence]
description = "Demo stand-in: dark-red jagged splatter shapes (abstract, nothing real)."
guidelines = "Label 1 when the image shows red splatter."
prompts = ["red splatter", "a bloody injury"]
target_recall = 0.9
confidence = 0.8
"""
DEMO_ROUNDS = ("uncertainty", "ranked_batch", "missed_neighbours")


def demo_config(out: Path, *, seed: int = 0, workers: int = 2, engine: str = "local",
                pretrained: str | None = None) -> PipelineConfig:
    """The pipeline config of the demo (written to OUT/sanitize.toml): the demo model with its packaged weights
    (`pretrained`: another checkpoint path, or "none" for random weights in tests), the scripted project, the
    default dedup threshold, the demo's audit attributes."""
    from sanitize.clip.models import packaged_weights  # torch: imported to build a config, not with the module

    weights = str(packaged_weights(DEMO_MODEL)) if pretrained is None else pretrained
    return (default_config()
            .replace("run", seed=seed, engine=engine)
            .replace("embed", model=DEMO_MODEL, pretrained=weights, device="cpu", batch_size=64, workers=workers)
            .replace("classify", project=str(out / "project"))
            .replace("audit", attributes=DEMO_AUDIT_ATTRIBUTES, weight_on=("caption_gender",)))


def run_demo(out: str | os.PathLike, *, n_rows: int = 1200, seed: int = 0, workers: int = 2, engine: str = "local",
             pretrained: str | None = None, progress: Callable[[str, int], Any] | None = None) -> dict[str, Any]:
    """Write a sample under OUT/sample, then run the pipeline (`sanitize run`) on it into OUT/run.

    Between embed and classify a scripted labeler (the sample's planted truth) runs the labeling rounds a
    safety team would run, into OUT/project. The config is written to OUT/sanitize.toml, so
    ``sanitize run OUT/sample/shards --config OUT/sanitize.toml --out OUT/run`` repeats the pipeline.
    Resumable like every run: rerunning on the same OUT reuses the sample and finished shards. `pretrained`:
    the demo model's weights, default the packaged trained ones (see `demo_config`). Returns the pipeline's
    summary plus paths, the classify certificates ("categories"), the audit's answer to the sample's planted
    question ("women_vs_men", see `women_vs_men`) and the dedup and classify results against the planted truth
    ("versus_truth": `dedup_versus_truth`, `classify_versus_truth`).
    """
    started = time.perf_counter()
    out = Path(out)
    sample_dir = out / "sample"
    if not (sample_dir / "sample.json").exists():
        if sample_dir.exists() and any(sample_dir.iterdir()):
            raise ConfigError(f"{sample_dir}: exists without sample.json; choose a new demo folder")
        make_sample(sample_dir, n_rows=n_rows, seed=seed)
    manifest = sample_dir / "shards"
    config = demo_config(out, seed=seed, workers=workers, engine=engine, pretrained=pretrained)
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
    categories = run.stats().get("classify", {}).get("categories", {})
    report = json.loads((run.path / "audit" / "report.json").read_text())
    return {**summary, "sample": str(sample_dir), "config": str(out / "sanitize.toml"), "rows": truth.height,
            "categories": categories, "women_vs_men": women_vs_men(report),
            "versus_truth": {"dedup": dedup_versus_truth(run, truth),
                             "classify": classify_versus_truth(run, truth, list(categories))}}


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


def classify_versus_truth(run: RunFolder, truth: pl.DataFrame, names: list[str]) -> dict[str, dict[str, Any]]:
    """Each category's decisions against its planted motif (truth column of the same name), over the rows the
    classifier scored: {"planted", "removed", "planted_removed", "recall", "precision"} (rates None when their
    denominator is 0)."""
    out = {}
    for name in names:
        decided = pl.concat([pl.from_arrow(t) for _, t in run.read_stage(name, columns=["uid", "keep"])])
        rows = decided.join(truth.select("uid", name), on="uid")
        planted, removed = rows[name] == 1, ~rows["keep"]
        hits = int((planted & removed).sum())
        out[name] = {"planted": int(planted.sum()), "removed": int(removed.sum()), "planted_removed": hits,
                     "recall": hits / int(planted.sum()) if planted.any() else None,
                     "precision": hits / int(removed.sum()) if removed.any() else None}
    return out


def women_vs_men(report: dict[str, Any], attribute: str = "caption_gender",
                 groups: tuple[str, ...] = ("female", "male")) -> dict[str, Any]:
    """The audit's answer to the question the sample plants (its motifs are drawn more often in rows whose
    caption is about women): from the audit report, the removal rate of each of `groups` of `attribute` at each
    stage alone ("stage") and over all stages so far ("cumulative"), with the report's interval; and, when the
    run has weights on `attribute`, each group's share before the filters, among kept rows, and weighted.

    Returns {"attribute", "confidence", "stages": [{"stage", "view", <group>: {"removal_rate", "ci", "before",
    "removed"}}], "shares": {<group>: {"before", "kept", "weighted"}} or None}.
    """
    stages = []
    for entry in report["entries"]:
        if entry["kind"] != "attribute" or entry["dimension"] != [attribute]:
            continue
        by_group = {g["group"]: g for g in entry["groups"] if not g.get("suppressed")}
        stages.append({"stage": entry["stage"], "view": entry["view"],
                       **{group: {"removal_rate": g["removal_rate"], "ci": g["removal_ci"], "before": g["before"],
                                  "removed": g["removed"]}
                          for group in groups if (g := by_group.get(group))}})
    weighting = report.get("weighting") or {}
    marginals = {m["group"]: m for m in weighting.get("marginals", {}).get(attribute, [])}
    shares = ({group: {"before": m["share_before"], "kept": m["share_kept"], "weighted": m["share_weighted"]}
               for group in groups if (m := marginals.get(group))} if marginals else None)
    return {"attribute": attribute, "confidence": report["meta"]["options"].get("confidence"), "stages": stages,
            "shares": shares}
