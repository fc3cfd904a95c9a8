"""A labeling project: categories, labels, classifiers, batches and audit samples, kept beside the runs.

```
PROJECT/
  categories.toml                              the category spec (`sanitize label init` copies the example)
  labels/<cat>.parquet                         every answer: uid, label, source, round, annotator, timestamp
  models/<cat>.safetensors                     the category's classifier (arrays + JSON header, no pickle)
  batches/<cat>/round_<k>.{csv,parquet,html}   batches proposed by `label next`
  batches/<cat>/audit_<k>.{csv,parquet,html}   audit batches drawn by `label audit-sample`
  audit/<cat>_sample.parquet                   the drawn audit sample: uid, score, stratum, inclusion_probability
  thresholds/<cat>.json                        the certificate and estimates written by `sanitize classify`
```

Several runs can share one project: labels are keyed by uid, and a run is only named when a command reads
its embeddings. The second half of this module runs one labeling step against a run (propose a batch, take
answers, retrain, draw an audit sample); the CLI calls these and prints what they return.

Random-audit labels never train a classifier: a certificate computed from rows the model was fitted on would
overstate its recall. They are kept in the store for `sanitize classify` and for status only.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sanitize.errors import ConfigError, DataError
from sanitize.io.atomic import write_parquet, write_text
from sanitize.io.embeddings import open_embeddings
from sanitize.io.images import TarIndex, read_local
from sanitize.io.manifest import read_parquet
from sanitize.io.runfolder import RunFolder
from sanitize.safety.audit_sample import RANDOM_AUDIT, draw_audit_sample
from sanitize.safety.classifier import MIN_PER_CLASS, EmbeddingClassifier, load_classifier, save_classifier
from sanitize.safety.contact_sheet import write_labeling_batch
from sanitize.safety.labels import LabelStore, current_labels, read_label_file
from sanitize.safety.pool import EmbeddingPool, member_mask
from sanitize.safety.rounds import can_train, next_round, propose_batch, train_classifier
from sanitize.safety.spec import CategorySpec, ProjectSpec, default_spec_path, load_spec
from sanitize.safety.status import label_status
from sanitize.safety.strategies import Selection

logger = logging.getLogger(__name__)

SPEC_FILE = "categories.toml"
# A category's filter writes stages/<category>/ in a run folder, so it must not be named like another stage.
RESERVED_NAMES = frozenset({"embed", "dedup", "audit", "export", "classify", "labels"})
TRAINING_SOURCES = ("seed", "active")


class LabelProject:
    """A project folder on disk. Build with :meth:`init` (new) or :meth:`open` (existing)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._spec: ProjectSpec | None = None

    @classmethod
    def init(cls, path: str | Path, spec_file: str | Path | None = None) -> LabelProject:
        """Create `path` with a copy of `spec_file` (default: the shipped example) as categories.toml.

        The spec is validated first. Re-running with the same spec is a no-op; a project that already has a
        different categories.toml raises ConfigError (edit that file instead).
        """
        source = default_spec_path() if spec_file is None else Path(spec_file)
        load_spec(source)
        text = source.read_text(encoding="utf-8")
        project = cls(path)
        if project.path.exists() and not project.path.is_dir():
            raise ConfigError(f"{project.path}: exists and is not a folder")
        target = project.path / SPEC_FILE
        if target.exists():
            if target.read_text(encoding="utf-8") != text:
                raise ConfigError(f"{target}: project already has a different category spec; edit that file")
            return project
        write_text(target, text)
        logger.info("initialised labeling project %s from %s", project.path, source)
        return project

    @classmethod
    def open(cls, path: str | Path) -> LabelProject:
        """Open an existing project; ConfigError when `path` has no categories.toml."""
        project = cls(path)
        if not (project.path / SPEC_FILE).is_file():
            raise ConfigError(f"{project.path}: not a labeling project (no {SPEC_FILE}); run `sanitize label init`")
        return project

    # -- spec and paths -----------------------------------------------------------------------------------
    @property
    def spec(self) -> ProjectSpec:
        if self._spec is None:
            self._spec = load_spec(self.path / SPEC_FILE)
        return self._spec

    def category(self, name: str) -> CategorySpec:
        """The validated spec of category `name`; ConfigError for an unknown or reserved name."""
        spec = self.spec.category(name)
        if name in RESERVED_NAMES:
            raise ConfigError(f"{self.spec.path}: category name {name!r} is reserved for a pipeline stage; rename it")
        return spec

    def store(self, name: str) -> LabelStore:
        return LabelStore(self.path, name)

    def model_path(self, name: str) -> Path:
        return self.path / "models" / f"{name}.safetensors"

    def batch_dir(self, name: str) -> Path:
        return self.path / "batches" / name

    def audit_sample_path(self, name: str) -> Path:
        return self.path / "audit" / f"{name}_sample.parquet"

    def threshold_path(self, name: str) -> Path:
        return self.path / "thresholds" / f"{name}.json"

    # -- labels, classifiers, audit samples ---------------------------------------------------------------
    def training_labels(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(uids, labels) from seed and active answers only, the latest answer per uid winning."""
        history = self.store(name).read()
        keep = np.isin(np.asarray(history["source"].to_pylist(), dtype=object), TRAINING_SOURCES)
        return current_labels(history.filter(pa.array(keep, pa.bool_())))

    def load_classifier(self, name: str, *, dim: int | None = None) -> EmbeddingClassifier | None:
        """The saved classifier of `name`, or None when there is none yet (DataError for a broken file)."""
        path = self.model_path(name)
        return load_classifier(path, dim=dim) if path.exists() else None

    def require_classifier(self, name: str, *, dim: int | None = None) -> EmbeddingClassifier:
        """Like `load_classifier`, but a missing classifier raises ConfigError saying how to get one."""
        clf = self.load_classifier(name, dim=dim)
        if clf is None:
            raise ConfigError(
                f"category {name!r} has no classifier yet ({self.model_path(name)}); label at least {MIN_PER_CLASS}"
                " positives and negatives (`sanitize label next/add`)"
            )
        return clf

    def classifier_sha256(self, name: str) -> str:
        return hashlib.sha256(self.model_path(name).read_bytes()).hexdigest()

    def read_audit_sample(self, name: str) -> pa.Table | None:
        path = self.audit_sample_path(name)
        return read_parquet(path) if path.exists() else None


def labels_fingerprint(uids: np.ndarray, labels: np.ndarray) -> str:
    """A short digest of a label set (order-free), stored with a classifier to tell whether it is current."""
    digest = hashlib.sha256()
    for uid, label in sorted(zip(np.asarray(uids).tolist(), np.asarray(labels).tolist(), strict=True)):
        digest.update(f"{uid}\t{int(label)}\n".encode())
    return digest.hexdigest()[:16]


# -- reading a run's embeddings and images ----------------------------------------------------------------


def run_pool(run: RunFolder) -> EmbeddingPool:
    """The run's embedded rows as a streamed pool: shards are read one at a time on every pass."""
    source = open_embeddings(run.path)
    dim = int(run.stage_config("embed")["dim"]) if run.stage_config("embed") else source.read_shard(0).img_emb.shape[1]

    def blocks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for shard in open_embeddings(run.path).shards():
            # Fixed-width str uids take member_mask's vectorised path.
            yield np.asarray(shard.uids, dtype=str), shard.img_emb

    return EmbeddingPool.from_blocks(blocks, dim)


def metadata_files(run: RunFolder) -> list[Path]:
    """The run's embedding metadata shards (uid, caption, url, image, key, shard, row), in shard order."""
    files = sorted((run.embeddings_dir / "metadata").glob("metadata_*.parquet"))
    if not files:
        raise DataError(f"{run.path}: no embeddings (run `sanitize embed` first)")
    return files


def run_metadata(run: RunFolder, uids: np.ndarray | list[str], columns: tuple[str, ...] = ()) -> dict[str, dict]:
    """Metadata rows (`uid` plus `columns`) of those `uids` that the run embedded, keyed by uid."""
    wanted = set(np.asarray(uids, dtype=str).tolist())
    found: dict[str, dict] = {}
    for path in metadata_files(run):
        names = pq.read_schema(path).names
        table = read_parquet(path, columns=["uid", *[c for c in columns if c in names]])
        hit = member_mask(np.asarray(table["uid"].to_pylist(), dtype=str), wanted)
        for row in table.filter(pa.array(hit)).to_pylist():
            found[row["uid"]] = row
    return found


def run_embedding_model(run: RunFolder) -> str:
    config = run.stage_config("embed") or {}
    return f"{config.get('model', 'unknown')}/{config.get('pretrained', 'unknown')}"


def batch_images(run: RunFolder, meta: dict[str, dict]) -> dict[str, bytes]:
    """Image bytes for the contact sheet, from the run's input (tar members or files); unreadable ones are left out."""
    try:
        manifest = run.manifest()
    except DataError as exc:
        logger.warning("no thumbnails: %s", exc)
        return {}
    images: dict[str, bytes] = {}
    tars: dict[int, TarIndex | None] = {}
    for uid, row in meta.items():
        shard, key, image = row.get("shard"), row.get("key"), row.get("image")
        data = None
        if image and manifest.image_root is not None:
            data = read_local(manifest.image_root / image)
        elif key is not None and shard is not None:
            if shard not in tars:
                tar = manifest.files[shard].with_suffix(".tar") if shard < len(manifest.files) else None
                tars[shard] = TarIndex.build(tar) if tar is not None and tar.exists() else None
            if tars[shard] is not None and key in tars[shard]:
                data = tars[shard].read(key)
        if data:
            images[uid] = data
    return images


# -- one labeling step --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchResult:
    """A written labeling batch: its round, the strategy that chose it, how many rows, and the file paths."""

    category: str
    round: int
    strategy: str
    rows: int
    paths: dict[str, Path]
    classifier: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"category": self.category, "round": self.round, "strategy": self.strategy, "rows": self.rows,
                "paths": {k: str(v) for k, v in self.paths.items()}, "classifier": self.classifier}


def current_classifier(
    project: LabelProject, run: RunFolder, name: str, pool: EmbeddingPool, *, seed: int = 0
) -> EmbeddingClassifier | None:
    """The classifier for the current seed+active labels: the saved one when it matches them, else retrained
    and saved; None while a class has fewer than 5 labels."""
    uids, y = project.training_labels(name)
    if not can_train(y):
        return None
    fingerprint = labels_fingerprint(uids, y)
    saved = project.load_classifier(name, dim=pool.dim)
    if saved is not None and saved.metadata_.get("extra", {}).get("labels_fingerprint") == fingerprint:
        return saved
    clf = train_classifier(pool, (uids, y), kind=project.category(name).classifier, seed=seed)
    save_classifier(clf, project.model_path(name), embedding_model=run_embedding_model(run),
                    extra={"category": name, "labels_fingerprint": fingerprint, "seed": seed})
    return clf


def propose_next_batch(
    project: LabelProject,
    run: RunFolder,
    name: str,
    n: int,
    *,
    strategy: str,
    seed: int = 0,
    encode_text: Callable[[list[str]], np.ndarray] | None = None,
) -> BatchResult:
    """Write the next labeling batch of `name` to batches/<name>/round_<k>.{csv,parquet,html}.

    With fewer than 5 labels of a class there is no classifier: fewer than 5 positives give the zero-shot cold
    start (prompts, `encode_text` is called), otherwise a random batch; with a classifier, `strategy` chooses.
    Nothing is stored in the label store. Labelled uids (any source) are never proposed again.
    """
    spec = project.category(name)
    pool = run_pool(run)
    clf = current_classifier(project, run, name, pool, seed=seed)
    history = project.store(name).read()
    labelled = current_labels(history)
    selection = propose_batch(spec, pool, labelled, n, strategy=strategy, classifier=clf,
                              encode_text=encode_text, seed=seed)
    if len(selection) == 0:
        raise DataError(f"{run.path}: no unlabelled rows left to propose for {name!r}")
    round_no = next_round(history)
    paths = _write_batch(project, run, spec, selection, round_no, stem=f"round_{round_no}")
    return BatchResult(name, round_no, selection.strategy, len(selection), paths,
                       None if clf is None else str(project.model_path(name)))


def draw_audit_batch(
    project: LabelProject,
    run: RunFolder,
    name: str,
    n: int,
    *,
    strategy: str = "random",
    n_strata: int = 10,
    seed: int = 0,
) -> BatchResult:
    """Draw an audit sample of `name` from the whole run (labelled rows included) and write it as a batch.

    The sample (uid, score, stratum, inclusion_probability) is saved to audit/<name>_sample.parquet, where
    `sanitize classify` reads the design back; the batch's strategy is ``random-audit``, so `label add` stores
    its answers with that source. A second call extends a simple random sample by `n` more rows (the union is
    again a simple random sample); a stratified sample cannot be extended (delete the file to start over).
    """
    project.category(name)
    pool = run_pool(run)
    clf = project.require_classifier(name, dim=pool.dim)
    uid_parts, score_parts = [], []
    for block in pool.blocks():
        uid_parts.append(block.uids)
        score_parts.append(clf.positive_proba(block.X))
    uids, scores = np.concatenate(uid_parts), np.concatenate(score_parts).astype(np.float64)
    previous = project.read_audit_sample(name)
    if previous is None:
        sample = draw_audit_sample(uids, scores, n, strategy=strategy, n_strata=n_strata, seed=seed)
        new = sample
    else:
        sample, new = _extend_random_sample(project, name, previous, uids, scores, n, strategy, seed)
    write_parquet(project.audit_sample_path(name), sample)
    selection = Selection(
        strategy=RANDOM_AUDIT,
        uids=np.asarray(new["uid"].to_pylist(), dtype=str),
        rows=np.zeros(new.num_rows, dtype=np.int64),
        scores=np.asarray(new["score"].to_pylist(), dtype=np.float32),
        reasons=[f"audit sample ({strategy}), stratum {h}, inclusion probability {p:.4g}"
                 for h, p in zip(new["stratum"].to_pylist(), new["inclusion_probability"].to_pylist(), strict=True)],
    )
    round_no = next_round(project.store(name).read())
    paths = _write_batch(project, run, project.category(name), selection, round_no, stem=f"audit_{round_no}")
    return BatchResult(name, round_no, RANDOM_AUDIT, new.num_rows, paths, str(project.model_path(name)))


def _extend_random_sample(project, name, previous, uids, scores, n, strategy, seed) -> tuple[pa.Table, pa.Table]:
    path = project.audit_sample_path(name)
    probability = np.asarray(previous["inclusion_probability"].to_pylist())
    n_old, n_rows = previous.num_rows, len(uids)
    if strategy != "random" or len(set(previous["stratum"].to_pylist())) > 1:
        raise ConfigError(f"{path}: an audit sample exists; only a simple random one can be extended "
                          "(--strategy random); delete the file to draw a new sample")
    if not np.allclose(probability, n_old / n_rows):
        raise DataError(f"{path}: drawn from a pool of {round(n_old / probability[0])} rows, this run has {n_rows}")
    remaining = ~member_mask(uids, set(previous["uid"].to_pylist()))
    if n > int(remaining.sum()):
        raise ConfigError(f"--n {n}: only {int(remaining.sum())} rows are not in the audit sample yet")
    # An SRS of the rows not yet drawn, added to an SRS, is an SRS of the union's size.
    new = draw_audit_sample(uids[remaining], scores[remaining], n, strategy="random", seed=seed)
    total = n_old + n
    union = pa.concat_tables([previous.cast(new.schema), new])
    union = union.set_column(3, "inclusion_probability", pa.array(np.full(total, total / n_rows)))
    new = new.set_column(3, "inclusion_probability", pa.array(np.full(n, total / n_rows)))
    return union, new


def _write_batch(project, run, spec, selection, round_no, *, stem) -> dict[str, Path]:
    meta = run_metadata(run, selection.uids, ("caption", "key", "image", "shard"))
    captions = {uid: row.get("caption") or "" for uid, row in meta.items()}
    return write_labeling_batch(project.batch_dir(spec.name), selection, category=spec, round=round_no,
                                captions=captions, images=batch_images(run, meta), stem=stem)


@dataclass(frozen=True)
class AddSummary:
    """What `add_answers` did: labels added / unchanged, the source used, and the classifier that resulted."""

    category: str
    source: str
    added: int
    unchanged: int
    unanswered: int
    conflicts: int
    classifier: str | None
    message: str
    n_positive: int
    n_negative: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def add_answers(
    project: LabelProject,
    run: RunFolder,
    name: str,
    file: str | Path,
    *,
    source: str | None = None,
    annotator: str = "",
    default_source: str = "active",
    on_conflict: str = "raise",
    seed: int = 0,
) -> AddSummary:
    """Ingest answers from a CSV/parquet file (uid or image path, label[, round]) and retrain.

    `source` None takes it from the file: a batch drawn by `label audit-sample` (strategy ``random-audit``) is
    ``random-audit``, anything else `default_source`. Uids the run did not embed raise `UnknownUidError` with
    the list; answers that contradict stored ones raise `LabelConflictError` (`on_conflict="raise"`; "skip" and
"override" as in `LabelStore.add`); nothing is written when either is raised. After
    storing, the classifier is retrained on seed+active labels and saved when both classes have 5 labels.
    """
    project.category(name)
    path = Path(file)
    path_to_uid = None if "uid" in _file_columns(path) else _path_to_uid(run)
    answers = read_label_file(path, path_to_uid=path_to_uid)
    if source is None:
        source = RANDOM_AUDIT if _file_strategies(path) == {RANDOM_AUDIT} else default_source
    present = set(run_metadata(run, answers.uids))
    round_no = answers.rounds[0] if answers.rounds and len(set(answers.rounds)) == 1 else (
        0 if source == "seed" else next_round(project.store(name).read()))
    result = project.store(name).add(answers.uids, answers.labels, source=source, round=round_no,
                                     annotator=annotator, known_uids=present, on_conflict=on_conflict)
    _, y = project.training_labels(name)
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    if can_train(y):
        pool = run_pool(run)
        current_classifier(project, run, name, pool, seed=seed)
        classifier = str(project.model_path(name))
        message = f"classifier trained on {n_pos} positive / {n_neg} negative labels: {classifier}"
    else:
        classifier = None
        message = (f"no classifier yet: {n_pos} positive / {n_neg} negative seed+active labels, need "
                   f"{MIN_PER_CLASS} of each ({max(0, MIN_PER_CLASS - n_pos)} more positive, "
                   f"{max(0, MIN_PER_CLASS - n_neg)} more negative)")
    return AddSummary(name, source, result.added, result.unchanged, answers.unanswered, len(result.conflicts),
                      classifier, message, n_pos, n_neg)


def _file_columns(path: Path) -> list[str]:
    if path.suffix.lower() == ".parquet" and path.is_file():
        try:
            return pq.read_schema(path).names
        except (pa.ArrowInvalid, OSError):
            return []  # read_label_file reports the broken file
    if path.suffix.lower() == ".csv" and path.is_file():
        with open(path, newline="", encoding="utf-8", errors="replace") as f:
            return next(csv.reader(f), [])
    return []


def _file_strategies(path: Path) -> set[str]:
    """The values of the batch file's `strategy` column (empty when it has none)."""
    if "strategy" not in _file_columns(path):
        return set()
    if path.suffix.lower() == ".parquet":
        return {s for s in pq.read_table(path, columns=["strategy"])["strategy"].to_pylist() if s}
    with open(path, newline="", encoding="utf-8") as f:
        return {row["strategy"] for row in csv.DictReader(f) if row.get("strategy")}


def _path_to_uid(run: RunFolder) -> dict[str, str]:
    """Image path (as in the manifest, and its file name) → uid, for seed files that list images by path."""
    mapping: dict[str, str] = {}
    for path in metadata_files(run):
        table = read_parquet(path, columns=["uid", "image"])
        for uid, image in zip(table["uid"].to_pylist(), table["image"].to_pylist(), strict=True):
            if image:
                mapping[image] = uid
                mapping.setdefault(Path(image).name, uid)
    return mapping


# -- status ---------------------------------------------------------------------------------------------------


def category_status(project: LabelProject, name: str, run: RunFolder | None = None, *, seed: int = 0
                    ) -> dict[str, Any]:
    """Labels by source and round; with a run also cross-validated precision/recall and expected removal rate.

    Also reports the audit sample (drawn / labelled) and the certificate of the last `sanitize classify`.
    """
    spec = project.category(name)
    history = project.store(name).read()
    pool = run_pool(run) if run is not None else None
    clf = current_classifier(project, run, name, pool, seed=seed) if pool is not None else None
    status = label_status(name, history, pool=pool, classifier=clf, kind=spec.classifier, seed=seed)
    out = status.to_dict()
    out["markdown"] = status.to_markdown()
    sources = history["source"].to_pylist()
    sample = project.read_audit_sample(name)
    out["audit"] = {"drawn": None if sample is None else sample.num_rows,
                    "labelled": sum(s == RANDOM_AUDIT for s in sources)}
    out["classifier"] = str(project.model_path(name)) if project.model_path(name).exists() else None
    threshold = project.threshold_path(name)
    out["certificate"] = _read_json(threshold).get("certificate") if threshold.exists() else None
    return out


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable ({exc})") from None
