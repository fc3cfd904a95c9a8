"""A small embedded sample and a seeded labeling project, shared by the labeling-page tests.

The demo model has random weights: these tests check the mechanics (store, undo, rounds, HTTP, browser),
not the classifier's quality.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import polars as pl
import pytest

from sanitize.clip.models import load_clip
from sanitize.demo.sample import make_sample
from sanitize.io.manifest import open_manifest
from sanitize.io.runfolder import RunFolder
from sanitize.labelserver.app import LabelServer
from sanitize.labelserver.session import LabelingSession
from sanitize.pipeline.stage import run_stage
from sanitize.pipeline.stages.embed import EmbedConfig, EmbedStage
from sanitize.safety.project import LabelProject

CATEGORY = "sexual"
SPEC = """
[categories.sexual]
description = "Demo stand-in: a cluster of skin-coloured blobs (abstract, nothing real)."
guidelines = "Label 1 when the image shows the blob cluster.\\nLabel 0 otherwise."
prompts = ["skin-coloured blobs"]
target_recall = 0.8
confidence = 0.8
"""


@pytest.fixture(scope="session")
def embedded(tmp_path_factory) -> tuple[Path, pl.DataFrame]:
    """(run folder, planted truth of the embedded rows) for a 200-row sample and the demo model."""
    root = tmp_path_factory.mktemp("labelserver")
    info = make_sample(root / "sample", n_rows=200, seed=0)
    manifest = open_manifest(info.manifest)
    run = RunFolder.create(root / "run", manifest)
    model = load_clip("sanitize-demo-clip", None, device="cpu", seed=0)
    run_stage(EmbedStage(EmbedConfig(batch_size=64, workers=0), model=model), run)
    uids = pl.concat([pl.read_parquet(p, columns=["uid"]) for p in sorted((run.embeddings_dir / "metadata").glob("*"))])
    return run.path, pl.read_parquet(info.truth).join(uids, on="uid")


@pytest.fixture(scope="session")
def seeded_project(embedded, tmp_path_factory) -> Path:
    """A project whose category has 5 positive and 15 negative seed labels (enough for a classifier)."""
    _run, truth = embedded
    root = tmp_path_factory.mktemp("seeded")
    (root / "spec.toml").write_text(SPEC)
    project = LabelProject.init(root / "project", root / "spec.toml")
    seeds = pl.concat([truth.filter(pl.col(CATEGORY) == 1).head(5), truth.filter(pl.col(CATEGORY) == 0).head(15)])
    project.store(CATEGORY).add(seeds["uid"].to_list(), seeds[CATEGORY].to_list(), source="seed", round=0)
    return project.path


@pytest.fixture
def project_dir(seeded_project, tmp_path) -> Path:
    """A fresh copy of the seeded project for one test."""
    return Path(shutil.copytree(seeded_project, tmp_path / "project"))


@pytest.fixture
def make_session(project_dir, embedded):
    """Build (and load) a session over the test's project: make_session(n=6, annotator="ann", …)."""

    def make(**options) -> LabelingSession:
        options = {"n": 6, "annotator": "tester", **options}
        session = LabelingSession(LabelProject.open(project_dir), RunFolder.open(embedded[0]), CATEGORY, **options)
        session.load()
        return session

    return make


@pytest.fixture
def serve(make_session):
    """Start a real server on a free port for a new session; yields the LabelServer, stops it afterwards."""
    servers = []

    def start(**options) -> LabelServer:
        server = LabelServer(make_session(**options), "127.0.0.1", 0)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()
