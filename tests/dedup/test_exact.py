from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from sanitize.dedup import exact as exact_module
from sanitize.dedup.exact import exact_representatives
from sanitize.errors import DataError


def _rows(n=8, d=6, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal((n, d)).astype(dtype)


def test_byte_equal_rows_point_at_the_first_copy():
    x = _rows()
    x[5] = x[2]
    x[7] = x[2]
    x[6] = x[1]
    rep = exact_representatives(x)
    np.testing.assert_array_equal(rep, [0, 1, 2, 3, 4, 2, 1, 2])


def test_near_equal_rows_are_not_exact():
    x = _rows()
    x[3] = np.nextafter(x[0], np.inf)
    np.testing.assert_array_equal(exact_representatives(x), np.arange(8))


def test_odd_row_byte_length_is_hashed():
    x = _rows(d=3, dtype=np.float16)  # 6 bytes per row
    x[4] = x[0]
    assert exact_representatives(x)[4] == 0


def test_hashes_group_rows_and_merge_with_byte_equality():
    x = _rows()
    x[6] = x[3]
    hashes = ["h0", "h1", None, "h3", "h1", "h0", "hx", None]
    rep = exact_representatives(x, hashes)
    # 4~1 and 5~0 by hash; 6~3 by bytes; None never matches.
    np.testing.assert_array_equal(rep, [0, 1, 2, 3, 1, 0, 3, 7])
    np.testing.assert_array_equal(exact_representatives(x, pa.array(hashes)), rep)


def test_equality_is_transitive_across_hash_and_bytes():
    x = _rows()
    x[7] = x[5]
    rep = exact_representatives(x, ["a", "b", "c", "d", "e", "f", "b", "g"])
    assert rep[6] == 1
    rep = exact_representatives(x, ["a", "b", "c", "d", "e", "f", "g", "a"])
    assert rep[5] == 0 and rep[7] == 0


def test_hash_length_must_match_rows():
    with pytest.raises(DataError, match="hashes: 3 entries for 8"):
        exact_representatives(_rows(), ["a", "b", "c"])


def test_hash_collisions_are_verified_byte_by_byte(monkeypatch):
    x = _rows()
    x[4] = x[1]
    x[6] = x[3]
    monkeypatch.setattr(exact_module, "row_hashes", lambda x: np.zeros(len(x), dtype=np.uint64))
    np.testing.assert_array_equal(exact_representatives(x), [0, 1, 2, 3, 1, 5, 3, 7])
