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
