"""The README's first command: `sanitize demo OUT` runs offline and leaves a complete run folder."""

from __future__ import annotations

import json

from click.testing import CliRunner

from sanitize_cli import commands  # noqa: F401
from sanitize_cli.main import cli


def test_demo_runs_end_to_end_and_resumes(tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["demo", str(tmp_path / "demo"), "--rows", "300", "--workers", "0", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    run = tmp_path / "demo" / "run"
    assert summary["stages"]["embed"]["rows_in"] == 300
    assert (run / "embeddings" / "img_emb" / "img_emb_00000.npy").exists()
    assert (run / "export" / "removed.parquet").exists()
    kept = summary["stages"]["export"]["kept"]
    assert 0 < kept < 300  # broken rows, filtered and duplicate rows are removed
    again = runner.invoke(cli, ["demo", str(tmp_path / "demo"), "--rows", "300", "--workers", "0", "--json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["stages"]["export"] == summary["stages"]["export"]


def test_demo_runs_every_stage(tmp_path):
    from sanitize.demo import run_demo

    summary = run_demo(tmp_path / "d", n_rows=300, workers=0)
    stages = summary["stages"]
    assert set(stages) == {"embed", "classify", "dedup", "audit", "export"}
    assert set(stages["classify"]["categories"]) == {"sexual", "violence"}
    assert (tmp_path / "d" / "run" / "audit" / "report.html").exists()
    assert (tmp_path / "d" / "project" / "labels" / "sexual.parquet").exists()
    truth = summary["versus_truth"]["dedup"]
    assert truth["planted_pairs_found"] <= truth["pairs_found"]
