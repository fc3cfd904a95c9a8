"""`kill -9` inside each phase of the out-of-core dedup (`sanitize dedup`), then the same command: identical files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sanitize.testing.synthetic import clip_like
from tests.pipeline.test_pipeline_kill import sanitize  # the CLI in a subprocess, killed at a file

# (pattern, count): the file after which the process is killed, one point in each phase.
PHASES = {
    "scan": ("*/work/scan/*.done", 3),
    "exact": ("*/work/exact.done", 1),
    "samples": ("*/work/samples/.done", 1),
    "projection": ("*/work/projection.npy", 1),
    "train": ("*/work/centroids_001.npy", 1),
    "assign": ("*/work/parts/part_*.done", 2),
    "pairs": ("*/work/clustering_001.done", 1),
    "groups": ("*/work/graph_rows_*/.done", 1),
    "outputs": ("*/out/pairs.parquet", 1),
}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    folder = tmp_path_factory.mktemp("src")
    x = clip_like(3000, 160, rank=16, dup_fraction=0.1, seed=1).x.astype(np.float16)
    x[2999] = x[5]  # an exact copy
    for s in range(6):  # six shards of 500 rows
        rows = slice(500 * s, 500 * (s + 1))
        pq.write_table(pa.table({"uid": [f"r{i}" for i in range(3000)][rows],
                                 "emb": pa.array(list(x[rows].astype(np.float32)), pa.list_(pa.float32(), 160)),
                                 "sha256": [f"h{i}" for i in range(3000)][rows]}), folder / f"{s:05d}.parquet")
    return folder


def _args(source: Path, out: Path) -> list[str]:
    return ["dedup", source, "--out", out, "--threshold", "0.95", "--clusterings", "3", "--clusters", "6",
            "--recall-sample", "300"]


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file() and p.name != "stats.json"}


@pytest.fixture(scope="module")
def uninterrupted(source, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "out"
    result = sanitize(_args(source, out))
    assert result.returncode == 0, result.stderr
    return _files(out)


@pytest.mark.parametrize("phase", list(PHASES))
def test_kill_9_in_each_phase_then_rerun_gives_identical_files(source, uninterrupted, tmp_path, phase):
    out = tmp_path / "out"
    killed = sanitize(_args(source, out), kill_at=PHASES[phase])
    assert killed.returncode == -9, f"not killed in {phase}: {killed.stderr[-800:]}"
    rerun = sanitize(_args(source, out))
    assert rerun.returncode == 0, rerun.stderr
    assert _files(out) == uninterrupted
    assert not (out / "work").exists()

