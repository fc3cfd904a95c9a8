"""The demo's promises, each with its bar, on the demo run a fresh clone makes (1,200 rows, the shipped weights):
dedup finds the planted near-duplicates at the default threshold, the classifiers find the planted motifs,
active learning from the command line needs fewer labels than random sampling, and the audit flags the planted
over-removal of rows about women while a null filter of the same size is not flagged.

Bars sit below the values measured with the shipped weights (quoted beside each) and far from what random weights
give; the README's demo section quotes the same numbers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
from click.testing import CliRunner

from sanitize.io.embeddings import open_embeddings
from sanitize.io.runfolder import RunFolder
from sanitize.safety.project import LabelProject
from sanitize_cli.main import cli


def test_planted_near_duplicates_are_found_at_the_default_threshold(demo_run):
    # Default dedup settings (threshold 0.95). Measured 96 of the 101 planted pairs (95.0%), the goal; the
    # weakest found pair has cosine 0.953, the misses are crops (2-6% off each side). Random weights: 52 of 101,
    # and only at threshold 0.999.
    out, summary = demo_run
    found = summary["versus_truth"]["dedup"]
    assert found["planted_pairs_found"] >= 0.95 * found["planted_pairs"], found
    assert found["pairs_found"] <= found["planted_pairs"] + 10, found  # few pairs beyond the planted ones
    config = (out / "sanitize.toml").read_text()
    assert "threshold = 0.95" in config and "0.999" not in config


def test_classifiers_find_the_planted_motifs(demo_run):
    # Against the planted motifs, over the rows each classifier scored. Measured: sexual recall 1.000, precision
    # 0.947; violence recall 0.978, precision 1.000. Random weights: 54% and 64% of all rows removed.
    _, summary = demo_run
    for name, result in summary["versus_truth"]["classify"].items():
        assert result["recall"] >= 0.9 and result["precision"] >= 0.8, (name, result)
        certificate = summary["categories"][name]
        assert certificate["certified"], (name, certificate)
        assert certificate["removal_rate"] <= 0.08, (name, certificate)


def _labels_of(demo: Path, name: str) -> dict[str, int]:
    truth = pl.read_parquet(demo / "sample" / "truth.parquet")
    return dict(zip(truth["uid"].to_list(), truth[name].to_list(), strict=True))


def _pool(run: Path) -> tuple[list[str], np.ndarray]:
    uids, blocks = [], []
    for shard in open_embeddings(run).shards():
        uids += list(shard.uids)
        blocks.append(np.asarray(shard.img_emb, dtype=np.float32))
    return uids, np.concatenate(blocks)


def _precision_at_recall(scores: np.ndarray, truth: np.ndarray, recall: float) -> float:
    """Precision of the highest threshold that removes `recall` of the true positives."""
    k = math.ceil(recall * int(truth.sum()))
    threshold = np.sort(scores[truth == 1])[::-1][k - 1]
    return float(truth[scores >= threshold].mean())


class _Labeler:
    """A safety team at the command line: `label init`, `label import` of seeds, then rounds of `label next` +
    `label add`, answering each batch with the planted truth."""

    def __init__(self, folder: Path, run: Path, name: str, label_of: dict[str, int], seeds: list[str]):
        self.runner, self.name, self.label_of = CliRunner(), name, label_of
        self.project = folder / "project"
        self.common = ["--project", str(self.project), "--run", str(run)]
        folder.mkdir(parents=True)
        spec = folder / "spec.toml"
        spec.write_text(f'[categories.{name}]\ndescription = "the demo motif"\nguidelines = "1 when drawn"\n'
                        f'prompts = ["{name}"]\n')
        self._ok(["label", "init", str(self.project), "--spec", str(spec)])
        seed_file = folder / "seeds.csv"
        pl.DataFrame({"uid": seeds, "label": [label_of[u] for u in seeds]}).write_csv(seed_file)
        self._ok(["label", "import", name, str(seed_file), *self.common])
        self.labels = len(seeds)

    def _ok(self, args: list[str]):
        result = self.runner.invoke(cli, args)
        assert result.exit_code == 0, result.output
        return result

    def round(self, strategy: str, n: int, seed: int) -> None:
        drawn = self._ok(["label", "next", self.name, *self.common, "--n", str(n), "--strategy", strategy,
                          "--seed", str(seed), "--json"])
        batch = Path(json.loads(drawn.stdout)["paths"]["csv"])
        rows = pl.read_csv(batch, infer_schema=False)
        answers = batch.with_name(batch.stem + "_answers.csv")
        rows.with_columns(pl.col("uid").replace_strict(self.label_of, default=None).alias("label")).write_csv(answers)
        self._ok(["label", "add", self.name, str(answers), *self.common])
        self.labels += rows.height

    def precision_at_recall(self, X: np.ndarray, truth: np.ndarray, recall: float) -> float:
        classifier = LabelProject.open(self.project).load_classifier(self.name)
        return _precision_at_recall(classifier.positive_proba(X), truth, recall)


def test_active_learning_from_the_cli_needs_fewer_labels_than_random_sampling(demo_run, tmp_path):
    # Bar: recall >= 0.95 at precision >= 0.9 over every embedded row, against the planted violence motif. The
    # issue asks for precision >= 0.5; the trained embeddings separate the motif so well that the 25 seed labels
    # alone reach 0.64 there, so the comparison is made at 0.9, where labels matter. Measured: uncertainty rounds
    # of 20 reach it at 85 labels; random rounds of 20 (seed 0) only at 425.
    out, _ = demo_run
    name, recall, precision, batch = "violence", 0.95, 0.9, 20
    label_of = _labels_of(out, name)
    uids, X = _pool(out / "run")
    truth = np.array([label_of[u] for u in uids])
    rng = np.random.default_rng(0)
    seeds = [*rng.choice([u for u in uids if label_of[u]], 5, replace=False),
             *rng.choice([u for u in uids if not label_of[u]], 20, replace=False)]

    active = _Labeler(tmp_path / "active", out / "run", name, label_of, seeds)
    reached = []
    for seed in range(8):
        reached.append(active.precision_at_recall(X, truth, recall))
        if reached[-1] >= precision:
            break
        active.round("uncertainty", batch, seed)
    assert reached[-1] >= precision and active.labels <= 125, (active.labels, reached)
    assert reached[0] < precision  # the seeds alone do not reach it: the rounds did

    # With the labels active learning needed, random sampling has not reached the bar, for three random seeds.
    for trial in range(3):
        randomly = _Labeler(tmp_path / f"random{trial}", out / "run", name, label_of, seeds)
        while randomly.labels < active.labels:
            randomly.round("random", batch, 100 * trial + randomly.labels)
            assert randomly.precision_at_recall(X, truth, recall) < precision, (trial, randomly.labels)


def _gender_flags(report: dict) -> list[dict]:
    return [f for f in report["flags"] if f["kind"] == "attribute" and f["dimension"] == ["caption_gender"]]


def test_the_audit_flags_the_planted_over_removal_and_not_a_null_filter(demo_run, tmp_path):
    # The sample draws its motifs more often in rows whose caption is about women; the trained classifiers remove
    # the motifs, so they remove rows about women more often (measured at the sexual stage: women 8.8%, men 2.8%).
    out, summary = demo_run
    report = json.loads((out / "run" / "audit" / "report.json").read_text())
    flags = _gender_flags(report)
    # Flagged where it happens, at the sexual stage alone (ratio 3.15 [1.65, 6.02] against men), though the audit
    # also runs 100+ intersection tests: they are a family of their own.
    assert any(f["group"] == "female" and f["stage"] == "sexual" and f["view"] == "stage" for f in flags), flags
    sexual = next(r for r in summary["women_vs_men"]["stages"] if r["stage"] == "sexual" and r["view"] == "stage")
    assert sexual["female"]["ci"][0] > sexual["male"]["ci"][1]  # the intervals do not overlap

    # A null filter: the sexual classifier's removals moved to rows drawn at random (same count, same rows
    # audited), 20 times. The audit's tests are at 5%, so at most a few of 20 may flag by chance.
    decided = pl.concat([pl.from_arrow(t) for _, t in RunFolder.open(out / "run").read_stage(
        "sexual", columns=["uid", "keep"])])
    manifest = pl.read_parquet(out / "sample" / "shards" / "*.parquet", columns=["uid", "caption"]).join(
        decided.select("uid"), on="uid")
    removed = int((~decided["keep"]).sum())
    rng = np.random.default_rng(0)
    flagged = 0
    for trial in range(20):
        keep = np.ones(manifest.height, dtype=bool)
        keep[rng.choice(manifest.height, removed, replace=False)] = False
        path = tmp_path / f"null{trial}.parquet"
        manifest.with_columns(pl.Series("null_filter", keep)).write_parquet(path)
        result = CliRunner().invoke(cli, ["audit", str(path), "--keep-col", "null_filter", "--attribute",
                                          "caption_gender", "--out", str(tmp_path / f"audit{trial}"), "--json"])
        assert result.exit_code == 0, result.output
        flagged += bool(_gender_flags(json.loads((tmp_path / f"audit{trial}" / "report.json").read_text())))
    assert flagged <= 2, flagged


def test_an_external_filter_is_audited_by_zero_shot_attributes_from_embeddings(demo_run, tmp_path):
    # The sexual classifier's decisions, given as a keep column of the demo's manifest ("a filter run elsewhere"),
    # audited by perceived gender read zero-shot from embeddings of the same rows: the counts equal those of the
    # run's own audit. Once with the run folder (its model is recorded; shards line up with the manifest's), once
    # with its clip-retrieval folder, --model, and the manifest in one file (rows joined by uid across shards).
    from sanitize.clip.models import packaged_weights

    out, _ = demo_run
    decided = pl.concat([pl.from_arrow(t) for _, t in RunFolder.open(out / "run").read_stage(
        "sexual", columns=["uid", "keep"])])
    manifest = pl.read_parquet(out / "sample" / "shards" / "*.parquet", columns=["uid", "caption"])
    manifest = manifest.join(decided.rename({"keep": "kept_by_vendor"}), on="uid", how="left")
    report = json.loads((out / "run" / "audit" / "report.json").read_text())
    own = next(e for e in report["entries"] if e["id"] == "attribute:perceived_gender:stage:sexual")
    expected = {g["group"]: (g["before"], g["removed"]) for g in own["groups"] if not g.get("suppressed")}

    one_file = tmp_path / "manifest.parquet"
    manifest.write_parquet(one_file)
    two_shards = tmp_path / "shards"
    two_shards.mkdir()
    sizes = [pl.read_parquet(p).height for p in sorted((out / "sample" / "shards").glob("*.parquet"))]
    manifest.slice(0, sizes[0]).write_parquet(two_shards / "00000.parquet")
    manifest.slice(sizes[0]).write_parquet(two_shards / "00001.parquet")
    cases = {"run": (two_shards, ["--embeddings", out / "run"]),
             "folder": (one_file, ["--embeddings", out / "run" / "embeddings", "--model", "sanitize-demo-clip",
                                   "--pretrained", packaged_weights()])}
    for name, (source, extra) in cases.items():
        result = CliRunner().invoke(cli, [str(a) for a in ["audit", source, "--keep-col", "kept_by_vendor",
                                                           "--attribute", "perceived_gender", *extra, "--out",
                                                           tmp_path / name, "--json"]])
        assert result.exit_code == 0, (name, result.output)
        mine = json.loads((tmp_path / name / "report.json").read_text())
        entry = next(e for e in mine["entries"] if e["id"] == "attribute:perceived_gender:stage:kept_by_vendor")
        got = {g["group"]: (g["before"], g["removed"]) for g in entry["groups"] if not g.get("suppressed")}
        assert got == expected, (name, got, expected)
    missing = CliRunner().invoke(cli, [str(a) for a in ["audit", one_file, "--keep-col", "kept_by_vendor",
                                                        "--attribute", "perceived_gender", "--embeddings",
                                                        out / "run" / "embeddings", "--out", tmp_path / "x"]])
    assert missing.exit_code == 2 and "name the model that made them with --model" in missing.stderr
