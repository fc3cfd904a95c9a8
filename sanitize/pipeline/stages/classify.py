"""The classify stage: certified thresholds from random-audit labels, then every row scored, shard by shard.

For each category with a saved classifier in the labeling project:

1. certify: score the random-audit labelled uids (only those rows are read from the run's embeddings), choose
   the highest threshold whose recall >= target is certified at the spec's confidence
   (`certified_threshold`, with the audit sample's strata and inclusion probabilities), and write
   ``RUN/stages/classify/<cat>/certificate.json`` (certificate, precision and removal-rate estimates with
   intervals, the labels behind them). When it cannot certify, the certificate's conservative fallback threshold
   is used and the report says how many more random labels are needed. The project is only read.
2. filter: for every embedding shard, ``RUN/stages/classify/<cat>/NNNNN.parquet`` per category with uid, keep,
   reason (``sexual:0.934>=0.412``), score, then the shard's marker ``stages/classify/_done/NNNNN`` with its
   counts. The stage config holds each classifier file's hash and threshold, so a rerun with the same ones skips
   finished shards, and a new classifier or threshold reruns the stage.

Each shard is read once for all categories; scoring is one matrix product per block of rows.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from sanitize.errors import ConfigError, DataError
from sanitize.io.atomic import write_json
from sanitize.io.embeddings import EmbeddingSource, open_embeddings
from sanitize.io.manifest import read_parquet, uid_column
from sanitize.io.runfolder import RunFolder
from sanitize.pipeline.options import option
from sanitize.pipeline.stage import ShardStats, Stage, StageContext, StageResult, stored_counts

if TYPE_CHECKING:  # scikit-learn and SciPy load when the stage runs, not when its config is read
    from sanitize.safety.classifier import EmbeddingClassifier
    from sanitize.safety.project import LabelProject
    from sanitize.safety.thresholds import ThresholdCertificate

logger = logging.getLogger(__name__)

STAGE = "classify"
BLOCK_ROWS = 65_536


@dataclass(frozen=True)
class ClassifyConfig:
    """The ``[classify]`` section: the labeling project whose classifiers filter, and which categories."""

    project: str | None = option(None, "Labeling project folder with the classifiers (unset: classify is skipped).",
                                 example="labels/")
    categories: tuple[str, ...] = option((), "Categories to filter (empty: every one with a classifier).",
                                         flag="--category")


class ClassifyStage(Stage):
    """Per safety category: a certified recall-favouring threshold, then every row scored and decided."""

    name = STAGE
    Config = ClassifyConfig
    summary = "per-category classifier scores against certified thresholds"

    def skip_reason(self) -> str | None:
        return None if self.config.project else "no [classify] project set"

    def run(self, context: StageContext) -> StageResult:
        """Certify and filter the categories over the run; see `classify_run`."""
        if not self.config.project:
            raise ConfigError("classify needs a labeling project (--project / classify.project)")
        from sanitize.safety.project import LabelProject

        started = time.perf_counter()
        project = LabelProject.open(self.config.project)
        details = classify_run(context.run, project, self.config.categories or None, context=context)
        return context.result(self, started, stored_counts(context.run, STAGE), details=details)


@dataclass(frozen=True)
class CategoryFilter:
    """One category ready to filter: its classifier, the classifier file's hash and the chosen threshold."""

    name: str
    classifier: EmbeddingClassifier
    classifier_sha256: str
    certificate: ThresholdCertificate
    report: dict[str, Any]

    @property
    def threshold(self) -> float:
        return self.certificate.threshold

    def stage_config(self) -> dict[str, Any]:
        # repr keeps -inf (the flag-all fallback) and full float precision in JSON.
        return {"category": self.name, "classifier_sha256": self.classifier_sha256,
                "threshold": repr(self.threshold), "method": self.certificate.method}


def score_rows(classifier: EmbeddingClassifier, X: np.ndarray, *, block_rows: int = BLOCK_ROWS) -> np.ndarray:
    """P(category) for every row of `X` (n, d), any float dtype, in blocks of `block_rows` (bounded float32 copies).

    Raises DataError naming the first row whose score is NaN (a broken classifier or embedding).
    """
    out = np.empty(X.shape[0], dtype=np.float32)
    for start in range(0, X.shape[0], block_rows):
        out[start:start + block_rows] = classifier.positive_proba(X[start:start + block_rows])
    nan = np.isnan(out)
    if nan.any():
        raise DataError(f"classifier gave {int(nan.sum())} NaN scores, first at row {int(np.argmax(nan))}")
    return out


def gather_embeddings(run: RunFolder, uids: Sequence[str]) -> np.ndarray:
    """float32 image embeddings of `uids`, in their order, reading only the shards and rows that hold them.

    Raises DataError listing uids the run has no embedding for.
    """
    from sanitize.io.embeddings import load_npy
    from sanitize.io.run_rows import metadata_files
    from sanitize.safety.pool import member_mask

    wanted = np.asarray(list(uids), dtype=str)
    position = {u: i for i, u in enumerate(wanted.tolist())}
    out: np.ndarray | None = None
    found = np.zeros(len(wanted), dtype=bool)
    for meta_path in metadata_files(run):
        shard_uids = np.asarray(uid_column(read_parquet(meta_path, columns=["uid"]), "uid", path=meta_path)
                                .to_pylist(), dtype=str)
        rows = np.flatnonzero(member_mask(shard_uids, position))
        if len(rows) == 0:
            continue
        number = meta_path.stem.rsplit("_", 1)[-1]
        npy = run.embeddings_dir / "img_emb" / f"img_emb_{number}.npy"
        emb = load_npy(npy)  # a 2-D float array, or DataError naming the file
        if emb.shape[0] != len(shard_uids):
            raise DataError(f"{npy}: {emb.shape[0]} rows but {meta_path} has {len(shard_uids)}")
        if out is None:
            out = np.zeros((len(wanted), emb.shape[1]), dtype=np.float32)
        targets = np.array([position[u] for u in shard_uids[rows].tolist()], dtype=np.int64)
        out[targets] = np.asarray(emb[rows], dtype=np.float32)
        found[targets] = True
    if not found.all():
        missing = wanted[~found].tolist()
        raise DataError(f"{len(missing)} audit-labelled uids have no embedding in {run.path}: "
                        + ", ".join(missing[:5]) + (" …" if len(missing) > 5 else ""))
    bad = ~np.isfinite(out).all(axis=1)
    if bad.any():
        raise DataError(f"{run.path}: embedding of uid {wanted[np.argmax(bad)]} has NaN or infinite values")
    return out


def certify_category(project: LabelProject, run: RunFolder, name: str) -> CategoryFilter:
    """Certify `name`'s threshold from its random-audit labels (the report is written by `classify_run`).

    Raises ConfigError for an unknown category or one without a classifier; DataError when there are no
    random-audit labels, an audit uid has no embedding, or a score is NaN.
    """
    from sanitize.safety.audit_sample import audit_labels
    from sanitize.safety.estimates import estimate_removal_rate, precision_at
    from sanitize.safety.thresholds import certified_threshold

    spec = project.category(name)
    clf = project.require_classifier(name)
    sha = project.classifier_sha256(name)
    sample = project.read_audit_sample(name)
    if sample is None:
        logger.warning("%s: no audit sample file; treating the random-audit labels as a simple random sample",
                       name)
    store = project.store(name)
    history = store.read()  # DataError naming the store when unreadable
    try:
        audit = audit_labels(history, sample)
    except DataError as exc:  # the random-audit labels of the store do not make an audit (with the drawn sample)
        where = store.path if sample is None else f"{store.path}, {project.audit_sample_path(name)}"
        raise DataError(f"{where}: category {name!r}: {exc}") from None
    uids = audit["uid"].to_pylist()
    X = gather_embeddings(run, uids)
    if X.shape[1] != clf.dim:
        raise DataError(f"{project.model_path(name)}: classifier is {clf.dim}-d, the run's embeddings are "
                        f"{X.shape[1]}-d")
    scores = score_rows(clf, X)
    labels = audit["label"].to_numpy()
    weights = audit["weight"].to_numpy() if sample is not None else None
    strata = audit["stratum"].to_numpy() if sample is not None else None
    cert = certified_threshold(scores, labels, target_recall=spec.target_recall, confidence=spec.confidence,
                               weights=weights, strata=strata)
    precision = precision_at(scores, labels, cert.threshold, confidence=spec.confidence, weights=weights)
    removal = estimate_removal_rate(scores, cert.threshold, confidence=spec.confidence, weights=weights)
    report = {
        "category": name,
        "certificate": _finite(cert.to_dict()),
        "precision": _finite(precision.to_dict()),
        "removal_rate_estimate": _finite(removal.to_dict()),
        "labels": {"random_audit": len(uids), "positive": int(labels.sum()),
                   "design": "simple random" if sample is None or strata is None or len(set(strata)) == 1
                   else "stratified"},
        "classifier": {"path": str(project.model_path(name)), "sha256": sha},
        "note": None if cert.certified else _not_certified_note(cert),
    }
    return CategoryFilter(name, clf, sha, cert, report)


def certificate_path(run: RunFolder, name: str) -> Path:
    """Where the classify stage keeps category `name`'s certificate and estimates."""
    return run.stage_dir(STAGE) / name / "certificate.json"


def _not_certified_note(cert: ThresholdCertificate) -> str:
    if cert.more_labels_needed is None:
        return (f"not certified: no positive among {cert.n_labels} random-audit labels; label more random rows. "
                "Every row is flagged until then.")
    return (f"not certified for recall {cert.target_recall:g} at {cert.confidence:.0%}: about "
            f"{cert.more_labels_needed} more random-audit labels needed; using the fallback threshold "
            f"{cert.threshold:.4g} ({cert.fallback})")


def _finite(d: dict[str, Any]) -> dict[str, Any]:
    """JSON has no infinities: write them as strings ("-inf")."""
    return {k: (repr(v) if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def classify_run(run: RunFolder, project: LabelProject, categories: Sequence[str] | None,
                 *, context: StageContext, block_rows: int = BLOCK_ROWS) -> dict[str, Any]:
    """Certify and filter `categories` (default: every category with a saved classifier) over `run`.

    Writes each category's certificate and its per-shard decisions under RUN/stages/classify/<cat>/, resumable.
    Returns the details of the stage's result: per category its counts and certificate, and the overlap between
    categories. Certifying runs here; ``context.engine`` runs the shards. The Ray engine loads the classifiers from
    the project once per actor (refusing a classifier file that changed since it was certified); the run and
    project folders must then be on storage every worker can reach.
    """
    if categories:
        names = list(dict.fromkeys(categories))
        for name in names:
            project.category(name)
    else:
        names = [n for n in project.spec.names if project.model_path(n).exists()]
        if not names:
            raise ConfigError(f"{project.path}: no category has a classifier yet; label with `sanitize label`")
    filters = [certify_category(project, run, name) for name in names]
    run.begin_stage(STAGE, {"categories": [f.stage_config() for f in filters]},
                    decisions={f.name: run.stage_dir(STAGE) / f.name for f in filters})
    for f in filters:
        write_json(certificate_path(run, f.name), f.report)
    n_shards = open_embeddings(run.path).n_shards
    todo = run.todo(STAGE, n_shards)
    context.engine.map_shards(ClassifyShardWorker(run.path, project.path, filters, block_rows=block_rows), todo)
    counts = stored_counts(run, STAGE)
    return {"categories": {f.name: category_stats(f, counts) for f in filters},
            "overlap": {"removed_by_any": counts.rows_in - counts.kept, "pairs": overlap_pairs(names, counts)}}


def classify_one_shard(run: RunFolder, source: EmbeddingSource, index: int, filters: Sequence[CategoryFilter],
                       *, block_rows: int = BLOCK_ROWS) -> int:
    """Score embedding shard `index` for every filter; write each category's decisions, then the shard's marker
    with its counts (rows, kept by every category, removed per category, removed by each pair of categories).

    The one function both engines call per shard (the shard is read once for all categories). Returns the
    shard's number of rows. Raises DataError for a dimension mismatch or a NaN score, naming the shard file and
    category.
    """
    shard = source.read_shard(index)
    removed = []
    for f in filters:
        if shard.img_emb.shape[1] != f.classifier.dim:
            raise DataError(f"{shard.source}: {shard.img_emb.shape[1]}-d embeddings, classifier "
                            f"{f.name!r} is {f.classifier.dim}-d")
        try:
            scores = score_rows(f.classifier, shard.img_emb, block_rows=block_rows)
        except DataError as exc:
            raise DataError(f"{shard.source}: category {f.name!r}: {exc}") from None
        table = decision_table(f.name, shard.uids, scores, f.threshold)
        run.write_decisions(f.name, index, table)
        removed.append(~table["keep"].to_numpy(zero_copy_only=False))
    run.mark_done(STAGE, index, shard_counts([f.name for f in filters], removed, len(shard)).to_dict())
    return len(shard)


def shard_counts(names: Sequence[str], removed: Sequence[np.ndarray], rows: int) -> ShardStats:
    """The counts of one shard from each category's removed-row mask (same order as `names`)."""
    flags = np.stack(removed) if removed else np.zeros((0, rows), dtype=bool)
    pairs = {f"{a}&{names[j]}": int((flags[i] & flags[j]).sum())
             for i, a in enumerate(names) for j in range(i + 1, len(names))}
    return ShardStats(rows_in=rows, kept=rows - int(flags.any(axis=0).sum()),
                      dropped={n: int(f.sum()) for n, f in zip(names, flags, strict=True)}, other=pairs)


class ClassifyShardWorker:
    """The classify stage's `ShardWorker`: `classify_one_shard` with the certified filters.

    In this process it uses the given filters as they are. A copy sent to another process carries the
    filters without their classifiers and reloads each from the project in `setup()`, checking the file's
    sha256 against the one certified (ConfigError when it changed meanwhile).
    """

    uses_gpu = False  # a matrix product per block: memory-bound, no gain from a GPU

    def __init__(self, run_path: str | os.PathLike, project_path: str | os.PathLike,
                 filters: Sequence[CategoryFilter], *, block_rows: int = BLOCK_ROWS) -> None:
        self.run_path = Path(run_path)
        self.project_path = Path(project_path)
        self.filters: list[CategoryFilter] | None = list(filters)
        self.block_rows = block_rows
        self._certified = [(f.name, f.classifier_sha256, f.certificate, f.report) for f in filters]
        self._source: EmbeddingSource | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "filters": None, "_source": None}

    def setup(self) -> None:
        if self.filters is None:
            from sanitize.safety.project import LabelProject

            project = LabelProject.open(self.project_path)
            self.filters = []
            for name, sha, cert, report in self._certified:
                if project.classifier_sha256(name) != sha:
                    raise ConfigError(f"{project.model_path(name)}: classifier changed after it was certified; "
                                      "rerun the classify stage")
                self.filters.append(CategoryFilter(name, project.require_classifier(name), sha, cert, report))
        if self._source is None:
            self._source = open_embeddings(self.run_path)

    def __call__(self, index: int) -> int:
        self.setup()
        return classify_one_shard(RunFolder(self.run_path), self._source, index, self.filters,
                                  block_rows=self.block_rows)


def decision_table(name: str, uids: np.ndarray, scores: np.ndarray, threshold: float) -> pa.Table:
    """The stage sidecar of one shard: uid, keep (score < threshold), reason for removed rows, score."""
    removed = scores >= threshold
    reasons = [f"{name}:{s:.3f}>={threshold:.3f}" if r else None
               for s, r in zip(scores.tolist(), removed.tolist(), strict=True)]
    return pa.table({
        "uid": pa.array(np.asarray(uids).tolist(), pa.string()),
        "keep": pa.array(~removed),
        "reason": pa.array(reasons, pa.string()),
        "score": pa.array(scores, pa.float32()),
    })


def category_stats(f: CategoryFilter, counts: ShardStats) -> dict[str, Any]:
    """Rows, removed, removal rate (from the stage's merged counts, so a resumed run counts all) and the certificate."""
    rows, removed = counts.rows_in, counts.dropped.get(f.name, 0)
    cert = f.certificate
    return {
        "rows_in": rows, "kept": rows - removed, "removed": removed,
        "removal_rate": removed / rows if rows else None,
        "threshold": repr(cert.threshold) if not math.isfinite(cert.threshold) else cert.threshold,
        "certified": cert.certified, "target_recall": cert.target_recall, "confidence": cert.confidence,
        "recall_lower_bound": cert.recall_lower_bound, "audit_labels": cert.n_labels,
        "audit_positives": cert.n_positives, "more_labels_needed": cert.more_labels_needed,
        "precision": f.report["precision"],
    }


def overlap_pairs(names: Sequence[str], counts: ShardStats) -> dict[str, int]:
    """Rows removed by both of each pair of categories, in category order."""
    return {f"{a}&{b}": counts.other.get(f"{a}&{b}", 0) for i, a in enumerate(names) for b in names[i + 1:]}
