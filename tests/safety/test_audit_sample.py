"""Audit samples: exact inclusion probabilities, determinism, and only random-audit labels coming back."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from sanitize.errors import ConfigError, DataError
from sanitize.safety.audit_sample import audit_labels, draw_audit_sample, stratum_edges
from sanitize.safety.thresholds import certified_threshold


def _pool(n: int = 10_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return np.array([f"u{i:06d}" for i in range(n)]), rng.random(n)


def test_random_sample_has_n_unique_pool_rows_with_probability_n_over_pool():
    uids, scores = _pool()
    table = draw_audit_sample(uids, scores, 500, seed=1)
    assert table.column_names == ["uid", "score", "stratum", "inclusion_probability"]
    drawn = table.column("uid").to_pylist()
    assert len(drawn) == len(set(drawn)) == 500
    assert set(drawn) <= set(uids.tolist())
    assert np.all(table.column("inclusion_probability").to_numpy() == 500 / 10_000)
    assert np.all(table.column("stratum").to_numpy() == 0)
    index = {u: i for i, u in enumerate(uids)}
    np.testing.assert_array_equal(table.column("score").to_numpy(), scores[[index[u] for u in drawn]])


def test_same_seed_same_sample_other_seed_other_sample():
    uids, scores = _pool()
    a = draw_audit_sample(uids, scores, 300, strategy="stratified", seed=4)
    b = draw_audit_sample(uids, scores, 300, strategy="stratified", seed=4)
    c = draw_audit_sample(uids, scores, 300, strategy="stratified", seed=5)
    assert a.equals(b)
    assert not a.equals(c)


def test_stratified_probabilities_are_exact_and_weights_add_up_to_each_stratum():
    uids, scores = _pool()
    n_strata = 6
    table = draw_audit_sample(uids, scores, 600, strategy="stratified", n_strata=n_strata, seed=2)
    edges = stratum_edges(10_000, n_strata)
    sizes = np.diff(edges)
    assert sizes.tolist() == [5000, 2500, 1250, 625, 313, 312]
    ranks = np.empty(10_000, dtype=int)
    ranks[np.argsort(scores, kind="stable")] = np.arange(10_000)
    index = {u: i for i, u in enumerate(uids)}
    rows = np.array([index[u] for u in table.column("uid").to_pylist()])
    stratum = table.column("stratum").to_numpy()
    probability = table.column("inclusion_probability").to_numpy()
    # each row sits in the stratum its score rank says, with probability (drawn in stratum) / (stratum size)
    np.testing.assert_array_equal(np.searchsorted(edges, ranks[rows], side="right") - 1, stratum)
    for h in range(n_strata):
        in_h = stratum == h
        assert in_h.sum() == 100
        assert np.allclose(probability[in_h], 100 / sizes[h])
        assert (1 / probability[in_h]).sum() == pytest.approx(sizes[h])
    # high scores are sampled far more densely than low ones
    assert probability[stratum == n_strata - 1][0] > 10 * probability[stratum == 0][0]


def test_stratified_allocation_caps_small_strata_and_still_draws_n():
    uids, scores = _pool(100)
    table = draw_audit_sample(uids, scores, 90, strategy="stratified", n_strata=10, seed=0)
    assert table.num_rows == 90
    probability = table.column("inclusion_probability").to_numpy()
    assert np.all(probability <= 1.0)
    # every non-empty stratum is sampled, so the weights add up to the pool size
    assert (1 / probability).sum() == pytest.approx(100)
    assert np.all(probability[table.column("stratum").to_numpy() >= 5] == 1.0)  # tiny top strata taken whole


def test_sample_is_not_in_score_order():
    uids, scores = _pool()
    s = draw_audit_sample(uids, scores, 200, strategy="stratified", seed=3).column("score").to_numpy()
    assert not np.all(np.diff(s) >= 0)


@pytest.mark.parametrize("n", [0, -1, 10_001, 2.5, True])
def test_bad_sample_size_is_a_config_error(n):
    uids, scores = _pool()
    with pytest.raises(ConfigError, match="n must be"):
        draw_audit_sample(uids, scores, n)


def test_bad_strategy_and_strata_are_config_errors():
    uids, scores = _pool()
    with pytest.raises(ConfigError, match="strategy"):
        draw_audit_sample(uids, scores, 10, strategy="uncertainty")
    with pytest.raises(ConfigError, match="n_strata"):
        draw_audit_sample(uids, scores, 10, strategy="stratified", n_strata=1)


def test_bad_pool_is_a_data_error():
    uids, scores = _pool(10)
    bad = scores.copy()
    bad[4] = np.nan
    with pytest.raises(DataError, match="row 4"):
        draw_audit_sample(uids, bad, 5)
    with pytest.raises(DataError, match="not unique"):
        draw_audit_sample(np.array(["a"] * 10), scores, 5)
    with pytest.raises(DataError, match="rows"):
        draw_audit_sample(uids[:9], scores, 5)


# --- audit_labels ----------------------------------------------------------------------------------------


def _labels(uids: list[str], labels: list[int], sources: list[str]) -> pa.Table:
    return pa.table({"uid": uids, "label": labels, "source": sources, "round": [0] * len(uids)})


def test_only_random_audit_labels_come_back():
    table = _labels(["a", "b", "c", "d"], [1, 0, 1, 1], ["active", "random-audit", "seed", "random-audit"])
    audit = audit_labels(table, None)
    assert audit.column("uid").to_pylist() == ["b", "d"]
    assert audit.column("label").to_pylist() == [0, 1]
    assert audit.column("weight").to_pylist() == [1.0, 1.0]


def test_no_random_audit_labels_is_a_data_error_listing_the_sources():
    table = _labels(["a", "b", "c"], [1, 0, 1], ["active", "active", "seed"])
    with pytest.raises(DataError, match=r"no random-audit labels among 3 labels \(sources: active=2, seed=1\)"):
        audit_labels(table, None)


def test_conflicting_audit_labels_are_a_data_error_and_repeats_collapse():
    repeat = _labels(["a", "a", "b"], [1, 1, 0], ["random-audit"] * 3)
    assert audit_labels(repeat, None).num_rows == 2
    conflict = _labels(["a", "a", "b"], [1, 0, 0], ["random-audit"] * 3)
    with pytest.raises(DataError, match="conflicting"):
        audit_labels(conflict, None)


def test_missing_column_and_bad_label_are_data_errors():
    with pytest.raises(DataError, match="'source'"):
        audit_labels(pa.table({"uid": ["a"], "label": [1]}), None)
    with pytest.raises(DataError, match="0 or 1, got 3"):
        audit_labels(_labels(["a"], [3], ["random-audit"]), None)


def test_audit_label_outside_the_sample_is_a_data_error():
    uids, scores = _pool(100)
    sample = draw_audit_sample(uids, scores, 10, seed=0)
    outside = next(u for u in uids if u not in set(sample.column("uid").to_pylist()))
    with pytest.raises(DataError, match="not in the audit sample"):
        audit_labels(_labels([outside], [1], ["random-audit"]), sample)


def test_partly_labelled_stratum_scales_its_inclusion_probability():
    uids, scores = _pool(1000)
    sample = draw_audit_sample(uids, scores, 100, strategy="stratified", n_strata=2, seed=0)
    drawn = sample.column("uid").to_pylist()
    stratum = sample.column("stratum").to_numpy()
    top = [u for u, h in zip(drawn, stratum, strict=True) if h == 1]
    # half of the bottom stratum is left unlabelled
    bottom = [u for u, h in zip(drawn, stratum, strict=True) if h == 0][:25]
    table = _labels(top + bottom, [0] * (len(top) + len(bottom)), ["random-audit"] * (len(top) + len(bottom)))
    audit = audit_labels(table, sample)
    uid, probability = audit.column("uid").to_pylist(), audit.column("inclusion_probability").to_pylist()
    prob = dict(zip(uid, probability, strict=True))
    assert prob[top[0]] == pytest.approx(50 / 500)
    assert prob[bottom[0]] == pytest.approx(25 / 500)


def test_polars_label_table_is_accepted():
    pl = pytest.importorskip("polars")
    frame = pl.DataFrame({"uid": ["a", "b"], "label": [1, 0], "source": ["random-audit", "active"]})
    assert audit_labels(frame, None).column("uid").to_pylist() == ["a"]


def test_end_to_end_draw_label_filter_certify():
    # Active-learning labels sit beside the audit in the store; only the audit reaches the certificate.
    rng = np.random.default_rng(70)
    uids, scores = _pool(50_000, seed=7)
    truth = rng.random(50_000) < scores**8  # positives concentrate at high scores
    sample = draw_audit_sample(uids, scores, 3000, strategy="stratified", n_strata=4, seed=7)
    index = {u: i for i, u in enumerate(uids)}
    drawn = sample.column("uid").to_pylist()
    active = [u for u in uids[np.argsort(-scores)][:200]]
    store = _labels(
        drawn + active,
        [int(truth[index[u]]) for u in drawn] + [1] * 200,
        ["random-audit"] * len(drawn) + ["active"] * 200,
    )
    audit = audit_labels(store, sample)
    assert audit.num_rows == len(drawn)
    rows = np.array([index[u] for u in audit.column("uid").to_pylist()])
    cert = certified_threshold(
        scores[rows], audit.column("label").to_numpy(), target_recall=0.8, confidence=0.9,
        weights=audit.column("weight").to_numpy(), strata=audit.column("stratum").to_numpy(),
    )
    assert cert.n_labels == len(drawn)
    true_pos = np.sort(scores[truth])
    true_recall = 1 - np.searchsorted(true_pos, cert.threshold, side="left") / true_pos.size
    assert cert.certified
    assert true_recall >= 0.8
