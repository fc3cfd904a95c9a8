"""One labeling step of a project against a run: propose a batch, take answers, retrain, draw an audit sample.

The CLI (`sanitize label next/add/import/audit-sample/status`) and the browser session call these and print
what they return. The run supplies the pool (its embedded rows); the project keeps everything that is written.

Who writes what:
- `propose_next_batch` writes batches/<cat>/round_<k>.*, and models/<cat>.safetensors when it is stale;
- `draw_audit_batch` writes audit/<cat>_sample.parquet and batches/<cat>/audit_<k>.*;
- `add_answers` writes labels/<cat>.parquet, and models/<cat>.safetensors when it is stale;
- `category_status` writes nothing: it reports whether the saved classifier is current and, when it is not,
  fits one in memory for its numbers and discards it.

Random-audit labels never train a classifier: a certificate computed from rows the model was fitted on would
overstate its recall. They are kept in the store for `sanitize classify` and for status only.
"""

from __future__ import annotations

import csv
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
from sanitize.io.atomic import write_parquet
from sanitize.io.embeddings import open_embeddings
from sanitize.io.run_rows import image_path_to_uid, metadata_rows, row_images
from sanitize.io.runfolder import RunFolder
from sanitize.safety.audit_sample import RANDOM_AUDIT, draw_audit_sample
from sanitize.safety.classifier import MIN_PER_CLASS, EmbeddingClassifier, save_classifier
from sanitize.safety.contact_sheet import write_labeling_batch
from sanitize.safety.labels import PATH_COLUMNS, current_labels, next_round, read_label_file
from sanitize.safety.pool import EmbeddingPool, member_mask
from sanitize.safety.project import LabelProject, labels_fingerprint
from sanitize.safety.rounds import can_train, propose_batch, train_classifier
from sanitize.safety.spec import CategorySpec
from sanitize.safety.status import label_status
from sanitize.safety.strategies import Selection

logger = logging.getLogger(__name__)


def run_pool(run: RunFolder) -> EmbeddingPool:
    """The run's embedded rows as a streamed pool: shards are read one at a time on every pass."""
    source = open_embeddings(run.path)
    dim = int(run.stage_config("embed")["dim"]) if run.stage_config("embed") else source.read_shard(0).img_emb.shape[1]

    def blocks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for shard in open_embeddings(run.path).shards():
            # Fixed-width str uids take member_mask's vectorised path.
            yield np.asarray(shard.uids, dtype=str), shard.img_emb

    return EmbeddingPool.from_blocks(blocks, dim, source=str(run.path))


# -- the classifier of the current labels -------------------------------------------------------------------


def current_classifier(
    project: LabelProject, run: RunFolder, name: str, pool: EmbeddingPool, *, seed: int = 0
) -> EmbeddingClassifier | None:
    """The classifier for the current seed+active labels: the saved one when it matches them, else retrained
    and saved to models/<name>.safetensors; None while a class has fewer than 5 labels (nothing is written)."""
    uids, y = project.training_labels(name)
    if not can_train(y):
        return None
    fingerprint = labels_fingerprint(uids, y)
    saved = project.load_classifier(name, dim=pool.dim)
    if _is_fitted_to(saved, fingerprint):
        return saved
    clf = train_classifier(pool, (uids, y), kind=project.category(name).classifier, seed=seed)
    save_classifier(clf, project.model_path(name), embedding_model=_embedding_model(run),
                    extra={"category": name, "labels_fingerprint": fingerprint, "seed": seed})
    return clf


def _is_fitted_to(clf: EmbeddingClassifier | None, fingerprint: str) -> bool:
    """True when `clf` was saved for the label set whose `labels_fingerprint` is `fingerprint`."""
    return clf is not None and clf.metadata_.get("extra", {}).get("labels_fingerprint") == fingerprint


def _embedding_model(run: RunFolder) -> str:
    """``model/pretrained`` of the run's embed stage, recorded in a saved classifier's metadata."""
    config = run.stage_config("embed") or {}
    return f"{config.get('model', 'unknown')}/{config.get('pretrained', 'unknown')}"


# -- batches ------------------------------------------------------------------------------------------------


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
    start (prompts, `encode_text` is called), otherwise a random batch; with a classifier (retrained and saved
    first when stale), `strategy` chooses. Nothing is stored in the label store. Labelled uids (any source) are
    never proposed again.
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


def _write_batch(project: LabelProject, run: RunFolder, spec: CategorySpec, selection: Selection, round_no: int,
                 *, stem: str) -> dict[str, Path]:
    rows = metadata_rows(run, selection.uids, ("caption", "key", "image", "shard"))
    captions = {uid: row.get("caption") or "" for uid, row in rows.items()}
    return write_labeling_batch(project.batch_dir(spec.name), selection, category=spec, round=round_no,
                                captions=captions, images=row_images(run, rows), stem=stem)


# -- answers ------------------------------------------------------------------------------------------------


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
    "override" as in `LabelStore.add`); nothing is written when either is raised. After storing, the classifier
    is retrained on seed+active labels and saved when both classes have 5 labels.
    """
    project.category(name)
    path = Path(file)
    columns = _file_columns(path)
    # Image paths are mapped to uids only for a file keyed by them; a file without a key column (or a broken one)
    # goes straight to read_label_file, which names what is wrong with it.
    keyed_by_path = "uid" not in columns and any(c in columns for c in PATH_COLUMNS)
    path_to_uid = image_path_to_uid(run) if keyed_by_path else None
    answers = read_label_file(path, path_to_uid=path_to_uid)
    if source is None:
        source = RANDOM_AUDIT if _file_strategies(path) == {RANDOM_AUDIT} else default_source
    present = set(metadata_rows(run, answers.uids))
    # A file without one round: seeds are round 0, other answers the next round, chosen under the store's lock.
    round_no = answers.rounds[0] if answers.rounds and len(set(answers.rounds)) == 1 else (
        0 if source == "seed" else None)
    result = project.store(name).add(answers.uids, answers.labels, source=source, round=round_no,
                                     annotator=annotator, known_uids=present, on_conflict=on_conflict)
    _, y = project.training_labels(name)
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    if can_train(y):
        current_classifier(project, run, name, run_pool(run), seed=seed)
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
        with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:  # -sig: a spreadsheet's BOM
            return next(csv.reader(f), [])
    return []


def _file_strategies(path: Path) -> set[str]:
    """The values of the batch file's `strategy` column (empty when it has none)."""
    if "strategy" not in _file_columns(path):
        return set()
    if path.suffix.lower() == ".parquet":
        return {s for s in pq.read_table(path, columns=["strategy"])["strategy"].to_pylist() if s}
    with open(path, newline="", encoding="utf-8-sig") as f:
        return {row["strategy"] for row in csv.DictReader(f) if row.get("strategy")}


# -- status -------------------------------------------------------------------------------------------------


def category_status(project: LabelProject, name: str, run: RunFolder | None = None, *, seed: int = 0
                    ) -> dict[str, Any]:
    """Labels by source and round; with a run also cross-validated precision/recall and expected removal rate.

    Also reports the audit sample (drawn / labelled), the certificate of the last `sanitize classify` of `run`, and
    whether the saved classifier is current: ``classifier_current`` is True when models/<name>.safetensors was
    trained on exactly the current seed+active labels, and ``classifier_labels`` gives the positive/negative
    counts of the current labels and of the saved classifier (None when there is none).

    Strictly read-only: nothing under the project or the run is written. With a stale (or missing) classifier
    and enough labels, the removal rate comes from a classifier fitted in memory, as `label next/add` would
    fit and save it.
    """
    spec = project.category(name)
    history = project.store(name).read()
    uids, y = project.training_labels(name)
    pool = run_pool(run) if run is not None else None
    saved = project.load_classifier(name, dim=None if pool is None else pool.dim)
    is_current = _is_fitted_to(saved, labels_fingerprint(uids, y))
    clf = None
    if pool is not None and can_train(y):
        clf = saved if is_current else train_classifier(pool, (uids, y), kind=spec.classifier, seed=seed)
    status = label_status(name, history, pool=pool, classifier=clf, kind=spec.classifier, seed=seed)
    out = status.to_dict()
    out["markdown"] = status.to_markdown()
    sources = history["source"].to_pylist()
    sample = project.read_audit_sample(name)
    out["audit"] = {"drawn": None if sample is None else sample.num_rows,
                    "labelled": sum(s == RANDOM_AUDIT for s in sources)}
    out["classifier"] = str(project.model_path(name)) if project.model_path(name).exists() else None
    out["classifier_current"] = is_current
    out["classifier_labels"] = _classifier_labels(saved, y)
    out["certificate"] = last_certificate(run, name) if run is not None else None
    return out


def last_certificate(run: RunFolder, name: str) -> dict[str, Any] | None:
    """The certificate the classify stage of `run` wrote for category `name`, or None when there is none."""
    from sanitize.pipeline.stages.classify import certificate_path  # the classify stage owns that layout

    path = certificate_path(run, name)
    return _read_json(path).get("certificate") if path.exists() else None


def _classifier_labels(saved: EmbeddingClassifier | None, y: np.ndarray) -> dict[str, dict[str, int] | None]:
    """Positive/negative counts of the current seed+active labels `y` and of the labels `saved` was trained on."""
    trained_on = None if saved is None else {"positive": saved.metadata_.get("n_positive"),
                                              "negative": saved.metadata_.get("n_negative")}
    return {"current": {"positive": int((y == 1).sum()), "negative": int((y == 0).sum())}, "saved": trained_on}


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`; DataError naming the file when it is unreadable, not JSON or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable ({exc})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data
