"""The audit stage over a run folder: the planted women>men removal in the sample is flagged and reweighted."""

from __future__ import annotations

import json

import polars as pl
import pyarrow as pa
import pytest
from click.testing import CliRunner

from sanitize.demo.sample import make_sample
from sanitize.errors import ConfigError
from sanitize.io.manifest import open_manifest
from sanitize.io.runfolder import RunFolder
from sanitize.pipeline.stage import run_stage
from sanitize.pipeline.stages.audit import AuditConfig, AuditStage
from sanitize_cli.main import cli


@pytest.fixture(scope="module")
def filtered_run(tmp_path_factory):
    """A run of the generated sample whose 'sexual' stage removes exactly the planted motif rows."""
    root = tmp_path_factory.mktemp("audit")
    info = make_sample(root / "sample", n_rows=2000, seed=3)
    truth = pl.read_parquet(info.truth)
    manifest = open_manifest(info.manifest)
    run = RunFolder.create(root / "run", manifest)
    run.begin_stage("sexual", {"planted": True})
    for index in range(len(manifest.files)):
        uids = pl.DataFrame({"uid": manifest.read_shard(index).table["uid"].to_pylist()})
        flagged = uids.join(truth.select("uid", "sexual"), on="uid", how="left", maintain_order="left")["sexual"]
        run.write_shard("sexual", index, pa.table({
            "uid": uids["uid"].to_arrow(), "keep": (flagged == 0).to_arrow(),
            "reason": pa.nulls(uids.height, pa.string())}))
    return run, truth


def test_planted_shift_is_flagged_and_weights_undo_it(filtered_run):
    run, truth = filtered_run
    config = AuditConfig(attributes=("caption_gender", "occupations"), weight_on=("caption_gender",))
    stats = run_stage(AuditStage(config), run).to_dict()
    report = json.loads((run.path / "audit" / "report.json").read_text())
    top = report["flags"][0]
    assert top["group"] == "female" and top["ratio"] > 1.5
    assert stats["flags"] >= 1 and (run.path / "audit" / "report.html").stat().st_size > 10_000
    weights = pl.read_parquet(run.path / "audit" / "weights.parquet")
    gender = truth.select("uid", "caption_gender", "sexual")
    before = gender.filter(pl.col("caption_gender").is_in(["female", "male"]))
    share_before = (before["caption_gender"] == "female").mean()
    kept = weights.join(gender, on="uid").filter(pl.col("caption_gender").is_in(["female", "male"]))
    unweighted = (kept["caption_gender"] == "female").mean()
    weighted = (kept["weight"] * (kept["caption_gender"] == "female")).sum() / kept["weight"].sum()
    assert unweighted < share_before - 0.005  # the filter shifted the mix
    assert weighted == pytest.approx(share_before, abs=1e-9)  # the weights restore it


def test_cli_audit_and_bad_attribute(filtered_run):
    run, _ = filtered_run
    runner = CliRunner()
    result = runner.invoke(cli, ["audit", str(run.path), "--attribute", "caption_gender", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["stages"] == ["sexual"]
    bad = runner.invoke(cli, ["audit", str(run.path), "--attribute", "shoe_size"])
    assert bad.exit_code == 2 and "unknown attribute 'shoe_size'" in bad.stderr
    with pytest.raises(ConfigError, match="no embed stage, so no CLIP model to load"):
        run_stage(AuditStage(AuditConfig(attributes=("perceived_gender",))), run)
