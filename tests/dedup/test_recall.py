from __future__ import annotations

import math

import numpy as np
import pytest

from sanitize.dedup.pairs import pair_keys
from sanitize.dedup.recall import recall_from_sample, sampled_pair_recall, true_pairs_of_sample
from sanitize.errors import ConfigError
from sanitize.intervals import wilson_interval


def test_recall_interval_is_wilson_on_effective_trials_with_exact_ends():
    one_pair_per_row = np.arange(10)
    all_found = recall_from_sample(one_pair_per_row, np.ones(10, bool), 10)
    assert all_found.recall == 1.0 and all_found.effective_trials == 10
    assert math.isclose(all_found.ci_low, 0.7225, abs_tol=1e-4) and all_found.ci_high == 1.0
    none_found = recall_from_sample(one_pair_per_row, np.zeros(10, bool), 10)
    assert none_found.ci_low == 0.0 and math.isclose(none_found.ci_high, 0.2775, abs_tol=1e-4)
    half = recall_from_sample(one_pair_per_row, one_pair_per_row < 5, 10)
    low, high = wilson_interval(0.5 * half.effective_trials, half.effective_trials)
    assert (half.ci_low, half.ci_high) == (float(low), float(high))
    with pytest.raises(ConfigError):
        recall_from_sample(one_pair_per_row, np.ones(10, bool), 10, confidence=1.0)


def test_true_pairs_of_sample_match_brute_force(small_set):
    data, truth = small_set
    sample = np.arange(0, len(data.x), 5)
    q, a, b = true_pairs_of_sample(data.x, sample, 0.95, block_rows=333)
    got = set(zip(a.tolist(), b.tolist(), strict=True))
    sampled = set(sample.tolist())
    assert got == {(i, j) for i, j in truth if i in sampled or j in sampled}
    assert np.all((sample[q] == a) | (sample[q] == b))


def _keys(pairs, n):
    a = np.array([p[0] for p in pairs], dtype=np.int64)
    b = np.array([p[1] for p in pairs], dtype=np.int64)
    return pair_keys(a, b, n)


def test_full_sample_gives_the_exact_recall(small_set):
    data, truth = small_set
    n = len(data.x)
    truth = sorted(truth)
    found = _keys(truth[::3], n)
    est = sampled_pair_recall(data.x, found, 0.95, sample_size=n)
    assert est.exact and est.true_pairs == len(truth)
    assert est.recall == pytest.approx(len(truth[::3]) / len(truth))
    assert est.ci_low == est.ci_high == est.recall


def test_sampled_recall_covers_the_truth(small_set):
    data, truth = small_set
    n = len(data.x)
    truth = sorted(truth)
    found = _keys(truth[::2], n)
    est = sampled_pair_recall(data.x, found, 0.95, sample_size=1000, seed=1)
    assert not est.exact and est.sampled_rows == 1000
    assert est.ci_low < len(truth[::2]) / len(truth) < est.ci_high
    assert 0 < est.effective_trials <= est.true_pairs
    all_found = sampled_pair_recall(data.x, _keys(truth, n), 0.95, sample_size=1000, seed=1)
    assert all_found.recall == 1.0 and all_found.ci_low < 1.0


def test_no_true_pairs_gives_unknown_recall():
    est = sampled_pair_recall(np.eye(6, dtype=np.float32), np.empty(0, np.int64), 0.9, sample_size=3)
    assert est.recall is None and est.true_pairs == 0


# -- pinned by mutation testing (tools/mutate.py sanitize/dedup/recall.py) ------------------------------------------

def test_effective_trials_of_clustered_hits_by_hand():
    """4 sampled rows with 3, 3, 1, 1 true pairs, of which 3, 0, 1, 0 found: p = 1/2, binomial variance
    p (1 - p) / 8 = 1/32; residuals 1.5, -1.5, 0.5, -0.5 give the clustered variance 4/3 * 5 / 64 = 5/48; so
    8 trials count as 8 * (1/32) / (5/48) = 2.4."""
    query = np.array([0, 0, 0, 1, 1, 1, 2, 3])
    hit = np.array([1, 1, 1, 0, 0, 0, 1, 0], bool)
    est = recall_from_sample(query, hit, 4)
    assert est.recall == 0.5 and est.effective_trials == pytest.approx(2.4, rel=1e-12)
    low, high = wilson_interval(0.5 * 2.4, 2.4)
    assert (est.ci_low, est.ci_high) == pytest.approx((float(low), float(high)), rel=1e-12)
    # 2 sampled rows, 2 pairs both found and 1 pair not: p = 2/3, 2/27 binomial, 2/1 * (8/9) / 9 = 16/81
    # clustered: 3 * (2/27) / (16/81) = 1.125 trials
    two = recall_from_sample(np.array([0, 0, 1]), np.array([1, 1, 0], bool), 2)
    assert two.effective_trials == pytest.approx(1.125, rel=1e-12)


def test_effective_trials_without_spread_between_rows():
    """Each row's pairs half found: no spread between rows, so every pair is a trial; all found: each row with
    pairs is one trial; one sampled row: its pairs are the trials."""
    half = recall_from_sample(np.array([0, 0, 1, 1, 2, 2]), np.array([1, 0, 1, 0, 0, 1], bool), 3)
    assert half.effective_trials == 6
    all_found = recall_from_sample(np.array([0, 0, 0, 1]), np.ones(4, bool), 3)
    assert all_found.effective_trials == 2 and all_found.ci_high == 1.0
    one_row = recall_from_sample(np.array([0, 0]), np.array([1, 0], bool), 1)
    assert one_row.effective_trials == 2


def test_only_no_pair_found_pins_the_lower_end_to_zero():
    one = recall_from_sample(np.arange(10), np.arange(10) == 3, 10)
    assert one.ci_low == pytest.approx(float(wilson_interval(0.1 * one.effective_trials, one.effective_trials)[0]))
    assert one.ci_low > 0


def test_recall_options_and_the_empty_estimate():
    with pytest.raises(ConfigError):
        recall_from_sample(np.arange(3), np.ones(3, bool), 3, confidence=0.0)
    x = np.eye(6, dtype=np.float32)
    with pytest.raises(ConfigError, match="at least 1, got 0"):
        sampled_pair_recall(x, np.empty(0, np.int64), 0.9, sample_size=0)
    est = sampled_pair_recall(x, np.empty(0, np.int64), 0.9, sample_size=1)
    assert est.sampled_rows == 1 and (est.true_pairs, est.found_pairs, est.effective_trials) == (0, 0, 0.0)
    import dataclasses

    with pytest.raises(dataclasses.FrozenInstanceError):
        est.recall = 1.0


def test_default_sample_is_1000_rows_drawn_with_seed_0(small_set):
    data, truth = small_set
    found = _keys(sorted(truth)[::2], len(data.x))
    est = sampled_pair_recall(data.x, found, 0.95)
    assert est.sampled_rows == 1000
    assert est == sampled_pair_recall(data.x, found, 0.95, sample_size=1000, seed=0)


def test_a_pair_at_the_threshold_and_a_pair_with_row_zero_are_found():
    x = np.array([[1.0, 0.0, 0.0], [0.96, 0.28, 0.0], [0.0, 0.0, 1.0]], dtype=np.float32)
    from sanitize.dedup.vectors import pair_cosines

    at = float(pair_cosines(x, np.array([0]), np.array([1]))[0])
    q, a, b = true_pairs_of_sample(x, np.array([1]), at)  # only row 1 sampled: row 0 is in the first block
    assert (q.tolist(), a.tolist(), b.tolist()) == ([0], [0], [1])
    q, a, b = true_pairs_of_sample(x, np.array([1]), at + 0.5e-4)  # within the candidate margin, above cos
    assert a.size == 0


