"""Run folder: creation, refusal of foreign folders, markers, stage fingerprints, stats, export."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sanitize.errors import ConfigError, DataError
from sanitize.io.manifest import open_manifest
from sanitize.io.runfolder import RunFolder
from sanitize.pipeline.stage import run_stage
from sanitize.pipeline.stages.export import ExportStage


@pytest.fixture
def manifest(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    pq.write_table(pa.table({"uid": ["a", "b", "c"], "caption": ["x", "y", "z"], "extra": [1, 2, 3]}),
                   folder / "00000.parquet")
    pq.write_table(pa.table({"uid": ["d", "e"], "caption": ["v", "w"], "extra": [4, 5]}), folder / "00001.parquet")
    return open_manifest(folder)


def stage_table(uids, keep, reasons):
    return pa.table({"uid": uids, "keep": keep, "reason": reasons})


def test_create_reopen_and_refuse_foreign(tmp_path, manifest):
    run = RunFolder.create(tmp_path / "run", manifest)
    assert RunFolder.create(tmp_path / "run", manifest).info()["input_fingerprint"] == manifest.fingerprint()
    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"uid": ["q"]}), other)
    with pytest.raises(ConfigError, match="holds a run of another input"):
        RunFolder.create(run.path, open_manifest(other))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file.txt").write_text("x")
    with pytest.raises(ConfigError, match="folder is not empty and holds no run"):
        RunFolder.create(tmp_path / "junk", manifest)
    with pytest.raises(DataError, match="not a run folder"):
        RunFolder.open(tmp_path / "junk")


def test_markers_and_stage_fingerprint(tmp_path, manifest):
    run = RunFolder.create(tmp_path / "run", manifest)
    assert run.begin_stage("sexual", {"threshold": 0.5}) is False
    run.write_shard("sexual", 0, stage_table(["a", "b", "c"], [True, False, True], [None, "sexual:0.9>=0.5", None]))
    assert run.is_done("sexual", 0) and not run.is_done("sexual", 1)
    assert run.begin_stage("sexual", {"threshold": 0.5}) is True  # same config: reuse
    assert run.is_done("sexual", 0)
    assert run.begin_stage("sexual", {"threshold": 0.4}) is False  # changed config: stage files removed
    assert not run.is_done("sexual", 0)


def test_export_keeps_input_columns_and_lists_reasons(tmp_path, manifest):
    run = RunFolder.create(tmp_path / "run", manifest)
    run.begin_stage("sexual", {})
    run.write_shard("sexual", 0, stage_table(["a", "b", "c"], [True, False, True], [None, "sexual:0.9>=0.5", None]))
    run.write_shard("sexual", 1, stage_table(["d", "e"], [True, True], [None, None]))
    run.begin_stage("dedup", {})
    run.write_shard("dedup", 0, stage_table(["b"], [False], ["duplicate_of:a"]))
    run.write_shard("dedup", 1, stage_table(["e"], [False], ["duplicate_of:d"]))
    summary = run_stage(ExportStage(), run).to_dict()
    assert (summary["rows_in"], summary["kept"], summary["dropped"]) == (5, 3, {"removed by a stage": 2})
    assert summary["out"] == str(run.path / "export")
    kept = pq.read_table(run.path / "export" / "kept" / "00000.parquet")
    assert kept.column_names == ["uid", "caption", "extra"] and kept["uid"].to_pylist() == ["a", "c"]
    removed = pq.read_table(run.path / "export" / "removed.parquet").to_pylist()
    assert removed[0] == {"uid": "b", "stages": ["dedup", "sexual"], "reasons": "duplicate_of:a; sexual:0.9>=0.5"}
    first = (run.path / "export" / "kept" / "00001.parquet").read_bytes()
    run_stage(ExportStage(), run)  # rerun: identical output
    assert (run.path / "export" / "kept" / "00001.parquet").read_bytes() == first
    # A stage shard must hold rows of the same input shard: a misaligned one is an error, not a silent keep.
    run.write_shard("dedup", 1, stage_table(["a"], [False], ["duplicate_of:c"]))
    (run.path / "export" / "_done" / "00001").unlink()
    with pytest.raises(DataError, match="shard 00001 removes uids that input shard 00001 does not hold"):
        run_stage(ExportStage(), run)


def test_stats_are_merged_per_stage(tmp_path, manifest):
    run = RunFolder.create(tmp_path / "run", manifest)
    run.record_stats("embed", {"rows_in": 5})
    run.record_stats("dedup", {"rows_in": 4})
    assert run.stats() == {"embed": {"rows_in": 5}, "dedup": {"rows_in": 4}}


def test_markers_hold_counts_and_old_layouts_are_refused(tmp_path, manifest):
    run = RunFolder.create(tmp_path / "run", manifest)
    run.begin_stage("sexual", {})
    run.write_shard("sexual", 0, stage_table(["a", "b", "c"], [True, False, True], [None, "x", None]),
                    {"rows_in": 3, "kept": 2})
    run.write_shard("sexual", 1, stage_table(["d", "e"], [True, True], [None, None]), {"rows_in": 2, "kept": 2})
    assert run.shard_stats("sexual") == [{"rows_in": 3, "kept": 2}, {"rows_in": 2, "kept": 2}]
    info = run.info()
    info["layout"] = 1
    run.run_json.write_text(__import__("json").dumps(info))
    with pytest.raises(ConfigError, match="a run folder of layout 1 .* reads layout 2 only"):
        RunFolder.open(run.path).info()


def test_a_decision_set_name_belongs_to_one_stage(tmp_path, manifest):
    run = RunFolder.create(tmp_path / "run", manifest)
    run.begin_stage("dedup", {})
    with pytest.raises(ConfigError, match="would write decisions named 'dedup', which stage 'dedup' already"):
        run.begin_stage("classify", {}, decisions={"dedup": run.stage_dir("classify") / "dedup"})
