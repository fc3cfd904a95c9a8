from __future__ import annotations

import numpy as np
import pytest

from sanitize.errors import ConfigError
from sanitize.testing.synthetic import clip_like


def test_rows_are_unit_and_seeded():
    a = clip_like(2000, 64, seed=1)
    b = clip_like(2000, 64, seed=1)
    c = clip_like(2000, 64, seed=2)
    np.testing.assert_allclose(np.linalg.norm(a.x, axis=1), 1, atol=1e-5)
    np.testing.assert_array_equal(a.x, b.x)
    assert not np.array_equal(a.x, c.x)


def test_filling_a_memmap_gives_the_same_rows(tmp_path):
    expected = clip_like(1500, 32, dup_fraction=0.2, seed=4)
    out = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float32, shape=(1500, 32))
    got = clip_like(1500, 32, dup_fraction=0.2, seed=4, out=out)
    assert got.x is out
    np.testing.assert_array_equal(np.asarray(out), expected.x)


def test_planted_copies_are_close_to_their_original():
    data = clip_like(3000, 128, dup_fraction=0.1, seed=0)
    copies = np.flatnonzero(data.source != np.arange(3000))
    assert len(copies) == 300
    cos = np.einsum("ij,ij->i", data.x[copies], data.x[data.source[copies]])
    assert np.median(cos) > 0.95 and cos.min() > 0.8
    rng = np.random.default_rng(0)
    i, j = rng.integers(0, 3000, (2, 500))
    assert np.median(np.einsum("ij,ij->i", data.x[i], data.x[j])) < 0.6
    a, b = data.planted_pairs()
    assert np.all(a < b)
    assert np.all(data.source[a] == data.source[b])
    assert set(copies.tolist()) <= set(a.tolist()) | set(b.tolist())


def test_giant_share():
    data = clip_like(4000, 32, n_concepts=50, giant_share=0.4, dup_fraction=0.0, seed=0)
    assert 0.35 < np.mean(data.concept == 0) < 0.45


@pytest.mark.parametrize(
    "kwargs", [{"dup_fraction": 1.0}, {"copies_per_original": 0.5}, {"giant_share": 1.0}, {"rank": 0}]
)
def test_bad_arguments(kwargs):
    with pytest.raises(ConfigError):
        clip_like(100, 16, **kwargs)
