"""The dedup stage and command over each kind of SOURCE: decisions by uid, pairs, resume, bad options."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from sanitize.io.embeddings import write_embedding_shard
from sanitize.io.manifest import open_manifest
from sanitize.io.runfolder import RunFolder
from sanitize.pipeline.stage import run_stage
from sanitize.pipeline.stages.dedup import DedupConfig, DedupStage, dedup_folder
from sanitize_cli.main import cli


def planted(n=600, d=32, seed=0):
    """Unit rows where row 2i+1 is a near copy of row 2i for i < 20; the rest are independent."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    for i in range(20):
        x[2 * i + 1] = x[2 * i] + 0.05 * rng.normal(size=d)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def run_with_embeddings(tmp_path):
    x = planted()
    uids = [f"u{i:04d}" for i in range(len(x))]
    quality = np.arange(len(x)) % 7  # a column to keep by
    manifest_dir = tmp_path / "in"
    manifest_dir.mkdir()
    for s, (lo, hi) in enumerate([(0, 300), (300, 600)]):
        pq.write_table(pa.table({"uid": uids[lo:hi], "caption": ["c"] * (hi - lo), "quality": quality[lo:hi]}),
                       manifest_dir / f"{s:05d}.parquet")
    run = RunFolder.create(tmp_path / "run", open_manifest(manifest_dir))
    for s, (lo, hi) in enumerate([(0, 300), (300, 600)]):
        write_embedding_shard(run.embeddings_dir, s, x[lo:hi], None, pa.table({"uid": uids[lo:hi]}))
    return run, quality


def test_run_folder_decisions_per_shard_and_keep_by(run_with_embeddings):
    run, quality = run_with_embeddings
    stage = DedupStage(DedupConfig(threshold=0.95, clusterings=3, keep_by="quality", recall_sample=200))
    stats = run_stage(stage, run).to_dict()
    assert stats["pairs"] == 20 and stats["dropped"] == {"duplicate": 20} and stats["kept"] == 580
    decisions = pq.read_table(run.shard_path("dedup", 0)).to_pylist()
    assert len(decisions) == 300 and run.is_done("dedup", 1)
    for i in range(20):
        a, b = decisions[2 * i], decisions[2 * i + 1]
        kept, removed = (a, b) if quality[2 * i] >= quality[2 * i + 1] else (b, a)
        assert kept["keep"] and not removed["keep"]
        assert removed["duplicate_of"] == kept["uid"]
        assert removed["reason"] == f"duplicate_of:{kept['uid']}:{round(removed['cosine_to_kept'], 4)}"
    pairs = pq.read_table(run.stage_dir("dedup") / "pairs.parquet")
    assert pairs.num_rows == 20 and set(pairs.column_names) == {"uid_a", "uid_b", "cosine", "clustering"}
    before = run.shard_path("dedup", 1).read_bytes()
    again = run_stage(stage, run).to_dict()
    timing = ("seconds", "peak_memory_mb", "phase_seconds", "clusterings")  # the reused result has no log
    assert {k: v for k, v in again.items() if k not in timing} == {k: v for k, v in stats.items() if k not in timing}
    assert run.shard_path("dedup", 1).read_bytes() == before  # finished stage reused


def test_npy_source_needs_out_and_writes_decisions(tmp_path):
    np.save(tmp_path / "x.npy", planted())
    needs_out = CliRunner().invoke(cli, ["dedup", str(tmp_path / "x.npy")])
    assert needs_out.exit_code == 2 and "--out is needed" in needs_out.stderr
    result = CliRunner().invoke(cli, ["dedup", str(tmp_path / "x.npy"), "--out", str(tmp_path / "o"),
                                      "--clusterings", "1", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["dropped"] == {"duplicate": 20}
    decisions = pq.read_table(tmp_path / "o" / "decisions.parquet")
    assert decisions["uid"].to_pylist()[:2] == ["0", "1"] and decisions["keep"].to_pylist()[1] is False


def test_bad_options_exit_2(tmp_path, run_with_embeddings):
    run, _ = run_with_embeddings
    runner = CliRunner()
    assert runner.invoke(cli, ["dedup", str(run.path), "--threshold", "1.5"]).exit_code == 2
    missing = runner.invoke(cli, ["dedup", str(run.path), "--keep-by", "nope"])
    assert missing.exit_code == 2 and "--keep-by column 'nope' not found" in missing.stderr


def test_parquet_source_keeps_by_its_own_column(tmp_path):
    x = planted(n=200)
    quality = np.arange(200)[::-1].copy()  # later rows are worse, so the first of each pair is kept
    quality[1] = 1000  # except pair (0, 1): row 1 wins
    table = pa.table({"uid": [f"p{i}" for i in range(200)], "quality": quality,
                      "emb": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), x.shape[1])})
    pq.write_table(table, tmp_path / "emb.parquet")
    dedup_folder(tmp_path / "emb.parquet", tmp_path / "o", DedupConfig(keep_by="quality", clusterings=2,
                                                                         recall_sample=50))
    decisions = pq.read_table(tmp_path / "o" / "decisions.parquet").to_pylist()
    assert decisions[0]["keep"] is False and decisions[0]["duplicate_of"] == "p1"
    assert decisions[2]["keep"] is True and decisions[3]["duplicate_of"] == "p2"


def _run_of(root, x, uids):
    """A run folder (one manifest shard, one embedding shard) holding rows `x` with `uids`."""
    root.mkdir(parents=True)
    pq.write_table(pa.table({"uid": uids, "caption": ["c"] * len(uids)}), root / "in.parquet")
    run = RunFolder.create(root / "run", open_manifest(root / "in.parquet"))
    write_embedding_shard(run.embeddings_dir, 0, x, None, pa.table({"uid": uids}))
    return run


def test_a_run_deduplicated_since_an_earlier_run(tmp_path):
    # dedup.keep_index keeps the first run's clusterings in stages/dedup/index; dedup.since = that run folder
    # deduplicates a second run's rows against it: a copy of an earlier row is removed as a duplicate of that
    # row's uid, the second run's own copies as usual, and the first run is untouched.
    x = planted(800, seed=3)
    first = _run_of(tmp_path / "a", x[:600], [f"a{i:04d}" for i in range(600)])
    stats = run_stage(DedupStage(DedupConfig(keep_index=True, recall_sample=200)), first).to_dict()
    assert stats["dropped"] == {"duplicate": 20} and (first.stage_dir("dedup") / "index" / "index.json").is_file()
    before = first.shard_path("dedup", 0).read_bytes()
    new = x[600:].copy()
    new[0] = x[10]  # an exact copy of an earlier row
    new[1] = x[12] + 0.0  # and another
    new[5] = new[4] + 0.01 * np.random.default_rng(0).normal(size=x.shape[1]).astype(np.float32)  # a new pair
    second = _run_of(tmp_path / "b", new / np.linalg.norm(new, axis=1, keepdims=True), [f"b{i:04d}" for i in
                                                                                       range(200)])
    result = CliRunner().invoke(cli, ["dedup", str(second.path), "--since", str(first.path), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["pairs_with_earlier_rows"] >= 2
    rows = {r["uid"]: r for r in pq.read_table(second.shard_path("dedup", 0)).to_pylist()}
    assert rows["b0000"]["duplicate_of"] in ("a0010", "a0011") and not rows["b0000"]["keep"]
    assert rows["b0001"]["duplicate_of"] in ("a0012", "a0013") and not rows["b0001"]["keep"]
    assert rows["b0004"]["keep"] and rows["b0005"]["duplicate_of"] == "b0004"
    assert sum(not r["keep"] for r in rows.values()) == 3
    assert first.shard_path("dedup", 0).read_bytes() == before
