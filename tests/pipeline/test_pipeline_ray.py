"""`sanitize run --engine ray` on a local Ray (2 CPUs) writes the same files as the local engine."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from sanitize.pipeline.registry import stage_names
from sanitize_cli.main import cli

from .conftest import data_files

if os.environ.get("CI") == "true":
    import ray  # noqa: F401  (CI installs the ray extra: fail loudly when it is missing)
else:
    pytest.importorskip("ray")


def test_ray_engine_run_equals_local_run(world, tmp_path):
    # Every registered stage, the opt-in ones too (align by the top fraction: its exact cut is engine-free).
    every = ["--set", f"run.stages={json.dumps(list(stage_names()))}", "--set", 'align.by="fraction"']
    local = world.embedded_copy(tmp_path / "local")
    result = CliRunner().invoke(cli, [str(a) for a in world.args(local, *every)])
    assert result.exit_code == 0, result.output
    on_ray = world.embedded_copy(tmp_path / "ray")
    result = CliRunner().invoke(cli, [str(a) for a in world.args(on_ray, *every, "--set", "run.ray_num_cpus=2",
                                                                 "--engine", "ray", "--json")])
    assert result.exit_code == 0, result.output
    assert '"engine": "ray"' in result.stdout
    assert [r["stage"] for r in json.loads(result.stdout)["stages"]] == list(stage_names())
    local_files, ray_files = data_files(local), data_files(on_ray)
    assert set(local_files) == set(ray_files)
    assert [name for name in local_files if local_files[name] != ray_files[name]] == []
