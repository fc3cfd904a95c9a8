"""The stage contract: the runner names no stage, counts merge, and adding a stage is one module + one line
(the caption_length stage, run through `sanitize run` like any other)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

import sanitize.pipeline.runner as runner
from sanitize.errors import ConfigError
from sanitize.pipeline.config import load_config, starter_config
from sanitize.pipeline.registry import stage_classes, stage_names
from sanitize.pipeline.stage import ShardStats
from sanitize.pipeline.stages.caption_length import CaptionLengthConfig, caption_decisions
from sanitize_cli.main import cli


def test_the_runner_names_no_stage():
    names = set(stage_names())
    tree = ast.parse(Path(runner.__file__).read_text())
    named = [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and node.value in names]
    assert named == [], f"the runner names stages {named}; it should loop over the registry"


def test_every_stage_declares_its_contract():
    for cls in stage_classes():
        assert cls.name and cls.summary and cls.role in ("source", "filter", "report", "sink")
        cls.Config()  # every option has a default
        assert f"[{cls.name}]" in starter_config()


def test_shard_stats_add_up_in_any_order():
    a = ShardStats(3, 2, {"x": 1}, {"p": 1})
    b = ShardStats(4, 1, {"y": 2, "x": 1})
    assert a + b == b + a == ShardStats(7, 3, {"x": 2, "y": 2}, {"p": 1})
    assert ShardStats.total([a, b]) == a + b and ShardStats.from_dict((a + b).to_dict()) == a + b


def test_caption_decisions():
    keep, reasons = caption_decisions(["a dog on a beach", "dog", None, "  ", "a b", "x" * 20],
                                      CaptionLengthConfig(min_words=2, min_chars=5, max_chars=10))
    assert keep.tolist() == [False, False, False, False, False, False]
    assert reasons == ["caption_too_long:16 chars", "caption_too_short:1 words", "caption_missing",
                       "caption_missing", "caption_too_short:3 chars", "caption_too_short:1 words"]
    keep, reasons = caption_decisions(["a dog on a beach"], CaptionLengthConfig())
    assert keep.tolist() == [True] and reasons == [None]


def test_an_added_stage_runs_in_the_pipeline_and_reaches_export_and_audit(world, tmp_path):
    run = world.embedded_copy(tmp_path / "run")
    stages = '["embed", "caption_length", "dedup", "audit", "export"]'
    args = world.args(run, "--resume", "--set", f"run.stages={stages}", "--set", "caption_length.min_words=8",
                      "--json")
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    rows = {r["stage"]: r for r in json.loads(result.stdout)["stages"]}
    assert list(rows) == ["embed", "caption_length", "dedup", "audit", "export"]
    short = rows["caption_length"]["dropped"]["caption_too_short"]
    assert rows["caption_length"]["rows_in"] == 240 and 0 < short < 240
    decisions = pl.read_parquet(run / "stages" / "caption_length" / "*.parquet")
    assert int((~decisions["keep"]).sum()) == short
    assert (decisions.filter(~pl.col("keep"))["words"] < 8).all()
    removed = pl.read_parquet(run / "export" / "removed.parquet")
    assert removed.filter(pl.col("stages").list.contains("caption_length")).height == short
    report = json.loads((run / "audit" / "report.json").read_text())
    assert "caption_length" in json.dumps(report.get("stages", report))


def test_caption_length_is_opt_in_and_its_options_are_checked():
    assert "caption_length" not in load_config(None).run.stages
    with pytest.raises(ConfigError, match="caption_length.min_words must be at least 0"):
        load_config(None, ["caption_length.min_words=-1"])


def test_align_by_fraction_in_the_pipeline(world, tmp_path):
    run = world.embedded_copy(tmp_path / "run")
    stages = '["embed", "align", "dedup", "audit", "export"]'
    args = world.args(run, "--resume", "--set", f"run.stages={stages}", "--set", 'align.by="fraction"',
                      "--set", "align.fraction=0.5", "--json")
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    rows = {r["stage"]: r for r in json.loads(result.stdout)["stages"]}
    embedded = rows["embed"]["kept"]
    assert rows["align"]["rows_in"] == embedded and rows["align"]["kept"] >= -(-embedded // 2)
    removed = pl.read_parquet(run / "export" / "removed.parquet")
    assert removed.filter(pl.col("stages").list.contains("align")).height == rows["align"]["dropped"]["misaligned"]
    report = json.loads((run / "audit" / "report.json").read_text())
    assert [s["stage"] for s in report["stages"]] == ["align", "dedup"]
