"""Brute-force truth for the dedup tests."""

from __future__ import annotations

import numpy as np


def brute_force_pairs(x: np.ndarray, threshold: float) -> set[tuple[int, int]]:
    """Every pair (a < b) with float64 cosine >= threshold, from the full similarity matrix."""
    x64 = x.astype(np.float64)
    x64 /= np.linalg.norm(x64, axis=1, keepdims=True)
    sims = x64 @ x64.T
    a, b = np.nonzero(np.triu(sims >= threshold, 1))
    return set(zip(a.tolist(), b.tolist(), strict=True))


def pair_set(table) -> set[tuple[int, int]]:
    return set(zip(table["a"].to_pylist(), table["b"].to_pylist(), strict=True))
