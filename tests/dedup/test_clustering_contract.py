"""The promises of `sanitize.dedup.clustering` at their edges: option bounds, defaults, the sign convention of the
projection, the training sample and k-means seed (which the out-of-core path draws the same way), the one-cluster
case, where k-means runs and what it prints, and empty assignments."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from sanitize.dedup import clustering
from sanitize.dedup.clustering import (
    assign_to_clusterings,
    default_n_clusters,
    faiss_gpu_count,
    fit_projection,
    kmeans_centroids,
    principal_directions,
    train_centroids,
    unit_length,
)
from sanitize.dedup.options import SearchOptions
from sanitize.dedup.sharded import DistinctRows, _Samples
from sanitize.errors import ConfigError


def unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_default_cluster_counts_and_their_bounds():
    # clusters of about max(1000, √n) rows: 600 at 600k (1000 rows each), √n-sized past a million
    assert default_n_clusters(600_000) == 600
    assert default_n_clusters(4_000_000) == 2000
    assert default_n_clusters(1) == 1
    with pytest.raises(ConfigError, match="n_rows must be positive, got 0"):
        default_n_clusters(0)


def test_faiss_without_gpu_support_counts_no_gpu(monkeypatch):
    monkeypatch.delattr(faiss, "get_num_gpus", raising=False)
    assert faiss_gpu_count() == 0


def test_projection_dims_from_one_to_the_full_dimension():
    x = unit(np.random.default_rng(0), 50, 6)
    assert fit_projection(x, 1).shape == (6, 1)
    full = fit_projection(x, 6)
    np.testing.assert_allclose(full.T @ full, np.eye(6), atol=1e-5)
    for dims in (0, 7):
        with pytest.raises(ConfigError, match=f"clustering_dims={dims} must be between 1 and"):
            fit_projection(x, dims)


def test_projection_of_fewer_rows_than_the_sample_uses_each_row_once():
    x = unit(np.random.default_rng(1), 300, 12)
    np.testing.assert_array_equal(fit_projection(x, 4), principal_directions(x, 4))
    rows = np.arange(0, 300, 2)
    np.testing.assert_array_equal(fit_projection(x, 4, rows=rows, sample_rows=1000), principal_directions(x[rows], 4))


def test_projection_sample_is_16384_rows_drawn_with_seed_0_by_default(monkeypatch):
    x = unit(np.random.default_rng(2), 20_000, 4)
    seen = []
    monkeypatch.setattr(
        clustering, "principal_directions", lambda block, dims: seen.append(block) or np.eye(4)[:, :dims]
    )
    fit_projection(x, 2)
    fit_projection(x, 2, seed=0)
    assert len(seen[0]) == 16_384 and len(np.unique(seen[0], axis=0)) == 16_384
    np.testing.assert_array_equal(seen[0], seen[1])


def test_each_direction_is_signed_so_its_largest_component_is_positive():
    rng = np.random.default_rng(3)
    flipped = 0
    for _ in range(5):
        block = unit(rng, 200, 8)
        top = principal_directions(block, 8)
        largest = top[np.abs(top).argmax(axis=0), np.arange(8)]
        assert (largest > 0).all()
        _, raw = np.linalg.eigh((block.T @ block).astype(np.float64))
        raw = raw[:, ::-1]
        flipped += int((raw[np.abs(raw).argmax(axis=0), np.arange(8)] < 0).sum())
        np.testing.assert_allclose(np.abs(top), np.abs(raw), atol=1e-6)  # the same directions, only signed
    assert flipped > 0  # some came out of eigh pointing the other way


def test_a_row_orthogonal_to_the_subspace_stays_zero():
    projected = np.array([[0.0, 0.0], [3.0, 4.0]], dtype=np.float32)
    out = unit_length(projected)
    np.testing.assert_array_equal(out, np.array([[0.0, 0.0], [0.6, 0.8]], dtype=np.float32))


@pytest.mark.parametrize(("k", "mppc"), [(7, 8), (25, 8), (30, 10)])
def test_training_draws_the_sample_and_kmeans_seed_the_out_of_core_path_draws(monkeypatch, k, mppc):
    """In memory (`train_centroids`) and out of core (`sharded._Samples.draw`) each clustering trains on the same
    rows with the same FAISS seed, so the two paths find the same pairs; with k · max_points_per_centroid at or above
    the row count (250 rows: 25 · 10 and 30 · 10) every row is used and no sample is drawn."""
    x = unit(np.random.default_rng(4), 250, 6)
    options = SearchOptions(seed=9, n_clusterings=3, max_points_per_centroid=mppc, clustering_dims=None)
    samples = _Samples.draw(DistinctRows(len(x), np.empty(0, np.int64)), k, 6, options)
    seen = []

    def fake_kmeans(train, n_clusters, *, seed, max_points_per_centroid, n_iter):
        seen.append((train.copy(), seed))
        return np.zeros((n_clusters, train.shape[1]), np.float32)

    monkeypatch.setattr(clustering, "kmeans_centroids", fake_kmeans)
    for c in range(3):
        train_centroids(x, k, seed=options.clustering_seed(c), max_points_per_centroid=mppc)
    for c, (train, seed) in enumerate(seen):
        assert seed == samples.kmeans_seeds[c] and 0 <= seed < 2**31 - 1
        np.testing.assert_array_equal(train, x[samples.train[c]])
        assert len(train) == min(len(x), k * mppc) and len(np.unique(train, axis=0)) == len(train)
    assert len({seed for _, seed in seen}) == 3


def test_training_defaults_to_seed_0():
    x = unit(np.random.default_rng(5), 400, 8)
    np.testing.assert_array_equal(
        train_centroids(x, 3, max_points_per_centroid=20), train_centroids(x, 3, seed=0, max_points_per_centroid=20)
    )


def test_n_clusters_from_one_to_every_row():
    x = unit(np.random.default_rng(6), 12, 4)
    assert train_centroids(x, 12).shape == (12, 4)
    for bad in (0, 13):
        with pytest.raises(ConfigError, match=f"n_clusters={bad} must be between 1 and the 12 distinct rows"):
            train_centroids(x, bad)


def test_one_cluster_is_the_normalised_mean_and_two_are_two():
    x = unit(np.random.default_rng(7), 100, 5)
    mean = x.astype(np.float64).sum(axis=0)
    expected = (mean / np.linalg.norm(mean)).astype(np.float32)[None]
    np.testing.assert_array_equal(kmeans_centroids(x, 1, seed=0), expected)
    two = kmeans_centroids(x, 2, seed=0)
    assert two.shape == (2, 5) and not np.allclose(two[0], two[1])


def test_kmeans_prints_nothing(capfd):
    """Not its progress (a --json summary on stdout must stay the only output) nor, on a sample of fewer than two
    rows per centroid, FAISS's "please provide at least ... training points" (we choose the sample's size)."""
    kmeans_centroids(unit(np.random.default_rng(8), 300, 6), 3, seed=1)
    kmeans_centroids(unit(np.random.default_rng(8), 10, 6), 6, seed=1)
    assert capfd.readouterr() == ("", "")


@pytest.mark.parametrize(
    ("device", "gpus", "on_gpu"), [(None, 1, False), ("cuda", 0, False), ("cuda", 1, True), ("cuda", 2, True)]
)
def test_kmeans_trains_on_faiss_gpu_only_when_the_products_run_on_a_gpu_and_faiss_has_one(
    monkeypatch, device, gpus, on_gpu
):
    made = []

    class FakeKmeans:
        def __init__(self, d, k, **kwargs):
            made.append(kwargs["gpu"])
            self.centroids = np.zeros((k, d), np.float32)

        def train(self, x):
            pass

    monkeypatch.setattr(clustering, "matmul_device", lambda: device)
    monkeypatch.setattr(clustering, "faiss_gpu_count", lambda: gpus)
    monkeypatch.setattr(faiss, "Kmeans", FakeKmeans)
    kmeans_centroids(unit(np.random.default_rng(9), 40, 4), 3, seed=0)
    assert made == [on_gpu]


def test_assigning_no_rows_gives_empty_labels():
    x = unit(np.random.default_rng(10), 20, 4)
    labels = assign_to_clusterings(x, [x[:3], x[:5]], rows=np.empty(0, np.int64))
    assert [(a.dtype, a.shape) for a in labels] == [(np.int32, (0,)), (np.int32, (0,))]


def test_a_sample_is_projected_a_block_at_a_time_with_the_same_result():
    rng = np.random.default_rng(6)
    x = unit(rng, 50, 8)
    projection = principal_directions(x, 3)
    ids = np.sort(rng.choice(50, 23, replace=False))
    asked = []

    def take(some):
        asked.append(some.copy())
        return x[some]

    out = clustering.project_sample(take, ids, projection, block_rows=5)
    np.testing.assert_allclose(out, clustering.project(x[ids], projection), atol=1e-6)
    assert out.dtype == np.float32 and out.shape == (23, 3)
    assert [len(a) for a in asked] == [5, 5, 5, 5, 3]
    np.testing.assert_array_equal(np.concatenate(asked), ids)
    np.testing.assert_array_equal(clustering.project_sample(lambda some: x[some], ids, None), x[ids])
