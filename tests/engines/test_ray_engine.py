"""The Ray engine gives the same files as the local engine, stage by stage, on a small demo run.

One local Ray (num_cpus=2) for the module. Skipped when Ray is not installed, except on CI (CI=true), where
a missing Ray is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

if os.environ.get("CI") == "true":
    import ray  # noqa: F401  (CI installs the ray extra: fail loudly when it is missing)
else:
    pytest.importorskip("ray")

from sanitize.clip.models import load_clip
from sanitize.dedup import find_duplicates
from sanitize.demo.run import scripted_labeling
from sanitize.demo.sample import make_sample
from sanitize.engines import get_engine
from sanitize.errors import ConfigError, DataError
from sanitize.io.manifest import open_manifest
from sanitize.io.runfolder import RunFolder
from sanitize.pipeline.stage import run_stage
from sanitize.pipeline.stages.audit import AuditConfig, AuditStage
from sanitize.pipeline.stages.classify import ClassifyConfig, ClassifyStage
from sanitize.pipeline.stages.dedup import DedupConfig, DedupStage
from sanitize.pipeline.stages.embed import EmbedConfig, EmbedStage
from sanitize.pipeline.stages.export import ExportConfig, ExportStage
from sanitize.testing.synthetic import clip_like
from tests.engines.ray_tasks import FailingWorker, offset_rows

# Stats fields that measure the machine, not the result.
MEASURED = {"seconds", "peak_memory_mb", "engine", "paths", "outputs", "out", "phase_seconds", "train_seconds",
            "assign_seconds", "pairs_seconds"}


@pytest.fixture(scope="module")
def engine():
    with get_engine("ray", num_cpus=2) as ray_engine:
        yield ray_engine


@pytest.fixture(scope="module")
def model():
    return load_clip("sanitize-demo-clip", None, device="cpu", seed=0)


@pytest.fixture(scope="module")
def embedded(tmp_path_factory, engine, model):
    """A 100-row sample embedded twice: RUN local/run (local engine) and ray/run (Ray engine, two actors)."""
    root = tmp_path_factory.mktemp("embed")
    manifest = open_manifest(make_sample(root / "sample", n_rows=100, n_shards=2, seed=1).manifest)
    runs = []
    for name, eng in (("local", None), ("ray", engine)):
        run = RunFolder.create(root / name / "run", manifest)
        run_stage(EmbedStage(EmbedConfig(workers=0), model=model), run, engine=eng)
        runs.append(run)
    return (*runs, manifest)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, engine, model):
    """A 200-row sample through classify, dedup, audit and export twice: local/run and ray/run.

    Both start from the same embeddings (embedded once, locally, and copied; `embedded` tests embed on Ray).
    """
    root = tmp_path_factory.mktemp("engines")
    info = make_sample(root / "sample", n_rows=200, n_shards=3, seed=0)
    manifest = open_manifest(info.manifest)
    local = RunFolder.create(root / "local" / "run", manifest)
    run_stage(EmbedStage(EmbedConfig(workers=0), model=model), local)
    shutil.copytree(local.path, root / "ray" / "run")
    ray_run = RunFolder.open(root / "ray" / "run")
    project = scripted_labeling(root / "project", local, pl.read_parquet(info.truth), seed=0, batch=20, audit=90)
    for run, eng in ((local, None), (ray_run, engine)):
        run_stage(ClassifyStage(ClassifyConfig(project=str(project.path))), run, engine=eng)
        run_stage(DedupStage(DedupConfig(threshold=0.999)), run, engine=eng)
        run_stage(AuditStage(AuditConfig(attributes=("caption_gender", "occupations"), weight_on=("caption_gender",))),
                  run, engine=eng)
        run_stage(ExportStage(ExportConfig()), run, engine=eng)
    return local, ray_run, project


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_same_files(local: RunFolder, ray_run: RunFolder, sub: str) -> None:
    ours, theirs = files_under(local.path / sub), files_under(ray_run.path / sub)
    assert ours, f"no files under {sub}"
    assert ours.keys() == theirs.keys()
    different = [name for name in ours if ours[name] != theirs[name]]
    assert not different, f"files differ under {sub}: {different}"


def scrub(value):
    """`value` without the fields that measure time, memory, the engine or paths."""
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items() if k not in MEASURED}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    return value


@pytest.mark.parametrize("sub", ["embeddings", "stages/embed"])
def test_embed_files_are_byte_identical(embedded, sub):
    local, ray_run, _ = embedded
    assert_same_files(local, ray_run, sub)
    assert ray_run.stats()["embed"]["engine"] == "ray"


@pytest.mark.parametrize("sub", ["stages/classify", "stages/dedup", "export"])
def test_stage_files_are_byte_identical(runs, sub):
    local, ray_run, _ = runs
    assert_same_files(local, ray_run, sub)


def test_run_json_and_audit_report_match(runs):
    local, ray_run, _ = runs
    assert local.run_json.read_bytes() == ray_run.run_json.read_bytes()
    ours = json.loads((local.path / "audit" / "report.json").read_text())
    theirs = json.loads((ray_run.path / "audit" / "report.json").read_text())
    assert scrub(ours) == scrub(theirs) and ours["flags"] == theirs["flags"]
    assert (local.path / "audit" / "weights.parquet").read_bytes() == (
        ray_run.path / "audit" / "weights.parquet").read_bytes()


def test_stats_differ_only_in_measurements_and_record_the_engine(runs):
    local, ray_run, _ = runs
    ours, theirs = local.stats(), ray_run.stats()
    assert ours.keys() == theirs.keys() >= {"embed", "classify", "dedup", "audit", "export"}
    assert scrub(ours) == scrub(theirs)
    assert 0 < ours["dedup"]["dropped"]["duplicate"] < ours["dedup"]["rows_in"]  # the comparisons are not vacuous
    sexual = ours["classify"]["categories"]["sexual"]
    assert 0 < sexual["removed"] < sexual["rows_in"]
    for stage in ("classify", "dedup", "audit", "export"):
        assert ours[stage]["engine"] == "local" and theirs[stage]["engine"] == "ray"


def test_embed_resumes_under_ray(embedded, engine, model):
    local, ray_run, _ = embedded
    ray_run.marker("embed", 1).unlink()
    ray_run.shard_path("embed", 1).unlink()
    for kind in ("img_emb", "text_emb"):
        (ray_run.embeddings_dir / kind / f"{kind}_00001.npy").unlink()
    before = ray_run.marker("embed", 0).stat().st_mtime_ns
    run_stage(EmbedStage(EmbedConfig(workers=0), model=model), ray_run, engine=engine)
    assert ray_run.marker("embed", 0).stat().st_mtime_ns == before  # a finished shard is not redone
    for sub in ("embeddings", "stages/embed"):
        assert_same_files(local, ray_run, sub)


def test_classify_resumes_under_ray(runs, engine):
    local, ray_run, project = runs
    ray_run.marker("classify", 1).unlink()
    ray_run.shard_path("sexual", 1).unlink()
    before = ray_run.marker("classify", 0).stat().st_mtime_ns
    run_stage(ClassifyStage(ClassifyConfig(project=str(project.path))), ray_run, engine=engine)
    assert ray_run.marker("classify", 0).stat().st_mtime_ns == before  # a finished shard is not redone
    assert_same_files(local, ray_run, "stages/classify")


def test_switching_engine_does_not_rerun_a_finished_stage(runs):
    local, *_ = runs
    pairs = local.stage_dir("dedup") / "pairs.parquet"
    before = pairs.stat().st_mtime_ns
    with get_engine("ray") as reused:  # reuses the module's Ray, and leaves it running
        run_stage(DedupStage(DedupConfig(threshold=0.999)), local, engine=reused)
    assert pairs.stat().st_mtime_ns == before


def test_find_duplicates_over_many_clusters_matches_threads(engine):
    x = clip_like(3000, 32, seed=1, dup_fraction=0.1).x
    options = dict(threshold=0.9, n_clusterings=2, n_clusters=8, seed=0, recall_sample=200, clustering_dims=None)
    threads = find_duplicates(x, **options)
    on_ray = find_duplicates(x, **options, task_map=engine.map_tasks)
    assert threads.pairs.num_rows > 0
    assert threads.pairs.equals(on_ray.pairs) and threads.rows.equals(on_ray.rows)
    assert threads.stats["recall"] == on_ray.stats["recall"]


def test_map_tasks_keeps_order_and_raises_our_errors(engine):
    x = np.arange(60, dtype=np.float32).reshape(20, 3)
    items = list(range(19, -1, -1))
    got = engine.map_tasks(offset_rows, items, (x, 1.0))
    assert np.array_equal(np.stack(got), x[items] + 1.0)
    assert engine.map_tasks(offset_rows, [], (x, 1.0)) == []
    with pytest.raises(DataError, match="^row -1: negative$"):
        engine.map_tasks(offset_rows, [3, -1], (x, 1.0))


def test_map_shards_raises_our_errors_as_they_are(engine):
    with pytest.raises(DataError, match="^shard 1: unreadable$"):
        engine.map_shards(FailingWorker(), [0, 1, 2])


def test_bad_ray_options():
    for bad in ("localhost", "localhost:port", ":6379", "http://localhost:6379", "ray://localhost:99999"):
        with pytest.raises(ConfigError, match="--ray-address must be 'auto', 'HOST:PORT' or 'ray://HOST:PORT'"):
            get_engine("ray", address=bad)
    with pytest.raises(ConfigError, match="num_cpus must be >= 1"):
        get_engine("ray", num_cpus=0)

