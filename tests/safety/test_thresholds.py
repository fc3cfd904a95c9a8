"""Certified thresholds: the order-statistic certificate, the stratified bound, fallbacks, bad input, coverage."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from sanitize.errors import ConfigError, DataError
from sanitize.safety.audit_sample import draw_audit_sample
from sanitize.safety.estimates import clopper_pearson
from sanitize.safety.thresholds import certified_threshold, min_positives
from sanitize.testing.simulation import naive_threshold, simulate_violation_rate


def _positives(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(n)


@pytest.mark.parametrize(("target", "confidence"), [(0.99, 0.95), (0.95, 0.95), (0.99, 0.99), (0.9, 0.8)])
def test_min_positives_is_smallest_n_with_target_power_n_below_alpha(target, confidence):
    n = min_positives(target, confidence)
    assert target**n <= 1 - confidence < target ** (n - 1)


def test_299_positives_without_a_miss_certify_99_percent_recall_at_95():
    scores = _positives(299)
    cert = certified_threshold(scores, np.ones(299), target_recall=0.99, confidence=0.95)
    assert cert.certified
    assert cert.threshold == scores.min()
    assert cert.misses_allowed == 0
    assert cert.recall_lower_bound >= 0.99
    assert cert.recall_lower_bound == pytest.approx(0.05 ** (1 / 299))
    assert cert.more_labels_needed is None and cert.fallback is None


def test_298_positives_fall_back_to_lowest_positive_and_say_how_many_labels_are_missing():
    scores = np.concatenate([_positives(298), np.full(29_502, 0.5)])  # 298 positives in 29,800 labels (1%)
    labels = np.r_[np.ones(298), np.zeros(29_502)]
    cert = certified_threshold(scores, labels, target_recall=0.99, confidence=0.95)
    assert not cert.certified
    assert cert.fallback == "min-positive-score"
    assert cert.threshold == scores[:298].min()
    assert cert.recall_lower_bound < 0.99
    assert cert.recall_lower_bound == pytest.approx(0.05 ** (1 / 298))
    # one more positive is needed; at 1% prevalence that is 100 more random labels
    assert cert.more_labels_needed == 100
    assert cert.n_labels == 29_800 and cert.n_positives == 298


def test_threshold_is_the_order_statistic_given_by_the_binomial_tail():
    n, target, conf = 1000, 0.99, 0.95
    scores = _positives(n, seed=3)
    cert = certified_threshold(scores, np.ones(n), target_recall=target, confidence=conf)
    # largest k with P(Binomial(n, 1 - target) <= k) <= 1 - conf, computed independently
    k = max(k for k in range(n) if stats.binom.cdf(k, n, 1 - target) <= 1 - conf)
    assert cert.misses_allowed == k
    assert cert.threshold == np.sort(scores)[k]
    lower, _ = clopper_pearson(n - k, n, conf, side="lower")
    assert cert.recall_lower_bound == pytest.approx(float(lower))
    # highest: one more miss would break the bound
    assert float(clopper_pearson(n - k - 1, n, conf, side="lower")[0]) < target
    assert cert.recall_estimate == (n - k) / n


def test_negatives_change_the_label_count_but_not_the_threshold():
    pos = _positives(400, seed=1)
    alone = certified_threshold(pos, np.ones(400), target_recall=0.99, confidence=0.95)
    neg = np.random.default_rng(2).random(5000)
    mixed = certified_threshold(
        np.r_[neg, pos], np.r_[np.zeros(5000), np.ones(400)], target_recall=0.99, confidence=0.95
    )
    assert mixed.threshold == alone.threshold
    assert mixed.n_labels == 5400 and mixed.n_positives == 400


def test_tied_scores_keep_threshold_at_a_positive_score_and_misses_at_most_allowed():
    scores = np.round(_positives(2000, seed=4), 2)  # heavy ties
    cert = certified_threshold(scores, np.ones(2000), target_recall=0.98, confidence=0.9)
    assert cert.certified
    assert cert.threshold in set(scores.tolist())
    assert np.count_nonzero(scores < cert.threshold) <= cert.misses_allowed
    # the next distinct score up would let more misses through than allowed
    higher = np.unique(scores[scores > cert.threshold])[0]
    assert np.count_nonzero(scores < higher) > cert.misses_allowed


def test_no_audit_positive_flags_everything():
    cert = certified_threshold(np.linspace(0, 1, 50), np.zeros(50), target_recall=0.9, confidence=0.9)
    assert not cert.certified and cert.fallback == "flag-all"
    assert cert.threshold == -math.inf
    assert cert.flags(np.array([-1e9, 0.0, 1.0])).all()
    assert cert.more_labels_needed is None


def test_flags_and_to_dict():
    cert = certified_threshold(_positives(500), np.ones(500), target_recall=0.95, confidence=0.95)
    assert cert.flags(np.array([cert.threshold, cert.threshold - 1e-9])).tolist() == [True, False]
    d = cert.to_dict()
    assert d["threshold"] == cert.threshold and d["method"] == "order-statistic"


def test_same_input_same_certificate_and_inputs_untouched():
    scores = _positives(600, seed=5)
    labels = (np.arange(600) % 2).astype(np.int64)
    before = scores.copy()
    a = certified_threshold(scores, labels, target_recall=0.95, confidence=0.9)
    b = certified_threshold(scores, labels, target_recall=0.95, confidence=0.9)
    assert a == b
    np.testing.assert_array_equal(scores, before)


def test_boolean_labels_and_float16_scores_are_accepted():
    scores = _positives(300, seed=6).astype(np.float16)
    cert = certified_threshold(scores, np.ones(300, dtype=bool), target_recall=0.99, confidence=0.95)
    assert cert.certified


# --- bad input ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0.0, 1.0, -0.1, 1.5, float("nan"), "high"])
def test_target_recall_outside_unit_interval_is_a_config_error(value):
    with pytest.raises(ConfigError, match="target_recall"):
        certified_threshold([0.5], [1], target_recall=value, confidence=0.95)


@pytest.mark.parametrize("value", [0.0, 1.0, 2.0, float("nan")])
def test_confidence_outside_unit_interval_is_a_config_error(value):
    with pytest.raises(ConfigError, match="confidence"):
        certified_threshold([0.5], [1], target_recall=0.9, confidence=value)


def test_no_audit_labels_is_a_data_error():
    with pytest.raises(DataError, match="no audit labels"):
        certified_threshold([], [], target_recall=0.9, confidence=0.9)


def test_nan_score_is_a_data_error_naming_the_row():
    with pytest.raises(DataError, match="row 2"):
        certified_threshold([0.1, 0.2, float("nan")], [1, 1, 1], target_recall=0.9, confidence=0.9)


def test_labels_other_than_0_1_are_a_data_error():
    with pytest.raises(DataError, match=r"0 or 1, got 2 at row 1"):
        certified_threshold([0.1, 0.2], [1, 2], target_recall=0.9, confidence=0.9)


def test_length_mismatch_is_a_data_error():
    with pytest.raises(DataError, match="3 rows but labels has 2"):
        certified_threshold([0.1, 0.2, 0.3], [1, 0], target_recall=0.9, confidence=0.9)


def test_weights_below_one_are_a_data_error():
    with pytest.raises(DataError, match="weights"):
        certified_threshold([0.1, 0.2], [1, 0], target_recall=0.9, confidence=0.9, weights=[0.5, 2.0])


def test_mixed_weights_in_one_stratum_are_a_data_error():
    with pytest.raises(DataError, match="stratum"):
        certified_threshold(
            [0.1, 0.2, 0.3], [1, 0, 1], target_recall=0.9, confidence=0.9, weights=[2, 3, 2], strata=[0, 0, 1]
        )


def test_strata_without_weights_is_a_config_error():
    with pytest.raises(ConfigError, match="weights"):
        certified_threshold([0.1, 0.2], [1, 0], target_recall=0.9, confidence=0.9, strata=[0, 1])


# --- weighted (stratified) samples -------------------------------------------------------------------------


def test_equal_weights_are_a_simple_random_sample():
    scores = _positives(700, seed=7)
    labels = np.r_[np.ones(400), np.zeros(300)]
    plain = certified_threshold(scores, labels, target_recall=0.98, confidence=0.95)
    weighted = certified_threshold(scores, labels, target_recall=0.98, confidence=0.95, weights=np.full(700, 25.0))
    assert weighted == plain


def test_fully_labelled_strata_give_the_exact_recall():
    # weight 1 everywhere = every row of the pool is labelled: the bound is the true recall itself
    rng = np.random.default_rng(8)
    scores = rng.random(3000)
    labels = rng.random(3000) < scores  # positives score higher
    strata = (scores > 0.5).astype(int)
    cert = certified_threshold(
        scores, labels, target_recall=0.9, confidence=0.95, weights=np.ones(3000), strata=strata
    )
    pos = np.sort(scores[labels])
    true_recall = 1 - np.searchsorted(pos, cert.threshold, side="left") / pos.size
    assert cert.certified and cert.method == "stratified-bonferroni"
    assert cert.recall_lower_bound == pytest.approx(true_recall)
    assert true_recall >= 0.9
    next_up = pos[pos > cert.threshold][0]
    assert 1 - np.searchsorted(pos, next_up, side="left") / pos.size < 0.9


def _pool(n: int, prevalence: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    is_pos = rng.random(n) < prevalence
    scores = 1 / (1 + np.exp(-rng.normal(np.where(is_pos, 3.0, 0.0), 1.0)))
    return np.arange(n).astype(str), scores, is_pos


def test_stratified_sample_certifies_and_is_lower_than_its_point_estimate():
    uids, scores, is_pos = _pool(20_000, 0.2, seed=9)
    sample = draw_audit_sample(uids, scores, 2000, strategy="stratified", n_strata=4, seed=1)
    rows = sample.column("uid").to_numpy(zero_copy_only=False).astype(int)
    cert = certified_threshold(
        scores[rows], is_pos[rows], target_recall=0.9, confidence=0.9,
        weights=1 / sample.column("inclusion_probability").to_numpy(), strata=sample.column("stratum").to_numpy(),
    )
    assert cert.certified and cert.method == "stratified-bonferroni"
    assert 0.9 <= cert.recall_lower_bound <= cert.recall_estimate
    pos = np.sort(scores[is_pos])
    assert 1 - np.searchsorted(pos, cert.threshold, side="left") / pos.size >= 0.9


def test_stratified_bound_accounts_for_positives_hidden_in_thinly_sampled_strata():
    # 30 of 430 positives score low, among 10,000 low-score rows of which only 1 in 20 is labelled. A
    # weighted point estimate rarely sees them; the certificate must not claim 95% recall above them.
    rng = np.random.default_rng(10)
    n = 20_000
    scores = rng.random(n) * 0.5
    is_pos = np.zeros(n, dtype=bool)
    high = rng.choice(np.arange(n // 2, n), 400, replace=False)
    scores[high] = 0.9 + 0.1 * rng.random(400)
    is_pos[high] = True
    low = rng.choice(np.arange(n // 2), 30, replace=False)
    is_pos[low] = True  # low scores stay; true recall above 0.5 is 400/430 < 0.95
    uids = np.arange(n).astype(str)
    violations = naive_violations = 0
    trials = 200
    for seed in range(trials):
        sample = draw_audit_sample(uids, scores, 2000, strategy="stratified", n_strata=4, seed=seed)
        rows = sample.column("uid").to_numpy(zero_copy_only=False).astype(int)
        weights = 1 / sample.column("inclusion_probability").to_numpy()
        cert = certified_threshold(
            scores[rows], is_pos[rows], target_recall=0.95, confidence=0.95,
            weights=weights, strata=sample.column("stratum").to_numpy(),
        )
        violations += cert.certified and cert.threshold > 0.5
        w_pos = weights[is_pos[rows]]
        naive_violations += w_pos[scores[rows][is_pos[rows]] < 0.5].sum() / w_pos.sum() <= 0.05
    assert violations / trials <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / trials)
    assert naive_violations / trials > 0.2  # the weighted point estimate alone is fooled often


# --- validation by simulation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "confidence", "n_pos"), [(0.99, 0.95, 299), (0.99, 0.95, 1000), (0.9, 0.9, 60)]
)
def test_certified_violation_rate_is_at_most_one_minus_confidence(target, confidence, n_pos):
    trials = 2000
    result = simulate_violation_rate(
        target_recall=target, confidence=confidence, n_positives=n_pos, n_trials=trials, seed=11
    )
    alpha = 1 - confidence
    mc = math.sqrt(alpha * (1 - alpha) / trials)
    assert result.certified_share == 1.0
    assert result.certified_violation_rate <= alpha + 3 * mc
    # and it is what the order-statistic argument predicts exactly: P(Binomial(n, 1 - target) <= k)
    k = certified_threshold(np.arange(n_pos, dtype=float), np.ones(n_pos), target_recall=target,
                            confidence=confidence).misses_allowed
    exact = stats.binom.cdf(k, n_pos, 1 - target)
    assert abs(result.certified_violation_rate - exact) <= 4 * math.sqrt(exact * (1 - exact) / trials)
    # the naive "empirical recall >= target" threshold over-claims far more often, and removes less
    assert result.naive_violation_rate >= result.certified_violation_rate + 0.2
    assert result.naive_removal_rate < result.certified_removal_rate


def test_stratified_design_keeps_its_violation_rate_too():
    trials = 1000
    result = simulate_violation_rate(
        design="stratified", target_recall=0.9, confidence=0.9, prevalence=0.2, population_size=5000,
        n_labels=1000, n_strata=3, n_trials=trials, seed=12,
    )
    assert result.certified_share > 0.5  # the check below is about real certificates, not fallbacks
    assert result.certified_violation_rate <= 0.1 + 3 * math.sqrt(0.1 * 0.9 / trials)
    assert result.naive_violation_rate > 0.3


def test_simulation_is_deterministic_for_a_seed():
    a = simulate_violation_rate(n_trials=50, seed=3)
    b = simulate_violation_rate(n_trials=50, seed=3)
    assert a == b


def test_simulation_rejects_bad_options():
    with pytest.raises(ConfigError, match="design"):
        simulate_violation_rate(design="bogus", n_trials=10)
    with pytest.raises(ConfigError, match="n_trials"):
        simulate_violation_rate(n_trials=0)


def test_naive_threshold_is_the_empirical_target_point():
    scores = np.arange(100, dtype=float)
    assert naive_threshold(scores, np.ones(100), 0.95) == 5.0  # 95 of 100 positives at or above it


def _reference_stratified_bound(s, y, strata, weights, t, confidence):
    """Recall lower bound at a fixed t, written out stratum by stratum (Bonferroni over 2 H bounds)."""
    groups = np.unique(strata)
    alpha_each = (1 - confidence) / (2 * len(groups))
    caught_low = missed_high = 0.0
    for h in groups:
        in_h = strata == h
        n, size = in_h.sum(), weights[in_h][0] * in_h.sum()
        missed = int(np.sum(in_h & y & (s < t)))
        caught = int(np.sum(in_h & y & (s >= t)))
        missed_high += size * float(clopper_pearson(missed, n, 1 - alpha_each, side="upper")[1])
        caught_low += size * float(clopper_pearson(caught, n, 1 - alpha_each, side="lower")[0])
    return caught_low / (caught_low + missed_high) if caught_low > 0 else 0.0


def test_stratified_threshold_is_the_highest_positive_score_passing_the_bound():
    uids, scores, is_pos = _pool(8000, 0.25, seed=13)
    sample = draw_audit_sample(uids, scores, 1200, strategy="stratified", n_strata=3, seed=2)
    rows = sample.column("uid").to_numpy(zero_copy_only=False).astype(int)
    s, y = scores[rows], is_pos[rows]
    weights = 1 / sample.column("inclusion_probability").to_numpy()
    strata = sample.column("stratum").to_numpy()
    cert = certified_threshold(s, y, target_recall=0.9, confidence=0.9, weights=weights, strata=strata)
    bounds = {t: _reference_stratified_bound(s, y, strata, weights, t, 0.9) for t in np.unique(s[y])}
    passing = [t for t, b in bounds.items() if b >= 0.9]
    assert cert.certified
    assert cert.threshold == max(passing)
    assert cert.recall_lower_bound == pytest.approx(bounds[cert.threshold])
    # monotone: every lower candidate passes too, every higher one fails
    assert all(b >= 0.9 for t, b in bounds.items() if t <= cert.threshold)
    assert all(b < 0.9 for t, b in bounds.items() if t > cert.threshold)
