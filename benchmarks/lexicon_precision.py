"""Precision and coverage of the built-in caption lexicons on hand-checked COCO captions.

    python benchmarks/lexicon_precision.py [--check benchmarks/data/lexicon_check.csv] [--no-before]

Reads the checked sample (`benchmarks/data/lexicon_check.csv`: id in `coco5k_clipscore/val_clip_scores.tsv`,
caption, stratum, and the labels a person gave after reading the caption; an empty label means "not checked").
Strata (a row may be in several, joined by ";"):

- `random`: 400 captions drawn with `polars.DataFrame.sample(n=400, seed=18, shuffle=True)` from the 5000 rows;
  gender and occupation checked. Precision and coverage (recall) of both attributes are measured here.
- `occupation_hits`: every other caption of the 5000 that the occupation lexicon labels with an occupation, under
  the old rules or the new; occupation checked. With the random rows this is every occupation hit of the 5000,
  so occupation precision is exact for the 5000 captions (coverage still comes from `random`).
- `pronoun_only`: every caption of the 5000 with a gendered pronoun and none of the old lexicon's gendered nouns;
  gender checked. Precision here is exact for the captions that only a pronoun can label (the "A dog with his
  leash" case).

Truth conventions: gender is the gender of the people the caption names (a pronoun counts when it refers to a
person), "mixed" when it names both; occupation is the lexicon class the caption names a person by ("athlete":
someone named as a player of a sport - player, batter, catcher, jockey; recreational words such as surfer or
skier are not occupations; an occupation outside the lexicon's classes, e.g. umpire, is "none").

"Before" is the lexicon as of commit BEFORE_COMMIT with the rules of that commit (a plain case-insensitive
word-boundary match of every word, pronouns included); "after" is the shipped lexicon through
`sanitize.audit.lexicon_attribute`, the code path of the audit stage. Prints a table and writes
benchmarks/results/lexicon_precision.json.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import polars as pl

from sanitize.audit import lexicon_attribute, load_lexicon
from sanitize.audit.specs import Lexicon
from sanitize.io.atomic import write_json

ROOT = Path(__file__).resolve().parent.parent
CHECK = ROOT / "benchmarks" / "data" / "lexicon_check.csv"
RESULTS = ROOT / "benchmarks" / "results" / "lexicon_precision.json"
BEFORE_COMMIT = "742057f1ecad98920f96626b23130e6dd54b0f6d"
LEXICONS = {"gender": "caption_gender", "occupation": "occupations"}
Labeller = Callable[[pl.Series], list[str]]


def read_check(path: str | Path = CHECK) -> pl.DataFrame:
    """The checked sample: id, caption, stratum, gender, occupation (labels as strings; "" = not checked)."""
    df = pl.read_csv(path, schema_overrides={"gender": pl.String, "occupation": pl.String, "stratum": pl.String})
    return df.with_columns(pl.col("gender", "occupation").fill_null(""))


def in_stratum(df: pl.DataFrame, *strata: str) -> pl.DataFrame:
    """Rows of `df` that belong to any of `strata`."""
    parts = pl.col("stratum").str.split(";")
    return df.filter(pl.any_horizontal(parts.list.contains(s) for s in strata))


def class_scores(truth: list[str], predicted: list[str], classes: tuple[str, ...]) -> dict[str, dict]:
    """Per class: n_true, n_predicted, hits, precision = hits / n_predicted and coverage = hits / n_true (None
    when a denominator is 0). `truth` and `predicted` are aligned label lists."""
    out: dict[str, dict] = {}
    for c in classes:
        n_true = sum(t == c for t in truth)
        n_pred = sum(p == c for p in predicted)
        hits = sum(t == c and p == c for t, p in zip(truth, predicted, strict=True))
        out[c] = {
            "n_true": n_true,
            "n_predicted": n_pred,
            "hits": hits,
            "precision": hits / n_pred if n_pred else None,
            "coverage": hits / n_true if n_true else None,
        }
    return out


def pooled(truth: list[str], predicted: list[str], none: str) -> dict:
    """Any-class scores: a prediction other than `none` is right when it equals the truth."""
    n_pred = sum(p != none for p in predicted)
    n_true = sum(t != none for t in truth)
    hits = sum(p != none and p == t for t, p in zip(truth, predicted, strict=True))
    return {"n_true": n_true, "n_predicted": n_pred, "hits": hits,
            "precision": hits / n_pred if n_pred else None, "coverage": hits / n_true if n_true else None}


def shipped_labeller(lexicon: Lexicon) -> Labeller:
    """Labels through the audit's own code path (`lexicon_attribute`), "unknown" occupation read as "none"."""
    return lambda captions: lexicon_attribute(captions, lexicon).to_list()


def legacy_labeller(lexicon: Lexicon) -> Labeller:
    """The rules before this change: any word of a class (pronouns included), case-insensitive, word boundaries."""
    patterns = [re.compile(r"(?i)\b(?:" + "|".join(re.escape(t) for t in sorted(
        (*terms, *pron), key=len, reverse=True)) + r")\b")
        for terms, pron in zip(lexicon.terms, lexicon.class_pronouns(), strict=True)]

    def label(captions: pl.Series) -> list[str]:
        out = []
        for caption in captions.to_list():
            hits = [c for c, p in zip(lexicon.classes, patterns, strict=True) if p.search(caption or "")]
            out.append("unknown" if not hits else hits[0] if len(hits) == 1 else lexicon.multiple)
        return out

    return label


def before_lexicons(commit: str = BEFORE_COMMIT) -> dict[str, Lexicon] | None:
    """The lexicons of `commit` (read with `git show`), or None when the history is not available."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for key, name in LEXICONS.items():
            try:
                text = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:sanitize/resources/lexicons/"
                                       f"{name}.toml"], check=True, capture_output=True, text=True).stdout
            except (OSError, subprocess.CalledProcessError):
                return None
            path = Path(tmp) / f"{name}.toml"
            path.write_text(text)
            out[key] = load_lexicon(path)
    return out


def _normalise(labels: list[str], key: str) -> list[str]:
    return ["none" if (key == "occupation" and x == "unknown") else x for x in labels]


def evaluate(check: pl.DataFrame, labellers: dict[str, Labeller], lexicons: dict[str, Lexicon]) -> dict:
    """Scores of one rule set: `labellers[key]` labels captions for key in ("gender", "occupation").

    Returns {"gender": {"random": {per-class}, "pronoun_only": {per-class}}, "occupation": {"precision_all_hits":
    {per-class, "any"}, "random": {per-class, "any"}}} with the per-class dicts of `class_scores`."""
    gender, occupation = lexicons["gender"], lexicons["occupation"]
    g_classes = (*gender.classes, gender.multiple)
    out: dict = {"gender": {}, "occupation": {}}
    for stratum in ("random", "pronoun_only"):
        rows = in_stratum(check, stratum).filter(pl.col("gender") != "")
        pred = labellers["gender"](rows["caption"])
        out["gender"][stratum] = class_scores(rows["gender"].to_list(), pred, g_classes)
        out["gender"][stratum]["n_rows"] = rows.height
    o_classes = occupation.classes
    for name, rows in (("random", in_stratum(check, "random")),
                       ("all_hits", in_stratum(check, "random", "occupation_hits"))):
        rows = rows.filter(pl.col("occupation") != "")
        truth = rows["occupation"].to_list()
        pred = _normalise(labellers["occupation"](rows["caption"]), "occupation")
        scores = class_scores(truth, pred, o_classes)
        scores = {c: v for c, v in scores.items() if v["n_true"] or v["n_predicted"]}
        scores["any"] = pooled(truth, pred, "none")
        if name == "all_hits":  # rows chosen by the rules themselves: coverage would be inflated
            for v in scores.values():
                v["coverage"] = None
        scores["n_rows"] = rows.height
        out["occupation"][name] = scores
    return out


def _fmt(x: float | None) -> str:
    return "  -  " if x is None else f"{x:.3f}"


def print_table(results: dict) -> None:
    """A plain-text table: rule set, stratum, class, n_true, n_predicted, precision, coverage."""
    print(f"{'rules':7} {'attribute/stratum':28} {'class':20} {'true':>5} {'pred':>5} {'prec':>6} {'cover':>6}")
    for rules, res in results["rules"].items():
        for attr, strata in res.items():
            for stratum, scores in strata.items():
                for cls, s in scores.items():
                    if cls == "n_rows":
                        continue
                    print(f"{rules:7} {attr + '/' + stratum:28} {cls:20} {s['n_true']:5d} {s['n_predicted']:5d} "
                          f"{_fmt(s['precision']):>6} {_fmt(s['coverage']):>6}")


def main(argv: list[str] | None = None) -> int:
    """Measure the shipped lexicons (and, unless --no-before, those of BEFORE_COMMIT); write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", default=str(CHECK))
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--no-before", action="store_true", help="skip the rules of BEFORE_COMMIT")
    args = ap.parse_args(argv)
    check = read_check(args.check)
    after = {k: load_lexicon(v) for k, v in LEXICONS.items()}
    results: dict = {"check_file": str(Path(args.check).name), "n_rows": check.height,
                     "before_commit": BEFORE_COMMIT, "rules": {}}
    before = None if args.no_before else before_lexicons()
    if before is not None:
        results["rules"]["before"] = evaluate(check, {k: legacy_labeller(v) for k, v in before.items()}, before)
    elif not args.no_before:
        print(f"note: commit {BEFORE_COMMIT} not available, 'before' skipped", file=sys.stderr)
    results["rules"]["after"] = evaluate(check, {k: shipped_labeller(v) for k, v in after.items()}, after)
    print_table(results)
    write_json(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
