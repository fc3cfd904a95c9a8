"""Certified thresholds: the order-statistic certificate, the stratified bound, fallbacks, bad input, coverage."""

from __future__ import annotations

import dataclasses
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


# --- exact answers on small inputs: one and few positives, every confidence, the fallbacks, field by field ---


def _reference_order_statistic(n: int, target: float, confidence: float) -> tuple[int, float] | None:
    """(misses allowed, bound) from scipy's beta quantiles, one miss count at a time; None when none passes."""
    best = None
    for k in range(n):
        bound = float(stats.beta.ppf(1 - confidence, n - k, k + 1))  # Clopper–Pearson lower, k of n missed
        if bound < target:
            break
        best = (k, bound)
    return best


@pytest.mark.parametrize("confidence", [0.3, 0.8, 0.9, 0.99])
@pytest.mark.parametrize("target", [0.01, 0.05, 0.2, 0.5, 0.8, 0.9, 0.95])
def test_order_statistic_certificate_matches_the_beta_quantiles_for_few_positives(target, confidence):
    # (below 50% confidence the bound can exceed the point recall: 21 positives certify recall >= 0.05 at 30%
    # with 20 misses allowed, so no miss count may be skipped for having a point recall under the target)
    rng = np.random.default_rng(14)
    for n in [1, 2, 3, 5, 10, 21, 40, 200]:
        pos = rng.permutation(np.arange(1, n + 1, dtype=float))
        scores, labels = np.r_[pos, rng.random(7)], np.r_[np.ones(n), np.zeros(7)]
        cert = certified_threshold(scores, labels, target_recall=target, confidence=confidence)
        ref = _reference_order_statistic(n, target, confidence)
        assert (cert.n_positives, cert.n_labels) == (n, n + 7)
        if ref is None:
            assert not cert.certified and cert.fallback == "min-positive-score" and cert.threshold == 1.0
            assert cert.recall_lower_bound == pytest.approx(stats.beta.ppf(1 - confidence, n, 1), rel=1e-9)
            assert cert.recall_estimate == 1.0 and cert.misses_allowed == 0
            short = min_positives(target, confidence) - n
            assert cert.more_labels_needed == math.ceil(short * (n + 7) / n)
        else:
            k, bound = ref
            assert cert.certified and cert.fallback is None and cert.more_labels_needed is None
            assert cert.threshold == k + 1.0 and cert.misses_allowed == k  # the (k+1)-th lowest positive
            assert cert.recall_lower_bound == pytest.approx(bound, rel=1e-9)
            assert cert.recall_estimate == (n - k) / n


def test_one_positive_certifies_a_low_target_and_two_may_lose_one():
    # one positive, 90% confidence: the bound is 1 - 0.9 = 0.1, so recall >= 0.09 holds and recall >= 0.2 does not
    low = certified_threshold([0.3, 0.7], [0, 1], target_recall=0.09, confidence=0.9)
    assert low.certified and low.threshold == 0.7 and low.recall_lower_bound == pytest.approx(0.1)
    high = certified_threshold([0.3, 0.7], [0, 1], target_recall=0.2, confidence=0.9)
    assert not high.certified and high.threshold == 0.7 and high.more_labels_needed == 2
    # two positives, target 1%: one may fall below (1 - sqrt(0.95) = 0.025 >= 0.01), so the higher one is the cut
    two = certified_threshold([0.2, 0.6], [1, 1], target_recall=0.01, confidence=0.95)
    assert two.certified and two.threshold == 0.6 and two.misses_allowed == 1 and two.recall_estimate == 0.5
    assert two.recall_lower_bound == pytest.approx(1 - math.sqrt(0.95))


def test_a_bound_exactly_at_the_target_certifies():
    # 4 positives, no miss: the bound is (1 - confidence) ** (1 / 4) = 0.6561 ** 0.25 = 0.9 exactly
    cert = certified_threshold([0.1, 0.2, 0.3, 0.4], np.ones(4), target_recall=0.9, confidence=0.3439)
    assert cert.certified and cert.threshold == 0.1 and cert.recall_lower_bound == pytest.approx(0.9)


@pytest.mark.parametrize(
    ("target", "confidence", "expected"),
    # the last two sit on a rounding edge of log(alpha) / log(target): one above, one below the exact answer
    [(0.99, 0.95, 299), (0.9, 0.8, 16), (0.5, 0.99, 7), (0.9, 0.3439, 4), (0.57, 0.9398307943, 6)],
)
def test_min_positives_agrees_with_the_certificate_on_rounding_edges(target, confidence, expected):
    n = min_positives(target, confidence)
    assert n == expected
    assert certified_threshold(np.arange(n, dtype=float), np.ones(n), target_recall=target,
                               confidence=confidence).certified
    assert not certified_threshold(np.arange(n - 1, dtype=float), np.ones(n - 1), target_recall=target,
                                   confidence=confidence).certified


def test_tied_positives_at_the_cut_are_not_counted_as_missed():
    # 40 positives at 90% / 80%: one miss allowed, so the cut is the second lowest score, which ties the lowest
    scores = np.r_[0.5, 0.5, np.linspace(0.6, 0.9, 38)]
    cert = certified_threshold(scores, np.ones(40), target_recall=0.9, confidence=0.8)
    assert cert.threshold == 0.5 and cert.misses_allowed == 1
    assert cert.recall_estimate == 1.0  # nothing scores below 0.5


@pytest.mark.parametrize("stratified", [False, True])
def test_no_positive_flags_everything_field_by_field(stratified):
    weights = dict(weights=np.r_[np.full(5, 2.0), np.full(5, 4.0)], strata=np.r_[np.zeros(5), np.ones(5)])
    cert = certified_threshold(np.linspace(0, 1, 10), np.zeros(10), target_recall=0.9, confidence=0.9,
                               **(weights if stratified else {}))
    assert cert.method == ("stratified-bonferroni" if stratified else "order-statistic")
    assert (cert.threshold, cert.certified, cert.fallback) == (-math.inf, False, "flag-all")
    assert (cert.recall_lower_bound, cert.recall_estimate) == (1.0, 1.0)
    assert (cert.n_positives, cert.n_labels, cert.misses_allowed, cert.more_labels_needed) == (0, 10, 0, None)


def test_certificates_cannot_be_changed_after_the_fact():
    cert = certified_threshold(_positives(300), np.ones(300), target_recall=0.99, confidence=0.95)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cert.threshold = 0.0


def _stratified_bounds(s, y, w, strata, confidence) -> dict[float, float]:
    """The stratified bound at every positive score, stratum by stratum with scipy's beta quantiles: fully
    labelled strata (weight 1) exact, the others one-sided Clopper–Pearson at alpha / (2 * sampled strata)."""
    weight = {h: w[strata == h][0] for h in np.unique(strata)}
    sampled = [h for h in weight if weight[h] != 1]
    alpha_each = (1 - confidence) / max(2 * len(sampled), 1)
    bounds = {}
    for t in np.unique(s[y]):
        caught_low = missed_high = 0.0
        for h in weight:
            rows = strata == h
            n = int(rows.sum())
            missed, caught = int(np.sum(rows & y & (s < t))), int(np.sum(rows & y & (s >= t)))
            if h in sampled:
                missed_up = 1.0 if missed == n else stats.beta.ppf(1 - alpha_each, missed + 1, n - missed)
                caught_low_h = 0.0 if caught == 0 else stats.beta.ppf(alpha_each, caught, n - caught + 1)
            else:
                missed_up, caught_low_h = missed / n, caught / n
            missed_high += weight[h] * n * missed_up
            caught_low += weight[h] * n * caught_low_h
        bounds[float(t)] = caught_low / (caught_low + missed_high)
    return bounds


def _design(name: str):
    """Small stratified audits: (scores, labels, weights, strata, target)."""
    if name == "lowest-positive-is-the-answer":  # a census stratum of 40 positives, a sampled one without any
        return (np.r_[np.arange(1, 41), np.full(10, 0.5), np.linspace(0, 0.9, 100)], np.r_[np.ones(40), np.zeros(110)],
                np.r_[np.ones(50), np.full(100, 2.0)], np.r_[np.zeros(50), np.ones(100)], 0.86)
    if name == "five-positives":  # 5 positives in 200 labels standing for 1,200 rows: nothing to certify
        return (np.r_[np.linspace(0.5, 0.9, 5), np.linspace(0, 0.4, 95), np.linspace(0, 0.3, 100)],
                np.r_[np.ones(5), np.zeros(195)], np.r_[np.full(100, 2.0), np.full(100, 10.0)],
                np.r_[np.zeros(100), np.ones(100)], 0.9)
    if name == "all-positive-stratum-below":  # every labelled row of the low stratum is a positive
        return (np.r_[[0.1, 0.2, 0.3, 0.4], np.linspace(0.5, 0.99, 150), np.linspace(0, 0.45, 50)],
                np.r_[np.ones(154), np.zeros(50)], np.r_[np.full(4, 3.0), np.full(200, 2.0)],
                np.r_[np.zeros(4), np.ones(200)], 0.5)
    if name == "one-positive-in-a-stratum":  # the high stratum's single positive is still caught at the answer
        return (np.r_[0.95, np.linspace(0, 0.5, 49), np.linspace(0.2, 0.8, 60), np.linspace(0, 0.6, 40)],
                np.r_[1, np.zeros(49), np.ones(60), np.zeros(40)], np.r_[np.full(50, 1.5), np.full(100, 4.0)],
                np.r_[np.zeros(50), np.ones(100)], 0.5)
    # three strata, the top one all positives
    return (np.r_[np.linspace(0.8, 1, 30), np.linspace(0.3, 0.8, 80), np.linspace(0, 0.5, 90)],
            np.r_[np.ones(30), np.arange(80) % 2, np.arange(90) % 30 == 0],
            np.r_[np.full(30, 2.0), np.full(80, 5.0), np.full(90, 20.0)], np.repeat([2, 1, 0], [30, 80, 90]), 0.6)


DESIGNS = ["lowest-positive-is-the-answer", "five-positives", "all-positive-stratum-below",
           "one-positive-in-a-stratum", "all-positive-top-stratum"]


@pytest.mark.parametrize("confidence", [0.8, 0.9, 0.99])
@pytest.mark.parametrize("design", DESIGNS)
def test_stratified_certificate_field_by_field_on_small_designs(design, confidence):
    s, y, w, strata, target = _design(design)
    s, y = np.asarray(s, dtype=float), np.asarray(y, dtype=bool)
    cert = certified_threshold(s, y, target_recall=target, confidence=confidence, weights=w, strata=strata)
    bounds = _stratified_bounds(s, y, w, strata, confidence)
    passing = [t for t, b in bounds.items() if b >= target]
    assert cert.method == "stratified-bonferroni" and (cert.n_positives, cert.n_labels) == (y.sum(), len(y))
    assert cert.certified == bool(passing)
    if passing:
        assert cert.threshold == max(passing) and cert.fallback is None and cert.more_labels_needed is None
    else:
        assert cert.threshold == min(bounds) and cert.fallback == "min-positive-score"
        prevalence = (w * y).sum() / w.sum()  # weighted positives over the rows the sample stands for
        assert cert.more_labels_needed == math.ceil(min_positives(target, confidence) / prevalence)
    assert cert.recall_lower_bound == pytest.approx(bounds[cert.threshold], rel=1e-9)
    below = y & (s < cert.threshold)
    assert cert.misses_allowed == below.sum()
    assert cert.recall_estimate == pytest.approx(1 - (w * below).sum() / (w * y).sum(), rel=1e-12)
    assert 0 <= cert.recall_lower_bound <= cert.recall_estimate <= 1


def test_stratified_designs_reach_the_cases_they_are_named_for():
    def cert(design, confidence=0.9):
        s, y, w, strata, target = _design(design)
        return certified_threshold(s, y, target_recall=target, confidence=confidence, weights=w, strata=strata)

    lowest = cert("lowest-positive-is-the-answer")
    assert lowest.certified and lowest.threshold == 1.0 and lowest.recall_estimate == 1.0
    few = cert("five-positives")
    assert not few.certified and few.threshold == 0.5 and few.recall_lower_bound < 0.1
    assert few.more_labels_needed == 2640  # 22 positives at a prevalence of 10 / 1,200
    # the low stratum's 4 labelled positives stand for up to all of its 12 rows: recall at 0.5 cannot pass 0.95
    below = cert("all-positive-stratum-below", 0.8)
    assert below.certified and 0.5 < below.threshold < 0.75 and below.misses_allowed > 4
    one = cert("one-positive-in-a-stratum")
    assert one.certified and one.threshold < 0.95


def test_a_stratified_bound_exactly_at_the_target_certifies():
    s, y, w, strata, _ = _design("lowest-positive-is-the-answer")
    # not certifiable at 0.99: the certificate reports the lowest positive's bound (0.871) ...
    short = certified_threshold(s, y, target_recall=0.99, confidence=0.9, weights=w, strata=strata)
    assert not short.certified and short.threshold == 1.0
    # ... and that bound, taken as the target, certifies there
    cert = certified_threshold(s, y, target_recall=short.recall_lower_bound, confidence=0.9, weights=w, strata=strata)
    assert cert.certified and cert.threshold == 1.0 and cert.recall_lower_bound == short.recall_lower_bound
