"""Binary classifiers on CLIP embeddings, scored by a pure-numpy forward pass and saved without pickle.

`EmbeddingClassifier` trains with scikit-learn (class-weighted logistic regression by default, a small MLP as
an option), then keeps only arrays: a stack of dense layers ``(W, b)`` with ReLU between them and a sigmoid on
the single output logit, plus an optional input standardisation (LAION's heads have one). Scoring is a few
matrix products, so it is cheap on large pools and identical before and after a save/load round trip.

Files are safetensors: the tensors plus a JSON metadata header (kind, dim, embedding model, label counts,
scikit-learn version). Loading a file never runs code from it, so a model from someone else is safe to open.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import sklearn
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning

from sanitize.errors import ConfigError, DataError
from sanitize.io.atomic import write_bytes

logger = logging.getLogger(__name__)

TRAINABLE_KINDS = ("logistic", "mlp")
FORMAT_VERSION = 1
MIN_PER_CLASS = 5


class EmbeddingClassifier(ClassifierMixin, BaseEstimator):
    """P(category | embedding) for L2-normalised image embeddings.

    Parameters follow scikit-learn: `kind` is "logistic" or "mlp"; `C` is the inverse regularisation of the
    logistic model, `hidden_layer_sizes`/`alpha` configure the MLP; `min_per_class` is how many labels of each
    class `fit` insists on. Learned state (`layers_`, `input_mean_`, `input_std_`) is plain float32 arrays.
    Classes are always ``[0, 1]``; column 1 of `predict_proba` is the positive class.
    """

    def __init__(
        self,
        kind: str = "logistic",
        C: float = 1.0,
        hidden_layer_sizes: tuple[int, ...] = (64,),
        alpha: float = 1e-3,
        max_iter: int = 500,
        min_per_class: int = MIN_PER_CLASS,
        random_state: int = 0,
    ) -> None:
        self.kind = kind
        self.C = C
        self.hidden_layer_sizes = hidden_layer_sizes
        self.alpha = alpha
        self.max_iter = max_iter
        self.min_per_class = min_per_class
        self.random_state = random_state

    def fit(self, X: np.ndarray, y: np.ndarray) -> EmbeddingClassifier:
        """Train on embeddings `X` (n, d) and labels `y` in {0, 1}.

        Raises `DataError` when a class has fewer than `min_per_class` labels (the message says how many of
        each there are and how many are needed) or when X is not finite; `ConfigError` for an unknown kind.
        """
        if self.kind not in TRAINABLE_KINDS:
            raise ConfigError(f"classifier kind {self.kind!r} cannot be trained; use one of {TRAINABLE_KINDS}")
        X, y = _check_training_data(X, y, self.min_per_class)
        weights = _balanced_weights(y)
        if self.kind == "logistic":
            from sklearn.linear_model import LogisticRegression

            model = LogisticRegression(
                C=self.C, class_weight="balanced", max_iter=self.max_iter, random_state=self.random_state
            ).fit(X, y)
            layers = [(model.coef_.T, model.intercept_)]
        else:
            from sklearn.neural_network import MLPClassifier

            model = MLPClassifier(
                hidden_layer_sizes=tuple(self.hidden_layer_sizes),
                activation="relu",
                alpha=self.alpha,
                max_iter=self.max_iter,
                random_state=self.random_state,
            )
            # MLPClassifier has no class_weight; per-sample weights give the rare class the same total mass.
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ConvergenceWarning)
                model.fit(X, y, sample_weight=weights)
            if any(issubclass(w.category, ConvergenceWarning) for w in caught):
                logger.info("MLP stopped at max_iter=%d before converging", self.max_iter)
            layers = list(zip(model.coefs_, model.intercepts_, strict=True))
        self.layers_ = [(np.asarray(W, np.float32), np.asarray(b, np.float32).reshape(-1)) for W, b in layers]
        self.input_mean_ = None
        self.input_std_ = None
        self.classes_ = np.array([0, 1])
        self.n_features_in_ = X.shape[1]
        self.n_labels_ = (int((y == 1).sum()), int((y == 0).sum()))
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """The output logit per row (n,), float32. Positive means P(category) > 0.5."""
        h = self._check_input(X)
        if self.input_mean_ is not None:
            h = (h - self.input_mean_) / self.input_std_
        for i, (W, b) in enumerate(self.layers_):
            h = h @ W + b
            if i < len(self.layers_) - 1:
                np.maximum(h, 0.0, out=h)
        return h[:, 0]

    def positive_proba(self, X: np.ndarray) -> np.ndarray:
        """P(category) per row, shape (n,), float32."""
        return _sigmoid(self.decision_function(X))

    def positive_proba_projected(self, project: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """P(category) per row, given `project(W)` that returns ``rows @ W`` (n, k) for a (d, k) matrix.

        Lets a caller multiply rows it keeps in another precision (float16 pool blocks, see
        `sanitize.safety.pool.Block.project`); the input standardisation is folded into the first layer.
        Equals `positive_proba` up to the caller's rounding.
        """
        W, b = self.layers_[0]
        if self.input_mean_ is not None:
            W, b = W / self.input_std_[:, None], b - (self.input_mean_ / self.input_std_) @ W
        h = project(W) + b
        for W, b in self.layers_[1:]:
            h = np.maximum(h, 0.0) @ W + b
        return _sigmoid(np.asarray(h[:, 0], dtype=np.float32))

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities (n, 2): column 0 is P(not category), column 1 is P(category)."""
        p = self.positive_proba(X)
        return np.column_stack([1.0 - p, p])

    def predict(self, X: np.ndarray, threshold: float = 0.5) -> np.ndarray:
        """1 where P(category) >= threshold, else 0."""
        return (self.positive_proba(X) >= threshold).astype(np.int64)

    @property
    def dim(self) -> int:
        return int(self.n_features_in_)

    def _check_input(self, X: np.ndarray) -> np.ndarray:
        if not hasattr(self, "layers_"):
            raise ConfigError("classifier is not fitted; call fit() or load a saved classifier")
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise DataError(
                f"classifier expects {self.n_features_in_}-d embeddings, got array of shape {X.shape}"
            )
        return X


def from_layers(
    layers: list[tuple[np.ndarray, np.ndarray]],
    *,
    kind: str,
    input_mean: np.ndarray | None = None,
    input_std: np.ndarray | None = None,
    n_labels: tuple[int, int] | None = None,
) -> EmbeddingClassifier:
    """Build a fitted classifier from arrays: `layers` are (W (in, out), b (out,)) with one output unit."""
    if not layers:
        raise DataError("classifier needs at least one layer")
    clf = EmbeddingClassifier(kind=kind)
    clf.layers_ = [(np.asarray(W, np.float32), np.asarray(b, np.float32).reshape(-1)) for W, b in layers]
    dim = clf.layers_[0][0].shape[0]
    width = dim
    for i, (W, b) in enumerate(clf.layers_):
        if W.ndim != 2 or W.shape[0] != width or b.shape != (W.shape[1],):
            raise DataError(f"classifier layer {i}: weight {W.shape} / bias {b.shape} do not chain from {width}")
        width = W.shape[1]
    if width != 1:
        raise DataError(f"classifier must end in one output unit, got {width}")
    clf.input_mean_ = None if input_mean is None else np.asarray(input_mean, np.float32).reshape(-1)
    clf.input_std_ = None if input_std is None else np.asarray(input_std, np.float32).reshape(-1)
    if (clf.input_mean_ is None) != (clf.input_std_ is None):
        raise DataError("classifier input normalisation needs both mean and std")
    if clf.input_mean_ is not None and (clf.input_mean_.shape != (dim,) or clf.input_std_.shape != (dim,)):
        raise DataError(f"classifier input normalisation must have shape ({dim},)")
    clf.classes_ = np.array([0, 1])
    clf.n_features_in_ = dim
    clf.n_labels_ = n_labels
    return clf


def save_classifier(
    clf: EmbeddingClassifier,
    path: str | Path,
    *,
    embedding_model: str = "unknown",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Atomically write `clf` to `path` (.safetensors): arrays plus a JSON metadata header.

    Returns the metadata written. `extra` (JSON-serialisable) is stored alongside, e.g. the category name.
    """
    from safetensors.numpy import save

    if not hasattr(clf, "layers_"):
        raise ConfigError("cannot save an unfitted classifier")
    tensors: dict[str, np.ndarray] = {}
    for i, (W, b) in enumerate(clf.layers_):
        tensors[f"layers.{i}.weight"] = np.ascontiguousarray(W, np.float32)
        tensors[f"layers.{i}.bias"] = np.ascontiguousarray(b, np.float32)
    if clf.input_mean_ is not None:
        tensors["input.mean"] = np.ascontiguousarray(clf.input_mean_)
        tensors["input.std"] = np.ascontiguousarray(clf.input_std_)
    n_labels = getattr(clf, "n_labels_", None)
    meta = {
        "format": "sanitize.safety.classifier",
        "format_version": FORMAT_VERSION,
        "kind": clf.kind,
        "dim": clf.dim,
        "classes": [0, 1],
        "n_layers": len(clf.layers_),
        "hidden_activation": "relu",
        "output": "sigmoid",
        "embedding_model": embedding_model,
        "n_positive": None if n_labels is None else n_labels[0],
        "n_negative": None if n_labels is None else n_labels[1],
        "sklearn_version": sklearn.__version__,
        "params": {k: (list(v) if isinstance(v, tuple) else v) for k, v in clf.get_params().items()},
        "extra": extra or {},
    }
    write_bytes(path, save(tensors, metadata={"sanitize": json.dumps(meta, sort_keys=True)}))
    logger.info("saved %s classifier (%d-d) to %s", clf.kind, clf.dim, path)
    return meta


def load_classifier(path: str | Path, *, dim: int | None = None) -> EmbeddingClassifier:
    """Read a classifier written by `save_classifier`; no code from the file is executed.

    `dim`, when given, is the embedding dimension of the pool it will score: a model for another
    dimension raises `DataError`. The file's metadata is available as `clf.metadata_`.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: classifier file not found")
    try:
        with safe_open(str(path), framework="np") as f:
            header = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 - safe_open is not a dict
    except (SafetensorError, OSError, ValueError) as exc:
        raise DataError(f"{path}: not a safetensors classifier file ({exc})") from None
    meta = _checked_metadata(path, header)
    try:
        layers = [(tensors[f"layers.{i}.weight"], tensors[f"layers.{i}.bias"]) for i in range(meta["n_layers"])]
    except KeyError as exc:
        raise DataError(f"{path}: missing tensor {exc.args[0]}") from None
    n_labels = None if meta.get("n_positive") is None else (meta["n_positive"], meta["n_negative"])
    try:
        clf = from_layers(
            layers,
            kind=meta["kind"],
            input_mean=tensors.get("input.mean"),
            input_std=tensors.get("input.std"),
            n_labels=n_labels,
        )
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None
    params = {k: tuple(v) if k == "hidden_layer_sizes" else v for k, v in meta["params"].items()}
    clf.set_params(**{k: v for k, v in params.items() if k in clf.get_params()})
    if clf.dim != meta["dim"]:
        raise DataError(f"{path}: metadata says {meta['dim']}-d but the weights are {clf.dim}-d")
    if dim is not None and clf.dim != dim:
        raise DataError(
            f"{path}: classifier was trained on {clf.dim}-d embeddings ({meta.get('embedding_model')}),"
            f" the pool has {dim}-d embeddings"
        )
    clf.metadata_ = meta
    return clf


# Metadata keys a classifier file must or may hold, with the JSON types they must have (None: may be null).
_REQUIRED_META = {"kind": str, "dim": int, "n_layers": int}
_OPTIONAL_META = {"n_positive": (int, type(None)), "n_negative": (int, type(None)), "params": dict,
                  "embedding_model": str}


def _checked_metadata(path: Path, header: dict[str, str]) -> dict[str, Any]:
    """The file's sanitize metadata as a dict with the expected keys and types; DataError naming the first
    that is missing or wrong. The file is untrusted: nothing in it decides what gets allocated or run."""
    try:
        meta = json.loads(header["sanitize"])
    except (KeyError, json.JSONDecodeError):
        raise DataError(f"{path}: safetensors file has no sanitize classifier metadata") from None
    if not isinstance(meta, dict):
        raise DataError(f"{path}: classifier metadata is a JSON {type(meta).__name__}, not an object")
    if meta.get("format") != "sanitize.safety.classifier" or meta.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{path}: unsupported classifier format {meta.get('format')!r} v{meta.get('format_version')}")
    for key, types in [*_REQUIRED_META.items(), *_OPTIONAL_META.items()]:
        if key not in meta and key in _OPTIONAL_META:
            continue
        value = meta.get(key)
        if not isinstance(value, types) or isinstance(value, bool):
            raise DataError(f"{path}: classifier metadata {key!r} has the wrong type or is missing (got {value!r:.60})")
    params = meta.setdefault("params", {})
    sizes = params.get("hidden_layer_sizes", [])
    if not isinstance(sizes, list) or not all(isinstance(n, int) and not isinstance(n, bool) for n in sizes):
        raise DataError(f"{path}: classifier metadata 'params.hidden_layer_sizes' must be a list of integers")
    return meta


def _sigmoid(z: np.ndarray) -> np.ndarray:
    # Split by sign so exp never overflows.
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    ez = np.exp(z[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out


def _check_training_data(X: np.ndarray, y: np.ndarray, min_per_class: int) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y)
    if X.ndim != 2 or len(X) != len(y):
        raise DataError(f"training data: {len(y)} labels for embeddings of shape {X.shape}")
    if not np.isin(y, (0, 1)).all():
        raise DataError(f"training labels must be 0 or 1, got values {sorted(set(np.unique(y).tolist()))}")
    y = y.astype(np.int64)
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    if n_pos < min_per_class or n_neg < min_per_class:
        raise DataError(
            f"training labels: {n_pos} positive and {n_neg} negative; need at least {min_per_class} of each class"
        )
    bad = ~np.isfinite(X).all(axis=1)
    if bad.any():
        raise DataError(f"training embeddings: {int(bad.sum())} rows are NaN or infinite (first: row {np.argmax(bad)})")
    return X, y


def _balanced_weights(y: np.ndarray) -> np.ndarray:
    counts = np.bincount(y, minlength=2).astype(np.float64)
    return (len(y) / (2.0 * counts))[y]
