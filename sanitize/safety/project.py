"""A labeling project: categories, labels, classifiers, batches and audit samples, kept beside the runs.

```
PROJECT/
  categories.toml                              the category spec (`sanitize label init` copies the example)
  labels/<cat>.parquet                         every answer: uid, label, source, round, annotator, timestamp
  models/<cat>.safetensors                     the category's classifier (arrays + JSON header, no pickle)
  batches/<cat>/round_<k>.{csv,parquet,html}   batches proposed by `label next`
  batches/<cat>/audit_<k>.{csv,parquet,html}   audit batches drawn by `label audit-sample`
  audit/<cat>_sample.parquet                   the drawn audit sample: uid, score, stratum, inclusion_probability
```
The project is read, never written, by runs: `sanitize classify` writes each category's certificate into the run
(RUN/stages/classify/<cat>/certificate.json).

Several runs can share one project: labels are keyed by uid, and a run is only named when a command reads
its embeddings. This module knows the folder and what is in it; `sanitize.safety.workflow` runs one labeling
step against a run (propose a batch, take answers, retrain, draw an audit sample, report status).

Random-audit labels never train a classifier (`LabelProject.training_labels` leaves them out): a certificate
computed from rows the model was fitted on would overstate its recall.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa

from sanitize.errors import ConfigError, DataError
from sanitize.io.atomic import write_text
from sanitize.io.manifest import read_parquet
from sanitize.safety.classifier import MIN_PER_CLASS, EmbeddingClassifier, load_classifier
from sanitize.safety.labels import LabelStore, current_labels
from sanitize.safety.spec import CategorySpec, ProjectSpec, default_spec_path, load_spec

logger = logging.getLogger(__name__)

SPEC_FILE = "categories.toml"
TRAINING_SOURCES = ("seed", "active")
# The columns of audit/<cat>_sample.parquet and the types `draw_audit_sample` gives them.
AUDIT_SAMPLE_COLUMNS = {"uid": lambda t: pa.types.is_string(t) or pa.types.is_large_string(t),
                        "score": pa.types.is_floating, "stratum": pa.types.is_integer,
                        "inclusion_probability": pa.types.is_floating}


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
        """The validated spec of category `name`; ConfigError for an unknown name."""
        return self.spec.category(name)

    def store(self, name: str) -> LabelStore:
        return LabelStore(self.path, name)

    def model_path(self, name: str) -> Path:
        return self.path / "models" / f"{name}.safetensors"

    def batch_dir(self, name: str) -> Path:
        return self.path / "batches" / name

    def audit_sample_path(self, name: str) -> Path:
        return self.path / "audit" / f"{name}_sample.parquet"

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
        """The drawn audit sample of category `name` (None when none was drawn). Raises DataError naming the file
        when a column is missing, of another type or has empty values, or a probability is outside (0, 1]."""
        path = self.audit_sample_path(name)
        if not path.exists():
            return None
        sample = read_parquet(path)
        try:
            sample.validate(full=True)
        except pa.ArrowInvalid as exc:  # text that is not UTF-8
            raise DataError(f"{path}: not a readable audit sample ({exc})") from None
        for column, is_type in AUDIT_SAMPLE_COLUMNS.items():
            if column not in sample.column_names:
                raise DataError(f"{path}: audit sample has no column {column!r}")
            if not is_type(sample.schema.field(column).type):
                raise DataError(f"{path}: audit sample column {column!r} has type {sample.schema.field(column).type}")
            if sample.column(column).null_count:
                raise DataError(f"{path}: audit sample column {column!r} has empty values")
        probability = sample.column("inclusion_probability").to_numpy()
        if not ((probability > 0) & (probability <= 1)).all():
            raise DataError(f"{path}: an inclusion probability is outside (0, 1]")
        return sample


def labels_fingerprint(uids: np.ndarray, labels: np.ndarray) -> str:
    """A short digest of a label set (order-free), stored with a classifier to tell whether it is current."""
    digest = hashlib.sha256()
    for uid, label in sorted(zip(np.asarray(uids).tolist(), np.asarray(labels).tolist(), strict=True)):
        digest.update(f"{uid}\t{int(label)}\n".encode())
    return digest.hexdigest()[:16]
