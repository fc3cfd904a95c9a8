"""Small generated data sets shared by the dedup tests, with brute-force truth."""

from __future__ import annotations

import pytest

from sanitize.testing.synthetic import clip_like

from .helpers import brute_force_pairs


@pytest.fixture(scope="package")
def small_set():
    """4000 CLIP-like rows with planted duplicates, and their true pairs at 0.95."""
    data = clip_like(4000, 128, rank=32, dup_fraction=0.1, seed=3)
    return data, brute_force_pairs(data.x, 0.95)


@pytest.fixture(scope="package")
def giant_set():
    """3000 rows where one concept holds 60% of the rows (a single cluster then holds >= 20% of them)."""
    data = clip_like(3000, 96, rank=24, n_concepts=20, giant_share=0.6, dup_fraction=0.1, seed=5)
    return data, brute_force_pairs(data.x, 0.95)
