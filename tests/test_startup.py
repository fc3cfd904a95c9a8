"""Startup of the command line: what a fresh interpreter imports for `--help`, and for commands that need no CLIP
model. Each check runs the CLI in a subprocess and reads its `sys.modules` afterwards (the modules, not the time,
so the checks do not depend on the machine's speed)."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from sanitize.demo.sample import make_sample
from sanitize.io.manifest import open_manifest
from sanitize.io.runfolder import RunFolder
from sanitize_cli.commands import COMMANDS, LABEL_COMMANDS

# Runs `sanitize ARGS` (argv[2:]) and writes its exit code and the modules it imported to the file argv[1].
PROBE = """
import json, sys
from sanitize_cli.main import main
report, sys.argv = sys.argv[1], ["sanitize", *sys.argv[2:]]
try:
    main()
    code = 0
except SystemExit as exc:
    code = exc.code
with open(report, "w") as f:
    json.dump({"code": code, "modules": sorted(sys.modules)}, f)
"""

CLIP = {"torch", "open_clip"}
HEAVY = CLIP | {"sklearn", "scipy", "faiss", "polars"}  # what made every `--help` take seconds
_reports = itertools.count()


def run_cli(tmp_path: Path, *args: str) -> tuple[set[str], str]:
    """Run `sanitize ARGS` in a fresh interpreter; returns (the modules it imported, its stdout). It must exit 0."""
    report = tmp_path / f"modules-{next(_reports)}.json"
    proc = subprocess.run([sys.executable, "-c", PROBE, str(report), *args], capture_output=True, text=True,
                          timeout=300)
    result = json.loads(report.read_text())
    assert result["code"] in (0, None), proc.stderr
    return set(result["modules"]), proc.stdout


def command_modules(modules: set[str]) -> set[str]:
    """The modules of cli/ that define commands, among `modules`."""
    shared = {"sanitize_cli.main", "sanitize_cli.commands", "sanitize_cli.options"}
    return {m for m in modules if m.startswith("sanitize_cli.")} - shared


def test_top_level_help_lists_every_command_without_importing_one(tmp_path):
    modules, out = run_cli(tmp_path, "--help")
    assert command_modules(modules) == set()
    assert "numpy" not in modules and not HEAVY & modules
    for name, (_, first) in COMMANDS.items():
        assert re.search(rf"^  {name} +{re.escape(first[:30])}", out, re.MULTILINE), (name, out)


def test_label_help_lists_every_label_command_without_importing_them(tmp_path):
    modules, out = run_cli(tmp_path, "label", "--help")
    assert command_modules(modules) == {"sanitize_cli.label_cmds"}
    assert not HEAVY & modules
    for name, (_, first) in LABEL_COMMANDS.items():
        assert re.search(rf"^  {name} +{re.escape(first[:20])}", out, re.MULTILINE), (name, out)


@pytest.mark.parametrize("command", [
    "dedup", "audit", "export", "inspect", "classify", "run", "init", "embed", "demo",
    "label status", "label init", "label add", "label import", "label next", "label audit-sample", "label serve",
])
def test_help_imports_no_heavy_library(tmp_path, command):
    modules, out = run_cli(tmp_path, *command.split(), "--help")
    assert out.startswith(f"Usage: sanitize {command} ")
    assert not HEAVY & modules


def test_dedup_of_a_npy_file_runs_without_torch(tmp_path):
    x = np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32)
    x[1] = x[0]
    np.save(tmp_path / "x.npy", x)
    modules, out = run_cli(tmp_path, "dedup", str(tmp_path / "x.npy"), "--out", str(tmp_path / "out"), "--json")
    stats = json.loads(out)
    assert stats["rows_in"] == 40 and stats["dropped"]["duplicate"] >= 1
    assert (tmp_path / "out" / "decisions.parquet").is_file()
    assert not CLIP & modules


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory) -> tuple[Path, Path]:
    """(manifest, run folder) of a small generated sample; the run has no embeddings, only a filter stage that
    removes every tenth row."""
    root = tmp_path_factory.mktemp("startup")
    sample = make_sample(root / "sample", n_rows=100, seed=0)
    manifest = open_manifest(sample.manifest)
    run = RunFolder.create(root / "run", manifest)
    run.begin_stage("every_tenth", {})
    for index in range(len(manifest.files)):
        uids = manifest.read_shard(index).table["uid"]
        run.write_shard("every_tenth", index, pa.table({
            "uid": uids, "keep": pa.array([row % 10 != 0 for row in range(len(uids))]),
            "reason": pa.nulls(len(uids), pa.string())}))
    return Path(sample.manifest), run.path


@pytest.mark.parametrize("command", [
    "audit {run} --attribute caption_gender",
    "export {run}",
    "inspect {manifest}",
    "run {manifest} --out {tmp}/planned --dry-run",
    "init {tmp}/sanitize.toml",
])
def test_commands_without_a_clip_model_run_without_torch(tmp_path, sample_run, command):
    manifest, run = sample_run
    args = command.format(run=run, manifest=manifest, tmp=tmp_path).split()
    modules, _ = run_cli(tmp_path, *args)
    assert not CLIP & modules


def test_label_init_and_status_run_without_torch(tmp_path):
    init_modules, _ = run_cli(tmp_path, "label", "init", str(tmp_path / "project"))
    modules, out = run_cli(tmp_path, "label", "status", "--project", str(tmp_path / "project"))
    assert "classifier: none for the current labels" in out
    assert not CLIP & (init_modules | modules)
