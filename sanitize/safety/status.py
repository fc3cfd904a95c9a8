"""Where a category's labeling stands: labels by source and round, cross-validated quality, removal rate.

The cross-validated precision and recall are computed on the labels collected so far. Active learning picks
hard, unusual rows on purpose, so these numbers describe the labelled set, not the pool; the certified recall
of the final filter comes from `random-audit` labels (`sanitize.safety.thresholds`), not from here.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from sanitize.errors import ConfigError
from sanitize.safety.classifier import MIN_PER_CLASS, EmbeddingClassifier
from sanitize.safety.labels import current_labels
from sanitize.safety.pool import EmbeddingPool

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelStatus:
    """A category's labeling status; `to_dict` is JSON-ready, `to_markdown` is for the terminal."""

    category: str
    n_labelled: int
    n_positive: int
    n_negative: int
    by_source_round: list[dict[str, Any]]
    cv_precision: float | None = None
    cv_recall: float | None = None
    cv_folds: int | None = None
    threshold: float = 0.5
    removal_rate: float | None = None
    pool_rows: int | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_markdown(self) -> str:
        lines = [
            f"## {self.category}",
            "",
            f"{self.n_labelled} labelled uids: {self.n_positive} positive, {self.n_negative} negative",
            "",
            "| source | round | positive | negative |",
            "|---|---:|---:|---:|",
        ]
        lines += [f"| {r['source']} | {r['round']} | {r['positive']} | {r['negative']} |" for r in self.by_source_round]
        lines.append("")
        if self.cv_precision is not None:
            lines.append(
                f"cross-validated ({self.cv_folds} folds) at P ≥ {self.threshold:g}: "
                f"precision {self.cv_precision:.3f}, recall {self.cv_recall:.3f}"
            )
        if self.removal_rate is not None:
            lines.append(
                f"expected removal rate: {self.removal_rate:.4%} of {self.pool_rows} pool rows"
                f" at P ≥ {self.threshold:g}"
            )
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines) + "\n"


def label_status(
    category: str,
    history: pa.Table,
    *,
    pool: EmbeddingPool | tuple[np.ndarray, np.ndarray] | None = None,
    classifier: EmbeddingClassifier | None = None,
    kind: str = "logistic",
    threshold: float = 0.5,
    folds: int = 5,
    seed: int = 0,
) -> LabelStatus:
    """Summarise the answer `history` (a `LabelStore.read()` table) of `category`.

    Counts come from the history alone. With a `pool`, also: out-of-fold precision/recall at `threshold`
    (seeded `StratifiedKFold`, classifier of `kind`; needs 5 labels of each class) and the share of pool rows
    the `classifier` (default: one fitted on all labels) scores at or above `threshold`.
    """
    if not 0.0 < threshold < 1.0:
        raise ConfigError(f"threshold must be in (0, 1), got {threshold}")
    if folds < 2:
        raise ConfigError(f"folds must be >= 2, got {folds}")
    uids, y = current_labels(history)
    notes: list[str] = []
    status: dict[str, Any] = {
        "category": category,
        "n_labelled": len(uids),
        "n_positive": int((y == 1).sum()),
        "n_negative": int((y == 0).sum()),
        "by_source_round": _counts_by_source_round(history),
        "threshold": threshold,
    }
    if pool is None:
        return LabelStatus(**status, notes=notes)
    pool = EmbeddingPool.of(pool)
    if min(status["n_positive"], status["n_negative"]) < MIN_PER_CLASS:
        notes.append(f"cross-validation and removal rate need at least {MIN_PER_CLASS} labels of each class")
        if classifier is None:
            return LabelStatus(**status, notes=notes)
    else:
        X = pool.gather(uids)
        status.update(_cross_validate(X, y.astype(np.int64), kind=kind, threshold=threshold, folds=folds, seed=seed))
        if classifier is None:
            classifier = EmbeddingClassifier(kind=kind, random_state=seed).fit(X, y)
    flagged = rows = 0
    for block in pool.blocks():
        flagged += int((classifier.positive_proba(block.X) >= threshold).sum())
        rows += len(block.uids)
    status.update(removal_rate=flagged / rows if rows else None, pool_rows=rows)
    return LabelStatus(**status, notes=notes)


def _counts_by_source_round(history: pa.Table) -> list[dict[str, Any]]:
    counts: dict[tuple[str, int], list[int]] = {}
    for source, rnd, label in zip(
        history["source"].to_pylist(), history["round"].to_pylist(), history["label"].to_pylist(), strict=True
    ):
        counts.setdefault((source, rnd), [0, 0])[1 - label] += 1
    return [
        {"source": source, "round": rnd, "positive": pos, "negative": neg}
        for (source, rnd), (pos, neg) in sorted(counts.items(), key=lambda item: (item[0][1], item[0][0]))
    ]


def _cross_validate(X: np.ndarray, y: np.ndarray, *, kind: str, threshold: float, folds: int, seed: int) -> dict:
    from sklearn.model_selection import StratifiedKFold

    n_splits = min(folds, int(np.bincount(y, minlength=2).min()))
    predicted = np.zeros(len(y), dtype=bool)
    splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    for train, test in splitter.split(X, y):
        # A training fold may hold fewer than MIN_PER_CLASS of a class; the full set was checked already.
        clf = EmbeddingClassifier(kind=kind, min_per_class=1, random_state=seed).fit(X[train], y[train])
        predicted[test] = clf.positive_proba(X[test]) >= threshold
    tp = int((predicted & (y == 1)).sum())
    precision = tp / int(predicted.sum()) if predicted.any() else 0.0
    recall = tp / int((y == 1).sum())
    return {"cv_precision": precision, "cv_recall": recall, "cv_folds": n_splits}
