from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from sanitize.dedup import find_duplicates
from sanitize.errors import ConfigError, DataError

from .helpers import pair_set


def _recall(table, truth, upto=None):
    found = pair_set(table if upto is None else table.filter(table["clustering"].to_numpy() <= upto))
    return len(found & truth) / len(truth)


@pytest.fixture(scope="module")
def five(small_set):
    data, _ = small_set
    return find_duplicates(data.x, n_clusterings=5, n_clusters=8, seed=1, recall_sample=500)


def test_union_of_clusterings_finds_what_one_misses(small_set, five):
    _, truth = small_set
    pairs = pair_set(five.pairs)
    assert pairs <= truth  # never a false pair
    per_count = [_recall(five.pairs, truth, upto=c) for c in range(5)]
    assert per_count == sorted(per_count)
    assert per_count[0] < 0.99  # one clustering really misses pairs on this data
    assert per_count[4] >= 0.98
    assert per_count[4] > per_count[0]


def test_single_pass_equals_the_first_of_five(small_set, five):
    data, _ = small_set
    one = find_duplicates(data.x, n_clusterings=1, n_clusters=8, seed=1, recall_sample=0)
    assert pair_set(one.pairs) == pair_set(five.pairs.filter(five.pairs["clustering"].to_numpy() == 0))
    assert one.stats["recall"] is None


def test_clustering_in_a_projected_subspace(small_set):
    data, truth = small_set
    result = find_duplicates(data.x, n_clusterings=5, n_clusters=8, seed=1, clustering_dims=16, recall_sample=0)
    assert pair_set(result.pairs) <= truth
    assert _recall(result.pairs, truth) >= 0.98
    assert result.stats["seconds"]["projection"] > 0
    full = find_duplicates(data.x, n_clusterings=1, n_clusters=8, seed=1, clustering_dims=None, recall_sample=0)
    too_many = find_duplicates(data.x, n_clusterings=1, n_clusters=8, seed=1, clustering_dims=999, recall_sample=0)
    assert full.pairs.equals(too_many.pairs)  # dims >= d: no projection


def test_giant_cluster_with_small_blocks(giant_set):
    data, truth = giant_set
    result = find_duplicates(data.x, n_clusterings=3, n_clusters=4, block_rows=64, recall_sample=0)
    largest = max(info["largest_cluster_rows"] for info in result.stats["clusterings"])
    assert largest >= 0.2 * len(data.x)
    assert pair_set(result.pairs) <= truth
    assert _recall(result.pairs, truth) >= 0.97


def test_output_tables_and_stats(small_set, five):
    data, truth = small_set
    n = len(data.x)
    rows, pairs, stats = five.rows, five.pairs, five.stats
    assert rows.num_rows == n and rows.column_names == ["group_id", "keep", "duplicate_of", "cosine_to_kept"]
    assert pairs.column_names == ["a", "b", "cosine", "clustering"]
    assert (pairs["cosine"].to_numpy() >= np.float32(0.95)).all()
    keep = five.keep
    removed = np.flatnonzero(~keep)
    dup_of = rows["duplicate_of"].to_numpy(zero_copy_only=False)
    assert keep[dup_of[removed].astype(np.int64)].all()
    assert rows["duplicate_of"].null_count == int(keep.sum())
    assert stats["removed"] == len(removed) and stats["kept"] == int(keep.sum())
    assert stats["pairs"] == pairs.num_rows and sum(stats["pairs_first_found_by_clustering"]) == pairs.num_rows
    assert stats["groups"] == len(set(rows["group_id"].drop_null().to_pylist()))
    est = stats["recall"]
    assert est["sampled_rows"] == 500 and est["ci_low"] <= est["recall"] <= est["ci_high"]
    assert est["ci_low"] <= _recall(pairs, truth) + 0.02
    assert set(stats["seconds"]) >= {"check", "exact", "train", "assign", "pairs", "groups", "recall", "total"}
    json.dumps(stats)


def test_same_seed_same_decisions(small_set, five):
    data, _ = small_set
    again = find_duplicates(data.x, n_clusterings=5, n_clusters=8, seed=1, recall_sample=500)
    assert again.pairs.equals(five.pairs)
    assert again.rows.equals(five.rows)
    assert again.stats["recall"] == five.stats["recall"]
    other = find_duplicates(data.x, n_clusterings=5, n_clusters=8, seed=2, recall_sample=0)
    assert not other.pairs.equals(five.pairs)


def test_worker_count_does_not_change_the_output(small_set, five):
    data, _ = small_set
    for workers in (1, 3):
        again = find_duplicates(data.x, n_clusterings=5, n_clusters=8, seed=1, recall_sample=500, workers=workers)
        assert again.pairs.equals(five.pairs) and again.rows.equals(five.rows)


def test_resume_from_checkpoints_gives_the_same_output(small_set, tmp_path, caplog):
    data, _ = small_set
    options = dict(n_clusterings=3, n_clusters=np.int64(8), seed=7, recall_sample=0)
    first = find_duplicates(data.x, checkpoint_dir=tmp_path, **options)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"clustering_{c:03d}.{ext}" for c in range(3) for ext in ("done.json", "parquet")
    ]
    (tmp_path / "clustering_001.done.json").unlink()  # as if the run died during clustering 1
    with caplog.at_level(logging.INFO):
        second = find_duplicates(data.x, checkpoint_dir=tmp_path, **options)
    assert [info["resumed"] for info in second.stats["clusterings"]] == [True, False, True]
    assert second.pairs.equals(first.pairs) and second.rows.equals(first.rows)
    third = find_duplicates(data.x, checkpoint_dir=tmp_path, **options)  # every clustering saved: none recomputed
    assert [info["resumed"] for info in third.stats["clusterings"]] == [True, True, True]
    assert third.pairs.equals(first.pairs) and third.rows.equals(first.rows)
    with pytest.raises(ConfigError, match="different run.*threshold"):
        find_duplicates(data.x, checkpoint_dir=tmp_path, threshold=0.9, **options)


def test_exact_path_and_hashes():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x[30] = x[3]
    x[31] = x[3]
    hashes = [f"h{i}" for i in range(40)]
    hashes[20] = hashes[10]
    result = find_duplicates(x, n_clusterings=2, n_clusters=2, hashes=hashes, recall_sample=0)
    exact = result.pairs.filter(result.pairs["clustering"].to_numpy() == -1)
    assert pair_set(exact) == {(3, 30), (3, 31), (10, 20)}
    assert result.stats["distinct_rows"] == 37 and result.stats["exact_pairs"] == 3
    np.testing.assert_array_equal(np.flatnonzero(~result.keep), [20, 30, 31])


def test_keep_by_value_prefers_the_best_copy():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((30, 16)).astype(np.float32)
    x[12] = x[2] + 0.01 * rng.standard_normal(16).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    values = np.zeros(30)
    values[12] = 1.0
    high = find_duplicates(x, n_clusterings=1, n_clusters=1, keep_values=values, keep="max", recall_sample=0)
    low = find_duplicates(x, n_clusterings=1, n_clusters=1, keep_values=values, keep="min", recall_sample=0)
    assert np.flatnonzero(~high.keep).tolist() == [2] and np.flatnonzero(~low.keep).tolist() == [12]


def test_float16_memmap_input_is_read_not_written(small_set, tmp_path):
    data, _ = small_set
    path = tmp_path / "emb.npy"
    np.save(path, data.x.astype(np.float16))
    x = np.load(path, mmap_mode="r")
    result = find_duplicates(x, n_clusterings=2, n_clusters=8, recall_sample=100)
    assert result.stats["pairs"] > 0
    np.testing.assert_array_equal(np.load(path), data.x.astype(np.float16))


def test_unnormalised_input_gives_the_same_answer_with_a_warning(small_set, caplog):
    data, _ = small_set
    scaled = data.x * np.linspace(0.5, 3, len(data.x), dtype=np.float32)[:, None]
    with caplog.at_level(logging.WARNING):
        result = find_duplicates(scaled, n_clusterings=1, n_clusters=8, recall_sample=0)
    assert "normalising" in caplog.text
    plain = find_duplicates(data.x, n_clusterings=1, n_clusters=8, recall_sample=0)
    assert pair_set(result.pairs) == pair_set(plain.pairs)
    with pytest.raises(DataError, match="not unit length"):
        find_duplicates(scaled, require_normalized=True)


def _unit_rows(n=50, d=8):
    x = np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"threshold": 1.5}, "threshold must be a cosine in"),
        ({"threshold": -1.01}, "threshold must be a cosine in"),
        ({"threshold": float("nan")}, "threshold must be a cosine in"),
        ({"threshold": "0.9"}, "threshold must be a cosine in"),
        ({"n_clusterings": 0}, "n_clusterings must be an integer >= 1"),
        ({"n_clusters": 0}, "n_clusters must be a positive integer"),
        ({"clustering_dims": 0}, "clustering_dims must be a positive integer"),
        ({"n_clusters": 51}, "n_clusters=51 is more than the 50 distinct rows"),
        ({"recall_sample": -1}, "recall_sample must be"),
        ({"block_rows": 0}, "block_rows must be"),
        ({"seed": -3}, "seed must be"),
        ({"keep": "best"}, "keep must be one of"),
    ],
)
def test_bad_options(options, message):
    with pytest.raises(ConfigError, match=message):
        find_duplicates(_unit_rows(), **options)


def test_fewer_distinct_rows_than_clusters():
    x = _unit_rows()
    x[25:] = x[:25]
    with pytest.raises(ConfigError, match="n_clusters=30 is more than the 25 distinct rows"):
        find_duplicates(x, n_clusters=30)


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (lambda x: x.__setitem__(7, np.nan), DataError, "row 7 has NaN"),
        (lambda x: x.__setitem__(9, 0.0), DataError, "row 9 is all zeros"),
        (lambda x: x.__setitem__(slice(None), x[0]), DataError, "all 50 rows are identical"),
    ],
)
def test_bad_data(change, error, message):
    x = _unit_rows()
    change(x)
    with pytest.raises(error, match=message):
        find_duplicates(x)


def test_progress_reports_every_phase():
    calls = []
    find_duplicates(_unit_rows(), n_clusterings=2, n_clusters=2, recall_sample=10,
                    progress=lambda phase, done, total: calls.append((phase, done, total)))
    assert calls == [("check", 1, 1), ("exact", 1, 1), ("clustering", 1, 2), ("clustering", 2, 2), ("groups", 1, 1),
                     ("recall", 1, 1)]


def test_keep_values_must_be_one_per_row():
    with pytest.raises(DataError, match="keep_values: expected 50 values"):
        find_duplicates(_unit_rows(), keep_values=np.ones(3))
