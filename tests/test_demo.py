"""The README's first command: `sanitize demo OUT` runs the pipeline offline and leaves a complete run folder."""

from __future__ import annotations

import json

from click.testing import CliRunner

from sanitize.pipeline.config import load_config
from sanitize_cli.main import cli


def test_demo_runs_end_to_end_and_resumes(tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["demo", str(tmp_path / "demo"), "--rows", "300", "--workers", "0", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    run = tmp_path / "demo" / "run"
    stages = {r["stage"]: r for r in summary["stages"]}
    assert list(stages) == ["embed", "classify", "dedup", "audit", "export"]
    assert stages["embed"]["rows_in"] == 300 and stages["embed"]["kept"] < 300  # the sample's broken images
    assert (run / "embeddings" / "img_emb" / "img_emb_00000.npy").exists()
    assert (run / "export" / "removed.parquet").exists()
    assert summary["totals"]["report"].endswith("report.html")
    kept = stages["export"]["kept"]
    assert 0 < kept < 300  # broken rows, filtered and duplicate rows are removed
    assert json.loads((run / "stats.json").read_text())["pipeline"]["totals"]["kept"] == kept
    # Each promise travels in the JSON with its number: the audit's answer first, then classify and dedup.
    answer = summary["women_vs_men"]
    assert answer["attribute"] == "caption_gender" and answer["stages"]
    assert {"female", "male"} <= set(answer["stages"][0]) and len(answer["stages"][0]["female"]["ci"]) == 2
    assert set(summary["versus_truth"]["classify"]) == {"sexual", "violence"}
    assert summary["versus_truth"]["dedup"]["planted_pairs"] > 0
    assert "Did the filters remove rows about women" in runner.invoke(
        cli, ["demo", str(tmp_path / "demo"), "--rows", "300", "--workers", "0"]).output
    again = runner.invoke(cli, ["demo", str(tmp_path / "demo"), "--rows", "300", "--workers", "0", "--json"])
    assert again.exit_code == 0, again.output
    assert {r["stage"]: r for r in json.loads(again.stdout)["stages"]}["export"]["kept"] == kept


def test_demo_is_sanitize_run_with_its_written_config(tmp_path):
    from sanitize.demo.run import run_demo

    # Random weights (--pretrained none) still run the whole demo: the mechanics do not need a trained model.
    summary = run_demo(tmp_path / "d", n_rows=300, workers=0, pretrained="none")
    assert set(summary["categories"]) == {"sexual", "violence"}
    assert (tmp_path / "d" / "run" / "audit" / "report.html").exists()
    assert (tmp_path / "d" / "project" / "labels" / "sexual.parquet").exists()
    truth = summary["versus_truth"]["dedup"]
    assert truth["planted_pairs_found"] <= truth["pairs_found"]
    # The written config reproduces the run: `sanitize run` on it finds every stage finished and changes nothing.
    config = load_config(tmp_path / "d" / "sanitize.toml")
    assert config["embed"].model == "sanitize-demo-clip" and config["classify"].project
    assert config["embed"].pretrained == "none"
    removed = (tmp_path / "d" / "run" / "export" / "removed.parquet").read_bytes()
    result = CliRunner().invoke(cli, ["run", str(tmp_path / "d" / "sample" / "shards"), "--config",
                                      str(tmp_path / "d" / "sanitize.toml"), "--out", str(tmp_path / "d" / "run")])
    assert result.exit_code == 0, result.output
    assert "| dedup |" in result.output and "audit report:" in result.output
    assert (tmp_path / "d" / "run" / "export" / "removed.parquet").read_bytes() == removed
