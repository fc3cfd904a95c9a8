from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest

from sanitize.demo.run import demo_config, scripted_labeling
from sanitize.demo.sample import make_sample
from sanitize.io.atomic import write_text
from sanitize.io.runfolder import RunFolder
from sanitize.pipeline.config import to_toml
from sanitize.pipeline.runner import run_pipeline


class World:
    """A 240-row sample in 4 shards, a labeling project with both demo classifiers, and a config file."""

    def __init__(self, root: Path):
        self.root = root
        info = make_sample(root / "sample", n_rows=240, seed=3, n_shards=4)
        self.manifest = info.manifest
        self.config = demo_config(root, seed=0, workers=0).replace("dedup", recall_sample=100)
        self.config_path = root / "sanitize.toml"
        write_text(self.config_path, to_toml(self.config))
        # The project is labelled once against an embedded run; every test's run reuses it.
        base = root / "base"
        run_pipeline(self.manifest, self.config.replace("run", stages=("embed",)), base)
        truth = pl.read_parquet(root / "sample" / "truth.parquet")
        scripted_labeling(root / "project", RunFolder.open(base), truth, seed=0, batch=20, audit=100)
        self.embedded = base

    def args(self, out: Path, *extra: str) -> list[str]:
        return ["run", str(self.manifest), "--config", str(self.config_path), "--out", str(out), *extra]

    def embedded_copy(self, out: Path) -> Path:
        """A run folder whose embed stage is finished (a copy of the base run), for tests of later stages."""
        shutil.copytree(self.embedded, out)
        return out


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> World:
    return World(tmp_path_factory.mktemp("pipeline"))


def data_files(run: Path) -> dict[str, bytes]:
    """Every output file of a run, by relative path; stats.json (timings) and run.json (paths) left out, and the
    report's title (the folder name) normalised."""
    out = {}
    for p in sorted(run.rglob("*")):
        if not p.is_file() or p.name in ("stats.json", "run.json") or p.name.startswith("."):
            continue
        data = p.read_bytes()
        if p.name.startswith("report."):
            data = data.replace(f"Filter audit of {run.name}".encode(), b"Filter audit of RUN")
        out[str(p.relative_to(run))] = data
    return out
