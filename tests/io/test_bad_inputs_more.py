"""Every bad input is answered in one line (issue 16), continued: the files that configure or feed a command
besides manifests and embeddings — label files (`sanitize label add`), pipeline configs (`sanitize run --config`),
category specs (`sanitize label init --spec`), caption lexicons and zero-shot attribute specs (`sanitize audit
--attribute lexicon:PATH / zero-shot:PATH`). Given one broken file, the real CLI prints `error: <message naming
the file>` on stderr, exits 1 (bad data: a label file) or 2 (a bad config, spec or lexicon), shows no traceback and
leaves nothing finished behind (no label stored, no project, no report). Then random files (hypothesis).

A path that is a folder where a file is expected (`FILE`, `--config`, `--spec`) is click's usage error, exit 2,
in click's own form: those options are `click.Path(dir_okay=False)`.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tomllib
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sanitize.io.embeddings import write_embedding_shard
from sanitize.io.manifest import open_manifest
from sanitize.io.runfolder import RunFolder
from sanitize_cli.main import cli
from tests.io.test_bad_inputs import GOOD, GOOD_PARQUET, assert_one_line_error, needs_non_root, npy_bytes, raw

UIDS = [f"u{i}" for i in range(6)]
CAPTIONS = ["a woman cooking", "a man at work", "a dog", "she runs", "a girl and a boy", "a field"]


# -- making bad inputs ---------------------------------------------------------------------------------------------

def text(body: str, name: str) -> Callable[[Path], Path]:
    """A file `name` holding `body` as UTF-8."""
    return raw(body.encode(), name)


def missing(name: str) -> Callable[[Path], Path]:
    """The path of a file that does not exist."""
    return lambda tmp: tmp / name


def unreadable_text(body: str, name: str) -> Callable[[Path], Path]:
    """A file `name` holding `body` that nobody may read."""
    def make(tmp: Path) -> Path:
        path = text(body, name)(tmp)
        path.chmod(0)
        return path
    return make


def labels_parquet(**columns) -> Callable[[Path], Path]:
    """A parquet label file `x.parquet` with `columns`."""
    def make(tmp: Path) -> Path:
        pq.write_table(pa.table(columns), tmp / "x.parquet")
        return tmp / "x.parquet"
    return make


def category(**keys: str) -> str:
    """A one-category spec (`[categories.a]`) whose keys are the valid ones updated by `keys` (TOML values)."""
    values = {"description": '"Something."', "prompts": '["a photo of something"]', **keys}
    return "[categories.a]\n" + "".join(f"{k} = {v}\n" for k, v in values.items() if v is not None)


LEXICON = '[classes]\nfemale = ["woman", "girl"]\nmale = ["man", "boy"]\n'
TWO_CLASSES = '[[classes]]\nlabel = "a"\nprompts = ["a photo of a"]\n[[classes]]\nlabel = "b"\nprompts = ["b"]\n'


# -- the tables: (make FILE, extra args, exit code, part of the message) -------------------------------------------

LABEL_CASES = [
    # a wrong file behind a right extension
    pytest.param(text("uid,label\nu0,1\n", "x.parquet"), [], 1, "x.parquet: not a readable parquet file",
                 id="csv-as-parquet"),
    pytest.param(raw(GOOD_PARQUET, "x.csv"), [], 1, "x.csv: not a readable CSV file", id="parquet-as-csv"),
    pytest.param(raw(npy_bytes(GOOD), "x.csv"), [], 1, "x.csv: not a readable CSV file", id="npy-as-csv"),
    pytest.param(text("uid,label\nu0,1\n", "x.txt"), [], 1, "x.txt: unsupported label file type '.txt'",
                 id="other-extension"),
    # missing, empty, unreadable, undecodable
    pytest.param(missing("x.csv"), [], 1, "x.csv: label file not found", id="missing"),
    pytest.param(text("", "x.csv"), [], 1, "x.csv: label file is empty", id="empty-csv"),
    pytest.param(text("", "x.parquet"), [], 1, "x.parquet: label file is empty", id="empty-parquet"),
    pytest.param(unreadable_text("uid,label\nu0,1\n", "x.csv"), [], 1,
                 "x.csv: not a readable label file (permission denied)", id="unreadable", marks=needs_non_root),
    pytest.param(raw(b"uid,label\n\xff\xfe,1\n", "x.csv"), [], 1, "x.csv: not a readable CSV file ('utf-8' codec",
                 id="not-utf8"),
    pytest.param(raw("uid,label\nu0,1\n".encode("utf-16"), "x.csv"), [], 1, "x.csv: not a readable CSV file",
                 id="utf16"),
    # CSV structure
    pytest.param(text("uid,label\n", "x.csv"), [], 1, "x.csv: label file has no rows", id="header-only"),
    pytest.param(text('uid,label\n"u0,1\n', "x.csv"), [], 1, "x.csv: not a readable CSV file (line 2: a quoted "
                 "field is never closed)", id="unclosed-quote"),
    pytest.param(text('uid,label\nu0,1\nu1,"1"x\nu2,0\n', "x.csv"), [], 1, "x.csv: not a readable CSV file (line 3: "
                 "',' expected after '\"')", id="text-after-quote"),
    pytest.param(text("uid,label\nu0,1,0\n", "x.csv"), [], 1, "x.csv: row 1 has 3 fields, the header 2",
                 id="extra-field"),
    pytest.param(text("uid,label,label\nu0,1,0\n", "x.csv"), [], 1, "x.csv: CSV header names column 'label' twice",
                 id="column-twice"),
    pytest.param(text("uid,answer\nu0,1\n", "x.csv"), [], 1, "x.csv: label file lacks a 'label' column",
                 id="no-label-column"),
    pytest.param(text("id,label\nu0,1\n", "x.csv"), [], 1, "x.csv: label file needs a 'uid' or image 'path' column",
                 id="no-uid-column"),
    pytest.param(text("uid,label\n,1\n", "x.csv"), [], 1, "x.csv: row 1: column 'uid' is empty", id="empty-uid"),
    pytest.param(text("uid,label\nu0,\nu1,\n", "x.csv"), [], 1, "x.csv: no answered rows (all 2 labels are empty)",
                 id="no-answers"),
    # labels other than 0/1
    pytest.param(text("uid,label\nu0,1\nu1,2\n", "x.csv"), [], 1, "x.csv: row 2, column 'label': '2' is not a label",
                 id="label-2"),
    pytest.param(text("uid,label\nu0,-1\n", "x.csv"), [], 1, "x.csv: row 1, column 'label': '-1' is not a label",
                 id="label-minus-1"),
    pytest.param(text("uid,label\nu0,0.5\n", "x.csv"), [], 1, "x.csv: row 1, column 'label': '0.5' is not a label",
                 id="label-half"),
    pytest.param(text("uid,label\nu0,maybe\n", "x.csv"), [], 1, "x.csv: row 1, column 'label': 'maybe' is not a "
                 "label", id="label-maybe"),
    pytest.param(labels_parquet(uid=["u0", "u1"], label=[1, 2]), [], 1, "x.parquet: row 2, column 'label': 2 is not "
                 "a label", id="parquet-label-2"),
    pytest.param(labels_parquet(uid=["u0"], label=[0.5]), [], 1, "x.parquet: row 1, column 'label': 0.5 is not a "
                 "label", id="parquet-label-half"),
    pytest.param(labels_parquet(uid=["u0"], label=[[1]]), [], 1, "x.parquet: row 1, column 'label': [1] is not a "
                 "label", id="parquet-label-list"),
    # uids
    pytest.param(text("uid,label\nu0,1\nu1,0\nu0,0\n", "x.csv"), [], 1, "x.csv: uid 'u0' is labelled 1 on row 1 "
                 "and 0 on row 3", id="uid-twice-both-labels"),
    pytest.param(labels_parquet(uid=["u0", "u0"], label=[0, 1]), [], 1, "x.parquet: uid 'u0' is labelled 0 on row "
                 "1 and 1 on row 2", id="parquet-uid-twice-both-labels"),
    pytest.param(labels_parquet(uid=[[1]], label=[1]), [], 1, "x.parquet: column 'uid' has type list<element: "
                 "int64>, not text or an integer", id="parquet-uid-of-lists"),
    # rounds
    pytest.param(text("uid,label,round\nu0,1,abc\n", "x.csv"), [], 1, "x.csv: row 1, column 'round': 'abc' is not "
                 "a round number", id="round-not-a-number"),
    pytest.param(text("uid,label,round\nu0,1,-2\n", "x.csv"), [], 1, "x.csv: row 1, column 'round': round -2 is "
                 "negative", id="round-negative"),
]

CONFIG_CASES = [
    pytest.param(raw(GOOD_PARQUET, "c.toml"), [], 2, "c.toml: not readable TOML ('utf-8' codec", id="parquet-as-toml"),
    pytest.param(missing("c.toml"), [], 2, "c.toml: config file not found", id="missing"),
    pytest.param(text("", "c.toml"), [], 2, "c.toml: not a readable TOML config (the file is empty)", id="empty"),
    pytest.param(unreadable_text("[run]\nseed = 1\n", "c.toml"), [], 2,
                 "c.toml: not a readable TOML config (permission denied)", id="unreadable", marks=needs_non_root),
    pytest.param(raw(b'[embed]\ndevice = "\xff"\n', "c.toml"), [], 2, "c.toml: not readable TOML ('utf-8' codec",
                 id="not-utf8"),
    pytest.param(raw("[run]\nseed = 1\n".encode("utf-16"), "c.toml"), [], 2, "c.toml: not readable TOML",
                 id="utf16"),
    pytest.param(text("[run\nseed = 1\n", "c.toml"), [], 2, "c.toml: not readable TOML (Expected ']'",
                 id="invalid-toml"),
    pytest.param(text("[run]\nseed = 1\nseed = 2\n", "c.toml"), [], 2, "c.toml: not readable TOML (Cannot "
                 "overwrite a value", id="key-twice"),
    pytest.param(text("run = 3\n", "c.toml"), [], 2, "c.toml: [run] must be a table of keys, got int",
                 id="section-not-a-table"),
    pytest.param(text("[[run]]\nseed = 1\n", "c.toml"), [], 2, "c.toml: [run] must be a table of keys, got list",
                 id="section-array-of-tables"),
    pytest.param(text("[dedupe]\nthreshold = 0.9\n", "c.toml"), [], 2, "c.toml: unknown section [dedupe]",
                 id="unknown-section"),
    pytest.param(text("[run]\nsed = 1\n", "c.toml"), [], 2, "c.toml: unknown key run.sed; did you mean run.seed?",
                 id="unknown-key"),
    pytest.param(text('[run]\nseed = "x"\n', "c.toml"), [], 2, "c.toml: run.seed must be an integer, got 'x'",
                 id="int-as-string"),
    pytest.param(text("[run]\nseed = 1.5\n", "c.toml"), [], 2, "c.toml: run.seed must be an integer, got 1.5",
                 id="int-as-float"),
    pytest.param(text("[run]\nseed = true\n", "c.toml"), [], 2, "c.toml: run.seed must be an integer, got True",
                 id="int-as-bool"),
    pytest.param(text("[run]\nseed = 2020-01-01\n", "c.toml"), [], 2, "c.toml: run.seed must be an integer, got "
                 "datetime.date", id="int-as-date"),
    pytest.param(text('[dedup]\nthreshold = "high"\n', "c.toml"), [], 2, "c.toml: dedup.threshold must be a number, "
                 "got 'high'", id="number-as-string"),
    pytest.param(text("[dedup]\nthreshold = 7\n", "c.toml"), [], 2, "c.toml: dedup.threshold must be between -1 "
                 "and 1, got 7.0", id="number-out-of-range"),
    pytest.param(text("[dedup]\nthreshold = nan\n", "c.toml"), [], 2, "c.toml: dedup.threshold must be a finite "
                 "number, got nan", id="number-nan"),
    pytest.param(text("[audit]\ntarget = {young = inf, old = 1}\n", "c.toml"), [], 2, "c.toml: audit.target must "
                 "be a finite number, got inf", id="table-value-inf"),
    pytest.param(text('[run]\nstages = "embed"\n', "c.toml"), [], 2, "c.toml: run.stages must be a list of "
                 "strings, got 'embed'", id="list-as-string"),
    pytest.param(text("[run]\nstages = [1]\n", "c.toml"), [], 2, "c.toml: run.stages must be a list of strings, got "
                 "[1]", id="list-of-numbers"),
    pytest.param(text('[run]\nstages = ["embedd"]\n', "c.toml"), [], 2, "c.toml: run.stages: 'embedd' is not one of",
                 id="unknown-stage"),
    pytest.param(text('[run]\nray_address = "auto"\n', "c.toml"), [], 2, "c.toml: run.ray_address / "
                 "run.ray_num_cpus need run.engine = \"ray\"", id="keys-that-contradict"),
]

SPEC_CASES = [
    pytest.param(raw(GOOD_PARQUET, "s.toml"), [], 2, "s.toml: not valid TOML ('utf-8' codec", id="parquet-as-toml"),
    pytest.param(missing("s.toml"), [], 2, "s.toml: category spec file not found", id="missing"),
    pytest.param(text("", "s.toml"), [], 2, "s.toml: no categories (add a [categories.<name>] table)", id="empty"),
    pytest.param(unreadable_text(category(), "s.toml"), [], 2, "s.toml: not a readable category spec (permission "
                 "denied)", id="unreadable", marks=needs_non_root),
    pytest.param(raw(category(description='"\xff"').encode("latin-1"), "s.toml"), [], 2, "s.toml: not valid TOML "
                 "('utf-8' codec", id="not-utf8"),
    pytest.param(text("[categories.a\n", "s.toml"), [], 2, "s.toml: not valid TOML (Expected ']'", id="invalid-toml"),
    pytest.param(text(category() + 'description = "again"\n', "s.toml"), [], 2, "s.toml: not valid TOML (Cannot "
                 "overwrite a value", id="key-twice"),
    pytest.param(text("categories = 3\n", "s.toml"), [], 2, "s.toml: no categories", id="categories-not-a-table"),
    pytest.param(text("defaults = 1\n" + category(), "s.toml"), [], 2, "s.toml: [defaults] must be a table",
                 id="defaults-not-a-table"),
    pytest.param(text("[defaults]\nrecall = 0.9\n" + category(), "s.toml"), [], 2, "s.toml: [defaults]: unknown key "
                 "'recall'", id="unknown-default"),
    pytest.param(text("version = 2\n" + category(), "s.toml"), [], 2, "s.toml: unknown top-level key 'version'",
                 id="unknown-top-level-key"),
    pytest.param(text(category(recall="0.9"), "s.toml"), [], 2, "s.toml: category 'a': unknown key 'recall'",
                 id="unknown-key"),
    pytest.param(text(category().replace("categories.a", "categories.Bad"), "s.toml"), [], 2, "s.toml: category "
                 "'Bad': name must match", id="bad-category-name"),
    pytest.param(text(category(target_recall='"high"'), "s.toml"), [], 2, "s.toml: category 'a': key "
                 "'target_recall' is 'high', must be a number strictly between 0 and 1", id="recall-as-string"),
    pytest.param(text(category(target_recall="nan"), "s.toml"), [], 2, "s.toml: category 'a': key 'target_recall' "
                 "is nan", id="recall-nan"),
    pytest.param(text(category(target_recall="1.5"), "s.toml"), [], 2, "s.toml: category 'a': key 'target_recall' "
                 "is 1.5", id="recall-above-1"),
    pytest.param(text(category(target_recall="true"), "s.toml"), [], 2, "s.toml: category 'a': key 'target_recall' "
                 "is True", id="recall-as-bool"),
    pytest.param(text(category(confidence="0"), "s.toml"), [], 2, "s.toml: category 'a': key 'confidence' is 0",
                 id="confidence-0"),
    pytest.param(text('[defaults]\nconfidence = "high"\n' + category(), "s.toml"), [], 2, "s.toml: category 'a': key "
                 "'confidence' is 'high'", id="default-as-string"),
    pytest.param(text(category(description="3"), "s.toml"), [], 2, "s.toml: category 'a': key 'description' must "
                 "be a string, got 3", id="description-as-number"),
    pytest.param(text(category(description=None), "s.toml"), [], 2, "s.toml: category 'a': key 'description' is "
                 "missing", id="description-missing"),
    pytest.param(text(category(guidelines="[1]"), "s.toml"), [], 2, "s.toml: category 'a': key 'guidelines' must be "
                 "a string", id="guidelines-as-list"),
    pytest.param(text(category(prompts='"a photo"'), "s.toml"), [], 2, "s.toml: category 'a': key 'prompts' must be "
                 "a non-empty list of non-empty strings", id="prompts-as-string"),
    pytest.param(text(category(prompts="[1, 2]"), "s.toml"), [], 2, "s.toml: category 'a': key 'prompts' must be a "
                 "non-empty list", id="prompts-of-numbers"),
    pytest.param(text(category(prompts="[]"), "s.toml"), [], 2, "s.toml: category 'a': key 'prompts' must be a "
                 "non-empty list", id="prompts-empty"),
    pytest.param(text(category(classifier='"svm"'), "s.toml"), [], 2, "s.toml: category 'a': key 'classifier' is "
                 "'svm', expected one of logistic, mlp", id="unknown-classifier"),
    pytest.param(text(category(classifier='["mlp"]'), "s.toml"), [], 2, "s.toml: category 'a': key 'classifier' is "
                 "['mlp']", id="classifier-as-list"),
]

LEXICON_CASES = [
    pytest.param(raw(GOOD_PARQUET, "l.toml"), [], 2, "l.toml: not valid TOML: 'utf-8' codec", id="parquet-as-toml"),
    pytest.param(missing("l.toml"), [], 2, "l.toml: lexicon file not found (built-in: caption_gender",
                 id="missing"),
    pytest.param(text("", "l.toml"), [], 2, "l.toml: needs a non-empty [classes] table", id="empty"),
    pytest.param(lambda tmp: (tmp / "l.toml").mkdir() or tmp / "l.toml", [], 2, "l.toml: not a readable lexicon "
                 "file (it is a folder)", id="folder"),
    pytest.param(unreadable_text(LEXICON, "l.toml"), [], 2, "l.toml: not a readable lexicon file (permission "
                 "denied)",
                 id="unreadable", marks=needs_non_root),
    pytest.param(raw(b'[classes]\nfemale = ["\xff"]\n', "l.toml"), [], 2, "l.toml: not valid TOML: 'utf-8' codec",
                 id="not-utf8"),
    pytest.param(text("[classes\n", "l.toml"), [], 2, "l.toml: not valid TOML: Expected ']'", id="invalid-toml"),
    pytest.param(text(LEXICON + 'female = ["she"]\n', "l.toml"), [], 2, "l.toml: not valid TOML: Cannot overwrite",
                 id="key-twice"),
    pytest.param(text('classes = ["female", "male"]\n', "l.toml"), [], 2, "l.toml: needs a non-empty [classes] "
                 "table", id="classes-as-list"),
    pytest.param(text('[classes]\nfemale = "woman"\nmale = ["man"]\n', "l.toml"), [], 2, "l.toml: class 'female': "
                 "terms must be a list of strings, got 'woman'", id="terms-as-string"),
    pytest.param(text('[classes]\nfemale = [1, 2]\nmale = ["man"]\n', "l.toml"), [], 2, "l.toml: class 'female': "
                 "term 1 is not a string", id="terms-of-numbers"),
    pytest.param(text('[classes]\nfemale = []\nmale = ["man"]\n', "l.toml"), [], 2, "l.toml: class 'female': has no "
                 "terms", id="no-terms"),
    pytest.param(text('[classes]\nfemale = [" "]\nmale = ["man"]\n', "l.toml"), [], 2, "l.toml: class 'female': "
                 "empty term ' '", id="blank-term"),
    pytest.param(text('[classes]\nfemale = ["woman"]\nmale = ["Woman"]\n', "l.toml"), [], 2, "l.toml: class 'male': "
                 "duplicate term 'woman' (also in class 'female')", id="term-in-two-classes"),
    pytest.param(text('[classes]\nunknown = ["woman"]\nmale = ["man"]\n', "l.toml"), [], 2, "l.toml: classes: class "
                 "label 'unknown' is reserved", id="reserved-class"),
    pytest.param(text("multiple = 3\n" + LEXICON, "l.toml"), [], 2, "l.toml: multiple: class label must be a "
                 "non-empty string, got 3", id="multiple-as-number"),
    pytest.param(text('multiple = "male"\n' + LEXICON, "l.toml"), [], 2, "l.toml: multiple label 'male' is also a "
                 "class", id="multiple-is-a-class"),
    pytest.param(text("name = 3\n" + LEXICON, "l.toml"), [], 2, "l.toml: name must be a string, got 3",
                 id="name-as-number"),
    pytest.param(text("description = [1]\n" + LEXICON, "l.toml"), [], 2, "l.toml: description must be a string, "
                 "got [1]", id="description-as-list"),
    pytest.param(text('exclude = "game boy"\n' + LEXICON, "l.toml"), [], 2, "l.toml: exclude: must be a list of "
                 "words", id="exclude-as-string"),
    pytest.param(text("exclude = [1]\n" + LEXICON, "l.toml"), [], 2, "l.toml: exclude: word 1 is not a string",
                 id="exclude-of-numbers"),
    pytest.param(text('pronouns = ["she"]\n' + LEXICON, "l.toml"), [], 2, "l.toml: [pronouns] must be a table",
                 id="pronouns-as-list"),
    pytest.param(text(LEXICON + '[pronouns]\nother = ["she"]\n', "l.toml"), [], 2, "l.toml: [pronouns] names "
                 "'other', which is not a class", id="pronouns-of-no-class"),
    pytest.param(text(LEXICON + '[pronouns]\nfemale = ["woman"]\n', "l.toml"), [], 2, "l.toml: pronouns.female: "
                 "duplicate word 'woman'", id="pronoun-is-a-term"),
    pytest.param(text('referents = ["x"]\n' + LEXICON, "l.toml"), [], 2, "l.toml: [referents] may only hold "
                 "'person' and 'other' lists", id="referents-as-list"),
    pytest.param(text(LEXICON + '[referents]\nperson = "player"\n', "l.toml"), [], 2, "l.toml: referents.person: "
                 "must be a list of words", id="referents-as-string"),
]

ZERO_SHOT_CASES = [
    pytest.param(raw(GOOD_PARQUET, "z.toml"), [], 2, "z.toml: not valid TOML: 'utf-8' codec", id="parquet-as-toml"),
    pytest.param(missing("z.toml"), [], 2, "z.toml: attribute spec file not found (built-in:", id="missing"),
    pytest.param(text("", "z.toml"), [], 2, "z.toml: needs at least two [[classes]] entries", id="empty"),
    pytest.param(text('[[classes]]\nlabel = "a"\nprompts = ["a"]\n', "z.toml"), [], 2, "z.toml: needs at least two "
                 "[[classes]] entries", id="one-class"),
    pytest.param(text('classes = ["a", "b"]\n', "z.toml"), [], 2, "z.toml: classes[0]: must be a table with 'label' "
                 "and 'prompts'", id="classes-as-strings"),
    pytest.param(text(TWO_CLASSES.replace('label = "b"', "label = 2"), "z.toml"), [], 2, "z.toml: classes[1]: class "
                 "label must be a non-empty string, got 2", id="label-as-number"),
    pytest.param(text(TWO_CLASSES.replace('label = "b"', 'label = "a"'), "z.toml"), [], 2, "z.toml: class 'a': "
                 "duplicate class label", id="label-twice"),
    pytest.param(text(TWO_CLASSES.replace('["b"]', '"b"'), "z.toml"), [], 2, "z.toml: class 'b': prompts must be a "
                 "list of strings, got 'b'", id="prompts-as-string"),
    pytest.param(text(TWO_CLASSES.replace('["b"]', "[1]"), "z.toml"), [], 2, "z.toml: class 'b': prompt 1 is not a "
                 "string", id="prompts-of-numbers"),
    pytest.param(text('margin = "wide"\n' + TWO_CLASSES, "z.toml"), [], 2, "z.toml: margin must be in [0, 1), got "
                 "'wide'", id="margin-as-string"),
    pytest.param(text("margin = nan\n" + TWO_CLASSES, "z.toml"), [], 2, "z.toml: margin must be in [0, 1), got nan",
                 id="margin-nan"),
    pytest.param(text("margin = true\n" + TWO_CLASSES, "z.toml"), [], 2, "z.toml: margin must be in [0, 1), got "
                 "True", id="margin-as-bool"),
    pytest.param(text("logit_scale = inf\n" + TWO_CLASSES, "z.toml"), [], 2, "z.toml: logit_scale must be a finite "
                 "number > 0, got inf", id="logit-scale-inf"),
    pytest.param(text("logit_scale = 0\n" + TWO_CLASSES, "z.toml"), [], 2, "z.toml: logit_scale must be a finite "
                 "number > 0, got 0", id="logit-scale-0"),
    pytest.param(text('not_applicable = "ab"\n' + TWO_CLASSES, "z.toml"), [], 2, "z.toml: not_applicable must be a "
                 "list of class labels, got 'ab'", id="not-applicable-as-string"),
    pytest.param(text("not_applicable = 3\n" + TWO_CLASSES, "z.toml"), [], 2, "z.toml: not_applicable must be a list "
                 "of class labels, got 3", id="not-applicable-as-number"),
    pytest.param(text('not_applicable = ["c"]\n' + TWO_CLASSES, "z.toml"), [], 2, "z.toml: not_applicable label 'c' "
                 "is not a class", id="not-applicable-no-class"),
]


# -- the commands --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> Path:
    """A run folder with six embedded rows u0…u5 (random unit vectors, an `image` path each): the pool of
    `sanitize label add`. Written directly, without a model."""
    tmp = tmp_path_factory.mktemp("pool")
    images = [f"images/{uid}.jpg" for uid in UIDS]
    pq.write_table(pa.table({"uid": UIDS, "caption": CAPTIONS, "image": images}), tmp / "in.parquet")
    run = RunFolder.create(tmp / "run", open_manifest(tmp / "in.parquet"))
    x = np.random.default_rng(0).normal(size=(len(UIDS), 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    write_embedding_shard(run.embeddings_dir, 0, x, None, pa.table({"uid": UIDS, "image": images}))
    return run.path


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """A six-row manifest with captions and a `score` column, for `sanitize run` and `sanitize audit`."""
    path = tmp_path_factory.mktemp("manifest") / "in.parquet"
    pq.write_table(pa.table({"uid": UIDS, "caption": CAPTIONS, "score": [0.1, 0.5, 0.9, 0.2, 0.3, 0.8]}), path)
    return path


def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def new_project(folder: Path) -> Path:
    """A labeling project with the shipped categories (sexual, violence), in `folder`/project."""
    result = invoke("label", "init", folder / "project")
    assert result.exit_code == 0, result.output
    return folder / "project"


def label_add(file: Path, project: Path, run: Path) -> Result:
    return invoke("label", "add", "sexual", file, "--project", project, "--run", run)


def run_dry(manifest: Path, config: Path, out: Path) -> Result:
    return invoke("run", manifest, "--config", config, "--out", out, "--dry-run")


def label_init(project: Path, spec: Path) -> Result:
    return invoke("label", "init", project, "--spec", spec)


def audit(manifest: Path, attribute: str, out: Path) -> Result:
    return invoke("audit", manifest, "--filter", "score < 0.5", "--attribute", attribute, "--out", out)


# -- the checks ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make,args,code,message", LABEL_CASES)
def test_label_add_bad_file_is_one_line(tmp_path, pool, make, args, code, message):
    project = new_project(tmp_path)
    result = label_add(make(tmp_path), project, pool)
    assert_one_line_error(result, code, message, tmp_path)
    assert not (project / "labels" / "sexual.parquet").exists()


@pytest.mark.parametrize("make,args,code,message", CONFIG_CASES)
def test_run_bad_config_is_one_line(tmp_path, manifest, make, args, code, message):
    out = tmp_path / "out"
    result = run_dry(manifest, make(tmp_path), out)
    assert_one_line_error(result, code, message, tmp_path)
    assert str(tmp_path) in result.stderr and not out.exists()


@pytest.mark.parametrize("make,args,code,message", SPEC_CASES)
def test_label_init_bad_spec_is_one_line(tmp_path, make, args, code, message):
    project = tmp_path / "project"
    result = label_init(project, make(tmp_path))
    assert_one_line_error(result, code, message, tmp_path)
    assert str(tmp_path) in result.stderr and not project.exists()


@pytest.mark.parametrize("make,args,code,message", LEXICON_CASES)
def test_audit_bad_lexicon_is_one_line(tmp_path, manifest, make, args, code, message):
    out = tmp_path / "out"
    result = audit(manifest, f"lexicon:{make(tmp_path)}", out)
    assert_one_line_error(result, code, message, tmp_path)
    assert str(tmp_path) in result.stderr and not (out / "report.json").exists()


@pytest.mark.parametrize("make,args,code,message", ZERO_SHOT_CASES)
def test_audit_bad_attribute_spec_is_one_line(tmp_path, manifest, make, args, code, message):
    out = tmp_path / "out"
    result = audit(manifest, f"zero-shot:{make(tmp_path)}", out)
    assert_one_line_error(result, code, message, tmp_path)
    assert str(tmp_path) in result.stderr and not (out / "report.json").exists()


def test_the_good_files_of_the_tables_work(tmp_path, pool, manifest):
    """The tables' broken files are each one change away from these, which the same commands accept, so a case
    fails for the change it makes."""
    project = new_project(tmp_path)
    good_labels = text("uid,label,round\nu0,1,1\nu1,0,1\nu1,0,1\nu2,yes,1\nu3,,1\n", "x.csv")(tmp_path)
    assert label_add(good_labels, project, pool).exit_code == 0
    stored = pq.read_table(project / "labels" / "sexual.parquet").to_pydict()
    assert dict(zip(stored["uid"], stored["label"], strict=True)) == {"u0": 1, "u1": 0, "u2": 1}
    assert run_dry(manifest, text("[run]\nseed = 1\n[dedup]\nthreshold = 0.9\n", "c.toml")(tmp_path),
                   tmp_path / "out").exit_code == 0
    assert label_init(tmp_path / "p2", text(category(target_recall="0.9"), "s.toml")(tmp_path)).exit_code == 0
    result = audit(manifest, f"lexicon:{text(LEXICON, 'l.toml')(tmp_path)}", tmp_path / "audit")
    assert result.exit_code == 0 and (tmp_path / "audit" / "report.json").exists(), result.output


def test_a_csv_with_a_byte_order_mark_is_read(tmp_path, pool):
    """Spreadsheets write UTF-8 CSVs with a byte-order mark: its header's first column is still `uid`."""
    project = new_project(tmp_path)
    file = raw(b"\xef\xbb\xbfuid,label\nu0,1\n", "x.csv")(tmp_path)
    result = label_add(file, project, pool)
    assert result.exit_code == 0, result.output
    assert pq.read_table(project / "labels" / "sexual.parquet")["uid"].to_pylist() == ["u0"]


def test_a_parquet_with_dictionary_encoded_uids_is_read(tmp_path, pool):
    """pandas writes a categorical column dictionary-encoded: its uids are still text."""
    project = new_project(tmp_path)
    file = labels_parquet(uid=pa.array(["u0", "u1"]).dictionary_encode(), label=[1, 0])(tmp_path)
    result = label_add(file, project, pool)
    assert result.exit_code == 0, result.output
    assert pq.read_table(project / "labels" / "sexual.parquet")["uid"].to_pylist() == ["u0", "u1"]


def test_a_broken_label_file_is_named_even_when_the_run_has_no_image_paths(tmp_path):
    """A run made from a manifest without image paths (URLs only): the error is still about the label file."""
    pq.write_table(pa.table({"uid": UIDS, "caption": CAPTIONS}), tmp_path / "in.parquet")
    run = RunFolder.create(tmp_path / "run", open_manifest(tmp_path / "in.parquet"))
    x = np.eye(len(UIDS), 8, dtype=np.float32)
    write_embedding_shard(run.embeddings_dir, 0, x, None, pa.table({"uid": UIDS}))
    result = label_add(text("", "x.csv")(tmp_path), new_project(tmp_path), run.path)
    assert_one_line_error(result, 1, "x.csv: label file is empty", tmp_path)


# -- random files --------------------------------------------------------------------------------------------------

def mutated(data: bytes, draw: st.DrawFn) -> bytes:
    """`data` intact (half the time), cut short, or with one byte changed (hypothesis chooses)."""
    how = draw(st.sampled_from(["intact", "intact", "cut", "byte"]))
    if not data or how == "intact":
        return data
    if how == "cut":
        return data[:draw(st.integers(0, len(data)))]
    at = draw(st.integers(0, len(data) - 1))
    return data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1:]


@st.composite
def label_files(draw: st.DrawFn) -> tuple[str, bytes]:
    """(file name, bytes): random bytes (as CSV or parquet), or a CSV of pool uids (and a stranger) with labels
    mostly valid, a uid perhaps twice, perhaps broken."""
    if draw(st.integers(0, 3)) == 0:
        return draw(st.sampled_from(["x.csv", "x.parquet"])), draw(st.binary(max_size=120))
    header = draw(st.sampled_from(["uid,label", "uid,label", "uid,label,round", "path,label", "uid,answer"]))
    row = st.tuples(st.sampled_from([*UIDS, "stranger", ""]), st.sampled_from(["0", "1", "yes", "", " 1", "2"]),
                    st.sampled_from(["1", "1", "-1", "x"]))
    rows = draw(st.lists(row, max_size=5, unique_by=(lambda r: r[0]) if draw(st.booleans()) else None))
    body = "".join(",".join(r[:header.count(",") + 1]) + "\n" for r in rows)
    return "x.csv", mutated((header + "\n" + body).encode(), draw)


def csv_answers(data: bytes) -> dict[str, int] | None:
    """uid → label of a CSV label file by the documented rules (a blank label is an unanswered row; 1/true/yes/y
    and 0/false/no/n, any case), read independently of the code under test; None when the file is not plainly
    valid (then the command may still accept it: only success is checked against this)."""
    try:
        rows = list(csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")))
    except (UnicodeDecodeError, csv.Error):
        return None
    values = {**dict.fromkeys(["1", "true", "yes", "y"], 1), **dict.fromkeys(["0", "false", "no", "n"], 0)}
    answers: dict[str, int] = {}
    for row in rows:
        if None in row or "uid" not in row:
            return None
        label, uid = (row.get("label") or "").strip().lower(), (row["uid"] or "").strip()
        if not label:
            continue
        if label not in values or not uid or answers.setdefault(uid, values[label]) != values[label]:
            return None
    return answers or None


def assert_failed_in_one_line(result: Result, codes: tuple[int, ...], file: Path) -> None:
    """Exit one of `codes`; the last stderr line, and the only `error:` one, names `file`; no traceback."""
    assert result.exit_code in codes and isinstance(result.exception, SystemExit), (result.output, result.exception)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and result.stderr.rstrip("\n").endswith(errors[0]), result.stderr
    assert not errors[0].startswith("error: unexpected ") and "Traceback" not in result.output + result.stderr
    if "labelled uids are not in the dataset" not in errors[0]:  # that one follows the listing of the uids
        assert str(file) in errors[0], errors[0]


SLOW = settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@SLOW
@given(label_files())
def test_random_label_files_store_their_answers_or_fail_in_one_line(pool, file):
    """Exit 0 only when every row's answer is stored as the file says; else one `error:` line naming the file
    (or, for uids the run lacks, the listing of them), exit 1, and nothing stored."""
    name, data = file
    with tempfile.TemporaryDirectory() as tmp:
        project, path = new_project(Path(tmp)), Path(tmp, name)
        path.write_bytes(data)
        result = label_add(path, project, pool)
        event(f"exit {result.exit_code}")
        store = project / "labels" / "sexual.parquet"
        if result.exit_code == 0:
            stored = pq.read_table(store).to_pydict()
            expected = csv_answers(data) if name.endswith(".csv") else None
            assert expected is not None and dict(zip(stored["uid"], stored["label"], strict=True)) == expected
            return
        assert_failed_in_one_line(result, (1,), path)
        assert not store.exists()


@SLOW
@given(label_files())
def test_random_label_files_import_as_seeds_or_fail_in_one_line(pool, file):
    """`label import` reads the same files as `label add`: exit 0 only with a label store written; else one `error:`
    line naming the file (or, for uids the run lacks, the listing of them), exit 1 or 2, and no store."""
    name, data = file
    with tempfile.TemporaryDirectory() as tmp:
        project, path = new_project(Path(tmp)), Path(tmp, name)
        path.write_bytes(data)
        result = invoke("label", "import", "sexual", path, "--project", project, "--run", pool)
        event(f"exit {result.exit_code}")
        store = project / "labels" / "sexual.parquet"
        if result.exit_code == 0:
            assert pq.read_table(store).num_rows > 0
            return
        assert_failed_in_one_line(result, (1, 2), path)
        assert not store.exists()


@st.composite
def toml_files(draw: st.DrawFn, valid: str, sections: dict[str, list[str]]) -> bytes:
    """Random bytes; or the `valid` file; or TOML made of a few of `sections` (header → candidate lines; "" is the
    top level, written first), each with a few of its lines, valid or not for the command, a key perhaps twice.
    The last two perhaps broken."""
    kind = draw(st.sampled_from(["bytes", "valid", "sections", "sections"]))
    if kind == "bytes":
        return draw(st.binary(max_size=120))
    if kind == "valid":
        return mutated(valid.encode(), draw)
    headers = draw(st.lists(st.sampled_from(list(sections)), unique=True, max_size=3))
    chosen = {h: draw(st.lists(st.sampled_from(sections[h]), unique=True, max_size=4)) for h in headers}
    parts = [line for header in sorted(chosen, key=bool) for line in ([header] if header else []) + chosen[header]]
    return mutated("\n".join(parts).encode(), draw)


CONFIG_SECTIONS = {
    "": ["x = ["],
    "[run]": ["seed = 1", "seed = -3", 'seed = "x"', 'stages = ["embed"]', 'stages = ["nope"]', "skip = []"],
    "[dedup]": ["threshold = 0.9", "threshold = nan", "threshold = 2", "clusters = 8"],
}
SPEC_SECTIONS = {
    "": ["version = 1"],
    "[defaults]": ["target_recall = 0.9", "confidence = 1", 'classifier = "mlp"'],
    "[categories.a]": ['description = "x"', 'prompts = ["p"]', "prompts = []",
                       "target_recall = 0.9", 'target_recall = "high"', 'classifier = "mlp"'],
    "[categories.b]": ['description = "y"\nprompts = ["q", "r"]', 'description = "y"', "confidence = 0.8"],
    "[categories.A]": ['description = "z"', 'prompts = ["s"]'],
}
LEXICON_SECTIONS = {
    "": ['multiple = "mixed"', 'name = "x"', 'exclude = ["game boy"]', "name = 3"],
    "[classes]": ['female = ["woman"]', 'male = ["man", "boy"]',
                  'other = ["Woman"]', "neutral = []", "x = 3"],
    "[pronouns]": ['female = ["she"]', 'male = ["he"]', 'other = ["it"]'],
    "[referents]": ['person = ["player"]', 'other = ["dog"]', "pet = []"],
}


def is_toml(data: bytes) -> bool:
    try:
        tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False
    return True


@SLOW
@given(toml_files("[run]\nseed = 1\n[dedup]\nthreshold = 0.9\n", CONFIG_SECTIONS))
def test_random_configs_plan_or_fail_in_one_line(manifest, data):
    """Exit 0 only for a non-empty TOML file (its plan printed, nothing run); else one `error:` line naming the
    file, exit 2, no run folder."""
    with tempfile.TemporaryDirectory() as tmp:
        config, out = Path(tmp, "c.toml"), Path(tmp, "out")
        config.write_bytes(data)
        result = run_dry(manifest, config, out)
        event(f"exit {result.exit_code}")
        if result.exit_code == 0:
            assert data and is_toml(data) and result.stdout and not out.exists()
            return
        assert_failed_in_one_line(result, (2,), config)
        assert not out.exists()


@SLOW
@given(toml_files(category(), SPEC_SECTIONS))
def test_random_specs_start_a_project_or_fail_in_one_line(data):
    """Exit 0 only for TOML, and the project then holds the file as given; else one `error:` line naming the
    file, exit 2, and no project folder."""
    with tempfile.TemporaryDirectory() as tmp:
        spec, project = Path(tmp, "s.toml"), Path(tmp, "project")
        spec.write_bytes(data)
        result = label_init(project, spec)
        event(f"exit {result.exit_code}")
        if result.exit_code == 0:
            assert is_toml(data) and (project / "categories.toml").read_bytes() == data
            return
        assert_failed_in_one_line(result, (2,), spec)
        assert not project.exists()


@SLOW
@given(toml_files(LEXICON, LEXICON_SECTIONS))
def test_random_lexicons_audit_or_fail_in_one_line(manifest, data):
    """Exit 0 only for TOML with a [classes] table, and then a report; else one `error:` line naming the file,
    exit 2, and no report."""
    with tempfile.TemporaryDirectory() as tmp:
        lexicon, out = Path(tmp, "l.toml"), Path(tmp, "out")
        lexicon.write_bytes(data)
        result = audit(manifest, f"lexicon:{lexicon}", out)
        event(f"exit {result.exit_code}")
        if result.exit_code == 0:
            assert is_toml(data) and isinstance(tomllib.loads(data.decode())["classes"], dict)
            assert json.loads((out / "report.json").read_text())
            return
        assert_failed_in_one_line(result, (2,), lexicon)
        assert not (out / "report.json").exists()
