"""The out-of-core dedup (`find_duplicates_sharded`) gives the in-memory `find_duplicates` result, file by file."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from sanitize.dedup import find_duplicates
from sanitize.dedup.sharded import find_duplicates_sharded
from sanitize.dedup.shards import ArrayShards, NpyShards
from sanitize.errors import DataError

OPTIONS = {"threshold": 0.95, "n_clusterings": 3, "n_clusters": 8, "seed": 4, "recall_sample": 300,
           "block_rows": 64}


def _rows_equal(sharded, memory):
    for start, stop in [(0, memory.rows.num_rows), (17, 231)]:
        got = sharded.rows_table(start, stop)
        assert got.equals(memory.rows.slice(start, stop - start)), (start, stop)


def _same(sharded, memory):
    assert sharded.pairs.equals(memory.pairs)
    _rows_equal(sharded, memory)
    for key in ("rows", "distinct_rows", "pairs", "exact_pairs", "pairs_first_found_by_clustering", "groups",
                "removed", "kept", "n_clusters", "recall"):
        assert sharded.stats[key] == memory.stats[key], key


def _with_copies(x):
    x = x.copy()
    x[10] = x[3]  # byte-equal copies across shard boundaries
    x[500] = x[3]
    x[777] = x[20]
    return x


@pytest.mark.parametrize("shard_rows, part_rows, bucket_rows", [(97, 300, 64), (1000, 10**6, 10**6)])
def test_equal_to_in_memory(tmp_path, small_set, shard_rows, part_rows, bucket_rows):
    x = _with_copies(small_set[0].x.astype(np.float16))
    memory = find_duplicates(x, **OPTIONS)
    sharded = find_duplicates_sharded(ArrayShards(x, shard_rows), tmp_path / "work", part_rows=part_rows,
                                      bucket_rows=bucket_rows, **OPTIONS)
    assert memory.stats["exact_pairs"] == 3 and memory.stats["pairs"] > 100
    _same(sharded, memory)


def test_giant_cluster_block_rows_and_side_columns(tmp_path, giant_set):
    x = giant_set[0].x
    rng = np.random.default_rng(0)
    hashes = [f"h{i}" for i in range(len(x))]
    hashes[5] = hashes[2900] = "same image"
    hashes[7] = None
    width = rng.integers(0, 5, size=len(x)).astype(float)
    options = {**OPTIONS, "n_clusters": 4, "refuse_chains": True}
    memory = find_duplicates(x, hashes=hashes, keep_values=width, keep="max", **options)
    shards = ArrayShards(x, 250, hashes=hashes, keep_values=width)
    sharded = find_duplicates_sharded(shards, tmp_path / "work", part_rows=500, bucket_rows=128, keep="max",
                                      **options)
    assert max(c["largest_cluster_rows"] for c in memory.stats["clusterings"]) > 128  # block-row tasks ran
    _same(sharded, memory)


def test_npy_source_resume_and_other_run(tmp_path, small_set):
    x = small_set[0].x
    path = tmp_path / "x.npy"
    np.save(path, x)
    first = find_duplicates_sharded(NpyShards(path, 512), tmp_path / "work", **OPTIONS)
    again = find_duplicates_sharded(NpyShards(path, 512), tmp_path / "work", **OPTIONS)  # every phase reused
    assert all(c["resumed"] for c in again.stats["clusterings"])
    assert again.pairs.equals(first.pairs) and again.nodes.equals(first.nodes)
    other = find_duplicates_sharded(NpyShards(path, 512), tmp_path / "work", **{**OPTIONS, "threshold": 0.97})
    assert not any(c["resumed"] for c in other.stats["clusterings"])
    assert other.stats["pairs"] < first.stats["pairs"]


def test_bad_rows_name_the_global_row(tmp_path):
    x = np.random.default_rng(0).normal(size=(300, 16)).astype(np.float32)
    x[211] = np.nan
    with pytest.raises(DataError, match="shard 2: row 11 has NaN"):
        find_duplicates_sharded(ArrayShards(x, 100), tmp_path / "w", n_clusters=2)
    x[211] = 0
    with pytest.raises(DataError, match="shard 2: row 11 is all zeros"):
        find_duplicates_sharded(ArrayShards(x, 100), tmp_path / "w2", n_clusters=2)


def test_rows_table_defaults(tmp_path):
    x = np.random.default_rng(1).normal(size=(200, 8)).astype(np.float32)
    result = find_duplicates_sharded(ArrayShards(x, 64), tmp_path / "w", n_clusters=2, recall_sample=0)
    table = result.rows_table(0, 200)
    assert table.num_rows == 200 and table["keep"].to_pylist() == [True] * 200
    assert table.schema == pa.schema([("group_id", pa.int64()), ("keep", pa.bool_()),
                                      ("duplicate_of", pa.int64()), ("cosine_to_kept", pa.float32())])


def test_repeated_uid_across_shards_is_named(tmp_path):
    x = np.random.default_rng(2).normal(size=(300, 8)).astype(np.float32)
    uids = [f"u{i}" for i in range(300)]
    uids[250] = "u3"
    with pytest.raises(DataError, match=r"uid 'u3' is on shard 0 row 3 and shard 2 row 50"):
        find_duplicates_sharded(ArrayShards(x, 100, uids=uids), tmp_path / "w", n_clusters=2)
    uids[250] = "u250"
    find_duplicates_sharded(ArrayShards(x, 100, uids=uids), tmp_path / "w", n_clusters=2, recall_sample=0)

