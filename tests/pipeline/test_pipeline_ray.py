"""`sanitize run --engine ray` on a local Ray (2 CPUs) writes the same files as the local engine."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pytest
from click.testing import CliRunner

from sanitize.io.embeddings import open_embeddings, write_embedding_shard
from sanitize.pipeline.registry import stage_names
from sanitize_cli.main import cli

from .conftest import data_files

if os.environ.get("CI") == "true":
    import ray  # noqa: F401  (CI installs the ray extra: fail loudly when it is missing)
else:
    pytest.importorskip("ray")


def evaluation_set(world, folder):
    """A reference set: 20 of the sample's own embedded rows (so decontamination finds them)."""
    shard = open_embeddings(world.embedded).read_shard(0)
    write_embedding_shard(folder, 0, shard.img_emb[:20], None, pa.table({"uid": shard.uids[:20].tolist()}))
    return folder


def test_ray_engine_run_equals_local_run(world, tmp_path):
    # Every registered stage, the opt-in ones too (align by the top fraction: its exact cut is engine-free;
    # hashlist with a list that matches nothing).
    against = json.dumps([str(evaluation_set(world, tmp_path / "evalset"))])
    hashes = tmp_path / "known_md5.txt"
    hashes.write_text("0" * 32 + "\n")  # an md5 list that matches nothing: the copied run's embeddings stay valid
    every = ["--set", f"run.stages={json.dumps(list(stage_names()))}", "--set", 'align.by="fraction"',
             "--set", f"decontaminate.against={against}", "--set", f"hashlist.lists={json.dumps([str(hashes)])}"]
    local = world.embedded_copy(tmp_path / "local")
    result = CliRunner().invoke(cli, [str(a) for a in world.args(local, *every)])
    assert result.exit_code == 0, result.output
    on_ray = world.embedded_copy(tmp_path / "ray")
    result = CliRunner().invoke(cli, [str(a) for a in world.args(on_ray, *every, "--set", "run.ray_num_cpus=2",
                                                                 "--engine", "ray", "--json")])
    assert result.exit_code == 0, result.output
    assert '"engine": "ray"' in result.stdout
    rows = {r["stage"]: r for r in json.loads(result.stdout)["stages"]}
    assert list(rows) == list(stage_names()) and rows["decontaminate"]["dropped"]["contaminated"] >= 20
    local_files, ray_files = data_files(local), data_files(on_ray)
    assert set(local_files) == set(ray_files)
    assert [name for name in local_files if local_files[name] != ray_files[name]] == []
