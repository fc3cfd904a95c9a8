"""`sanitize run --engine ray` on a local Ray (2 CPUs) writes the same files as the local engine."""

from __future__ import annotations

import os

import pytest
from click.testing import CliRunner

from sanitize_cli import commands  # noqa: F401
from sanitize_cli.main import cli

from .conftest import data_files

if os.environ.get("CI") == "true":
    import ray  # noqa: F401  (CI installs the ray extra: fail loudly when it is missing)
else:
    pytest.importorskip("ray")


def test_ray_engine_run_equals_local_run(world, tmp_path):
    local = world.embedded_copy(tmp_path / "local")
    result = CliRunner().invoke(cli, [str(a) for a in world.args(local)])
    assert result.exit_code == 0, result.output
    on_ray = world.embedded_copy(tmp_path / "ray")
    result = CliRunner().invoke(cli, [str(a) for a in world.args(on_ray, "--set", "run.ray_num_cpus=2",
                                                                 "--engine", "ray", "--json")])
    assert result.exit_code == 0, result.output
    assert '"engine": "ray"' in result.stdout
    local_files, ray_files = data_files(local), data_files(on_ray)
    assert set(local_files) == set(ray_files)
    assert [name for name in local_files if local_files[name] != ray_files[name]] == []
