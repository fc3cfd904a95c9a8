from __future__ import annotations

import numpy as np
import pytest

from sanitize.dedup.clustering import (
    assign_clusters,
    default_n_clusters,
    fit_projection,
    project,
    train_centroids,
)
from sanitize.dedup.vectors import checked_unit_rows
from sanitize.errors import ConfigError


def test_default_n_clusters():
    assert default_n_clusters(1) == 1
    assert default_n_clusters(800) == 1
    assert default_n_clusters(100_000) == 100
    assert default_n_clusters(1_000_000) == 1000
    assert default_n_clusters(100_000_000) == 10_000


def test_centroids_are_unit_and_seeded(small_set):
    data, _ = small_set
    rows = checked_unit_rows(data.x)
    c1 = train_centroids(rows, 8, seed=4)
    c2 = train_centroids(rows, 8, seed=4)
    c3 = train_centroids(rows, 8, seed=5)
    assert c1.shape == (8, data.x.shape[1])
    np.testing.assert_allclose(np.linalg.norm(c1, axis=1), 1, atol=1e-5)
    np.testing.assert_array_equal(c1, c2)
    assert not np.array_equal(c1, c3)


def test_assignment_is_the_nearest_centroid_in_any_batch_size(small_set):
    data, _ = small_set
    rows = checked_unit_rows(data.x)
    subset = np.arange(0, len(data.x), 3)
    centroids = train_centroids(rows, 6, rows=subset, seed=0)
    labels = assign_clusters(rows, centroids, rows=subset, batch_rows=97)
    sims = rows[subset] @ centroids.T
    best = sims[np.arange(len(subset)), labels]
    np.testing.assert_allclose(best, sims.max(axis=1), atol=1e-5)
    np.testing.assert_array_equal(labels, assign_clusters(rows, centroids, rows=subset))


def test_one_cluster_and_too_many_clusters():
    x = np.eye(4, dtype=np.float32)
    assert train_centroids(x, 1).shape == (1, 4)
    with pytest.raises(ConfigError, match="n_clusters=5"):
        train_centroids(x, 5)


def test_projection_is_orthonormal_seeded_and_keeps_the_structure(small_set):
    data, _ = small_set
    rows = checked_unit_rows(data.x)
    p = fit_projection(rows, 40, seed=0, sample_rows=2000)
    assert p.shape == (128, 40)
    np.testing.assert_allclose(p.T @ p, np.eye(40), atol=1e-5)
    np.testing.assert_array_equal(p, fit_projection(rows, 40, seed=0, sample_rows=2000))
    projected = project(rows[0:500], p)
    np.testing.assert_allclose(np.linalg.norm(projected, axis=1), 1, atol=1e-5)
    # The generator's structure has rank 32: 40 leading directions keep nearly all of every row.
    kept = np.linalg.norm(rows[0:500] @ p, axis=1)
    assert kept.min() > 0.9
    centroids = train_centroids(rows, 5, seed=0, projection=p)
    assert centroids.shape == (5, 40)
    assert assign_clusters(rows, centroids, projection=p).max() < 5
    with pytest.raises(ConfigError, match="clustering_dims=129"):
        fit_projection(rows, 129)


def test_kmeans_and_the_pca_run_blas_on_one_thread(monkeypatch):
    """So the centroids do not depend on the machine's core count (FAISS's k-means gave other centroids with BLAS on
    two threads than on one, on 1M rows): BLAS is on one thread while FAISS trains and while the PCA multiplies."""
    import faiss
    from threadpoolctl import threadpool_info

    from sanitize.dedup.clustering import kmeans_centroids, principal_directions

    seen = []
    real_train, real_eigh = faiss.Kmeans.train, np.linalg.eigh

    def blas_threads():
        return max(info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas")

    monkeypatch.setattr(faiss.Kmeans, "train", lambda self, *a, **k: seen.append(blas_threads()) or
                        real_train(self, *a, **k))
    monkeypatch.setattr(np.linalg, "eigh", lambda *a, **k: seen.append(blas_threads()) or real_eigh(*a, **k))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    kmeans_centroids(x, 4, seed=1)
    principal_directions(x, 4)
    assert seen == [1, 1]
