"""Where the dedup's products run (`sanitize.dedup.device`): the torch path gives numpy's answers.

The torch path is the one a GPU runs; here it runs on torch's CPU device, so every step but the copy to the GPU is
checked on any machine. The same checks on CUDA run when torch sees a GPU.
"""

from __future__ import annotations

import numpy as np
import pytest

from sanitize.dedup import device, find_duplicates
from sanitize.dedup.device import (
    matmul_device,
    nearest_centroids,
    product_hits,
    torch_nearest_centroids,
    torch_product_hits,
    upper_hits,
)
from sanitize.dedup.sharded import find_duplicates_sharded
from sanitize.dedup.shards import ArrayShards
from sanitize.testing.synthetic import clip_like

torch = pytest.importorskip("torch")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("torch_device", DEVICES)
@pytest.mark.parametrize("same", [True, False])
def test_torch_block_hits_equal_numpy_row_major(torch_device, same):
    rng = np.random.default_rng(0)
    a = unit(rng, 300, 64)
    a[150:] = a[:150] + 0.05 * unit(rng, 150, 64)  # near-duplicates across the two halves
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b = a if same else unit(rng, 200, 64)
    for cut in (0.9, 0.2, 1.5):  # few hits, many hits, none
        want = upper_hits(a @ b.T, cut, same)
        got = torch_product_hits(a, b, cut, same, torch_device)
        assert got[0].dtype == np.int64 and got[1].dtype == np.int64
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    if same:
        assert len(upper_hits(a @ a.T, 0.9, True)[0]) >= 150  # the planted pairs are among the hits


@pytest.mark.parametrize("torch_device", DEVICES)
def test_torch_nearest_centroids_equal_numpy_with_ties_to_the_lower_number(torch_device):
    rng = np.random.default_rng(1)
    rows, centroids = unit(rng, 500, 32), unit(rng, 12, 32)
    centroids[7] = centroids[3]  # an exact tie: every row nearest to 3 is as near to 7
    want = np.argmax(rows @ centroids.T, axis=1).astype(np.int32)
    got = torch_nearest_centroids(rows, centroids, torch_device)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, want)
    assert 3 in got and 7 not in got


@pytest.mark.parametrize(("value", "expected"), [("cpu", None), ("cuda:1", "cuda:1"), ("cuda", "cuda")])
def test_the_environment_chooses_the_device(monkeypatch, value, expected):
    monkeypatch.setenv(device.ENV, value)
    matmul_device.cache_clear()
    try:
        assert matmul_device() == expected
    finally:
        matmul_device.cache_clear()


def test_auto_is_the_cpu_without_a_faiss_gpu(monkeypatch):
    monkeypatch.delenv(device.ENV, raising=False)
    monkeypatch.setattr("sanitize.dedup.clustering.faiss_gpu_count", lambda: 0)
    matmul_device.cache_clear()
    try:
        assert matmul_device() is None
        rows = np.eye(3, dtype=np.float32)
        np.testing.assert_array_equal(nearest_centroids(rows, rows[::-1].copy()), [2, 1, 0])
        np.testing.assert_array_equal(product_hits(rows, rows, 0.5, same=False)[0], [0, 1, 2])
    finally:
        matmul_device.cache_clear()


@pytest.mark.parametrize("torch_device", DEVICES)
def test_dedup_on_the_torch_path_gives_the_numpy_results(monkeypatch, tmp_path, torch_device):
    """In memory and out of core, with the bound pruning and with a giant cluster split into blocks."""
    x = clip_like(4000, 96, rank=16, dup_fraction=0.2, seed=3).x
    options = {"threshold": 0.93, "n_clusterings": 2, "n_clusters": 5, "seed": 1, "recall_sample": 300,
               "clustering_dims": 24, "block_rows": 400}
    on_numpy = find_duplicates(x, **options)
    sharded_numpy = find_duplicates_sharded(ArrayShards(x, 900), tmp_path / "numpy", **options)
    calls = []

    def on_torch():
        calls.append(1)
        return torch_device

    monkeypatch.setattr(device, "matmul_device", on_torch)
    on_torch_path = find_duplicates(x, **options)
    sharded_torch = find_duplicates_sharded(ArrayShards(x, 900), tmp_path / "torch", **options)
    assert len(calls) > 20  # assignment, pair search and recall all asked for the device
    assert on_torch_path.stats["device"] == sharded_torch.stats["device"] == torch_device
    assert on_numpy.stats["pairs"] > 100
    assert on_numpy.rows.equals(on_torch_path.rows) and sharded_numpy.nodes.equals(sharded_torch.nodes)
    for a, b in ((on_numpy, on_torch_path), (sharded_numpy, sharded_torch)):
        assert a.pairs.equals(b.pairs)
        assert a.stats["recall"] == b.stats["recall"]
        assert [c["candidates"] for c in a.stats["clusterings"]] == [c["candidates"] for c in b.stats["clusterings"]]
