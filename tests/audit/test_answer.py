"""The report answers first: per attribute group, shares before/after and removal-rate ratios vs a reference chosen
for meaning (male for gender, the overall rate for many groups), settable; main-effect flags rank before
intersection flags with small cells."""

from __future__ import annotations

import re

import numpy as np
import polars as pl
import pytest

from sanitize.audit import AuditOptions, audit_report, count_shard, lexicon_info, load_lexicon, write_report
from sanitize.audit.stats import OVERALL, group_statistics, rate_ratio_vs_overall
from sanitize.errors import ConfigError
from sanitize.pipeline.stages.audit import _default_options, resolve_attribute

OCCUPATIONS = ["nurse", "doctor", "teacher", "chef", "athlete"]


def planted_frame(n: int = 8000, seed: int = 0) -> pl.DataFrame:
    """caption_gender and occupation labels; stage `nsfw` removes rows about women twice as often as others (20% vs
    10%), stage `dedup` removes 5% of every row."""
    rng = np.random.default_rng(seed)
    gender = rng.choice(["female", "male", "mixed", "unknown"], n, p=[0.3, 0.4, 0.05, 0.25])
    occupation = rng.choice([*OCCUPATIONS, "unknown"], n, p=[0.06, 0.06, 0.06, 0.06, 0.06, 0.7])
    rate = np.where(gender == "female", 0.2, 0.1)
    return pl.DataFrame({
        "uid": [f"u{i}" for i in range(n)],
        "caption_gender": gender,
        "occupation": occupation,
        "keep:nsfw": rng.random(n) >= rate,
        "keep:dedup": rng.random(n) >= 0.05,
    })


def attributes() -> list:
    return [lexicon_info(load_lexicon("caption_gender")), lexicon_info(load_lexicon("occupations"))]


def report_of(options: AuditOptions | None = None, frame: pl.DataFrame | None = None) -> dict:
    frame = planted_frame() if frame is None else frame
    return audit_report(count_shard(frame, attributes()), options)


def answer_of(report: dict, attribute: str) -> dict:
    return next(a for a in report["answer"] if a["attribute"] == attribute)


def first_section(md: str) -> str:
    """The Markdown from the first "## " heading to the next one."""
    return md.split("\n## ")[1]


def test_default_reference_is_male_for_gender_and_overall_for_occupation():
    report = report_of()
    gender, occupation = answer_of(report, "caption_gender"), answer_of(report, "occupation")
    assert gender["reference"] == "male" and occupation["reference"] == OVERALL
    assert [g["group"] for g in gender["groups"]] == ["female", "male"]  # mixed/unknown: counted, not compared
    female = next(g for g in gender["groups"] if g["group"] == "female")
    low, high = female["stages"]["nsfw"]["ratio_ci"]
    assert 1.6 < female["stages"]["nsfw"]["ratio"] < 2.5 and 1 < low < 2 < high and female["stages"]["nsfw"]["flagged"]
    assert female["share_after"] < female["share_before"]
    dedup = female["stages"]["dedup"]
    assert dedup["ratio_ci"][0] < 1 < dedup["ratio_ci"][1] and not dedup["flagged"]
    # Ratios vs the overall rate: no occupation is special (none was planted), none is flagged.
    for g in occupation["groups"]:
        r = g["all_stages"]
        assert 0.8 < r["ratio"] < 1.25 and r["ratio_ci"][0] < r["ratio"] < r["ratio_ci"][1], g["group"]
        assert not r["flagged"], g["group"]
    entries = [e for e in report["entries"] if e["kind"] == "attribute"]
    assert {e["reference"] for e in entries if e["dimension"] == ["occupation"]} == {OVERALL}
    overall = next(e for e in entries if e["id"] == "attribute:occupation:stage:nsfw")
    rows = [g for g in overall["groups"] if g["included"]]
    assert overall["reference_removal_rate"] == pytest.approx(sum(g["removed"] for g in rows) /
                                                              sum(g["before"] for g in rows))


def test_setting_the_reference_changes_it():
    report = report_of(AuditOptions(references={"caption_gender": "female", "occupation": "nurse"}))
    gender, occupation = answer_of(report, "caption_gender"), answer_of(report, "occupation")
    assert gender["reference"] == "female" and occupation["reference"] == "nurse"
    male = next(g for g in gender["groups"] if g["group"] == "male")
    assert male["stages"]["nsfw"]["ratio"] < 0.7  # men lose about half as often as women
    report = report_of(AuditOptions(references={"caption_gender": OVERALL}))
    assert answer_of(report, "caption_gender")["reference"] == OVERALL


def test_the_stage_option_sets_references():
    sources = [resolve_attribute("caption_gender"), resolve_attribute("occupations")]
    options = _default_options(sources, ["caption_gender=female", " occupation = overall "])
    assert options.references == {"caption_gender": "female", "occupation": OVERALL}
    assert options.concepts == (("occupation", "caption_gender"),)
    with pytest.raises(ConfigError, match="expected ATTRIBUTE=GROUP"):
        _default_options(sources, ["caption_gender"])


def test_report_opens_with_the_answer_table_and_chart(tmp_path):
    paths = write_report(report_of(), tmp_path)
    md = paths["md"].read_text()
    first = first_section(md)
    assert first.startswith("Answer: who the filters removed")
    female = next(line for line in first.splitlines() if line.startswith("| caption_gender (vs male) | female |"))
    # The planted effect with its interval, flagged, in the first stage's column; the all-stages column too.
    nsfw = female.split("|")[6].strip()
    assert re.fullmatch(r"\d\.\d\d \[1\.\d\d, \d\.\d\d\] ⚑", nsfw), nsfw
    assert "| male | " in first and "reference" in first
    assert "| occupation (vs overall " in first
    assert md.index("## Answer") < md.index("## Flags") < md.index("## About this audit") < md.index("## Stages")
    html = paths["html"].read_text()
    h2 = re.findall(r"<h2[^>]*>(.*?)</h2>", html)
    assert h2[0] == "Answer: who the filters removed" and h2[1].startswith("Flags")
    answer_html = html.split("<h2", 2)[1]
    assert "<svg" in answer_html and "caption_gender (vs male)" in answer_html and "⚑" in answer_html


def test_report_json_stays_backward_compatible():
    report = report_of()
    assert report["meta"]["options"]["confidence"] == 0.95
    for e in report["entries"]:
        assert {"kind", "dimension", "groups", "reference"} <= set(e)
        for g in e["groups"]:
            if not g["suppressed"]:
                assert {"removal_rate", "removal_ci", "before", "removed", "suppressed"} <= set(g)


def small_cell_frame(seed: int = 3) -> pl.DataFrame:
    """A main effect (women removed 1.6x as often as men) and a 15-row intersection cell that loses everything."""
    rng = np.random.default_rng(seed)
    n = 6000
    gender = rng.choice(["female", "male"], n)
    occupation = rng.choice(["nurse", "doctor", "teacher"], n)
    occupation[:15] = "chef"
    gender[:15] = "male"
    rate = np.where(gender == "female", 0.16, 0.1)
    rate[:15] = 1.0
    return pl.DataFrame({"uid": [str(i) for i in range(n)], "caption_gender": gender, "occupation": occupation,
                         "keep:nsfw": rng.random(n) >= rate})


def test_small_cell_intersection_flags_rank_after_main_effects():
    report = report_of(AuditOptions(intersections=[("caption_gender", "occupation")], min_cell=10),
                       frame=small_cell_frame())
    flags = report["flags"]
    kinds = [f["kind"] for f in flags]
    assert "attribute" in kinds and "intersection" in kinds
    last_main = max(i for i, k in enumerate(kinds) if k == "attribute")
    first_cross = min(i for i, k in enumerate(kinds) if k == "intersection")
    assert last_main < first_cross
    main = next(f for f in flags if f["kind"] == "attribute" and f["dimension"] == ["caption_gender"])
    cross = next(f for f in flags if f["kind"] == "intersection")
    # The intersection's effect is larger (a tiny cell losing every row), yet it ranks after the main effect.
    assert (cross["effect"] is None or cross["effect"] > main["effect"]) and cross["rank"] > main["rank"]
    assert [f["rank"] for f in flags] == list(range(1, len(flags) + 1))
    assert {f["tier"] for f in flags} == {0, 2}


def test_ratio_vs_overall_interval():
    # A group that is every row has ratio 1 exactly (zero-width interval).
    r, lo, hi = rate_ratio_vs_overall(np.array([30.0]), np.array([100.0]), 30.0, 100.0)
    assert r[0] == pytest.approx(1) and lo[0] == pytest.approx(1) and hi[0] == pytest.approx(1)
    # Coverage of the true ratio by the 95% interval (groups of unequal size, one twice as likely removed).
    rng = np.random.default_rng(7)
    n, p = np.array([400, 1500, 3000]), np.array([0.2, 0.1, 0.1])
    truth = p / ((n * p).sum() / n.sum())
    hits = np.zeros(3)
    for _ in range(1000):
        x = rng.binomial(n, p)
        _, lo, hi = rate_ratio_vs_overall(x, n, x.sum(), n.sum())
        hits += (lo <= truth) & (truth <= hi)
    assert np.all(np.abs(hits / 1000 - 0.95) < 0.025), hits
    g = group_statistics(["a", "b", "c", "unknown"], [400, 1500, 3000, 100], [320, 1350, 2700, 0],
                         included=[True, True, True, False], reference=OVERALL)
    assert g.reference == OVERALL and g.reference_rate == pytest.approx(530 / 4900)
    assert np.isnan(g.ratio[3]) and np.isnan(g.p_value[3]) and g.p_value[0] < 1e-6
