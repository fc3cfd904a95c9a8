"""Estimates at a threshold: Clopper–Pearson intervals, precision, recall, removal rate."""

from __future__ import annotations

import numpy as np
import pytest

from sanitize.errors import ConfigError, DataError
from sanitize.safety.estimates import (
    clopper_pearson,
    estimate_removal_rate,
    precision_at,
    recall_at,
    removal_rate,
)


def test_clopper_pearson_known_values():
    lower, upper = clopper_pearson(0, 299, 0.95, side="upper")
    assert float(lower) == 0.0
    assert float(upper) == pytest.approx(1 - 0.05 ** (1 / 299))
    lower, upper = clopper_pearson(299, 299, 0.95, side="lower")
    assert float(lower) == pytest.approx(0.05 ** (1 / 299)) and float(upper) == 1.0
    # textbook value: 5 of 10, two-sided 95% -> [0.1871, 0.8129]
    lower, upper = clopper_pearson(5, 10, 0.95)
    assert float(lower) == pytest.approx(0.1871, abs=1e-4) and float(upper) == pytest.approx(0.8129, abs=1e-4)


def test_clopper_pearson_is_vectorised_and_empty_is_uninformative():
    lower, upper = clopper_pearson(np.array([0, 3, 10]), np.array([10, 10, 10]), 0.9)
    assert lower.shape == upper.shape == (3,)
    assert lower[0] == 0.0 and upper[2] == 1.0
    assert np.all(lower <= np.array([0, 0.3, 1.0])) and np.all(np.array([0, 0.3, 1.0]) <= upper)
    lower, upper = clopper_pearson(0, 0, 0.9)
    assert (float(lower), float(upper)) == (0.0, 1.0)


def test_interval_options_are_validated():
    with pytest.raises(ConfigError, match="side"):
        clopper_pearson(1, 2, 0.9, side="both")
    with pytest.raises(ConfigError, match="confidence"):
        clopper_pearson(1, 2, 1.0)


def test_precision_counts_positives_among_flagged_audit_rows():
    scores = np.array([0.1, 0.4, 0.6, 0.7, 0.9, 0.95])
    labels = np.array([0, 1, 0, 1, 1, 1])
    est = precision_at(scores, labels, 0.5)
    assert est.value == 0.75 and est.n == 4
    assert est.lower < 0.75 < est.upper
    assert est.method == "clopper-pearson"
    nothing = precision_at(scores, labels, 2.0)
    assert np.isnan(nothing.value) and (nothing.lower, nothing.upper) == (0.0, 1.0)


def test_recall_at_a_fixed_threshold():
    scores = np.linspace(0, 1, 11)
    labels = np.ones(11)
    est = recall_at(scores, labels, 0.55)
    assert est.value == pytest.approx(5 / 11) and est.n == 11


def test_weighted_estimates_use_horvitz_thompson_and_kish_size():
    scores = np.array([0.9, 0.8, 0.2, 0.1])
    labels = np.array([1, 0, 1, 0])
    weights = np.array([1.0, 1.0, 3.0, 3.0])
    est = recall_at(scores, labels, 0.5, weights=weights)
    assert est.value == pytest.approx(1 / 4)  # the low-score positive stands for 3 rows
    assert est.n_effective == pytest.approx(16 / 10)
    assert est.method == "kish-cp"
    equal = precision_at(scores, labels, 0.0, weights=np.full(4, 7.0))
    assert equal.value == precision_at(scores, labels, 0.0).value


def test_removal_rate_is_an_exact_count_over_all_rows():
    scores = np.arange(1_000_000, dtype=np.float32) / 1_000_000
    result = removal_rate(scores, 0.75)
    assert (result.removed, result.total) == (250_000, 1_000_000)
    assert result.rate == 0.25
    assert removal_rate(scores.astype(np.float16), 0.5).removed == np.count_nonzero(scores.astype(np.float16) >= 0.5)


def test_removal_rate_rejects_nan():
    with pytest.raises(DataError, match="NaN"):
        removal_rate(np.array([0.1, np.nan]), 0.5)


def test_removal_rate_from_a_sample_has_an_interval():
    rng = np.random.default_rng(0)
    sample = rng.random(2000)
    est = estimate_removal_rate(sample, 0.9, confidence=0.95)
    assert est.lower < 0.1 < est.upper
    weighted = estimate_removal_rate([0.95, 0.1], 0.9, weights=[1.0, 9.0])
    assert weighted.value == pytest.approx(0.1)
    with pytest.raises(DataError, match="weights"):
        estimate_removal_rate([0.95, 0.1], 0.9, weights=[1.0])


def test_estimates_validate_their_inputs():
    with pytest.raises(DataError, match="no audit labels"):
        precision_at([], [], 0.5)
    with pytest.raises(DataError, match="rows but labels"):
        recall_at([0.1], [1, 0], 0.5)
    with pytest.raises(ConfigError, match="confidence"):
        precision_at([0.1], [1], 0.5, confidence=0)


# -- pinned by mutation testing (tools/mutate.py sanitize/safety/estimates.py) -------------------------------------

def test_clopper_pearson_matches_scipy_for_every_count_and_for_effective_counts():
    """Every k of n = 10 and n = 1, and non-integer (Kish effective) counts below 1 success / failure, against
    scipy's exact binomial interval and the beta quantiles it is defined by."""
    from scipy import stats

    for n in (1, 10):
        for k in range(n + 1):
            ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.9, method="exact")
            lower, upper = clopper_pearson(k, n, 0.9)
            assert (float(lower), float(upper)) == pytest.approx((ci.low, ci.high), abs=1e-12), (k, n)
    for x, n in [(0.5, 3.7), (3.2, 3.7), (0.25, 0.75)]:
        lower, upper = clopper_pearson(x, n, 0.95)
        assert float(lower) == pytest.approx(stats.beta.ppf(0.025, x, n - x + 1), rel=1e-9)
        assert float(upper) == pytest.approx(stats.beta.ppf(0.975, x + 1, n - x), rel=1e-9)


def test_an_estimate_with_no_rows_is_the_uninformative_interval():
    nothing = precision_at([0.1, 0.2], [1, 0], 0.5)
    assert np.isnan(nothing.value)
    assert (nothing.lower, nothing.upper, nothing.n, nothing.n_effective, nothing.method) == (0.0, 1.0, 0, 0.0,
                                                                                             "empty")


def test_a_score_equal_to_the_threshold_is_flagged():
    """score >= threshold is removed: precision, recall and both removal rates count the tie."""
    scores, labels = np.array([0.2, 0.5, 0.8]), np.array([1, 1, 0])
    assert precision_at(scores, labels, 0.5).n == 2
    assert recall_at(scores, labels, 0.5).value == 0.5
    assert removal_rate(scores, 0.5).removed == 2
    assert estimate_removal_rate(scores, 0.5).value == pytest.approx(2 / 3)


def test_the_results_are_frozen():
    import dataclasses

    with pytest.raises(dataclasses.FrozenInstanceError):
        precision_at([0.9], [1], 0.5).value = 0.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        removal_rate([0.9], 0.5).removed = 0


def test_input_errors_name_the_first_bad_row():
    with pytest.raises(DataError, match="2 non-finite values .*, first at row 1"):
        precision_at([0.1, np.nan, 0.2, np.inf], [0, 1, 0, 1], 0.5)
    with pytest.raises(DataError, match="got 2 at row 1"):
        precision_at([0.1, 0.2, 0.3, 0.4], [0, 2, 1, 3], 0.5)
    with pytest.raises(DataError, match="got 0.5 at row 2"):
        precision_at([0.1, 0.2, 0.3], [0, 1, 0], 0.5, weights=[1.0, 2.0, 0.5])


@pytest.mark.parametrize("bad", [np.nan, np.inf, 0.5, 0.0, -1.0])
def test_weights_must_be_finite_and_at_least_one(bad):
    with pytest.raises(DataError, match="weights must be 1 / inclusion probability"):
        recall_at([0.1, 0.9], [1, 1], 0.5, weights=[1.0, bad])
