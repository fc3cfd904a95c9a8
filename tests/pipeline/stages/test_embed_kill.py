"""`kill -9` during `sanitize embed`, then a rerun: the run folder ends byte-identical to an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sanitize.demo.sample import make_sample


def embed_cmd(manifest: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "sanitize_cli", "embed", str(manifest), "--out", str(out),
            "--model", "sanitize-demo-clip", "--pretrained", "none", "--workers", "0", "--batch-size", "16",
            "--json"]


def data_files(run: Path) -> dict[str, bytes]:
    skip = {"stats.json", "run.json"}  # stats hold timings; run.json holds the same config either way
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.is_file() and p.name not in skip and not p.name.startswith(".")}


def test_kill_9_then_rerun_gives_identical_output(tmp_path):
    info = make_sample(tmp_path / "sample", n_rows=200, seed=1, n_shards=4)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    subprocess.run(embed_cmd(info.manifest, tmp_path / "whole"), check=True, capture_output=True, env=env)

    victim = subprocess.Popen(embed_cmd(info.manifest, tmp_path / "killed"), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=env)
    first_marker = tmp_path / "killed" / "stages" / "embed" / "_done" / "00000"
    deadline = time.monotonic() + 120
    while not first_marker.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert first_marker.exists()
    assert not (tmp_path / "killed" / "stages" / "embed" / "_done" / "00003").exists(), "killed too late to test"

    rerun = subprocess.run(embed_cmd(info.manifest, tmp_path / "killed"), capture_output=True, text=True, env=env)
    assert rerun.returncode == 0, rerun.stderr
    assert data_files(tmp_path / "killed") == data_files(tmp_path / "whole")
