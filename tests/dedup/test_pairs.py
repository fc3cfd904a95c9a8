from __future__ import annotations

import numpy as np
import pytest

from sanitize.dedup.pairs import PairUnion, confirm_pairs, within_cluster_candidates
from sanitize.dedup.run import EXACT
from sanitize.dedup.vectors import checked_unit_rows

from .helpers import brute_force_pairs


def _same_cluster_truth(truth, labels, rows):
    cluster = dict(zip(rows.tolist(), labels.tolist(), strict=True))
    return {(a, b) for a, b in truth if a in cluster and b in cluster and cluster[a] == cluster[b]}


@pytest.mark.parametrize("block_rows", [4096, 64, 37])
def test_blockwise_search_finds_exactly_the_same_cluster_pairs(giant_set, block_rows):
    data, truth = giant_set
    x = checked_unit_rows(data.x)
    rng = np.random.default_rng(0)
    # One cluster holds 30% of the rows: blocking has to cover it in many block pairs.
    labels = np.where(rng.random(len(data.x)) < 0.3, 0, rng.integers(1, 40, len(data.x))).astype(np.int32)
    rows = np.arange(len(data.x))
    a, b = within_cluster_candidates(x, labels, 0.95, block_rows=block_rows)
    assert np.all(a < b)
    a, b, cos = confirm_pairs(x, a, b, 0.95)
    assert np.all(cos >= 0.95)
    found = set(zip(a.tolist(), b.tolist(), strict=True))
    assert len(found) == len(a)
    assert found == _same_cluster_truth(truth, labels, rows)


def test_subset_of_rows_maps_back_to_global_ids(small_set):
    data, _ = small_set
    x = checked_unit_rows(data.x)
    rows = np.arange(1, len(data.x), 2)
    labels = np.zeros(len(rows), dtype=np.int32)
    a, b = within_cluster_candidates(x, labels, 0.95, rows=rows, block_rows=500)
    a, b, _ = confirm_pairs(x, a, b, 0.95)
    truth = brute_force_pairs(data.x[rows], 0.95)
    assert set(zip(a.tolist(), b.tolist(), strict=True)) == {(rows[i], rows[j]) for i, j in truth}


def test_no_pairs_gives_empty_int64_arrays():
    x = np.eye(5, dtype=np.float32)
    a, b = within_cluster_candidates(x, np.zeros(5, dtype=np.int32), 0.5)
    assert a.dtype == np.int64 and len(a) == 0 and len(b) == 0


def test_pair_keys_refuse_a_row_count_they_cannot_index():
    from sanitize.dedup.pairs import MAX_KEYED_ROWS, pair_keys
    from sanitize.errors import ConfigError

    last = MAX_KEYED_ROWS - 1
    key = pair_keys(np.array([last - 1]), np.array([last]), MAX_KEYED_ROWS)
    assert key[0] == (last - 1) * MAX_KEYED_ROWS + last and key[0] > 0  # the largest key still fits
    with pytest.raises(ConfigError, match="more than the .* that one int64 pair key can index"):
        pair_keys(np.array([0]), np.array([1]), MAX_KEYED_ROWS + 1)


def _near_copies(n: int, d: int = 8, seed: int = 0) -> np.ndarray:
    """n unit rows all within cosine 0.999 of each other."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(d)
    x = base + 0.01 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("block_rows", [1, 2, 4096])
def test_every_cluster_of_two_or_more_rows_is_searched_and_no_pair_crosses_clusters(block_rows):
    """Six rows, every pair a near-duplicate, in clusters {0, 1}, {2, 3}, {4} and {5, 6}: the candidates are the
    pairs inside each cluster, first rows included, and none across."""
    x = _near_copies(7)
    labels = np.array([0, 0, 1, 1, 2, 3, 3], dtype=np.int32)
    a, b = within_cluster_candidates(x, labels, 0.95, block_rows=block_rows)
    assert sorted(zip(a.tolist(), b.tolist(), strict=True)) == [(0, 1), (2, 3), (5, 6)]


def test_singleton_clusters_give_no_candidates():
    a, b = within_cluster_candidates(_near_copies(4), np.arange(4, dtype=np.int32), 0.5)
    assert a.dtype == np.int64 and b.dtype == np.int64 and len(a) == 0 and len(b) == 0


def test_candidates_reach_below_the_threshold_and_confirmation_keeps_a_pair_at_it():
    """A pair whose cosine is the threshold is a candidate (the cut lies below the threshold, not above), and a
    pair whose cosine is exactly the threshold is confirmed (>=)."""
    x = np.array([[1.0, 0.0], [0.95005, np.sqrt(1 - 0.95005**2)]], np.float32)
    a, b = within_cluster_candidates(x, np.zeros(2, np.int32), float(x[0] @ x[1]))
    assert (a.tolist(), b.tolist()) == ([0], [1])
    y = np.array([[1.0, 0.0], [0.5, 0.75]], np.float32)  # cosine exactly 0.5 in float64
    ka, kb, cos = confirm_pairs(y, np.array([0]), np.array([1]), 0.5)
    assert (ka.tolist(), kb.tolist(), cos.tolist()) == ([0], [1], [0.5])


def test_same_cluster_pairs_counts_the_pairs_inside_each_cluster():
    from sanitize.dedup.pairs import same_cluster_pairs

    assert same_cluster_pairs(np.array([0, 1, 2, 5])) == 0 + 0 + 1 + 10
    assert same_cluster_pairs(np.array([100_000, 3])) == 100_000 * 99_999 // 2 + 3


def test_the_running_union_keeps_each_pair_once_with_its_first_source_and_that_sources_cosine():
    found = PairUnion()
    found.add(np.array([2, 2]), np.array([5, 9]), np.array([1.0, 0.999]), source=EXACT)
    found.add(np.array([1, 2, 3]), np.array([4, 9, 7]), np.array([0.97, 0.99, 0.96]), source=0)
    found.add(np.array([0, 1, 3, 10**10]), np.array([8, 4, 7, 10**10 + 1]), np.array([0.95, 0.98, 0.91, 0.96]),
              source=1)
    found.add(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0), source=2)
    assert list(zip(found.a.tolist(), found.b.tolist(), strict=True)) == [
        (0, 8), (1, 4), (2, 5), (2, 9), (3, 7), (10**10, 10**10 + 1)]
    assert found.source.tolist() == [1, 0, EXACT, EXACT, 0, 1]
    np.testing.assert_array_equal(found.cos, [0.95, 0.97, 1.0, 0.999, 0.96, 0.96])
