from __future__ import annotations

import json
import math
import struct
import warnings

import numpy as np
import pytest

from sanitize.errors import ConfigError, DataError
from sanitize.safety.classifier import EmbeddingClassifier, from_layers, load_classifier, save_classifier
from sanitize.safety.laion_heads import laion_head_path, load_laion_nsfw_head


def rare_concept(n=600, d=24, positives=30, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(np.float32)
    y = np.zeros(n, dtype=np.int64)
    y[:positives] = 1
    X[:positives, 0] += 3.0
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X, y


@pytest.mark.parametrize("kind", ["logistic", "mlp"])
def test_numpy_scorer_matches_sklearn(kind):
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    X, y = rare_concept()
    clf = EmbeddingClassifier(kind=kind, max_iter=100).fit(X, y)
    if kind == "logistic":
        reference = LogisticRegression(class_weight="balanced", max_iter=100, random_state=0).fit(X, y)
    else:
        weights = (len(y) / (2.0 * np.bincount(y)))[y]
        reference = MLPClassifier(hidden_layer_sizes=(64,), alpha=1e-3, max_iter=100, random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # not converged in 100 iterations: same for both, that is the point
            reference.fit(X, y, sample_weight=weights)
    np.testing.assert_allclose(clf.predict_proba(X), reference.predict_proba(X), atol=1e-5)
    assert clf.predict_proba(X).shape == (len(X), 2)
    assert set(np.unique(clf.predict(X))) <= {0, 1}
    # class weighting: the rare class is found
    assert clf.predict(X)[y == 1].mean() > 0.8


@pytest.mark.parametrize("kind", ["logistic", "mlp"])
def test_save_load_round_trip_without_pickle(tmp_path, kind):
    X, y = rare_concept()
    clf = EmbeddingClassifier(kind=kind, max_iter=50).fit(X, y)
    path = tmp_path / "model.safetensors"
    meta = save_classifier(clf, path, embedding_model="ViT-B-32/openai", extra={"category": "sexual"})
    loaded = load_classifier(path, dim=X.shape[1])
    np.testing.assert_allclose(loaded.positive_proba(X), clf.positive_proba(X), atol=1e-6)
    assert loaded.metadata_ == meta
    assert meta["kind"] == kind and meta["dim"] == 24 and meta["n_positive"] == 30 and meta["n_negative"] == 570
    assert meta["embedding_model"] == "ViT-B-32/openai" and meta["extra"] == {"category": "sexual"}
    assert loaded.get_params()["kind"] == kind
    # The file is a safetensors file: an 8-byte header length, a JSON header, then raw little-endian floats.
    data = path.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    assert all(v["dtype"] == "F32" for k, v in header.items() if k != "__metadata__")
    assert 8 + header_len + sum(v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items()
                                if k != "__metadata__") == len(data)
    assert b"\x80\x04\x95" not in data and b"\x80\x02" not in data[: 8 + header_len]  # no pickle stream


def test_model_for_another_dimension(tmp_path):
    X, y = rare_concept()
    path = tmp_path / "m.safetensors"
    save_classifier(EmbeddingClassifier().fit(X, y), path)
    with pytest.raises(DataError, match=r"trained on 24-d embeddings .* the pool has 512-d"):
        load_classifier(path, dim=512)
    with pytest.raises(DataError, match="expects 24-d embeddings"):
        load_classifier(path).predict_proba(np.zeros((3, 512), np.float32))


def test_bad_model_files(tmp_path):
    with pytest.raises(DataError, match="classifier file not found"):
        load_classifier(tmp_path / "none.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x80\x04K\x01.")  # a pickle, not safetensors
    with pytest.raises(DataError, match="not a safetensors classifier file"):
        load_classifier(junk)
    from safetensors.numpy import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": np.zeros(3, np.float32)}, foreign)
    with pytest.raises(DataError, match="no sanitize classifier metadata"):
        load_classifier(foreign)


@pytest.mark.parametrize(("positives", "negatives"), [(0, 50), (4, 50), (50, 3)])
def test_too_few_labels_of_a_class(positives, negatives):
    X, _ = rare_concept(n=positives + negatives)
    y = np.array([1] * positives + [0] * negatives)
    message = f"{positives} positive and {negatives} negative; need at least 5 of each class"
    with pytest.raises(DataError, match=message):
        EmbeddingClassifier().fit(X, y)


def test_bad_training_input():
    X, y = rare_concept()
    with pytest.raises(DataError, match="must be 0 or 1"):
        EmbeddingClassifier().fit(X, y * 2)
    X[3, 1] = np.nan
    with pytest.raises(DataError, match="1 rows are NaN or infinite"):
        EmbeddingClassifier().fit(X, y)
    with pytest.raises(ConfigError, match="cannot be trained"):
        EmbeddingClassifier(kind="svm").fit(X, y)
    with pytest.raises(ConfigError, match="not fitted"):
        EmbeddingClassifier().predict_proba(X)


def test_from_layers_checks_shapes():
    with pytest.raises(DataError, match="do not chain"):
        from_layers([(np.zeros((4, 3)), np.zeros(3)), (np.zeros((2, 1)), np.zeros(1))], kind="x")
    with pytest.raises(DataError, match="one output unit"):
        from_layers([(np.zeros((4, 2)), np.zeros(2))], kind="x")


def test_sigmoid_is_stable_for_large_logits():
    clf = from_layers([(np.full((2, 1), 1000.0), np.zeros(1))], kind="x")
    p = clf.positive_proba(np.array([[1.0, 1.0], [-1.0, -1.0]], np.float32))
    assert p.tolist() == [1.0, 0.0]


@pytest.mark.parametrize("dim", [512, 768])
def test_laion_head_matches_torch_forward(shared_data, tmp_path, dim):
    torch = pytest.importorskip("torch")
    path = laion_head_path(shared_data / "laion_nsfw_heads", dim)
    clf = load_laion_nsfw_head(path, dim=dim)
    assert clf.dim == dim and clf.kind == "laion-nsfw"
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, dim)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    # Reference: the forward pass as LAION's SOURCE describes it, in torch, from the raw state dict.
    state = torch.load(path, weights_only=True)
    h = (torch.from_numpy(X) - state["norm.mean"]) / (torch.sqrt(state["norm.variance"]) + 1e-10)
    linears = sorted(k for k in state if k.startswith("linear_") and k.endswith(".weight"))
    for i, key in enumerate(linears):
        h = h @ state[key].T + state[key.replace("weight", "bias")]
        if i < len(linears) - 1:
            h = torch.relu(h)
    expected = torch.sigmoid(h)[:, 0].numpy()
    np.testing.assert_allclose(clf.positive_proba(X), expected, atol=1e-5)
    # Converted heads save and load like any classifier.
    save_classifier(clf, tmp_path / "laion.safetensors", embedding_model="laion")
    np.testing.assert_allclose(load_classifier(tmp_path / "laion.safetensors").positive_proba(X), clf.positive_proba(X),
                               atol=1e-6)


def test_laion_head_on_real_embeddings(shared_data):
    pytest.importorskip("torch")
    X = np.load(shared_data / "clip_retrieval_test" / "test_embeddings" / "image_embs_vit_b32_openai.npy")
    clf = load_laion_nsfw_head(laion_head_path(shared_data / "laion_nsfw_heads", 512))
    p = clf.positive_proba(X)
    assert p.shape == (len(X),) and np.isfinite(p).all() and ((p >= 0) & (p <= 1)).all()
    with pytest.raises(DataError, match="head expects 512-d embeddings, the pool has 768-d"):
        load_laion_nsfw_head(laion_head_path(shared_data / "laion_nsfw_heads", 512), dim=768)


def test_laion_head_errors(tmp_path, shared_data):
    with pytest.raises(DataError, match="512-d and 768-d embeddings only, not 1024-d"):
        laion_head_path(shared_data / "laion_nsfw_heads", 1024)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"garbage")
    with pytest.raises(DataError, match="not a weights-only torch state dict"):
        load_laion_nsfw_head(bad)


# --- untrusted files: crafted headers and metadata get a one-line DataError, nothing declared is allocated ---

_META = {"format": "sanitize.safety.classifier", "format_version": 1, "kind": "logistic", "dim": 2, "n_layers": 1}
_LAYER = {"layers.0.weight": {"dtype": "F32", "shape": [2, 1], "data_offsets": [0, 8]},
          "layers.0.bias": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}}


_BODY = bytes(12)  # three float32 zeros


def _crafted(path, meta=_META, tensors=_LAYER, body=_BODY, header_len=None):
    """A safetensors file written by hand: 8-byte little-endian header length, JSON header, raw bytes."""
    metadata = {"sanitize": meta if isinstance(meta, str) else json.dumps(meta)}
    header = json.dumps({"__metadata__": metadata, **tensors}).encode()
    path.write_bytes(struct.pack("<Q", len(header) if header_len is None else header_len) + header + body)
    return path


@pytest.mark.parametrize(
    ("craft", "message"),
    [
        ({"header_len": 2**62}, "not a safetensors classifier file"),  # a 4 EiB header
        ({"header_len": 10**6}, "not a safetensors classifier file"),  # longer than the file
        ({"tensors": {**_LAYER, "layers.0.weight": {"dtype": "F32", "shape": [2**31, 2**31],
                                                    "data_offsets": [0, 2**64 - 1]}}}, "not a safetensors"),
        ({"tensors": {**_LAYER, "layers.0.weight": {"dtype": "F32", "shape": [10**5, 10**5],
                                                    "data_offsets": [0, 4 * 10**10]}}}, "not a safetensors"),
        ({"meta": "[1, 2]"}, "metadata is a JSON list"),
        ({"meta": {**_META, "n_layers": "1"}}, "'n_layers' has the wrong type"),
        ({"meta": {**_META, "n_layers": 10**12}}, "missing tensor layers.1.weight"),
        ({"meta": {**_META, "n_layers": 0}}, "at least one layer"),
        ({"meta": {k: v for k, v in _META.items() if k != "kind"}}, "'kind' has the wrong type or is missing"),
        ({"meta": {k: v for k, v in _META.items() if k != "dim"}}, "'dim' has the wrong type or is missing"),
        ({"meta": {**_META, "dim": 10**12}}, "metadata says 1000000000000-d but the weights are 2-d"),
        ({"meta": {**_META, "dim": True}}, "'dim' has the wrong type"),
        ({"meta": {**_META, "params": [1]}}, "'params' has the wrong type"),
        ({"meta": {**_META, "params": {"hidden_layer_sizes": 5}}}, "hidden_layer_sizes' must be a list"),
        ({"meta": {**_META, "n_positive": "many"}}, "'n_positive' has the wrong type"),
        ({"tensors": {**_LAYER, "layers.0.weight": {"dtype": "F32", "shape": [2, 1, 1], "data_offsets": [0, 8]}}},
         "do not chain"),
    ],
)
def test_crafted_classifier_files_get_one_line_errors(tmp_path, craft, message):
    path = _crafted(tmp_path / "crafted.safetensors", **craft)
    with pytest.raises(DataError, match=message) as err:
        load_classifier(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_a_crafted_file_with_sane_metadata_still_loads(tmp_path):
    clf = load_classifier(_crafted(tmp_path / "ok.safetensors", body=np.array([1, -1, 0.5], np.float32).tobytes()))
    assert clf.dim == 2 and clf.positive_proba(np.array([[1.0, 0.0]], np.float32))[0] == pytest.approx(
        1 / (1 + math.exp(-1.5)))
