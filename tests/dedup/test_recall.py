from __future__ import annotations

import math

import numpy as np
import pytest

from sanitize.dedup.pairs import pair_keys
from sanitize.dedup.recall import sampled_pair_recall, true_pairs_of_sample, wilson_interval
from sanitize.errors import ConfigError


def test_wilson_interval_known_values():
    low, high = wilson_interval(5, 10, 0.95)
    assert math.isclose(low, 0.2366, abs_tol=1e-4) and math.isclose(high, 0.7634, abs_tol=1e-4)
    low, high = wilson_interval(10, 10, 0.95)
    assert math.isclose(low, 0.7225, abs_tol=1e-4) and high == 1.0
    assert wilson_interval(0, 10)[0] == 0.0
    with pytest.raises(ConfigError):
        wilson_interval(1, 0)
    with pytest.raises(ConfigError):
        wilson_interval(1, 2, confidence=1.0)


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
