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
    (["--filter", "punsafe < 0.1", "--attribute", "perceived_gender"], 2, "is zero-shot and needs a run folder"),
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
