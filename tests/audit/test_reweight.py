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
