"""The classify stage: certified thresholds from random-audit labels, then every row scored, shard by shard.

For each category with a saved classifier in the labeling project:

1. certify: score the random-audit labelled uids (only those rows are read from the run's embeddings), choose
   the highest threshold whose recall >= target is certified at the spec's confidence
   (`certified_threshold`, with the audit sample's strata and inclusion probabilities), and write
   ``PROJECT/thresholds/<cat>.json`` (certificate, precision and removal-rate estimates with intervals, the
   labels behind them). When it cannot certify, the certificate's conservative fallback threshold is used
   and the report says how many more random labels are needed.
2. filter: for every embedding shard, ``RUN/stages/<cat>/NNNNN.parquet`` with uid, keep, reason
   (``sexual:0.934>=0.412``), score, then the shard's marker. The stage config holds the classifier file's
   hash and the threshold, so a rerun with the same ones skips finished shards, and a new classifier or
   threshold reruns the stage.

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
from typing import Any

import numpy as np
import pyarrow as pa

from sanitize.engines import Engine, resolve_engine
from sanitize.errors import ConfigError, DataError
from sanitize.io.atomic import write_json
from sanitize.io.embeddings import EmbeddingSource, open_embeddings
from sanitize.io.manifest import read_parquet
from sanitize.io.runfolder import RunFolder, peak_memory_mb
from sanitize.safety.audit_sample import audit_labels
from sanitize.safety.classifier import EmbeddingClassifier
from sanitize.safety.estimates import estimate_removal_rate, precision_at
from sanitize.safety.pool import member_mask
from sanitize.safety.project import LabelProject, metadata_files
from sanitize.safety.thresholds import ThresholdCertificate, certified_threshold

logger = logging.getLogger(__name__)

STATS_KEY = "classify"
BLOCK_ROWS = 65_536


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
    wanted = np.asarray(list(uids), dtype=str)
    position = {u: i for i, u in enumerate(wanted.tolist())}
    out: np.ndarray | None = None
    found = np.zeros(len(wanted), dtype=bool)
    for meta_path in metadata_files(run):
        shard_uids = np.asarray(read_parquet(meta_path, columns=["uid"])["uid"].to_pylist(), dtype=str)
        rows = np.flatnonzero(member_mask(shard_uids, position))
        if len(rows) == 0:
            continue
        number = meta_path.stem.rsplit("_", 1)[-1]
        npy = run.embeddings_dir / "img_emb" / f"img_emb_{number}.npy"
        try:
            emb = np.load(npy, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"{npy}: not a readable .npy file ({exc})") from None
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
    """Certify `name`'s threshold from its random-audit labels and write PROJECT/thresholds/<name>.json.

    Raises ConfigError for an unknown category or one without a classifier; DataError when there are no
    random-audit labels, an audit uid has no embedding, or a score is NaN.
    """
    spec = project.category(name)
    clf = project.require_classifier(name)
    sha = project.classifier_sha256(name)
    sample = project.read_audit_sample(name)
    if sample is None:
        logger.warning("%s: no audit sample file; treating the random-audit labels as a simple random sample",
                       name)
    try:
        audit = audit_labels(project.store(name).read(), sample)
    except DataError as exc:
        raise DataError(f"category {name!r}: {exc}") from None
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
        "run": str(run.path),
        "note": None if cert.certified else _not_certified_note(cert),
    }
    write_json(project.threshold_path(name), report)
    return CategoryFilter(name, clf, sha, cert, report)


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


def run_classify_stage(
    run: RunFolder,
    project: LabelProject,
    categories: Sequence[str] | None = None,
    *,
    block_rows: int = BLOCK_ROWS,
    engine: Engine | None = None,
) -> dict[str, Any]:
    """Certify and filter `categories` (default: every category with a saved classifier) over `run`.

    Writes RUN/stages/<cat>/NNNNN.parquet (uid, keep, reason, score) per embedding shard, resumable, and
    records per-category stats and the overlap between categories in stats.json. Returns those stats.
    Certifying runs here; `engine` (default: local) runs the shards. The Ray engine loads the classifiers
    from the project once per actor (refusing a classifier file that changed since it was certified); the
    run and project folders must then be on storage every worker can reach.
    """
    started = time.perf_counter()
    engine = resolve_engine(engine)
    if categories:
        names = list(dict.fromkeys(categories))
        for name in names:
            project.category(name)
    else:
        names = [n for n in project.spec.names if project.model_path(n).exists()]
        if not names:
            raise ConfigError(f"{project.path}: no category has a classifier yet; label with `sanitize label`")
    filters = [certify_category(project, run, name) for name in names]
    for f in filters:
        run.begin_stage(f.name, f.stage_config())

    n_shards = open_embeddings(run.path).n_shards
    todo = [i for i in range(n_shards) if any(not run.is_done(f.name, i) for f in filters)]
    engine.map_shards(ClassifyShardWorker(run.path, project.path, filters, block_rows=block_rows), todo)

    summary = {"categories": {}, "seconds": 0.0}
    for f in filters:
        stats = category_stats(run, f)
        run.record_stats(f.name, stats)
        summary["categories"][f.name] = stats
    summary["overlap"] = overlap(run, [f.name for f in filters], n_shards)
    summary["seconds"] = round(time.perf_counter() - started, 3)
    summary["peak_memory_mb"] = round(peak_memory_mb(), 1)
    summary["engine"] = engine.name
    run.record_stats(STATS_KEY, {"overlap": summary["overlap"], "categories": names, "engine": engine.name,
                                 "seconds": summary["seconds"], "peak_memory_mb": summary["peak_memory_mb"]})
    return summary


def classify_one_shard(run: RunFolder, source: EmbeddingSource, index: int, filters: Sequence[CategoryFilter],
                       *, block_rows: int = BLOCK_ROWS) -> int:
    """Score embedding shard `index` for every filter whose shard is not done yet; write each sidecar + marker.

    The one function both engines call per shard (the shard is read once for all categories). Returns the
    shard's number of rows (0 when every filter had it done). Raises DataError for a dimension mismatch or a
    NaN score, naming the shard file and category.
    """
    todo = [f for f in filters if not run.is_done(f.name, index)]
    if not todo:
        return 0
    shard = source.read_shard(index)
    for f in todo:
        if shard.img_emb.shape[1] != f.classifier.dim:
            raise DataError(f"{shard.source}: {shard.img_emb.shape[1]}-d embeddings, classifier "
                            f"{f.name!r} is {f.classifier.dim}-d")
        try:
            scores = score_rows(f.classifier, shard.img_emb, block_rows=block_rows)
        except DataError as exc:
            raise DataError(f"{shard.source}: category {f.name!r}: {exc}") from None
        run.write_shard(f.name, index, decision_table(f.name, shard.uids, scores, f.threshold))
    return len(shard)


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


def category_stats(run: RunFolder, f: CategoryFilter) -> dict[str, Any]:
    """Rows, removed, removal rate (counted from the stage files, so a resumed run counts all) and the certificate."""
    rows = removed = 0
    for _, table in run.read_stage(f.name):
        rows += table.num_rows
        removed += table.num_rows - int(np.count_nonzero(table["keep"].to_numpy(zero_copy_only=False)))
    cert = f.certificate
    return {
        "rows_in": rows, "kept": rows - removed, "removed": removed,
        "removal_rate": removed / rows if rows else None,
        "threshold": repr(cert.threshold) if not math.isfinite(cert.threshold) else cert.threshold,
        "certified": cert.certified, "target_recall": cert.target_recall, "confidence": cert.confidence,
        "recall_lower_bound": cert.recall_lower_bound, "audit_labels": cert.n_labels,
        "audit_positives": cert.n_positives, "more_labels_needed": cert.more_labels_needed,
        "precision": f.report["precision"], "dropped": {f"{f.name}": removed},
    }


def overlap(run: RunFolder, names: Sequence[str], n_shards: int) -> dict[str, Any]:
    """Rows removed by both of each pair of categories, and by any of them (row-aligned shards)."""
    pairs = {f"{a}&{b}": 0 for i, a in enumerate(names) for b in names[i + 1:]}
    any_removed = 0
    for index in range(n_shards):
        if not all(run.is_done(n, index) for n in names):
            continue
        tables = [read_parquet(run.shard_path(n, index), columns=["uid", "keep"]) for n in names]
        if any(not t["uid"].equals(tables[0]["uid"]) for t in tables[1:]):
            raise DataError(f"{run.path}: stage shards {index:05d} of {', '.join(names)} are not row-aligned")
        flags = np.stack([~t["keep"].to_numpy(zero_copy_only=False) for t in tables]) if tables else None
        if flags is None:
            continue
        any_removed += int(flags.any(axis=0).sum())
        for i, a in enumerate(names):
            for j in range(i + 1, len(names)):
                pairs[f"{a}&{names[j]}"] += int((flags[i] & flags[j]).sum())
    return {"removed_by_any": any_removed, "pairs": pairs}
