"""The decontaminate stage: rows that repeat an evaluation set's items are dropped (exhaustive search, equal to
brute force), the reference items found are listed, and bad reference sets are one-line errors."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sanitize.errors import ConfigError, DataError
from sanitize.io.embeddings import write_embedding_shard
from sanitize.io.manifest import open_manifest
from sanitize.io.runfolder import RunFolder
from sanitize.pipeline.stage import run_stage
from sanitize.pipeline.stages.decontaminate import DecontaminateConfig, DecontaminateStage

D = 24


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_run(root, x):
    uids = [f"r{i:03d}" for i in range(len(x))]
    (root / "in").mkdir(parents=True)
    halves = [(0, len(x) // 2), (len(x) // 2, len(x))]
    for s, (lo, hi) in enumerate(halves):
        pq.write_table(pa.table({"uid": uids[lo:hi], "caption": ["c"] * (hi - lo)}), root / "in" / f"{s:05d}.parquet")
    run = RunFolder.create(root / "run", open_manifest(root / "in"))
    for s, (lo, hi) in enumerate(halves):
        write_embedding_shard(run.embeddings_dir, s, x[lo:hi], None, pa.table({"uid": uids[lo:hi]}))
    return run


def make_reference(folder, x, prefix="e"):
    write_embedding_shard(folder, 0, x, None, pa.table({"uid": [f"{prefix}{i}" for i in range(len(x))]}))
    return folder


@pytest.fixture
def world(tmp_path):
    rng = np.random.default_rng(1)
    corpus = unit(rng.normal(size=(200, D)))
    ref = unit(rng.normal(size=(30, D)))
    ref[:10] = unit(corpus[[5, 17, 17, 40, 99, 100, 120, 150, 151, 199]] + 0.02 * rng.normal(size=(10, D)))
    run = make_run(tmp_path, corpus)
    return run, make_reference(tmp_path / "evalset", ref), corpus, ref


def brute_force(corpus, ref, threshold):
    c = corpus.astype(np.float16).astype(np.float32)
    r = ref.astype(np.float16).astype(np.float32)
    return {(int(i), int(j)) for i, j in zip(*np.nonzero(c @ r.T >= threshold), strict=True)}


def test_drops_exactly_the_rows_that_repeat_a_reference_item(world):
    run, ref_dir, corpus, ref = world
    result = run_stage(DecontaminateStage(DecontaminateConfig(against=(str(ref_dir),), threshold=0.95)), run)
    truth = brute_force(corpus, ref, 0.95)
    assert len(truth) >= 10
    rows = pa.concat_tables([t for _, t in run.read_stage("decontaminate")]).to_pylist()
    dropped = {int(r["uid"][1:]) for r in rows if not r["keep"]}
    assert dropped == {i for i, _ in truth}
    assert result.counts.dropped == {"contaminated": len(dropped)}
    for r in rows:
        if not r["keep"]:
            assert r["reason"] == f"contaminated:evalset:{r['ref_uid']}:{r['cosine']:.4f}" and r["cosine"] >= 0.95
    matches = pq.read_table(run.stage_dir("decontaminate") / "reference_matches.parquet").to_pylist()
    assert {m["ref_uid"] for m in matches} == {f"e{j}" for _, j in truth}
    assert result.details["references"] == {"evalset": {"items": 30, "items_found_in_corpus": len(matches)}}


def test_bad_reference_sets(world, tmp_path):
    run, ref_dir, _, _ = world
    wide = make_reference(tmp_path / "wide", unit(np.ones((3, D + 8))))
    with pytest.raises(DataError, match=r"reference embeddings are 32-d, this run's are 24-d"):
        run_stage(DecontaminateStage(DecontaminateConfig(against=(str(wide),))), run)
    (tmp_path / "again").mkdir()
    twin = make_reference(tmp_path / "again" / "evalset", unit(np.ones((3, D))))
    with pytest.raises(ConfigError, match="two reference sets are named 'evalset'"):
        run_stage(DecontaminateStage(DecontaminateConfig(against=(str(ref_dir), str(twin)))), run)
    with pytest.raises(ConfigError, match="decontaminate needs reference sets"):
        run_stage(DecontaminateStage(), run)
    assert DecontaminateStage().skip_reason() == "no [decontaminate] against sets"


def test_dedup_against_spelling_on_a_npy_and_on_a_run(world, tmp_path):
    # `sanitize dedup SOURCE --against REF` is the same search as the stage: on a .npy into --out, on a run folder
    # into the run; both drop exactly brute force's rows and list the reference items found.
    import json

    from click.testing import CliRunner

    from sanitize_cli.main import cli

    run, ref_dir, corpus, ref = world
    expected = brute_force(corpus, ref, 0.95)
    np.save(tmp_path / "corpus.npy", corpus.astype(np.float16))
    result = CliRunner().invoke(cli, ["dedup", str(tmp_path / "corpus.npy"), "--out", str(tmp_path / "o"),
                                      "--against", str(ref_dir), "--threshold", "0.95", "--json"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    decisions = pq.read_table(tmp_path / "o" / "decisions.parquet").to_pylist()
    assert {i for i, d in enumerate(decisions) if not d["keep"]} == {i for i, _ in expected}
    assert stats["dropped"] == {"contaminated": len({i for i, _ in expected})}
    assert stats["references"]["evalset"]["items_found_in_corpus"] == len({j for _, j in expected})
    found = pq.read_table(tmp_path / "o" / "reference_matches.parquet")
    assert sorted(found["ref_uid"].to_pylist()) == sorted({f"e{j}" for _, j in expected})
    on_run = CliRunner().invoke(cli, ["dedup", str(run.path), "--against", str(ref_dir), "--threshold", "0.95"])
    assert on_run.exit_code == 0, on_run.output
    assert f"{len({j for _, j in expected})} of its 30 items" in on_run.output
    bad = CliRunner().invoke(cli, ["dedup", str(tmp_path / "corpus.npy"), "--out", str(tmp_path / "x"),
                                   "--against", str(ref_dir), "--keep-index"])
    assert bad.exit_code == 2 and len(bad.output.strip().splitlines()) == 1, bad.output
