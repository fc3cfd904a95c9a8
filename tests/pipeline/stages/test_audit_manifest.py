"""`sanitize audit MANIFEST --filter … --keep-col …`: filters run elsewhere (LAION's punsafe cuts), audited as
stages of a manifest, with the same report and flags as a run's audit; bad conditions are one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from sanitize_cli.main import cli


@pytest.fixture(scope="module")
def laion(tmp_path_factory):
    """A LAION-style manifest (2 shards) whose punsafe is planted higher for captions about women."""
    folder = tmp_path_factory.mktemp("laion")
    rng = np.random.default_rng(0)
    n = 3000
    who = rng.choice(["woman", "man", "dog"], n, p=[0.4, 0.4, 0.2])
    punsafe = np.where(who == "woman", rng.beta(2, 8, n), rng.beta(1, 12, n)).astype(np.float32)
    punsafe[::50] = np.nan  # missing scores: not decided by the filter
    table = pa.table({"SAMPLE_ID": np.arange(n), "URL": [f"http://x/{i}.jpg" for i in range(n)],
                      "TEXT": [f"a {w} standing on a street" for w in who], "punsafe": punsafe,
                      "sfw": punsafe < 0.2, "WIDTH": [256] * n, "HEIGHT": [256] * n})
    pq.write_table(table.slice(0, 1500), folder / "part-00000.parquet")
    pq.write_table(table.slice(1500), folder / "part-00001.parquet")
    return folder, who, punsafe


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_punsafe_cuts_are_audited_side_by_side(laion, tmp_path):
    folder, _, punsafe = laion
    result = invoke("audit", folder, "--filter", "punsafe < 0.5", "--filter", "punsafe < 0.1", "--keep-col", "sfw",
                    "--weight-on", "caption_gender", "--out", tmp_path / "a", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["stages"] == ["punsafe < 0.5", "punsafe < 0.1", "sfw"] and summary["flags"] > 0
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    cut = next(s for s in report["stages"] if s["stage"] == "punsafe < 0.1")
    decided = ~np.isnan(punsafe)
    assert cut["evaluated"] == int(decided.sum())
    assert cut["removed"] == int((punsafe[decided] >= 0.1).sum())
    flagged = [f for f in report["flags"] if f["entry"] == "attribute:caption_gender:stage:punsafe < 0.1"]
    # Against the reference group male: women were removed more.
    assert flagged and flagged[0]["group"] == "female" and flagged[0]["ratio"] > 1
    assert (tmp_path / "a" / "report.html").exists() and (tmp_path / "a" / "weights.parquet").exists()


@pytest.mark.parametrize(("args", "code", "message"), [
    (["--filter", "nope < 1"], 1, "part-00000.parquet: --filter 'nope < 1': unable to find column \"nope\""),
    (["--filter", "punsafe <"], 2, "--filter 'punsafe <': not a condition on the manifest's columns"),
    (["--filter", "punsafe"], 2, "--filter 'punsafe' gives Float32 values, not true/false"),
    (["--keep-col", "TEXT"], 1, "--keep-col column 'TEXT' is String, not boolean"),
    (["--keep-col", "missing"], 1, "--keep-col column 'missing' not found"),
    ([], 2, "nothing to audit: give --filter CONDITION, --keep-col COLUMN or --after MANIFEST"),
    (["--filter", "punsafe < 0.1", "--attribute", "perceived_gender"], 2, "is zero-shot: give --embeddings"),
])
def test_bad_filters_are_one_line_errors(laion, tmp_path, args, code, message):
    result = invoke("audit", laion[0], *args, "--out", tmp_path / "a")
    assert result.exit_code == code, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "a" / "report.json").exists()


def test_manifest_needs_out_and_a_run_refuses_manifest_options(laion, tmp_path):
    result = invoke("audit", laion[0], "--filter", "punsafe < 0.1")
    assert result.exit_code == 2 and "--out is needed when SOURCE is a manifest" in result.stderr
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text("{}")
    result = invoke("audit", run, "--filter", "punsafe < 0.1")
    assert result.exit_code == 2 and "are for a MANIFEST; a run folder audits its stages" in result.stderr


def test_before_and_after_manifests(laion, tmp_path):
    folder, _, punsafe = laion
    after = tmp_path / "after"
    after.mkdir()
    for name in ("part-00000.parquet", "part-00001.parquet"):
        table = pq.read_table(folder / name)
        kept = pc.less(table["punsafe"], 0.1)
        pq.write_table(table.filter(pc.fill_null(kept, False)), after / name)
    result = invoke("audit", folder, "--after", after, "--out", tmp_path / "a", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["stages"] == ["kept in after"]
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    stage = report["stages"][0]
    assert stage["kept"] == int((punsafe < 0.1).sum()) and stage["evaluated"] == len(punsafe)
    # An 'after' manifest with rows the 'before' one lacks is refused, naming some.
    extra = tmp_path / "extra"
    extra.mkdir()
    table = pq.read_table(folder / "part-00000.parquet").slice(0, 10)
    pq.write_table(table.set_column(0, "SAMPLE_ID", pa.array(range(10_000, 10_010))), extra / "part-00000.parquet")
    result = invoke("audit", folder, "--after", extra, "--out", tmp_path / "b")
    assert result.exit_code == 1 and "10 rows are not in" in result.stderr and "e.g. 10000" in result.stderr


def test_a_users_concept_lexicon_gets_the_concept_view(laion, tmp_path):
    # Any lexicon the user writes (here: where the photo was taken) is a concept: within each of its values, who a
    # filter removed by caption gender, with the same small-cell suppression as occupation × gender.
    lexicon = tmp_path / "setting.toml"
    lexicon.write_text('name = "setting"\ndescription = "Where the photo is."\n\n[classes]\n'
                       'street = ["street", "streets"]\nbeach = ["beach"]\n')
    result = invoke("audit", laion[0], "--filter", "punsafe < 0.1", "--attribute", "caption_gender",
                    "--attribute", f"lexicon:{lexicon}", "--concepts", "setting:caption_gender", "--out",
                    tmp_path / "a", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    concepts = [e for e in report["entries"] if e["kind"] == "concept"]
    assert {e["concept"]["attribute"] for e in concepts} == {"setting"}
    street = next(e for e in concepts if e["concept"]["value"] == "street")
    groups = {g["group"]: g for g in street["groups"]}
    assert groups["female"]["removal_rate"] > groups["male"]["removal_rate"]  # planted: women's punsafe is higher
    assert report["meta"]["options"]["concepts"] == [["setting", "caption_gender"]]
    for bad, words in (("setting", "expected CONCEPT:ATTRIBUTE"), ("region:caption_gender", "'region' is not an "
                                                                    "audited attribute")):
        failed = invoke("audit", laion[0], "--filter", "punsafe < 0.1", "--attribute", "caption_gender",
                        "--attribute", f"lexicon:{lexicon}", "--concepts", bad, "--out", tmp_path / "b")
        assert failed.exit_code == 2 and words in failed.stderr, failed.output
        assert len(failed.stderr.strip().splitlines()) == 1


def _counts(report: dict) -> list[tuple]:
    """Every entry's groups as (entry id without its stage name, group, before, removed): stage names differ."""
    return sorted((e["kind"], tuple(e["dimension"]), e["view"], g["group"], g["before"], g["removed"])
                  for e in report["entries"] for g in e["groups"] if not g.get("suppressed"))


def test_before_and_after_gives_the_same_report_as_the_keep_column(laion, tmp_path):
    # The same filter known two ways, by its output manifest and by a boolean column: the same numbers everywhere.
    folder, _, _ = laion
    after, marked = tmp_path / "after", tmp_path / "marked"
    after.mkdir()
    marked.mkdir()
    for name in ("part-00000.parquet", "part-00001.parquet"):
        table = pq.read_table(folder / name)
        kept = pc.fill_null(pc.less(table["punsafe"], 0.1), False)
        pq.write_table(table.filter(kept), after / name)
        pq.write_table(table.append_column("kept", kept), marked / name)
    assert invoke("audit", folder, "--after", after, "--out", tmp_path / "a").exit_code == 0
    assert invoke("audit", marked, "--keep-col", "kept", "--out", tmp_path / "b").exit_code == 0
    a, b = (json.loads((tmp_path / x / "report.json").read_text()) for x in "ab")
    assert _counts(a) == _counts(b) and len(a["flags"]) == len(b["flags"]) > 0


@pytest.mark.parametrize("condition", [
    "__import__('os').system('touch pwned')",
    "punsafe < 0.1; DROP TABLE t",
    "punsafe < (SELECT 1)",
    "eval('1') = 1",
])
def test_a_malicious_filter_runs_no_code(laion, tmp_path, condition, monkeypatch):
    # Conditions are polars SQL expressions, never Python: each of these is refused in one line and nothing ran.
    monkeypatch.chdir(tmp_path)
    result = invoke("audit", laion[0], "--filter", condition, "--out", tmp_path / "a")
    assert result.exit_code in (1, 2) and len(result.stderr.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "a" / "report.json").exists()


def _replicate(tmp_path, seed: int, women_rate: float, men_rate: float) -> bool:
    """One planted manifest (1,200 rows about women or men) whose filter removes each at its rate, audited as an
    external keep column: is caption_gender flagged?"""
    from sanitize.io.manifest import open_manifest
    from sanitize.pipeline.stages.audit import ExternalFilter, audit_manifest

    rng = np.random.default_rng(seed)
    who = rng.choice(["woman", "man"], 1200)
    kept = rng.random(1200) >= np.where(who == "woman", women_rate, men_rate)
    path = tmp_path / f"m{seed}.parquet"
    pq.write_table(pa.table({"uid": [f"r{i}" for i in range(1200)], "caption": [f"a {w} on a bench" for w in who],
                             "kept": kept}), path)
    out = tmp_path / f"audit{seed}"
    audit_manifest(open_manifest(path), [ExternalFilter("kept", "kept", column=True)], out,
                   attributes=("caption_gender",))
    report = json.loads((out / "report.json").read_text())
    return any(f["dimension"] == ["caption_gender"] for f in report["flags"])


def test_external_filter_planted_twofold_removal_is_flagged_and_a_null_one_is_not(tmp_path):
    # 2x removal of rows about women (20% vs 10%) is flagged in >= 95% of 40 replicates; a filter removing both at
    # 15% in <= 5%.
    planted = sum(_replicate(tmp_path, seed, 0.20, 0.10) for seed in range(40))
    null = sum(_replicate(tmp_path, 100 + seed, 0.15, 0.15) for seed in range(40))
    assert planted >= 38 and null <= 2, (planted, null)


def test_undecided_rows_are_counted_and_duplicate_uids_refused(laion, tmp_path):
    folder, _, punsafe = laion
    result = invoke("audit", folder, "--filter", "punsafe < 0.1", "--out", tmp_path / "a", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["undecided"] == {"punsafe < 0.1": int(np.isnan(punsafe).sum())}  # 60 NaNs
    text = invoke("audit", folder, "--filter", "punsafe < 0.1", "--out", tmp_path / "b")
    assert f"punsafe < 0.1: {int(np.isnan(punsafe).sum())} rows undecided" in text.output
    # The same uid twice, in the manifest or in an 'after' manifest: one line naming it, exit 1.
    twice = tmp_path / "twice"
    twice.mkdir()
    table = pq.read_table(folder / "part-00000.parquet").slice(0, 20)
    pq.write_table(table, twice / "part-00000.parquet")
    pq.write_table(table.slice(0, 5), twice / "part-00001.parquet")
    for args in (["audit", twice, "--filter", "punsafe < 0.1"], ["audit", folder, "--after", twice]):
        failed = invoke(*args, "--out", tmp_path / "c")
        assert failed.exit_code == 1 and "duplicate uid" in failed.stderr, failed.output
        assert len(failed.stderr.strip().splitlines()) == 1
