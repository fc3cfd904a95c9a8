"""Incremental dedup: a new batch against a kept index, checked against brute force and against the full dedup."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from sanitize.dedup.incremental import DedupIndex, find_duplicates_since
from sanitize.dedup.sharded import find_duplicates_sharded
from sanitize.dedup.shards import ArrayShards
from sanitize.errors import DataError
from sanitize.testing.synthetic import clip_like
from sanitize_cli.main import cli

THRESHOLD = 0.9


@pytest.fixture(scope="module")
def data():
    x = clip_like(6000, 64, rank=16, dup_fraction=0.2, seed=3).x.astype(np.float32)
    x[4005] = x[7]  # a new row that is an exact copy of an earlier row
    x[4006] = x[4009]  # an exact copy within the new batch
    return x


def _brute_pairs(x: np.ndarray, n_old: int) -> set[tuple[int, int]]:
    """Every pair (a < b) with a new row in it and cosine >= THRESHOLD, in float64."""
    u = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    sims = u[n_old:] @ u.T
    out = set()
    for i, j in zip(*np.nonzero(sims >= THRESHOLD), strict=True):
        a, b = sorted((int(j), n_old + int(i)))
        if a != b:
            out.add((a, b))
    return out


def _pairs(result) -> set[tuple[int, int]]:
    return set(zip(result.pairs["a"].to_pylist(), result.pairs["b"].to_pylist(), strict=True))


def test_one_cluster_gives_the_exhaustive_answer_and_the_full_runs_decisions(data, tmp_path):
    # With one cluster per clustering the search is exhaustive: the pairs are exactly brute force's, and the new
    # rows' decisions are exactly those a full dedup of earlier + new rows makes.
    old = find_duplicates_sharded(ArrayShards(data[:4000], 500), tmp_path / "w1", threshold=THRESHOLD,
                                  n_clusterings=1, n_clusters=1, index_dir=tmp_path / "index")
    assert old.stats["pairs"] > 0
    index = DedupIndex.open(tmp_path / "index")
    assert (index.rows, index.dim, index.n_clusterings, index.n_clusters) == (4000, 64, 1, 1)
    new = find_duplicates_since(ArrayShards(data[4000:], 300), index, tmp_path / "w2", threshold=THRESHOLD)
    assert _pairs(new) == _brute_pairs(data, 4000)
    assert new.stats["recall"]["recall"] == 1.0
    # Small blocks make the one cluster "giant": its earlier rows are split between tasks. Same pairs.
    split = find_duplicates_since(ArrayShards(data[4000:], 300), index, tmp_path / "w4", threshold=THRESHOLD,
                                  block_rows=256)
    assert split.pairs.equals(new.pairs) and split.nodes.equals(new.nodes)
    full = find_duplicates_sharded(ArrayShards(data, 500), tmp_path / "w3", threshold=THRESHOLD, n_clusterings=1,
                                   n_clusters=1)
    mine, theirs = new.rows_table(0, 2000), full.rows_table(4000, 6000)
    assert mine["keep"].to_pylist() == theirs["keep"].to_pylist()
    keep = np.array(mine["keep"].to_pylist())
    assert 0 < keep.sum() < 2000
    dup = mine["duplicate_of"].to_pylist()
    assert dup[5] == 7 and not keep[5]  # the exact copy of an earlier row goes, as a duplicate of that row
    assert keep[6] and dup[9] is not None  # of two equal new rows one stays


def test_clusterings_find_the_pairs_and_report_their_recall(data, tmp_path):
    find_duplicates_sharded(ArrayShards(data[:4000], 500), tmp_path / "w1", threshold=THRESHOLD, n_clusterings=3,
                            n_clusters=20, index_dir=tmp_path / "index")
    index = DedupIndex.open(tmp_path / "index")
    new = find_duplicates_since(ArrayShards(data[4000:], 300), index, tmp_path / "w2", threshold=THRESHOLD)
    truth, found = _brute_pairs(data, 4000), _pairs(new)
    recall = len(truth & found) / len(truth)
    assert recall >= 0.99, recall  # measured 0.9998
    assert len(found - truth) <= 0.001 * len(truth)  # only float32-vs-float64 ties at the threshold
    reported = new.stats["recall"]
    assert reported["ci_low"] - 0.01 <= recall <= reported["ci_high"] + 0.01, (recall, reported)
    assert new.stats["pairs_with_earlier_rows"] == sum(a < 4000 for a, _ in found)
    # Every new row with an earlier near-duplicate is removed; earlier rows are not in the result.
    table = new.rows_table(0, 2000)
    with_earlier = {b - 4000 for a, b in found if a < 4000}
    keep = table["keep"].to_pylist()
    assert with_earlier and not any(keep[i] for i in with_earlier)
    assert new.nodes["id"].to_numpy().min() >= 4000
    again = find_duplicates_since(ArrayShards(data[4000:], 300), index, tmp_path / "w3", threshold=THRESHOLD)
    assert again.pairs.equals(new.pairs) and again.nodes.equals(new.nodes)


def _cli(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_cli_keep_index_then_since(data, tmp_path):
    np.save(tmp_path / "old.npy", data[:4000].astype(np.float16))
    np.save(tmp_path / "new.npy", data[4000:].astype(np.float16))
    first = _cli("dedup", tmp_path / "old.npy", "--out", tmp_path / "o1", "--keep-index", "--threshold", THRESHOLD,
                 "--json")
    assert first.exit_code == 0, first.output
    assert (tmp_path / "o1" / "index" / "index.json").is_file() and not (tmp_path / "o1" / "work").exists()
    second = _cli("dedup", tmp_path / "new.npy", "--out", tmp_path / "o2", "--since", tmp_path / "o1",
                  "--threshold", THRESHOLD, "--json")
    assert second.exit_code == 0, second.output
    stats = json.loads(second.stdout)
    assert stats["rows_in"] == 2000 and stats["index_rows"] == 4000 and stats["pairs_with_earlier_rows"] > 0
    decisions = pq.read_table(tmp_path / "o2" / "decisions.parquet").to_pylist()
    assert len(decisions) == 2000
    assert decisions[5]["duplicate_of"] == "7" and decisions[5]["reason"] == "duplicate_of:7:1"
    assert pq.read_table(tmp_path / "o2" / "pairs.parquet").num_rows == stats["pairs"]
    before = (tmp_path / "o2" / "decisions.parquet").read_bytes()
    assert _cli("dedup", tmp_path / "new.npy", "--out", tmp_path / "o2", "--since", tmp_path / "o1",
                "--threshold", THRESHOLD).exit_code == 0
    assert (tmp_path / "o2" / "decisions.parquet").read_bytes() == before


def test_cli_since_refuses_bad_input_in_one_line(data, tmp_path):
    np.save(tmp_path / "old.npy", data[:1000])
    np.save(tmp_path / "wide.npy", np.random.default_rng(0).normal(size=(300, 32)).astype(np.float32))
    assert _cli("dedup", tmp_path / "old.npy", "--out", tmp_path / "o1", "--keep-index").exit_code == 0
    assert _cli("dedup", tmp_path / "old.npy", "--out", tmp_path / "plain").exit_code == 0
    cases = [
        (("dedup", tmp_path / "wide.npy", "--out", tmp_path / "x1", "--since", tmp_path / "o1"), 1, "dimension 32"),
        (("dedup", tmp_path / "old.npy", "--out", tmp_path / "x2", "--since", tmp_path / "plain"), 1,
         "no dedup index"),
        (("dedup", tmp_path / "old.npy", "--out", tmp_path / "x3", "--since", tmp_path / "o1", "--keep-index"), 2,
         "keep_index with since"),
    ]
    for args, code, words in cases:
        result = _cli(*args)
        assert result.exit_code == code, (args, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and words in lines[0], result.output


def test_index_uids_are_read_one_row_group_at_a_time(data, tmp_path, monkeypatch):
    """`DedupIndex.uids` gives the uids of any earlier rows in the order asked, reading only the row groups (one per
    earlier shard) that hold them; a row beyond the index is refused."""
    uids = [f"u{i:05d}" for i in range(4000)]
    find_duplicates_sharded(ArrayShards(data[:4000], 500, uids=uids), tmp_path / "work", threshold=THRESHOLD,
                            n_clusterings=1, n_clusters=4, index_dir=tmp_path / "index")
    index = DedupIndex.open(tmp_path / "index")
    assert pq.ParquetFile(tmp_path / "index" / "uids.parquet").metadata.num_row_groups == 8
    read = []
    real = pq.ParquetFile.read_row_group
    monkeypatch.setattr(pq.ParquetFile, "read_row_group",
                        lambda self, g, *args, **kwargs: read.append(g) or real(self, g, *args, **kwargs))
    ids = np.array([3999, 7, 1200, 7, 501, 1999, 0])
    assert index.uids(ids).to_pylist() == [uids[i] for i in ids]
    assert sorted(read) == [0, 1, 2, 3, 7]
    assert index.uids(np.array([], np.int64)).to_pylist() == []
    with pytest.raises(DataError, match="holds 4000 rows"):
        index.uids(np.array([4000]))
