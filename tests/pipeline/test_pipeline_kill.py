"""`kill -9` inside each stage of `sanitize run`, then the same command again: the run ends identical to one
that was never interrupted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import data_files

KILLER = Path(__file__).with_name("kill_after.py")
# Where to kill: the COUNT-th file matching PATTERN of each stage (4 shards; 5 clusterings).
KILL_POINTS = {
    "embed": ("*/stages/embed/_done/*", 2),
    "classify": ("*/stages/classify/violence/*.parquet", 2),
    "dedup": ("*/stages/dedup/work/clustering_002.done", 1),
    "audit": ("*/audit/report.*", 1),
    "export": ("*/export/_done/*", 2),
}


def sanitize(args: list[str], *, kill_at: tuple[str, int] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    prefix = [sys.executable, str(KILLER), kill_at[0], str(kill_at[1]), "--"] if kill_at else \
        [sys.executable, "-m", "sanitize_cli"]
    return subprocess.run(prefix + [str(a) for a in args], capture_output=True, text=True, env=env)


@pytest.fixture(scope="module")
def uninterrupted(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "run"
    result = sanitize(world.args(out))
    assert result.returncode == 0, result.stderr
    return data_files(out)


@pytest.mark.parametrize("stage", list(KILL_POINTS))
def test_kill_9_inside_a_stage_then_rerun_gives_identical_output(world, uninterrupted, tmp_path, stage):
    out = tmp_path / "run"
    killed = sanitize(world.args(out), kill_at=KILL_POINTS[stage])
    assert killed.returncode == -9, f"not killed inside {stage}: {killed.stderr[-500:]}"
    assert data_files(out) != uninterrupted  # it stopped before the end
    rerun = sanitize(world.args(out))
    assert rerun.returncode == 0, rerun.stderr
    assert data_files(out) == uninterrupted
