from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from scipy import stats as sps

from sanitize.audit.analysis import AuditOptions, audit_report
from sanitize.audit.attributes import AttributeInfo
from sanitize.audit.counts import count_shard
from sanitize.audit.stats import (
    benjamini_hochberg,
    chi_square_test,
    group_statistics,
    holm,
    kish_ess,
    rate_ratio,
)
from sanitize.errors import ConfigError
from sanitize.intervals import wilson_interval


def entry(report: dict, entry_id: str) -> dict:
    return next(e for e in report["entries"] if e["id"] == entry_id)


def groups_of(e: dict) -> dict[str, dict]:
    return {g["group"]: g for g in e["groups"]}


def planted(n: int, rates: dict[str, float], seed: int, shares=None) -> pl.DataFrame:
    """One attribute `g` and one stage `f` removing each group at its own rate."""
    rng = np.random.default_rng(seed)
    labels = list(rates)
    g = rng.choice(labels, n, p=shares)
    rate = np.array([rates[x] for x in g])
    return pl.DataFrame({"uid": np.arange(n).astype(str), "g": g, "keep:f": rng.random(n) >= rate})


def test_removal_rates_equal_direct_count_and_fairlearn():
    metrics = pytest.importorskip("fairlearn.metrics")
    df = planted(5000, {"a": 0.3, "b": 0.1, "c": 0.05, "d": 0.0}, seed=1)
    report = audit_report(count_shard(df, ["g"]))
    got = {k: v["removal_rate"] for k, v in groups_of(entry(report, "attribute:g:stage:f")).items() if v["before"]}
    removed = (~df["keep:f"]).to_numpy().astype(int)
    frame = metrics.MetricFrame(
        metrics=metrics.selection_rate, y_true=removed, y_pred=removed, sensitive_features=df["g"].to_numpy()
    )
    by_group = frame.by_group.to_dict()
    assert set(got) == set(by_group)
    for group, rate in by_group.items():
        direct = df.filter(pl.col("g") == group).select((~pl.col("keep:f")).mean()).item()
        assert abs(got[group] - direct) <= 1e-12
        assert abs(got[group] - rate) <= 1e-12


def test_wilson_interval_known_values():
    lo, hi = wilson_interval([0, 5, 10, 0], [10, 10, 10, 0])
    # Reference values from the closed form (Wilson 1927), z = 1.959964.
    np.testing.assert_allclose(lo[:3], [0.0, 0.2365931, 0.7224672], atol=1e-6)
    np.testing.assert_allclose(hi[:3], [0.2775328, 0.7634069, 1.0], atol=1e-6)
    assert math.isnan(lo[3]) and math.isnan(hi[3])


def test_wilson_interval_covers_95_percent_in_simulation():
    rng = np.random.default_rng(7)
    coverages = []
    for n, p in [(50, 0.3), (200, 0.1), (400, 0.5), (1000, 0.02)]:
        k = rng.binomial(n, p, size=20000)
        lo, hi = wilson_interval(k, np.full(k.shape, n))
        coverages.append(float(np.mean((lo <= p) & (p <= hi))))
    for c in coverages:
        assert abs(c - 0.95) <= 0.02, coverages


def test_rate_ratio_katz_interval_and_edge_cases():
    ratio, lo, hi = rate_ratio([20, 0, 5, 5], [100, 100, 100, 0], [10, 10, 0, 10], [100, 100, 100, 100])
    se = math.sqrt(1 / 20 - 1 / 100 + 1 / 10 - 1 / 100)
    assert ratio[0] == pytest.approx(2.0)
    assert lo[0] == pytest.approx(2 * math.exp(-1.959964 * se), rel=1e-6)
    assert hi[0] == pytest.approx(2 * math.exp(1.959964 * se), rel=1e-6)
    assert ratio[1] == 0 and math.isnan(lo[1])  # group lost nothing: ratio 0, no log interval
    assert math.isnan(ratio[2])  # reference lost nothing: undefined
    assert math.isnan(ratio[3])  # empty group


def test_chi_square_matches_scipy_and_handles_degenerate_tables():
    removed, kept = np.array([30, 10, 12]), np.array([70, 90, 88])
    chi2, dof, p, v = chi_square_test(removed, kept)
    ref = sps.chi2_contingency(np.stack([removed, kept], axis=1), correction=False)
    assert chi2 == pytest.approx(ref.statistic) and p == pytest.approx(ref.pvalue) and dof == ref.dof
    assert v == pytest.approx(math.sqrt(ref.statistic / 300))
    assert all(math.isnan(x) for x in chi_square_test([0, 0], [10, 20])[::2])  # nothing removed
    assert math.isnan(chi_square_test([3, 0], [7, 0])[0])  # one group with rows


def test_holm_and_bh_known_values():
    p = [0.01, 0.04, 0.03, 0.005, float("nan")]
    np.testing.assert_allclose(holm(p)[:4], [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(benjamini_hochberg(p)[:4], [0.02, 0.04, 0.04, 0.02])
    assert math.isnan(holm(p)[4])


def test_kish_ess_hand_example():
    # Weights 1, 1, 2, 2: (1+1+2+2)^2 / (1+1+4+4) = 36 / 10.
    assert kish_ess([1, 1, 2, 2]) == pytest.approx(3.6)
    assert kish_ess([1, 2], counts=[2, 2]) == pytest.approx(3.6)
    assert kish_ess([0.5] * 8) == pytest.approx(8)


def test_planted_two_fold_removal_is_flagged_with_the_right_magnitude():
    df = planted(40000, {"A": 0.2, "B": 0.1}, seed=3)
    report = audit_report(count_shard(df, ["g"]), AuditOptions(references={"g": "B"}))
    a = groups_of(entry(report, "attribute:g:stage:f"))["A"]
    assert a["flagged"]
    lo, hi = a["ratio_ci"]
    assert lo <= 2.0 <= hi
    assert 1.8 < a["ratio"] < 2.2
    assert hi / lo < 1.3  # tight at this size
    top = report["flags"][0]
    assert (top["group"], top["reference"], top["rank"]) == ("A", "B", 1)
    assert top["share_change_pp"] < -2  # A's share falls: 50% * 0.8 / (0.5*0.8 + 0.5*0.9) = 47.1%


def test_independent_filter_is_flagged_in_at_most_5_percent_of_runs():
    flagged_runs = 0
    for seed in range(200):
        rng = np.random.default_rng(seed)
        n = 3000
        df = pl.DataFrame(
            {
                "g": rng.choice(["a", "b", "c", "unknown"], n, p=[0.4, 0.3, 0.2, 0.1]),
                "h": rng.choice(["x", "y"], n),
                "keep:s1": rng.random(n) > 0.1,
                "keep:s2": rng.random(n) > 0.05,
            }
        )
        report = audit_report(count_shard(df, ["g", "h"]), AuditOptions(min_ratio=1.0, min_cell=10))
        flagged_runs += bool(report["flags"])
    assert flagged_runs <= 10, flagged_runs


def test_stage_with_zero_removed_rows_reports_none_and_says_why():
    df = planted(500, {"a": 0.0, "b": 0.0}, seed=0)
    report = audit_report(count_shard(df, ["g"]))
    e = entry(report, "attribute:g:stage:f")
    assert e["rows_removed"] == 0
    assert e["test"]["chi2"] is None and e["test"]["p"] is None and e["test"]["cramers_v"] is None
    assert all(g["ratio"] is None for g in e["groups"])
    assert all(g["removal_rate"] in (0.0, None) for g in e["groups"])
    assert any("removed no rows" in n for n in e["notes"])
    assert report["flags"] == []


def test_group_with_zero_rows_reports_none_and_says_why():
    info = AttributeInfo(name="g", groups=("a", "b", "never"))
    df = planted(500, {"a": 0.2, "b": 0.1}, seed=0)
    e = entry(audit_report(count_shard(df, [info])), "attribute:g:stage:f")
    never = groups_of(e)["never"]
    assert never["before"] == 0
    assert never["removal_rate"] is None and never["removal_ci"] == [None, None] and never["ratio"] is None
    assert any("never" in n and "undefined" in n for n in e["notes"])


def test_direct_group_statistics_shares():
    g = group_statistics(["a", "b", "unknown"], [60, 40, 100], [30, 40, 10], included=[True, True, False])
    np.testing.assert_allclose(g.share_before[:2], [0.6, 0.4])
    np.testing.assert_allclose(g.share_after[:2], [30 / 70, 40 / 70])
    np.testing.assert_allclose(g.share_change_pp[:2], 100 * np.array([30 / 70 - 0.6, 40 / 70 - 0.4]))
    assert g.reference == "a" and math.isnan(g.share_before[2])


def test_intersections_suppress_small_cells():
    rng = np.random.default_rng(0)
    n = 2000
    g = rng.choice(["f", "m"], n).astype(object)
    age = rng.choice(["young", "old"], n).astype(object)
    g[:5], age[:5] = "f", "centenarian"
    df = pl.DataFrame({"g": g, "age": age, "keep:f": rng.random(n) > 0.1})
    report = audit_report(count_shard(df, ["g", "age"]), AuditOptions(min_cell=10))
    e = entry(report, "intersection:g × age:stage:f")
    cells = groups_of(e)
    assert cells["f × centenarian"] == {"group": "f × centenarian", "suppressed": True}
    assert cells["m × old"]["suppressed"] is False and cells["m × old"]["before"] >= 10
    assert any("suppressed" in n for n in e["notes"])


def test_concept_conditional_shares_within_an_occupation():
    rng = np.random.default_rng(5)
    n = 20000
    occ = rng.choice(["nurse", "doctor", "unknown"], n, p=[0.1, 0.1, 0.8])
    nurse_gender = rng.choice(["female", "male"], n, p=[0.7, 0.3])
    gender = np.where(occ == "nurse", nurse_gender, rng.choice(["female", "male"], n))
    # The filter removes men who are nurses 3x as often as women who are nurses.
    rate = np.where((occ == "nurse") & (gender == "male"), 0.3, 0.1)
    df = pl.DataFrame({"occupation": occ, "gender": gender, "keep:f": rng.random(n) >= rate})
    report = audit_report(count_shard(df, ["occupation", "gender"]), AuditOptions(concepts=[("occupation", "gender")]))
    nurse = groups_of(entry(report, "concept:occupation=nurse:gender:cumulative:f"))
    assert nurse["female"]["share_after"] > nurse["female"]["share_before"] + 0.04
    assert nurse["male"]["flagged"] and 2.4 < nurse["male"]["ratio"] < 3.6
    doctor = groups_of(entry(report, "concept:occupation=doctor:gender:cumulative:f"))
    assert not doctor["male"]["flagged"]


def test_bad_options_are_config_errors():
    counts = count_shard(planted(100, {"a": 0.1, "b": 0.1}, seed=0), ["g"])
    for opts, message in [
        (AuditOptions(min_cell=0), "min_cell"),
        (AuditOptions(alpha=1.5), "alpha"),
        (AuditOptions(min_ratio=0.5), "min_ratio"),
        (AuditOptions(correction="bonferroni"), "correction"),
        (AuditOptions(intersections=[("g", "nope")]), "unknown attribute 'nope'"),
        (AuditOptions(concepts=[("g", "g")]), "concept"),
        (AuditOptions(references={"zz": "a"}), "references"),
    ]:
        with pytest.raises(ConfigError, match=message):
            audit_report(counts, opts)
