from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from sanitize.audit.counts import CountTable, count_shard, merge_counts
from sanitize.audit.specs import load_lexicon
from sanitize.errors import ConfigError, DataError


def make_shard(n: int, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    keep_b = pl.Series(rng.random(n) > 0.2)
    # Stage b looked only at rows stage a kept (null elsewhere), like a dedup run on survivors.
    keep_a = rng.random(n) > 0.1
    return pl.DataFrame(
        {
            "uid": [f"{seed}-{i}" for i in range(n)],
            "g": rng.choice(["x", "y", "z"], n).tolist(),
            "h": pl.Series(rng.choice(["p", "q", "unknown"], n).tolist()).set(pl.Series(rng.random(n) < 0.05), None),
            "caption": rng.choice(["a woman", "A man and a woman", "a dog", None], n).tolist(),
            "keep:a": keep_a,
            "keep:b": keep_b.set(pl.Series(~keep_a), None),
        }
    )


def direct_counts(df: pl.DataFrame, group: str, value: str) -> dict[str, int]:
    rows = df.filter(pl.col(group).fill_null("unknown") == value)
    a, b = rows["keep:a"], rows["keep:b"]
    return {
        "n": rows.height,
        "evaluated:a": int(a.is_not_null().sum()),
        "kept:a": int(a.fill_null(False).sum()),
        "survived:a": int(a.fill_null(True).sum()),
        "evaluated:b": int(b.is_not_null().sum()),
        "kept:b": int(b.fill_null(False).sum()),
        "survived:b": int((a.fill_null(True) & b.fill_null(True)).sum()),
    }


def test_counts_equal_a_direct_count():
    df = make_shard(3000, 0)
    counts = count_shard(df, ["g", "h"])
    assert counts.stages == ("a", "b")
    assert counts.rows == 3000
    for attr, value in [("g", "x"), ("g", "z"), ("h", "q"), ("h", "unknown")]:
        row = counts.marginal([attr]).filter(pl.col(attr) == value).row(0, named=True)
        assert {k: row[k] for k in direct_counts(df, attr, value)} == direct_counts(df, attr, value)


def test_merge_of_shards_equals_count_of_the_whole():
    shards = [make_shard(n, seed) for seed, n in enumerate([500, 1, 1200])]
    merged = merge_counts([count_shard(s, ["g", "h"], keywords=["woman", "man"]) for s in shards])
    whole = count_shard(pl.concat(shards), ["g", "h"], keywords=["woman", "man"])
    assert merged.cells.equals(whole.cells)
    assert merged.keywords.equals(whole.keywords)


def test_keyword_counts_count_captions_mentioning_each_term():
    df = make_shard(2000, 3)
    counts = count_shard(df, ["g"], keywords=load_lexicon("caption_gender"))
    kw = {r["term"]: r for r in counts.keywords.iter_rows(named=True)}
    caps = df["caption"].fill_null("")
    assert kw["woman"]["n"] == int(caps.str.contains("woman").sum())
    assert kw["man"]["n"] == int(caps.str.contains(r"\bman\b").sum())
    kept = df.filter(pl.col("keep:a").fill_null(True) & pl.col("keep:b").fill_null(True))
    assert kw["man"]["survived:b"] == int(kept["caption"].fill_null("").str.contains(r"\bman\b").sum())


def test_json_round_trip():
    counts = count_shard(make_shard(300, 1), ["g", "h"], keywords=["woman"])
    again = CountTable.from_json(counts.to_json())
    assert again.cells.equals(counts.cells)
    assert again.keywords.equals(counts.keywords)
    assert again.attributes == counts.attributes and again.stages == counts.stages


def test_stage_order_follows_columns_or_argument():
    df = make_shard(100, 2)
    assert count_shard(df, ["g"], stages=["b", "a"]).stages == ("b", "a")


def test_pyarrow_input_gives_the_same_counts():
    df = make_shard(400, 4)
    assert count_shard(df.to_arrow(), ["g", "h"]).cells.equals(count_shard(df, ["g", "h"]).cells)


@pytest.mark.parametrize(
    ("mutate", "error", "message"),
    [
        (lambda d: d.drop("g"), DataError, "attribute column 'g' is missing"),
        (lambda d: d.with_columns(pl.lit(1).alias("g")), DataError, "attribute column 'g' must hold strings"),
        (lambda d: d.with_columns(pl.lit(1).alias("keep:a")), DataError, "stage column 'keep:a' must be boolean"),
        (lambda d: d.drop("keep:a", "keep:b"), DataError, "no 'keep:<stage>' columns"),
    ],
)
def test_bad_shards_name_the_column(mutate, error, message):
    with pytest.raises(error, match=message) as info:
        count_shard(mutate(make_shard(10, 0)), ["g"], source="shard 7")
    assert "shard 7" in str(info.value)


def test_missing_stage_and_caption_columns_and_bad_merges():
    df = make_shard(10, 0)
    with pytest.raises(DataError, match="stage column 'keep:c' is missing"):
        count_shard(df, ["g"], stages=["a", "c"])
    with pytest.raises(DataError, match="caption column 'text' is missing"):
        count_shard(df, ["g"], keywords=["man"], caption_column="text")
    with pytest.raises(ConfigError, match="no attributes"):
        count_shard(df, [])
    with pytest.raises(DataError, match="has stages"):
        merge_counts([count_shard(df, ["g"]), count_shard(df, ["g"], stages=["a"])])
    with pytest.raises(DataError, match="has attributes"):
        merge_counts([count_shard(df, ["g"]), count_shard(df, ["h"])])
    with pytest.raises(ConfigError, match="no count tables"):
        merge_counts([])
