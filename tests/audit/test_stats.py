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
    adjust_pvalues,
    benjamini_hochberg,
    chi_square_test,
    group_statistics,
    holm,
    kish_ess,
    rate_ratio,
    two_proportion_p,
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
    np.testing.assert_allclose(g.share_change_rel[:2], [(30 / 70 - 0.6) / 0.6, (40 / 70 - 0.4) / 0.4])
    assert g.reference == "a" and math.isnan(g.share_before[2])
    assert g.notes == []  # every group has rows; the excluded one is not "empty" either


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
    # The reference is male (the default for an attribute with a "male" group): women who are nurses lose 1/3 as often.
    assert entry(report, "concept:occupation=nurse:gender:cumulative:f")["reference"] == "male"
    assert nurse["female"]["flagged"] and 1 / 3.6 < nurse["female"]["ratio"] < 1 / 2.4
    doctor = groups_of(entry(report, "concept:occupation=doctor:gender:cumulative:f"))
    assert not doctor["female"]["flagged"]


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


# --- reference values at every confidence; what enters the tests and what does not -------------------------


@pytest.mark.parametrize(
    ("a", "n1", "c", "n2"), [(30, 100, 15, 100), (3, 10, 1, 12), (0, 50, 4, 50), (7, 7, 3, 9), (1, 2000, 9, 3000)]
)
def test_two_proportion_p_is_the_pearson_chi_square_p_of_the_2x2_table(a, n1, c, n2):
    # The pooled z-test and the uncorrected χ² test of the 2×2 table are the same test (z² = χ²).
    ref = sps.chi2_contingency([[a, n1 - a], [c, n2 - c]], correction=False).pvalue
    assert float(two_proportion_p(a, n1, c, n2)) == pytest.approx(ref, rel=1e-9)
    assert float(two_proportion_p(30, 100, 15, 100)) == pytest.approx(0.011085, abs=1e-6)


def test_two_proportion_p_is_nan_without_variation_or_rows():
    p = two_proportion_p([0, 5, 4, 10], [10, 5, 0, 10], [0, 8, 2, 10], [20, 8, 10, 10])
    assert np.isnan(p).all()  # none removed; all removed; an empty group; all removed again


@pytest.mark.parametrize("confidence", [0.8, 0.9, 0.95, 0.99])
def test_rate_ratio_katz_interval_at_every_confidence(confidence):
    ratio, lo, hi = rate_ratio([20, 1], [100, 40], [10, 1], [100, 10], confidence)
    z = sps.norm.ppf(1 - (1 - confidence) / 2)
    for i, (a, n1, c, n2) in enumerate([(20, 100, 10, 100), (1, 40, 1, 10)]):
        se = math.sqrt(1 / a - 1 / n1 + 1 / c - 1 / n2)
        expected = (a / n1) / (c / n2)
        assert ratio[i] == pytest.approx(expected)
        assert (lo[i], hi[i]) == pytest.approx((expected * math.exp(-z * se), expected * math.exp(z * se)))


def test_rate_ratio_edge_cases_with_one_removed_row():
    ratio, lo, hi = rate_ratio([3, 0, 2, 4], [10, 10, 10, 0], [1, 1, 0, 1], [5, 5, 5, 5])
    assert ratio[0] == pytest.approx(1.5) and np.isfinite([lo[0], hi[0]]).all()
    assert ratio[1] == 0 and np.isnan([lo[1], hi[1]]).all()  # group lost nothing: no log interval
    assert np.isnan([ratio[2], lo[2], hi[2]]).all()  # reference lost nothing: undefined
    assert np.isnan([ratio[3], lo[3], hi[3]]).all()  # empty group
    # every row of both removed: ratio 1 with a zero-width interval (1/a - 1/n1 = 0)
    ratio, lo, hi = rate_ratio(5, 5, 2, 2)
    assert (float(ratio), float(lo), float(hi)) == (1.0, 1.0, 1.0)


def test_chi_square_with_two_groups_matches_scipy():
    chi2, dof, p, v = chi_square_test([12, 30], [88, 70])
    ref = sps.chi2_contingency([[12, 88], [30, 70]], correction=False)
    assert (chi2, dof, p) == (pytest.approx(ref.statistic), 1, pytest.approx(ref.pvalue))
    assert v == pytest.approx(math.sqrt(ref.statistic / 200))
    # an empty group is dropped before counting groups; every row removed is as untestable as none
    assert chi_square_test([12, 30, 0], [88, 70, 0])[:2] == (pytest.approx(ref.statistic), 1)
    assert all(math.isnan(x) for x in chi_square_test([10, 20], [0, 0])[::2])


def _holm_by_hand(p):
    order = sorted(range(len(p)), key=lambda i: p[i])
    out, running = [0.0] * len(p), 0.0
    for rank, i in enumerate(order):
        running = max(running, (len(p) - rank) * p[i])
        out[i] = min(running, 1.0)
    return out


def test_holm_and_bh_match_references_on_many_pvalues():
    p = np.random.default_rng(3).random(12) ** 3
    np.testing.assert_allclose(benjamini_hochberg(p), sps.false_discovery_control(p, method="bh"), rtol=1e-12)
    np.testing.assert_allclose(holm(p), _holm_by_hand(list(p)), rtol=1e-12)
    with_nan = np.r_[np.nan, p, np.nan]
    np.testing.assert_allclose(benjamini_hochberg(with_nan)[1:-1], benjamini_hochberg(p), rtol=1e-12)
    assert np.isnan(holm([np.nan, np.nan])).all() and np.isnan(benjamini_hochberg([np.nan])).all()
    assert holm([]).shape == (0,) and benjamini_hochberg([]).shape == (0,)
    assert holm([0.6, 0.7]).tolist() == [1.0, 1.0]  # capped at 1


def test_adjust_pvalues_dispatches_and_rejects_unknown_methods():
    p = [0.01, 0.04, 0.03]
    np.testing.assert_array_equal(adjust_pvalues(p), holm(p))
    np.testing.assert_array_equal(adjust_pvalues(p, "bh"), benjamini_hochberg(p))
    np.testing.assert_array_equal(adjust_pvalues(p, "fdr_bh"), benjamini_hochberg(p))
    with pytest.raises(ValueError, match="unknown correction"):
        adjust_pvalues(p, "bonferroni")


@pytest.mark.parametrize("correction", ["holm", "bh"])
def test_audit_adjusts_every_pvalue_of_the_report_together(correction):
    df = planted(6000, {"a": 0.2, "b": 0.1, "c": 0.12, "d": 0.1}, seed=4)
    report = audit_report(count_shard(df, ["g"]), AuditOptions(correction=correction))
    slots = [s for e in report["entries"] for s in [e["test"], *(g for g in e["groups"] if not g["suppressed"])]]
    raw = np.array([math.nan if s["p"] is None else s["p"] for s in slots])
    tested = np.isfinite(raw)
    ref = sps.false_discovery_control(raw[tested], method="bh") if correction == "bh" else _holm_by_hand(
        list(raw[tested]))
    np.testing.assert_allclose([s["p_adj"] for s, t in zip(slots, tested, strict=True) if t], ref, rtol=1e-12)
    assert tested.sum() >= 4
    flagged = {g["group"] for g in groups_of(entry(report, "attribute:g:stage:f")).values() if g["flagged"]}
    assert flagged == {"a"}


@pytest.mark.parametrize("confidence", [0.8, 0.9, 0.99])
def test_group_statistics_intervals_follow_the_confidence(confidence):
    g = group_statistics(["a", "b"], [200, 100], [150, 90], confidence=confidence)
    lo, hi = wilson_interval([50, 10], [200, 100], confidence)
    np.testing.assert_allclose(g.removal_ci[0], lo)
    np.testing.assert_allclose(g.removal_ci[1], hi)
    _, rlo, rhi = rate_ratio([50, 10], [200, 100], 50, 200, confidence)
    np.testing.assert_allclose(g.ratio_ci[0], rlo)
    np.testing.assert_allclose(g.ratio_ci[1], rhi)


def test_excluded_groups_stay_out_of_shares_ratios_and_tests():
    # "unknown" is the largest group and loses 90% of its rows; it must move none of the numbers of a and b.
    groups, before, kept = ["a", "b", "unknown"], [300, 200, 1000], [240, 170, 100]
    g = group_statistics(groups, before, kept, included=[True, True, False])
    alone = group_statistics(groups[:2], before[:2], kept[:2])
    assert g.reference == "a" == alone.reference
    for name in ["share_before", "share_after", "share_change_pp", "ratio", "p_value"]:
        np.testing.assert_allclose(getattr(g, name)[:2], getattr(alone, name), err_msg=name)
        assert math.isnan(getattr(g, name)[2]), name
    assert (g.chi2, g.dof, g.chi2_p) == (alone.chi2, 1, alone.chi2_p)
    ref = sps.chi2_contingency([[60, 240], [30, 170]], correction=False)
    assert g.chi2 == pytest.approx(ref.statistic) and g.chi2_p == pytest.approx(ref.pvalue)
    assert g.p_value[1] == pytest.approx(ref.pvalue)  # b against the reference a: the same 2×2 table
    # the excluded group still gets its own removal rate and interval
    assert g.removal_rate[2] == pytest.approx(0.9) and g.removal_ci[0][2] > 0.85


def test_group_statistics_reference_notes_and_bad_counts():
    g = group_statistics(["a", "b"], [100, 50], [100, 40])
    assert g.reference == "a" and any("reference group a lost no rows" in n for n in g.notes)
    assert math.isnan(g.ratio[1]) and g.p_value[1] == pytest.approx(
        sps.chi2_contingency([[0, 100], [10, 40]], correction=False).pvalue)
    tie = group_statistics(["x", "y"], [50, 50], [40, 45])
    assert tie.reference == "x"  # ties: first in order
    named = group_statistics(["x", "y"], [50, 50], [40, 45], reference="y")
    assert named.ratio[0] == pytest.approx(2.0) and math.isnan(named.p_value[1])
    one = group_statistics(["x", "y"], [50, 0], [40, 0])
    assert any("fewer than two groups" in n for n in one.notes) and math.isnan(one.chi2)
    gone = group_statistics(["x", "y"], [50, 20], [0, 0])
    assert any("removed every row" in n for n in gone.notes) and np.isnan(gone.share_after).all()
    with pytest.raises(ValueError, match="kept counts"):
        group_statistics(["x"], [5], [6])
    with pytest.raises(ValueError, match="kept counts"):
        group_statistics(["x"], [5], [-1])
    with pytest.raises(ValueError, match="not among the groups"):
        group_statistics(["x"], [5], [4], reference="z")


def test_kish_ess_of_small_weights_is_not_zero():
    # Σw² <= 1 is no reason for 0: equal weights of any size give the number of rows
    assert kish_ess([0.5]) == pytest.approx(1.0)
    assert kish_ess([0.2, 0.2, 0.2]) == pytest.approx(3.0)
    assert kish_ess([0.1, 0.3], counts=[1, 2]) == pytest.approx(0.49 / 0.19)
    assert kish_ess([]) == 0.0 and kish_ess([0.0, 0.0]) == 0.0


def test_chi_square_keeps_one_row_groups_and_single_removals():
    # a group of one row is a group; one removed row in all is enough to test
    for removed, kept in [([1, 10, 20], [0, 90, 80]), ([1, 0], [9, 10]), ([5, 6], [0, 1])]:
        chi2, dof, p, _ = chi_square_test(removed, kept)
        ref = sps.chi2_contingency(np.stack([removed, kept], axis=1), correction=False)
        assert (chi2, dof, p) == (pytest.approx(ref.statistic), ref.dof, pytest.approx(ref.pvalue))


@pytest.mark.parametrize(("removed", "kept"), [([0, 0], [10, 20]), ([10, 20], [0, 0]), ([3, 0], [7, 0]), ([], [])])
def test_chi_square_without_anything_to_compare_is_nan_with_zero_dof(removed, kept):
    chi2, dof, p, v = chi_square_test(removed, kept)
    assert dof == 0 and math.isnan(chi2) and math.isnan(p) and math.isnan(v)


def test_one_pvalue_is_its_own_adjustment():
    assert holm([0.03]).tolist() == [0.03] and benjamini_hochberg([0.03]).tolist() == [0.03]
    np.testing.assert_array_equal(holm([np.nan, 0.2]), [np.nan, 0.2])
    np.testing.assert_array_equal(benjamini_hochberg([0.2, np.nan]), [0.2, np.nan])
    assert benjamini_hochberg([0.9, 0.95, 1.0]).max() == 1.0


def test_group_statistics_default_confidence_is_95_percent_and_lengths_must_agree():
    default = group_statistics(["a", "b"], [200, 100], [150, 90])
    explicit = group_statistics(["a", "b"], [200, 100], [150, 90], confidence=0.95)
    np.testing.assert_array_equal(default.removal_ci, explicit.removal_ci)
    np.testing.assert_array_equal(default.ratio_ci, explicit.ratio_ci)
    with pytest.raises(ValueError, match="one entry per group"):
        group_statistics(["a", "b", "c"], [10, 20], [5, 5])
    with pytest.raises(ValueError, match="one entry per group"):
        group_statistics(["a", "b"], [10, 20], [5, 5], included=[True])


def test_a_group_of_one_row_takes_part():
    g = group_statistics(["a", "b"], [1, 9], [0, 5])
    np.testing.assert_allclose(g.share_before, [0.1, 0.9])
    np.testing.assert_allclose(g.share_after, [0.0, 1.0])
    assert g.reference == "b" and g.ratio[0] == pytest.approx(1 / (4 / 9))
    assert g.dof == 1 and g.chi2 == pytest.approx(
        sps.chi2_contingency([[1, 0], [4, 5]], correction=False).statistic)


def test_the_reference_lost_no_rows_note_follows_what_was_removed():
    def notes(before, kept, reference="r"):
        return " | ".join(group_statistics(["r", "x"], before, kept, reference=reference).notes)

    assert "reference group r lost no rows" in notes([1, 5], [1, 4])  # a one-row reference, one removal in all
    assert "lost no rows" not in notes([5, 5], [5, 5])  # nothing removed at all: another note says so
    assert "lost no rows" not in notes([0, 5], [0, 4])  # an empty reference has no rate to lose rows from


def test_intersection_tests_do_not_dilute_the_main_effects():
    # Families are corrected apart and split alpha (main effects 0.5, intersections 0.25 when there is no concept
    # view): adding many intersection tests multiplies a main effect's adjusted p by 1.5, however many they are.
    rng = np.random.default_rng(7)
    n = 20000
    g = rng.choice(["a", "b"], n)
    df = pl.DataFrame({"g": g, **{f"h{i}": rng.choice(list("pqrstu"), n) for i in range(4)},
                       "keep:f": rng.random(n) > np.where(g == "a", 0.10, 0.05)})
    attrs = ["g", "h0", "h1", "h2", "h3"]
    crossed = audit_report(count_shard(df, attrs), AuditOptions(references={"g": "b"}))
    alone = audit_report(count_shard(df, attrs), AuditOptions(references={"g": "b"}, intersections=()))
    assert any(e["kind"] == "intersection" for e in crossed["entries"])
    assert not any(e["kind"] == "intersection" for e in alone["entries"])
    with_many = groups_of(entry(crossed, "attribute:g:stage:f"))["a"]["p_adj"]
    without = groups_of(entry(alone, "attribute:g:stage:f"))["a"]["p_adj"]
    assert with_many == pytest.approx(min(1.0, 1.5 * without))
    assert with_many < 0.05  # still flagged: 10% vs 5% removed
