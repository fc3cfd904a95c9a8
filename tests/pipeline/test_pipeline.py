"""`sanitize run`: plan, refusals, stats, changed config, skips — on a small sample with the demo classifiers."""

from __future__ import annotations

import json

import polars as pl
from click.testing import CliRunner

from sanitize_cli.main import cli

from .conftest import data_files


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_full_run_prints_stats_and_writes_them(world, tmp_path):
    result = invoke(*world.args(tmp_path / "run", "--json"))
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    rows = {r["stage"]: r for r in summary["stages"]}
    assert list(rows) == ["embed", "classify", "dedup", "audit", "export"]
    embed, classify, dedup, export = rows["embed"], rows["classify"], rows["dedup"], rows["export"]
    assert embed["rows_in"] == 240 and embed["kept"] + sum(embed["dropped"].values()) == 240
    assert classify["rows_in"] == dedup["rows_in"] == embed["kept"]
    assert set(classify["dropped"]) == {"sexual", "violence"} and dedup["dropped"]["duplicate"] >= 0
    assert export["rows_in"] == 240
    removed = pl.read_parquet(tmp_path / "run" / "export" / "removed.parquet")
    assert export["kept"] == 240 - removed.height
    assert all(r["seconds"] >= 0 and r["peak_memory_mb"] > 0 for r in summary["stages"])
    stats = json.loads((tmp_path / "run" / "stats.json").read_text())
    assert stats["pipeline"]["totals"]["kept"] == export["kept"]
    # The audit adds the filters up in the order they ran ("all stages so far").
    report = json.loads((tmp_path / "run" / "audit" / "report.json").read_text())
    assert [s["stage"] for s in report["stages"]] == ["sexual", "violence", "dedup"]
    # The human table and summary line.
    text = invoke(*world.args(tmp_path / "run"))
    assert text.exit_code == 0, text.output
    assert "| stage | rows in | kept | dropped | seconds | peak MiB |" in text.output
    assert f"kept {export['kept']:,} of 240 rows" in text.output and "report.html" in text.output


def test_dry_run_prints_the_plan_and_writes_nothing(world, tmp_path):
    result = invoke(*world.args(tmp_path / "run", "--dry-run", "--skip", "audit", "--set", "dedup.threshold=0.99"))
    assert result.exit_code == 0, result.output
    assert "audit     skip  not asked for" in result.output and "dedup     run   new" in result.output
    assert "threshold = 0.99" in result.output
    assert not (tmp_path / "run").exists()
    as_json = json.loads(invoke(*world.args(tmp_path / "run", "--dry-run", "--json")).stdout)
    assert [p["action"] for p in as_json["plan"]] == ["run"] * 5


def test_changed_config_is_refused_without_resume_and_reruns_that_stage_with_it(world, tmp_path):
    run = world.embedded_copy(tmp_path / "run")
    assert invoke(*world.args(run)).exit_code == 0
    before = data_files(run)
    refused = invoke(*world.args(run, "--set", "dedup.threshold=0.99"))
    assert refused.exit_code == 2
    assert "holds a run whose dedup config differs" in refused.output and "--resume" in refused.output
    assert data_files(run) == before  # nothing was touched
    plan = invoke(*world.args(run, "--set", "dedup.threshold=0.99", "--resume", "--dry-run"))
    assert "dedup     run   config changed: reruns" in plan.output
    assert "classify  run   resumes" in plan.output
    assert invoke(*world.args(run, "--set", "dedup.threshold=0.99", "--resume")).exit_code == 0
    # The resumed run equals a fresh run with the new config: the dedup decisions and the export follow.
    fresh = world.embedded_copy(tmp_path / "fresh")
    assert invoke(*world.args(fresh, "--set", "dedup.threshold=0.99")).exit_code == 0
    assert data_files(run) == data_files(fresh)
    assert data_files(run)["stages/dedup/pairs.parquet"] != before["stages/dedup/pairs.parquet"]
    assert data_files(run)["export/removed.parquet"] != before["export/removed.parquet"]


def test_refuses_folders_that_hold_something_else(world, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    result = invoke(*world.args(tmp_path / "full"))
    assert result.exit_code == 2 and "folder is not empty and holds no run" in result.output
    assert (tmp_path / "full" / "notes.txt").read_text() == "mine"
    from sanitize.demo.sample import make_sample

    other = make_sample(tmp_path / "other", n_rows=120, seed=9, n_shards=1)
    run = world.embedded_copy(tmp_path / "run")
    result = invoke("run", other.manifest, "--config", world.config_path, "--out", run, "--resume")
    assert result.exit_code == 2 and "holds a run of another input" in result.output
    by_embed = tmp_path / "made-by-embed"
    embedded = invoke("embed", world.manifest, "--out", by_embed, "--model", "sanitize-demo-clip",
                      "--pretrained", "none", "--workers", "0", "--batch-size", "32")
    assert embedded.exit_code == 0, embedded.output
    result = invoke(*world.args(by_embed))
    assert result.exit_code == 2 and "not started by `sanitize run`; pass --resume" in result.output


def test_skips_and_their_checks(world, tmp_path):
    result = invoke(*world.args(tmp_path / "empty", "--skip", "embed"))
    assert result.exit_code == 2 and "the embed stage is skipped but the folder has no embed results" in result.output
    run = world.embedded_copy(tmp_path / "run")
    result = invoke(*world.args(run, "--resume", "--skip", "embed", "--skip", "classify", "--json"))
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert [r["stage"] for r in summary["stages"]] == ["dedup", "audit", "export"]
    assert not (run / "stages" / "classify").exists()
    no_project = invoke(*world.args(tmp_path / "np", "--set", "classify.project=\"\"", "--dry-run"))
    assert "classify  skip  no [classify] project set" in no_project.output
    only_audit = invoke(*world.args(tmp_path / "oa", "--set", "run.stages=[\"embed\", \"audit\"]"))
    assert only_audit.exit_code == 2 and "audit needs a filter stage" in only_audit.output


def test_align_is_refused_before_anything_runs_when_captions_are_not_embedded(world, tmp_path):
    stages = 'run.stages=["embed", "align", "classify", "dedup", "audit", "export"]'
    result = invoke(*world.args(tmp_path / "r", "--set", stages, "--set", "embed.text=false"))
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == ["error: the align stage needs caption embeddings, but embed.text "
                                                  "is false (--no-text); embed the captions or leave align out of "
                                                  "run.stages"]
    assert not (tmp_path / "r").exists()


def test_bad_config_and_engine_errors_are_one_line(world, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[dedup]\ntreshold = 0.9\n")
    result = invoke("run", world.manifest, "--config", bad, "--out", tmp_path / "r")
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [f"error: {bad}: unknown key dedup.treshold; did you mean "
                                                  "dedup.threshold?"]
    result = invoke(*world.args(tmp_path / "r", "--ray-address", "auto"))
    assert result.exit_code == 2 and "need run.engine = \"ray\"" in result.output


def test_ray_requested_but_not_installed_gives_the_install_hint(world, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    result = invoke(*world.args(tmp_path / "r", "--engine", "ray"))
    assert result.exit_code == 2 and "pip install 'sanitize-data[ray]'" in result.output


def test_init_writes_a_starter_config_and_refuses_to_overwrite(tmp_path):
    path = tmp_path / "sanitize.toml"
    assert invoke("init", path).exit_code == 0
    assert "[dedup]" in path.read_text() and "# ray_address = " in path.read_text()
    again = invoke("init", path)
    assert again.exit_code == 2 and "exists; pass --force" in again.output
    assert invoke("init", path, "--force").exit_code == 0
