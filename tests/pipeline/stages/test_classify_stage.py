"""The classify stage and the project's labeling steps, on a synthetic run folder (no CLIP model needed)."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sanitize.errors import ConfigError, DataError
from sanitize.io.embeddings import write_embedding_shard
from sanitize.io.runfolder import RunFolder
from sanitize.pipeline.stage import run_stage
from sanitize.pipeline.stages.classify import (
    ClassifyConfig,
    ClassifyStage,
    decision_table,
    gather_embeddings,
    score_rows,
)
from sanitize.safety.classifier import from_layers
from sanitize.safety.project import LabelProject
from sanitize.safety.workflow import add_answers, draw_audit_batch, propose_next_batch

SPEC = """
[categories.ai_generated]
description = "AI-generated images."
prompts = ["an AI generated image"]
target_recall = 0.8
confidence = 0.8
"""
DIM, SHARDS, ROWS = 16, 3, 200


@pytest.fixture
def setup(tmp_path):
    """A run with 3 embedding shards (a rare concept along axis 0), a project, and the truth per uid."""
    rng = np.random.default_rng(0)
    run = RunFolder.create(tmp_path / "run", None)
    truth = {}
    for shard in range(SHARDS):
        X = rng.standard_normal((ROWS, DIM)).astype(np.float32)
        y = rng.random(ROWS) < 0.1
        X[y, 0] += 5.0
        X /= np.linalg.norm(X, axis=1, keepdims=True)
        uids = [f"s{shard}-{i}" for i in range(ROWS)]
        truth.update(zip(uids, y.astype(int).tolist(), strict=True))
        write_embedding_shard(run.embeddings_dir, shard, X, None, pa.table({"uid": uids, "caption": uids}))
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC)
    project = LabelProject.init(tmp_path / "project", spec)
    return run, project, truth


def write_answers(path, uids, truth):
    path.write_text("uid,label\n" + "".join(f"{u},{truth[u]}\n" for u in uids))
    return path


def seed(setup, tmp_path):
    run, project, truth = setup
    positives = [u for u, y in truth.items() if y][:10]
    negatives = [u for u, y in truth.items() if not y][:30]
    return add_answers(project, run, "ai_generated", write_answers(tmp_path / "seed.csv", positives + negatives, truth),
                       default_source="seed")


def label_audit(setup, tmp_path, n, **kwargs):
    run, project, truth = setup
    batch = draw_audit_batch(project, run, "ai_generated", n, **kwargs)
    uids = pq.read_table(batch.paths["parquet"])["uid"].to_pylist()
    return batch, add_answers(project, run, "ai_generated", write_answers(tmp_path / f"a{batch.round}.csv", uids,
                                                                          truth), source="random-audit")


def test_seed_trains_and_next_batch_excludes_labelled_rows(setup, tmp_path):
    run, project, _ = setup
    summary = seed(setup, tmp_path)
    assert summary.source == "seed" and summary.added == 40 and summary.classifier
    batch = propose_next_batch(project, run, "ai_generated", 12, strategy="flagged")
    assert batch.round == 1 and batch.rows == 12 and batch.paths["html"].exists()
    labelled = set(project.store("ai_generated").current()[0].tolist())
    proposed = pq.read_table(batch.paths["parquet"])["uid"].to_pylist()
    assert not labelled & set(proposed)


def test_audit_labels_never_train_the_classifier(setup, tmp_path):
    project = setup[1]
    seed(setup, tmp_path)
    before = project.classifier_sha256("ai_generated")
    label_audit(setup, tmp_path, 100)
    assert project.classifier_sha256("ai_generated") == before
    assert len(project.training_labels("ai_generated")[0]) == 40


def test_random_audit_sample_extends_as_one_simple_random_sample(setup, tmp_path):
    run, project, _ = setup
    seed(setup, tmp_path)
    label_audit(setup, tmp_path, 100, seed=1)
    batch, _ = label_audit(setup, tmp_path, 50, seed=2)
    assert batch.rows == 50
    sample = project.read_audit_sample("ai_generated")
    assert sample.num_rows == 150 and len(set(sample["uid"].to_pylist())) == 150
    assert np.allclose(sample["inclusion_probability"].to_numpy(), 150 / (SHARDS * ROWS))
    with pytest.raises(ConfigError, match="only a simple random one can be extended"):
        draw_audit_batch(project, run, "ai_generated", 10, strategy="stratified")


def test_stage_rows_follow_the_threshold_and_a_new_classifier_reruns(setup, tmp_path):
    run, project, _ = setup
    seed(setup, tmp_path)
    label_audit(setup, tmp_path, 300)
    summary = run_stage(ClassifyStage(ClassifyConfig(project=str(project.path))), run).to_dict()
    stats = summary["categories"]["ai_generated"]
    assert stats["rows_in"] == SHARDS * ROWS and stats["audit_labels"] == 300
    threshold = stats["threshold"]
    for index, table in run.read_stage("ai_generated"):
        assert table["uid"].to_pylist() == [f"s{index}-{i}" for i in range(ROWS)]
        scores = table["score"].to_numpy()
        assert (table["keep"].to_numpy(zero_copy_only=False) == (scores < threshold)).all()
    certificate = json.loads((run.stage_dir("classify") / "ai_generated" / "certificate.json").read_text())
    assert certificate["certificate"]["threshold"] == threshold and not (project.path / "thresholds").exists()
    fingerprint = run.info()["stages"]["classify"]["fingerprint"]
    # A retrained classifier (more labels) gives a new config: the stage reruns instead of mixing decisions.
    extra = list(setup[2])[400:420]
    add_answers(project, run, "ai_generated", write_answers(tmp_path / "more.csv", extra, setup[2]))
    run_stage(ClassifyStage(ClassifyConfig(project=str(project.path))), run)
    assert run.info()["stages"]["classify"]["fingerprint"] != fingerprint


def test_score_rows_decisions_and_gather_errors(setup):
    run, _, _ = setup
    clf = from_layers([(np.ones((DIM, 1), np.float32), np.zeros(1, np.float32))], kind="logistic")
    X = np.eye(DIM, dtype=np.float16)
    assert np.allclose(score_rows(clf, X, block_rows=3), 1 / (1 + math.exp(-1)))
    X32 = X.astype(np.float32)
    X32[5, 0] = np.nan
    with pytest.raises(DataError, match="NaN scores, first at row 5"):
        score_rows(clf, X32)
    table = decision_table("cat", np.array(["a", "b"]), np.array([0.9, 0.1], np.float32), -math.inf)
    assert table["reason"].to_pylist() == ["cat:0.900>=-inf", "cat:0.100>=-inf"]
    assert gather_embeddings(run, ["s2-5", "s0-1"]).shape == (2, DIM)
    with pytest.raises(DataError, match="1 audit-labelled uids have no embedding.*nope"):
        gather_embeddings(run, ["s0-1", "nope"])


def test_classify_of_a_category_without_audit_or_classifier(setup, tmp_path):
    run, project, _ = setup
    with pytest.raises(ConfigError, match="no category has a classifier yet"):
        run_stage(ClassifyStage(ClassifyConfig(project=str(project.path))), run)
    seed(setup, tmp_path)
    with pytest.raises(DataError, match="no random-audit labels"):
        run_stage(ClassifyStage(ClassifyConfig(project=str(project.path), categories=("ai_generated",))),
                  run)
