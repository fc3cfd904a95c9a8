"""`sanitize label …` and `sanitize classify` from the CLI on an embedded sample, with a scripted labeler.

The demo model has random weights, so the classifiers are poor: these tests check the mechanics (files,
sources, rounds, certificates, resume, errors), not accuracy.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from sanitize.clip.models import load_clip
from sanitize.demo.sample import make_sample
from sanitize.io.manifest import open_manifest
from sanitize.io.runfolder import RunFolder
from sanitize.pipeline.stage import run_stage
from sanitize.pipeline.stages.embed import EmbedConfig, EmbedStage
from sanitize.safety.classifier import from_layers, save_classifier
from sanitize.safety.labels import LabelStore
from sanitize_cli.main import cli

SPEC = """
[categories.sexual]
description = "Sexual content."
prompts = ["a nude photo", "explicit sexual content"]
target_recall = 0.99
confidence = 0.95

[categories.violence]
description = "Graphic violence."
prompts = ["a bloody injury"]
target_recall = 0.6
confidence = 0.6
"""


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """A 400-row sample embedded with the shipped demo model (random weights), and its planted truth."""
    root = tmp_path_factory.mktemp("label_cli")
    info = make_sample(root / "sample", n_rows=400, seed=0)
    manifest = open_manifest(info.manifest)
    run = RunFolder.create(root / "run", manifest)
    model = load_clip("sanitize-demo-clip", None, device="cpu", seed=0)
    run_stage(EmbedStage(EmbedConfig(batch_size=64, workers=0), model=model), run)
    truth = pl.read_parquet(info.truth)
    embedded = set(pl.concat([pl.read_parquet(p) for p in sorted((run.embeddings_dir / "metadata").glob("*"))])
                   ["uid"].to_list())
    return root, run.path, truth.filter(pl.col("uid").is_in(list(embedded)))


def invoke(*args: str, ok: bool = True):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, result.output
    return result


def answer(path: Path, truth: pl.DataFrame, category: str) -> None:
    """The scripted labeler: fill in the batch CSV's label column from the planted truth."""
    label_of = dict(zip(truth["uid"].to_list(), truth[category].to_list(), strict=True))
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["label"] = label_of[row["uid"]]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def seed_file(path: Path, truth: pl.DataFrame, category: str, n_pos: int, n_neg: int) -> Path:
    pos = truth.filter(pl.col(category) == 1).head(n_pos)
    neg = truth.filter(pl.col(category) == 0).head(n_neg)
    pl.concat([pos, neg]).select("uid", pl.col(category).alias("label")).write_csv(path)
    return path


@pytest.fixture(scope="module")
def labelled(embedded):
    """The full loop: init, seed import, three rounds, audit samples, add; returns (root, run, project)."""
    root, run, truth = embedded
    project = root / "project"
    spec = root / "spec.toml"
    spec.write_text(SPEC)
    out = json.loads(invoke("label", "init", project, "--spec", spec, "--json").stdout)
    assert out["categories"] == ["sexual", "violence"]
    common = ("--project", project, "--run", run)

    imported = json.loads(invoke("label", "import", "sexual", seed_file(root / "seed.csv", truth, "sexual", 6, 30),
                                 *common, "--json").stdout)
    assert imported["source"] == "seed" and imported["added"] == 36 and imported["classifier"]

    strategies = ["uncertainty", "ranked_batch", "committee"]
    for k, strategy in enumerate(strategies, start=1):
        batch = json.loads(invoke("label", "next", "sexual", *common, "--n", 15, "--strategy", strategy,
                                  "--seed", k, "--json").stdout)
        assert batch["round"] == k and batch["strategy"] == strategy and batch["rows"] == 15
        assert Path(batch["paths"]["csv"]).name == f"round_{k}.csv"
        answer(Path(batch["paths"]["csv"]), truth, "sexual")
        added = json.loads(invoke("label", "add", "sexual", batch["paths"]["csv"], *common, "--json").stdout)
        assert added["source"] == "active" and added["added"] == 15

    audit = json.loads(invoke("label", "audit-sample", "sexual", *common, "--n", 120, "--json").stdout)
    assert audit["strategy"] == "random-audit" and audit["rows"] == 120
    answer(Path(audit["paths"]["csv"]), truth, "sexual")
    added = json.loads(invoke("label", "add", "sexual", audit["paths"]["csv"], *common, "--json").stdout)
    assert added["source"] == "random-audit"

    # violence: seeded, then a stratified audit sample covering most of the pool.
    invoke("label", "import", "violence", seed_file(root / "seed_v.csv", truth, "violence", 8, 30), *common)
    audit_v = json.loads(invoke("label", "audit-sample", "violence", *common, "--n", 300, "--strategy",
                                "stratified", "--strata", 3, "--json").stdout)
    answer(Path(audit_v["paths"]["csv"]), truth, "violence")
    invoke("label", "add", "violence", audit_v["paths"]["csv"], *common)
    return root, run, project


def test_loop_writes_batches_with_thumbnails_and_sources(labelled):
    _root, _run, project = labelled
    html = (project / "batches" / "sexual" / "round_1.html").read_text()
    assert html.count("data:image/jpeg;base64,") >= 10  # thumbnails from the sample's tars
    history = pq.read_table(project / "labels" / "sexual.parquet").to_pandas()
    counts = history.groupby(["source", "round"]).size().to_dict()
    assert counts[("seed", 0)] == 36
    assert {counts[("active", k)] for k in (1, 2, 3)} == {15}
    assert sum(v for (s, _), v in counts.items() if s == "random-audit") == 120
    sample = pq.read_table(project / "audit" / "violence_sample.parquet")
    assert set(sample["stratum"].to_pylist()) == {0, 1, 2}
    assert (project / "models" / "sexual.safetensors").exists()


def test_status_reports_sources_rounds_and_cv(labelled):
    _root, run, project = labelled
    out = json.loads(invoke("label", "status", "sexual", "--project", project, "--run", run, "--json").stdout)
    status = out["categories"][0]
    assert [r["source"] for r in status["by_source_round"]][:4] == ["seed", "active", "active", "active"]
    assert "random-audit" in {r["source"] for r in status["by_source_round"]}
    assert status["cv_precision"] is not None and status["removal_rate"] is not None
    assert status["audit"] == {"drawn": 120, "labelled": 120}
    text = invoke("label", "status", "--project", project).stdout
    assert "## sexual" in text and "## violence" in text


def folder_state(*folders: Path) -> dict[str, tuple[bytes, int] | None]:
    """Every folder (None) and file (bytes, mtime) under `folders`, by path."""
    state: dict[str, tuple[bytes, int] | None] = {}
    for folder in folders:
        for path in sorted(Path(folder).rglob("*")):
            state[str(path)] = (path.read_bytes(), path.stat().st_mtime_ns) if path.is_file() else None
    return state


def test_status_writes_nothing_and_reports_a_stale_classifier(embedded, tmp_path):
    """`label status` only reads: with labels newer than the saved classifier it says so and retrains nothing."""
    _root, run, truth = embedded
    project = tmp_path / "p"
    invoke("label", "init", project)
    invoke("label", "import", "sexual", seed_file(tmp_path / "s.csv", truth, "sexual", 6, 20), "--project", project,
           "--run", run)
    later = truth.filter(pl.col("sexual") == 0).slice(20, 5)
    LabelStore(project, "sexual").add(later["uid"].to_list(), later["sexual"].to_list(), source="active", round=1)
    before = folder_state(project, run)

    out = json.loads(invoke("label", "status", "sexual", "--project", project, "--run", run, "--json").stdout)
    text = invoke("label", "status", "--project", project, "--run", run).stdout

    assert folder_state(project, run) == before
    status = out["categories"][0]
    assert status["classifier_current"] is False and status["removal_rate"] is not None
    assert status["classifier_labels"] == {"current": {"positive": 6, "negative": 25},
                                           "saved": {"positive": 6, "negative": 20}}
    assert "classifier: not current" in text
    invoke("label", "add", "sexual", seed_file(tmp_path / "s.csv", truth, "sexual", 6, 20), "--project", project,
           "--run", run)  # a writer retrains and saves
    out = json.loads(invoke("label", "status", "sexual", "--project", project, "--json").stdout)
    assert out["categories"][0]["classifier_current"] is True


def test_classify_certifies_filters_and_resumes(labelled):
    _root, run, project = labelled
    out = json.loads(invoke("classify", run, "--project", project, "--json").stdout)
    sexual, violence = out["categories"]["sexual"], out["categories"]["violence"]
    assert not sexual["certified"] and sexual["more_labels_needed"] > 0  # 0.99 needs ~299 audit positives
    assert violence["certified"] and violence["recall_lower_bound"] >= 0.6
    report = json.loads((Path(run) / "stages" / "classify" / "violence" / "certificate.json").read_text())
    assert not (project / "thresholds").exists()  # the run holds what the run produced
    assert report["labels"]["design"] == "stratified" and report["certificate"]["certified"]
    assert 0 <= report["precision"]["lower"] <= report["precision"]["upper"] <= 1
    stage = pq.read_table(Path(run) / "stages" / "classify" / "violence" / "00000.parquet")
    assert stage.column_names == ["uid", "keep", "reason", "score"]
    for keep, reason, score in zip(*(stage[c].to_pylist() for c in ("keep", "reason", "score")), strict=True):
        if keep:
            assert reason is None and score < violence["threshold"]
        else:
            assert re.fullmatch(r"violence:\d\.\d{3}>=\d\.\d{3}", reason)
    stats = json.loads((Path(run) / "stats.json").read_text())
    assert stats["classify"]["categories"]["violence"]["rows_in"] == sexual["rows_in"] > 300
    assert "sexual&violence" in stats["classify"]["overlap"]["pairs"]
    table = invoke("classify", run, "--project", project).stdout
    assert "| violence |" in table and "more random-audit labels needed" in table

    # Resume: finished shards are reused; a deleted marker recomputes exactly that shard, byte-identical.
    shard0, shard1 = (Path(run) / "stages" / "classify" / "violence" / f"0000{i}.parquet" for i in (0, 1))
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (shard0, shard1)}
    (Path(run) / "stages" / "classify" / "_done" / "00001").unlink()
    invoke("classify", run, "--project", project)
    assert shard0.stat().st_mtime_ns == before[shard0][1]
    assert shard1.stat().st_mtime_ns != before[shard1][1] and shard1.read_bytes() == before[shard1][0]


def test_add_rejects_unknown_uids_and_conflicts(labelled, embedded):
    root, run, project = labelled
    truth = embedded[2]
    common = ("--project", project, "--run", run)
    bad = root / "unknown.csv"
    bad.write_text("uid,label\nno-such-uid,1\nother-missing,0\n")
    result = invoke("label", "add", "sexual", bad, *common, ok=False)
    assert result.exit_code == 1 and "not in run: no-such-uid" in result.stderr
    assert "2 labelled uids are not in the dataset" in result.stderr
    first = truth.filter(pl.col("sexual") == 1)["uid"][0]  # seeded as 1
    flipped = root / "flipped.csv"
    flipped.write_text(f"uid,label\n{first},0\n")
    result = invoke("label", "add", "sexual", flipped, *common, ok=False)
    assert result.exit_code == 1 and f"conflict: {first}: stored 1" in result.stderr
    skipped = json.loads(invoke("label", "add", "sexual", flipped, *common, "--on-conflict", "skip", "--json").stdout)
    assert skipped["added"] == 0 and skipped["conflicts"] == 1


def test_one_class_says_how_many_are_needed(embedded, tmp_path):
    _root, run, truth = embedded
    project = tmp_path / "p"
    invoke("label", "init", project)
    out = json.loads(invoke("label", "import", "sexual", seed_file(tmp_path / "s.csv", truth, "sexual", 0, 7),
                            "--project", project, "--run", run, "--json").stdout)
    assert out["classifier"] is None and "need 5 of each (5 more positive, 0 more negative)" in out["message"]
    # fewer than 5 positives: the cold start ranks the pool by the category's prompts (the run's text tower)
    batch = json.loads(invoke("label", "next", "sexual", "--project", project, "--run", run, "--n", 5,
                              "--json").stdout)
    assert batch["strategy"] == "prompts" and batch["rows"] == 5 and batch["classifier"] is None


def test_classify_bad_inputs(embedded, tmp_path):
    _root, run, truth = embedded
    project = tmp_path / "p"
    invoke("label", "init", project)
    common = ("--project", project, "--run", run)
    # a category with no classifier yet; an unknown category
    result = invoke("classify", run, "--project", project, "--category", "sexual", ok=False)
    assert result.exit_code == 2 and "has no classifier yet" in result.stderr
    result = invoke("classify", run, "--project", project, "--category", "nope", ok=False)
    assert result.exit_code == 2 and "unknown category 'nope'" in result.stderr
    assert invoke("label", "next", "nope", *common, ok=False).exit_code == 2
    # a classifier but no random-audit labels
    invoke("label", "import", "sexual", seed_file(tmp_path / "s.csv", truth, "sexual", 6, 20), *common)
    result = invoke("classify", run, "--project", project, ok=False)
    assert result.exit_code == 1 and "no random-audit labels" in result.stderr
    assert result.stderr.count("\n") == 1
    # NaN scores from a broken classifier file
    dim = 128
    broken = from_layers([(np.full((dim, 1), np.nan, np.float32), np.zeros(1, np.float32))], kind="logistic")
    save_classifier(broken, project / "models" / "sexual.safetensors")
    audit = project / "audit.csv"
    rows = truth.slice(100, 10)
    audit.write_text("uid,label\n" + "".join(f"{u},{y}\n" for u, y in rows.select("uid", "sexual").iter_rows()))
    invoke("label", "add", "sexual", audit, *common, "--source", "random-audit")
    save_classifier(broken, project / "models" / "sexual.safetensors")  # `add` retrained it; break it again
    result = invoke("classify", run, "--project", project, ok=False)
    assert result.exit_code == 1 and "NaN scores" in result.stderr


@pytest.mark.parametrize("key,value", [("target_recall", "1.5"), ("confidence", "0"), ("target_recall", "1")])
def test_levels_outside_unit_interval_are_config_errors(tmp_path, key, value):
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC.replace(f"{key} = 0.6", f"{key} = {value}"))
    result = invoke("label", "init", tmp_path / "p", "--spec", spec, ok=False)
    assert result.exit_code == 2 and key in result.stderr and "between 0 and 1" in result.stderr


def test_init_refuses_a_different_spec_and_stage_names_are_not_reserved(embedded, tmp_path):
    run = embedded[1]
    project = tmp_path / "p"
    invoke("label", "init", project)
    invoke("label", "init", project)  # same spec: a no-op
    other = tmp_path / "other.toml"
    other.write_text(SPEC + '[categories.embed]\ndescription = "x"\nprompts = ["x"]\n')
    result = invoke("label", "init", project, "--spec", other, ok=False)
    assert result.exit_code == 2 and "different category spec" in result.stderr
    invoke("label", "init", tmp_path / "q", "--spec", other)
    # Categories live under stages/classify/ in a run: a category may be named like a stage.
    result = invoke("label", "next", "embed", "--project", tmp_path / "q", "--run", run, "--n", 5, "--json")
    assert json.loads(result.stdout)["rows"] == 5


def test_seed_import_by_image_path(tmp_path):
    """Seeds that name images by path (as in the manifest, or by file name) are mapped to uids; unknown paths are
    rejected with the list."""
    info = make_sample(tmp_path / "sample", n_rows=120, seed=2, layout="files", n_shards=1)
    manifest = open_manifest(info.manifest)
    run = RunFolder.create(tmp_path / "run", manifest)
    model = load_clip("sanitize-demo-clip", None, device="cpu", seed=0)
    run_stage(EmbedStage(EmbedConfig(batch_size=64, workers=0), model=model), run)
    meta = pl.concat([pl.read_parquet(p) for p in sorted((run.embeddings_dir / "metadata").glob("*"))])
    truth = pl.read_parquet(info.truth).join(meta.select("uid", "image"), on="uid")
    pos = truth.filter(pl.col("sexual") == 1).head(6)
    neg = truth.filter(pl.col("sexual") == 0).head(20)
    rows = pl.concat([pos, neg])
    # Half the rows by the manifest's relative path, half by bare file name (what a labeling tool exports).
    paths = [p if i % 2 else Path(p).name for i, p in enumerate(rows["image"].to_list())]
    seeds = tmp_path / "seeds.csv"
    pl.DataFrame({"path": paths, "label": rows["sexual"].to_list()}).write_csv(seeds)
    project = tmp_path / "project"
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC)
    invoke("label", "init", project, "--spec", spec)
    out = json.loads(invoke("label", "import", "sexual", seeds, "--project", project, "--run", run.path,
                            "--json").stdout)
    assert out["source"] == "seed" and out["added"] == rows.height
    stored = pq.read_table(project / "labels" / "sexual.parquet").to_pydict()
    assert dict(zip(stored["uid"], stored["label"], strict=True)) == dict(zip(rows["uid"].to_list(),
                                                                             rows["sexual"].to_list(), strict=True))
    bad = tmp_path / "bad.csv"
    pl.DataFrame({"path": ["images/nope.jpg", paths[0]], "label": [1, 0]}).write_csv(bad)
    result = invoke("label", "import", "sexual", bad, "--project", project, "--run", run.path, ok=False)
    assert result.exit_code == 1 and "1 image paths are not in the dataset: images/nope.jpg" in result.output
