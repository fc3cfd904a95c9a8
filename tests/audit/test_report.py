from __future__ import annotations

import json
import re

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from sanitize.audit import (
    AuditOptions,
    lexicon_attribute,
    lexicon_info,
    load_attribute_spec,
    load_lexicon,
    run_audit,
    spec_info,
)


def strict_json(path):
    def reject(token):
        raise ValueError(f"non-standard JSON constant {token}")

    return json.loads(path.read_text(), parse_constant=reject)


def demo_shards(n: int = 6000, seed: int = 0) -> list[pl.DataFrame]:
    rng = np.random.default_rng(seed)
    gender = rng.choice(["female", "male", "no_person", "unknown"], n, p=[0.35, 0.35, 0.2, 0.1])
    age = rng.choice(["child", "young_adult", "middle_aged", "older", "unknown"], n)
    caption = rng.choice(["a woman nurse", "a man who is a nurse", "a doctor and her dog", "a bowl of fruit"], n)
    df = pl.DataFrame(
        {
            "uid": [f"u{i}" for i in range(n)],
            "gender": gender,
            "age": age,
            "caption": caption,
            "keep:sexual": rng.random(n) >= np.where(gender == "female", 0.2, 0.1),
            "keep:violence": np.ones(n, bool),  # removes nothing: must not divide by zero
            "keep:dedup": rng.random(n) >= 0.1,
        }
    )
    occupation = lexicon_attribute(df["caption"], load_lexicon("occupations"))
    cap_gender = lexicon_attribute(df["caption"], load_lexicon("caption_gender"))
    df = df.with_columns(occupation, cap_gender)
    return [df[: n // 3], df[n // 3 :]]


def test_run_audit_writes_a_self_contained_report_and_weights(tmp_path):
    shards = demo_shards()
    attributes = [
        spec_info(load_attribute_spec("perceived_gender"), "gender"),
        spec_info(load_attribute_spec("age")),
        lexicon_info(load_lexicon("occupations")),
        lexicon_info(load_lexicon("caption_gender")),
    ]
    result = run_audit(
        shards,
        attributes,
        tmp_path / "audit",
        options=AuditOptions(
            intersections=[("gender", "age")],
            concepts=[("occupation", "caption_gender")],
            references={"gender": "male"},
        ),
        keywords=load_lexicon("caption_gender"),
        weight_on=["gender"],
    )
    paths = result.paths
    assert {p.name for p in paths.values()} == {"report.json", "report.md", "report.html", "weights.parquet"}

    report = strict_json(paths["json"])
    assert report["meta"]["rows"] == 6000
    assert [a["method"] for a in report["meta"]["attributes"]] == ["zero-shot", "zero-shot", "lexicon", "lexicon"]
    violence = next(e for e in report["entries"] if e["id"] == "attribute:gender:stage:violence")
    assert violence["rows_removed"] == 0 and violence["test"]["p"] is None
    top = next(f for f in report["flags"] if f["kind"] == "attribute")
    assert top["group"] == "female" and top["stage"] == "sexual" and top["ratio_ci"][0] < 2 < top["ratio_ci"][1]
    kinds = {e["kind"] for e in report["entries"]}
    assert kinds == {"attribute", "intersection", "concept"}
    assert {k["term"] for k in report["keywords"] if k["before"]} == {"woman", "man", "her"}
    assert report["weighting"]["shift_weighted"]["gender"]["max_abs_pp"] < 1e-9

    html = paths["html"].read_text()
    assert "<script" not in html.lower()
    external = [u for u in re.findall(r"(?:src|href)=\"([^\"#][^\"]*)\"", html)]
    assert external == []
    assert html.count("<svg") >= 5 and "Wilson" in html and "Kish" in html
    md = paths["md"].read_text()
    assert "## Flags" in md and "| female ⚑ |" in md and "## Weights" in md

    weights = pq.read_table(paths["weights"])
    assert weights.column_names == ["uid", "weight"]
    kept = pl.concat(shards).filter(pl.col("keep:sexual") & pl.col("keep:violence") & pl.col("keep:dedup"))
    assert weights.num_rows == kept.height
    assert float(np.mean(weights["weight"].to_numpy())) == pytest.approx(1.0)


def test_report_is_deterministic(tmp_path):
    attributes = ["gender", "age"]
    a = run_audit(demo_shards(seed=4), attributes, tmp_path / "a", weight_on=["age"])
    b = run_audit(lambda: iter(demo_shards(seed=4)), attributes, tmp_path / "b", weight_on=["age"])
    for name in ("report.json", "report.md", "report.html"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert a.report == b.report


def test_lexicon_audit_on_real_coco_captions(shared_data, tmp_path):
    frame = pl.read_csv(shared_data / "coco5k_clipscore" / "val_clip_scores.tsv", separator="\t", quote_char=None)
    # A planted filter on real captions: drop the 20% with the lowest CLIP score, and in addition one in three
    # captions that name a woman (a DALL·E 2-like skew).
    rng = np.random.default_rng(0)
    gender = lexicon_attribute(frame["caption"], load_lexicon("caption_gender"))
    low = frame["clip_score"] < frame["clip_score"].quantile(0.2)
    skew = (gender == "female").to_numpy() & (rng.random(frame.height) < 1 / 3)
    df = frame.select(pl.col("id").cast(pl.String).alias("uid"), "caption").with_columns(
        gender,
        lexicon_attribute(frame["caption"], load_lexicon("occupations")),
        (~low).alias("keep:clip"),
        pl.Series("keep:skew", ~skew),
    )
    result = run_audit(
        [df],
        [lexicon_info(load_lexicon("caption_gender")), lexicon_info(load_lexicon("occupations"))],
        tmp_path,
        options=AuditOptions(concepts=[("occupation", "caption_gender")]),
        keywords=load_lexicon("caption_gender"),
        weight_on=["caption_gender"],
    )
    report = result.report
    flag = next(f for f in report["flags"] if f["stage"] == "skew" and f["dimension"] == ["caption_gender"])
    assert flag["group"] == "female" and flag["view"] == "stage"
    kw = {k["term"]: k for k in report["keywords"]}
    assert kw["man"]["before"] > kw["woman"]["before"] > 100
    # The skew stage removes "woman" captions: their frequency per 1k drops after it, "man" rises.
    assert kw["woman"]["after"]["skew"]["change_rel"] < -0.15 < kw["man"]["after"]["skew"]["change_rel"]
    concepts = [e for e in report["entries"] if e["kind"] == "concept"]
    assert {e["concept"]["value"] for e in concepts} >= {"athlete", "chef"}
    assert report["weighting"]["shift_weighted"]["caption_gender"]["max_abs_pp"] < 1e-9
