"""The README's first command: `sanitize demo OUT` runs offline and leaves a complete run folder."""

from __future__ import annotations

import json

from click.testing import CliRunner

from sanitize_cli import commands  # noqa: F401
from sanitize_cli.main import cli


def test_demo_runs_end_to_end_and_resumes(tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["demo", str(tmp_path / "demo"), "--rows", "120", "--workers", "0", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    run = tmp_path / "demo" / "run"
    assert summary["stages"]["embed"]["rows_in"] == 120
    assert (run / "embeddings" / "img_emb" / "img_emb_00000.npy").exists()
    assert (run / "export" / "removed.parquet").exists()
    kept = summary["stages"]["export"]["kept"]
    assert 0 < kept < 120  # the broken rows the sample plants are removed
    again = runner.invoke(cli, ["demo", str(tmp_path / "demo"), "--rows", "120", "--workers", "0", "--json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["stages"]["export"] == summary["stages"]["export"]
