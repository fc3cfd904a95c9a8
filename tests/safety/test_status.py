from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pytest

from sanitize.errors import ConfigError
from sanitize.safety.classifier import from_layers
from sanitize.safety.labels import LabelStore
from sanitize.safety.status import label_status

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)


def pool_and_labels(tmp_path):
    rng = np.random.default_rng(0)
    n, d = 1000, 16
    X = rng.standard_normal((n, d)).astype(np.float32)
    y = (np.arange(n) < 50).astype(np.int64)
    X[y == 1, 0] += 8.0
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    uids = np.array([f"u{i}" for i in range(n)])
    store = LabelStore(tmp_path, "c")
    store.add(uids[:20], y[:20], source="seed", round=0, timestamp=T0)
    store.add(uids[500:560], y[500:560], source="seed", round=0, timestamp=T0)
    store.add(uids[20:30], y[20:30], source="active", round=1, timestamp=T0)
    store.add(uids[600:640], y[600:640], source="random-audit", round=1, timestamp=T0)
    return uids, X, y, store


def test_counts_cv_and_removal_rate(tmp_path):
    uids, X, _y, store = pool_and_labels(tmp_path)
    status = label_status("c", store.read(), pool=(uids, X), folds=5, seed=0)
    assert (status.n_labelled, status.n_positive, status.n_negative) == (130, 30, 100)
    assert status.by_source_round == [
        {"source": "seed", "round": 0, "positive": 20, "negative": 60},
        {"source": "active", "round": 1, "positive": 10, "negative": 0},
        {"source": "random-audit", "round": 1, "positive": 0, "negative": 40},
    ]
    assert status.cv_folds == 5
    assert status.cv_recall > 0.9 and status.cv_precision > 0.9  # an easy, separable concept
    assert status.pool_rows == 1000 and 0.04 <= status.removal_rate <= 0.07  # 5% are positive
    again = label_status("c", store.read(), pool=(uids, X), folds=5, seed=0)
    assert again == status
    text = status.to_markdown()
    assert "| active | 1 | 10 | 0 |" in text and "expected removal rate" in text
    assert status.to_dict()["cv_folds"] == 5


def test_counts_only_without_pool_and_too_few_labels(tmp_path):
    uids, X, _y, store = pool_and_labels(tmp_path)
    counts = label_status("c", store.read())
    assert counts.cv_precision is None and counts.removal_rate is None and counts.n_labelled == 130
    few = LabelStore(tmp_path, "few")
    few.add(uids[:3], [1, 1, 1], source="seed", round=0)
    few.add(uids[500:520], [0] * 20, source="seed", round=0)
    status = label_status("few", few.read(), pool=(uids, X))
    assert status.cv_precision is None and status.removal_rate is None
    assert "need at least 5 labels of each class" in status.notes[0]
    # A starting classifier (e.g. a LAION head) still gives a removal rate.
    fixed = from_layers([(np.eye(16, 1, dtype=np.float32) * 20, np.array([-10.0]))], kind="laion-nsfw")
    assert label_status("few", few.read(), pool=(uids, X), classifier=fixed).removal_rate is not None


def test_bad_options(tmp_path):
    _uids, _X, _y, store = pool_and_labels(tmp_path)
    with pytest.raises(ConfigError, match="threshold"):
        label_status("c", store.read(), threshold=1.5)
    with pytest.raises(ConfigError, match="folds"):
        label_status("c", store.read(), folds=1)


@pytest.mark.parametrize("content", ["[1, 2]", '"certified"', "{not json"])
def test_a_crafted_certificate_file_is_one_data_error(tmp_path, content):
    # A certificate.json that is not a JSON object (a list, a string, broken text) names the file, never a traceback.
    from types import SimpleNamespace

    from sanitize.errors import DataError
    from sanitize.safety.workflow import last_certificate

    folder = tmp_path / "stages" / "classify" / "sexual"
    folder.mkdir(parents=True)
    (folder / "certificate.json").write_text(content)
    run = SimpleNamespace(stage_dir=lambda stage: tmp_path / "stages" / stage)
    with pytest.raises(DataError, match="certificate.json"):
        last_certificate(run, "sexual")
