"""Where the dedup's large matrix products run: numpy on the CPU, or torch on a GPU when there is one.

Two products carry the arithmetic of a dedup run: rows against centroids (assignment: the nearest centroid of each
row) and a block of rows against another (pair search and recall: the positions of the products at or above a
cut). Both go through this module, so the in-memory and the out-of-core paths, and every engine, run them on the
same device. k-means training runs on FAISS's GPU when the products run on a GPU (`clustering.kmeans_centroids`).

The device: ``SANITIZE_DEDUP_DEVICE`` = ``cpu`` (numpy), a torch device such as ``cuda`` or ``cuda:1``, or
``auto`` (the default): the first CUDA GPU when FAISS was built with GPU support (the ``.[gpu]`` extra) and torch
sees one, else the CPU. A machine without a GPU never imports torch here.

Same results within float tolerance: GPU products are float32 with TF32 off (TF32 rounds inputs to 10 mantissa bits,
errors of ~1e-3, far above the pair search's margin), so a product is off by ~1e-6 either way; pairs are nominated at
threshold − `pairs.CANDIDATE_MARGIN` and confirmed on the CPU in float64, so the pairs and decisions are the same on
either device. A row almost equally near two centroids may be assigned to the other one on a GPU; that can change
which clustering finds a pair first, not whether a pair at the threshold is a pair.
"""

from __future__ import annotations

import functools
import os

import numpy as np

ENV = "SANITIZE_DEDUP_DEVICE"


@functools.cache
def matmul_device() -> str | None:
    """The torch device the products run on ("cuda", "cuda:1", …), or None for numpy on the CPU (see the module
    docstring). Read once per process."""
    choice = os.environ.get(ENV, "auto").strip() or "auto"
    if choice == "cpu":
        return None
    if choice == "auto":
        from sanitize.dedup.clustering import faiss_gpu_count

        if faiss_gpu_count() == 0:
            return None
        import torch

        return "cuda" if torch.cuda.is_available() else None
    return choice


def device_name() -> str:
    """Where the products run, for a run's stats: "cpu" (numpy) or the torch device."""
    return matmul_device() or "cpu"


def nearest_centroids(rows: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """(n,) int32: for each float32 row, the centroid with the largest inner product (ties: the lower number)."""
    device = matmul_device()
    if device is None:
        return np.argmax(rows @ centroids.T, axis=1).astype(np.int32)
    return torch_nearest_centroids(rows, centroids, device)


def product_hits(a: np.ndarray, b: np.ndarray, cut: float, *, same: bool) -> tuple[np.ndarray, np.ndarray]:
    """Row-major positions (i, j) of the entries of the float32 product a @ b.T that are >= cut; with `same`
    (a and b are one block) only those with i < j. int64 arrays."""
    device = matmul_device()
    if device is None:
        return upper_hits(a @ b.T, cut, same)
    return torch_product_hits(a, b, cut, same, device)


def upper_hits(products: np.ndarray, cut: float, same: bool) -> tuple[np.ndarray, np.ndarray]:
    """Row-major positions of the entries of `products` that are >= cut (above the diagonal when `same`)."""
    li, lj = np.divmod(np.flatnonzero(products >= cut), products.shape[1])  # few hits: flat indices are cheap
    if same:
        upper = li < lj
        li, lj = li[upper], lj[upper]
    return li, lj


def torch_nearest_centroids(rows: np.ndarray, centroids: np.ndarray, device: str) -> np.ndarray:
    """`nearest_centroids` computed by torch on `device` (any torch device, "cpu" included)."""
    import torch

    with _float32_products(torch):
        products = _on(torch, rows, device) @ _on(torch, centroids, device).T
        return products.argmax(dim=1).to(torch.int32).cpu().numpy()


def torch_product_hits(a: np.ndarray, b: np.ndarray, cut: float, same: bool, device: str
                       ) -> tuple[np.ndarray, np.ndarray]:
    """`product_hits` computed by torch on `device` (any torch device, "cpu" included)."""
    import torch

    with _float32_products(torch):
        hits = torch.nonzero(_on(torch, a, device) @ _on(torch, b, device).T >= cut)  # row-major order
    if same:
        hits = hits[hits[:, 0] < hits[:, 1]]
    hits = hits.cpu().numpy().astype(np.int64, copy=False)
    return hits[:, 0].copy(), hits[:, 1].copy()


def _on(torch, x: np.ndarray, device: str):
    """float32 `x` as a torch tensor on `device` (shares memory on the CPU)."""
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)


class _float32_products:
    """Context: CUDA matrix products in full float32 (TF32 off), restoring the setting after."""

    def __init__(self, torch) -> None:
        self.backend = torch.backends.cuda.matmul

    def __enter__(self) -> None:
        self.saved = self.backend.allow_tf32
        self.backend.allow_tf32 = False

    def __exit__(self, *exc) -> None:
        self.backend.allow_tf32 = self.saved
