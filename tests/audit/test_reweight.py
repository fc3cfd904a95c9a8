from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from sanitize.audit.counts import count_shard
from sanitize.audit.reweight import apply_weights, weighting_plan
from sanitize.errors import ConfigError, DataError


def planted_shift(n: int = 20000, seed: int = 0) -> pl.DataFrame:
    """Pre-filter: age ~ 45/45/10 (young/old/unknown), gender 50/50. The filter removes old people 3x as often
    and women a bit more: the kept set is skewed young and male."""
    rng = np.random.default_rng(seed)
    age = rng.choice(["young", "old", "unknown"], n, p=[0.45, 0.45, 0.1])
    gender = rng.choice(["female", "male"], n)
    rate = np.where(age == "old", 0.3, 0.1) + np.where(gender == "female", 0.1, 0.0)
    return pl.DataFrame(
        {
            "uid": [f"u{i}" for i in range(n)],
            "age": age,
            "gender": gender,
            "keep:safety": rng.random(n) >= rate,
            "keep:dedup": rng.random(n) >= 0.05,
        }
    )


def weighted_share(df: pl.DataFrame, weights, attribute: str) -> dict[str, float]:
    joined = df.join(pl.from_arrow(weights), on="uid", how="inner")
    total = joined["weight"].sum()
    agg = joined.group_by(attribute).agg(pl.col("weight").sum())
    return {g: w / total for g, w in agg.iter_rows()}


def share(df: pl.DataFrame, attribute: str) -> dict[str, float]:
    agg = df.group_by(attribute).len()
    return {g: c / df.height for g, c in agg.iter_rows()}


@pytest.mark.parametrize(
    ("attributes", "method"), [(["age"], None), (["age", "gender"], None), (["age", "gender"], "rake")]
)
def test_weights_remove_the_planted_shift(attributes, method):
    df = planted_shift()
    plan = weighting_plan(count_shard(df, ["age", "gender"]), attributes, method=method)
    weights = apply_weights(df, plan)
    kept = df.filter(pl.col("keep:safety") & pl.col("keep:dedup"))
    assert weights.column_names == ["uid", "weight"]
    assert weights["uid"].to_pylist() == kept["uid"].to_list()
    assert np.mean(weights["weight"].to_numpy()) == pytest.approx(1.0, abs=1e-12)
    for a in attributes:
        before, after = share(df, a), weighted_share(df, weights, a)
        unweighted = share(kept, a)
        assert max(abs(unweighted[g] - before[g]) for g in before) > 0.02  # the shift is there ...
        assert max(abs(after[g] - before[g]) for g in before) < 1e-9  # ... and the weights undo it
        assert plan.shift_unweighted[a]["max_abs_pp"] > 2
        assert plan.shift_weighted[a]["max_abs_pp"] < 1e-7
    w = weights["weight"].to_numpy()
    assert plan.ess == pytest.approx(w.sum() ** 2 / (w**2).sum(), rel=1e-9)
    assert plan.ess < plan.kept_rows


def test_joint_poststratification_restores_the_joint_distribution():
    df = planted_shift(seed=1)
    plan = weighting_plan(count_shard(df, ["age", "gender"]), ["age", "gender"])
    weights = apply_weights(df, plan)
    df = df.with_columns((pl.col("age") + "/" + pl.col("gender")).alias("cell"))
    before, after = share(df, "cell"), weighted_share(df, weights, "cell")
    assert max(abs(after[g] - before[g]) for g in before) < 1e-9


def test_user_target_is_reached_and_unlisted_groups_keep_their_share():
    df = planted_shift(seed=2)
    counts = count_shard(df, ["age", "gender"])
    plan = weighting_plan(counts, ["age"], target={"young": 0.75, "old": 0.25})
    weights = apply_weights(df, plan)
    kept = df.filter(pl.col("keep:safety") & pl.col("keep:dedup"))
    unknown_kept = share(kept, "age")["unknown"]
    after = weighted_share(df, weights, "age")
    assert after["unknown"] == pytest.approx(unknown_kept, abs=1e-12)
    assert after["young"] == pytest.approx(0.75 * (1 - unknown_kept), abs=1e-12)
    assert after["young"] / after["old"] == pytest.approx(3.0, rel=1e-9)
    raked = weighting_plan(
        counts, ["age", "gender"], target={"age": {"young": 0.75, "old": 0.25}, "gender": {"female": 0.5, "male": 0.5}}
    )
    assert raked.method == "rake"
    assert max(s["max_abs_pp"] for s in raked.shift_weighted.values()) < 1e-6


def test_kish_ess_of_a_hand_example():
    # Pre-filter 50/50; kept 2 of a and 2 of b ... weights by hand: a 1, b 1 -> ESS 4.
    # Target 1/3 a, 2/3 b: weights a 2/3, b 4/3 -> (4)^2 / (2*(4/9) + 2*(16/9)) = 16 / (40/9) = 3.6.
    df = pl.DataFrame({"uid": list("abcd"), "g": ["a", "a", "b", "b"], "keep:f": [True, True, True, True]})
    counts = count_shard(df, ["g"])
    assert weighting_plan(counts, ["g"]).ess == pytest.approx(4.0)
    plan = weighting_plan(counts, ["g"], target={"a": 1 / 3, "b": 2 / 3})
    assert plan.ess == pytest.approx(3.6)
    np.testing.assert_allclose(sorted(apply_weights(df, plan)["weight"].to_pylist()), [2 / 3, 2 / 3, 4 / 3, 4 / 3])


def test_group_removed_entirely_is_reported_unreachable():
    df = pl.DataFrame(
        {"uid": list("abcdef"), "g": ["a", "a", "b", "b", "c", "c"], "keep:f": [True, True, True, False, False, False]}
    )
    plan = weighting_plan(count_shard(df, ["g"]), ["g"])
    assert plan.unreachable == ["g=c"]
    assert plan.shift_weighted["g"]["max_abs_pp"] == pytest.approx(100 / 3)
    summary = plan.summary()
    assert summary["unreachable"] == ["g=c"] and summary["ess"] == pytest.approx(plan.ess)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target": {"young": 0.7, "old": 0.2}}, "shares sum to 0.9, must sum to 1"),
        ({"target": {"young": 1.2, "old": -0.2}}, "must be a number >= 0"),
        ({"target": {"yuong": 0.5, "old": 0.5}}, "do not occur in the data"),
        ({"target": {"height": {"tall": 1.0}}}, "'height' is not among"),
        ({"method": "magic"}, "method must be one of"),
        ({"stage": "nope"}, "unknown stage 'nope'"),
    ],
)
def test_bad_targets_and_options_are_config_errors(kwargs, message):
    counts = count_shard(planted_shift(2000), ["age", "gender"])
    with pytest.raises(ConfigError, match=message):
        weighting_plan(counts, ["age"], **kwargs)


def test_bad_attribute_and_multi_attribute_poststratify_target():
    counts = count_shard(planted_shift(2000), ["age", "gender"])
    with pytest.raises(ConfigError, match="attribute 'height'"):
        weighting_plan(counts, ["height"])
    with pytest.raises(ConfigError, match="needs method 'rake'"):
        weighting_plan(counts, ["age", "gender"], target={"age": {"young": 0.5, "old": 0.5}}, method="poststratify")


def test_apply_weights_rejects_missing_columns_and_foreign_cells():
    df = planted_shift(2000)
    plan = weighting_plan(count_shard(df, ["age", "gender"]), ["age"])
    with pytest.raises(DataError, match="column 'uid' is missing"):
        apply_weights(df.drop("uid"), plan)
    foreign = df.with_columns(pl.lit("ancient").alias("age"))
    with pytest.raises(DataError, match="no kept rows for"):
        apply_weights(foreign, plan, source="shard 3")


# -- pinned by mutation testing (tools/mutate.py sanitize/audit/reweight.py) ----------------------------------------

def test_summary_of_a_hand_example():
    """Pre-filter a, b, c 2 rows each; kept a 2, b 1, c 0. Target 1/3 each: weights a (1/3)/(2/3) = 1/2, b 1,
    scaled to mean 1 over the 3 kept rows: a 3/4, b 3/2; weighted shares a 1/2, b 1/2, c 0 (unreachable)."""
    df = pl.DataFrame(
        {"uid": list("abcdef"), "g": ["a", "a", "b", "b", "c", "c"], "keep:f": [True, True, True, False, False, False]}
    )
    summary = weighting_plan(count_shard(df, ["g"]), ["g"]).summary()
    assert (summary["weight_min"], summary["weight_max"]) == pytest.approx((0.75, 1.5))
    third = pytest.approx(1 / 3)
    assert summary["marginals"]["g"] == [
        {"group": "a", "share_before": third, "share_kept": pytest.approx(2 / 3), "share_weighted": pytest.approx(0.5),
         "target": third},
        {"group": "b", "share_before": third, "share_kept": third, "share_weighted": pytest.approx(0.5),
         "target": third},
        {"group": "c", "share_before": third, "share_kept": 0.0, "share_weighted": 0.0, "target": third},
    ]
    # total variation distance: half the sum of the gaps (1/3 + 0 + 1/3 unweighted, 1/6 + 1/6 + 1/3 weighted)
    assert summary["shift_unweighted"]["g"] == {"max_abs_pp": pytest.approx(100 / 3), "tvd": pytest.approx(1 / 3)}
    assert summary["shift_weighted"]["g"] == {"max_abs_pp": pytest.approx(100 / 3), "tvd": pytest.approx(1 / 3)}
    assert summary["kept_rows"] == 3 and summary["iterations"] == 1


def test_a_plan_is_frozen():
    import dataclasses

    plan = weighting_plan(count_shard(planted_shift(200), ["age"]), ["age"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.method = "rake"


def test_a_plan_for_an_earlier_stage_covers_the_stages_up_to_it():
    counts = count_shard(planted_shift(2000), ["age"])  # stages: safety, then dedup
    assert weighting_plan(counts, ["age"], stage="safety").stages == ("safety",)
    assert weighting_plan(counts, ["age"]).stages == ("safety", "dedup")


def test_a_user_target_on_one_attribute_poststratifies_and_may_give_a_group_zero():
    counts = count_shard(planted_shift(2000), ["age"])
    plan = weighting_plan(counts, ["age"], target={"young": 1.0, "old": 0.0})
    assert plan.method == "poststratify" and plan.targets["age"]["old"] == 0.0


def test_an_empty_target_table_is_refused():
    counts = count_shard(planted_shift(2000), ["age", "gender"])
    with pytest.raises(ConfigError, match="must be a non-empty"):
        weighting_plan(counts, ["age", "gender"], target={"age": {}, "gender": {"female": 1.0}})


def test_raking_that_cannot_meet_both_margins_stops_after_200_iterations():
    """Kept cells young×female and old×male only: age 50/50 and gender 20/80 cannot both hold."""
    df = pl.DataFrame({"uid": list("abcd"), "age": ["young", "young", "old", "old"],
                       "gender": ["female", "female", "male", "male"], "keep:f": [True] * 4})
    plan = weighting_plan(count_shard(df, ["age", "gender"]), ["age", "gender"],
                          target={"age": {"young": 0.5, "old": 0.5}, "gender": {"female": 0.2, "male": 0.8}})
    assert plan.method == "rake" and plan.iterations == 200


def test_iteration_options_are_checked():
    counts = count_shard(planted_shift(2000), ["age", "gender"])
    for bad in ({"max_iter": 0}, {"tol": 0.0}, {"tol": -0.5}):
        with pytest.raises(ConfigError, match="max_iter must be >= 1 and tol > 0"):
            weighting_plan(counts, ["age"], **bad)
    assert weighting_plan(counts, ["age", "gender"], method="rake", max_iter=1).iterations == 1


def test_a_stage_that_keeps_no_row_cannot_be_weighted_one_kept_row_can():
    df = pl.DataFrame({"uid": list("abc"), "g": ["a", "a", "b"], "keep:f": [False, False, False]})
    with pytest.raises(DataError, match="no rows kept through stage 'f'"):
        weighting_plan(count_shard(df, ["g"]), ["g"])
    one = df.with_columns(pl.Series("keep:f", [True, False, False]))
    assert weighting_plan(count_shard(one, ["g"]), ["g"]).kept_rows == 1


def joint_example() -> pl.DataFrame:
    """Cells (g, h) with input / kept rows: (a, x) 2 / 2, (a, y) 2 / 1, (b, x) 1 / 0, (b, y) 1 / 1."""
    cells = [("a", "x", True), ("a", "x", True), ("a", "y", True), ("a", "y", False), ("b", "x", False),
             ("b", "y", True)]
    return pl.DataFrame({"uid": [f"u{i}" for i in range(6)], "g": [c[0] for c in cells], "h": [c[1] for c in cells],
                         "keep:f": [c[2] for c in cells]})


def test_joint_poststratification_of_a_hand_example():
    """Input shares 2/6, 2/6, 1/6, 1/6; kept shares 2/4, 1/4, 0, 1/4: weights 2/3, 4/3, -, 2/3, times 4 / (10/3)
    for mean 1 over the 4 kept rows: 0.8, 1.6, -, 0.8. The lost cell (b, x) is unreachable."""
    df = joint_example()
    plan = weighting_plan(count_shard(df, ["g", "h"]), ["g", "h"])
    assert plan.unreachable == ["g=b × h=x"]
    weights = apply_weights(df, plan)
    assert weights["uid"].to_pylist() == ["u0", "u1", "u2", "u5"]
    np.testing.assert_allclose(weights["weight"].to_numpy(), [0.8, 0.8, 1.6, 0.8], rtol=1e-12)


def test_raking_around_an_unreachable_group():
    """g = b has no kept rows: it is reported, and the reachable groups split the target in its proportions."""
    df = joint_example().with_columns(pl.Series("keep:f", [True, True, True, False, False, False]))
    plan = weighting_plan(count_shard(df, ["g", "h"]), ["g", "h"],
                          target={"g": {"a": 0.5, "b": 0.5}, "h": {"x": 0.25, "y": 0.75}})
    assert plan.unreachable == ["g=b"] and plan.iterations < 200
    weights = apply_weights(df, plan)
    # kept: (a, x) 2 rows, (a, y) 1 row; h 1/4 x, 3/4 y -> weights 1/8 each x row, 3/4 the y row, times 3 / 1
    np.testing.assert_allclose(weights["weight"].to_numpy(), [0.375, 0.375, 2.25], rtol=1e-9)
    zero = weighting_plan(count_shard(df, ["g", "h"]), ["g", "h"],
                          target={"g": {"a": 1.0, "b": 0.0}, "h": {"x": 0.25, "y": 0.75}})
    assert zero.unreachable == []  # a group aimed at 0 has nothing to restore
    assert weighting_plan(count_shard(df, ["g"]), ["g"], target={"a": 1.0, "b": 0.0}).unreachable == []


def test_one_raking_round_fits_each_attribute_in_turn():
    """max_iter=1: one pass of iterative proportional fitting, checked against the pass written out here."""
    df = planted_shift(3000, seed=3)
    counts = count_shard(df, ["age", "gender"])
    target = {"age": {"young": 0.5, "old": 0.4, "unknown": 0.1}, "gender": {"female": 0.7, "male": 0.3}}
    plan = weighting_plan(counts, ["age", "gender"], target=target, max_iter=1)
    cells = plan.cells
    kept = cells["kept"].to_numpy().astype(float)
    w = np.ones(len(kept))
    for a in ("age", "gender"):
        groups = cells[a].to_list()
        mass = {g: (kept * w)[[x == g for x in groups]].sum() / (kept * w).sum() for g in set(groups)}
        w = w * np.array([target[a][g] / mass[g] for g in groups])
    w = w * kept.sum() / (kept * w).sum()
    assert plan.iterations == 1
    np.testing.assert_allclose(cells["weight"].to_numpy(), w, rtol=1e-9)


@pytest.mark.parametrize("tol", [1e-2, 1e-3, 1e-4])
def test_raking_stops_only_when_every_group_is_within_tol(tol):
    rows = [("young", "f")] * 3 + [("old", "m")] * 3 + [("mid", "f")] * 2 + [("mid", "m"), ("young", "m")]
    df = pl.DataFrame({"uid": [f"u{i}" for i in range(10)], "age": [r[0] for r in rows],
                       "gender": [r[1] for r in rows], "keep:f": [True] * 10})
    plan = weighting_plan(count_shard(df, ["age", "gender"]), ["age", "gender"], tol=tol,
                          target={"age": {"young": 0.5, "old": 0.3, "mid": 0.2}, "gender": {"f": 0.2, "m": 0.8}})
    assert plan.iterations < 200
    assert all(shift["max_abs_pp"] / 100 < tol for shift in plan.shift_weighted.values())


def test_apply_weights_keeps_rows_a_stage_never_saw_and_names_the_first_foreign_row():
    df = joint_example()
    plan = weighting_plan(count_shard(df, ["g", "h"]), ["g", "h"])
    unseen = df.with_columns(pl.Series("keep:f", [True, None, True, False, False, True], dtype=pl.Boolean))
    assert apply_weights(unseen, plan)["uid"].to_pylist() == ["u0", "u1", "u2", "u5"]
    lost_cell_kept = df.with_columns(pl.Series("keep:f", [True, True, True, False, True, True]))
    with pytest.raises(DataError, match="shard: uid u4 falls in a cell"):
        apply_weights(lost_cell_kept, plan)
    foreign = df.with_columns(pl.Series("g", ["a", "z", "a", "a", "b", "z"]))
    with pytest.raises(DataError, match="shard: uid u1 falls in a cell"):
        apply_weights(foreign, plan)


@pytest.mark.parametrize("method, target", [
    ("poststratify", {"age": {"old": 1.0, "young": 0.0}}),
    ("rake", {"age": {"old": 1.0, "young": 0.0}, "gender": {"f": 0.5, "m": 0.5}}),
])
def test_a_target_that_only_groups_without_kept_rows_carry_is_refused(method, target):
    """Every row of the only group the target asks for was removed (the target gives the kept group 0): no weights
    reach it (they were 0/0 = NaN)."""
    df = pl.DataFrame({"age": ["young", "young", "old", "old"], "gender": ["f", "m", "f", "m"],
                       "keep:safety": [True, True, False, False]})
    counts = count_shard(df, ["age", "gender"])
    with pytest.raises(DataError, match="no kept rows: age=old"):
        weighting_plan(counts, list(target), target=target, method=method)
