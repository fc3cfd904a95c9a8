from __future__ import annotations

import logging

import numpy as np
import pytest

from sanitize.dedup.vectors import UnitRows, checked_unit_rows, pair_cosines
from sanitize.errors import DataError


def _unit(n=10, d=8, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_rows_come_back_as_unit_float32_without_touching_the_input():
    x = (_unit() * 3).astype(np.float64)
    before = x.copy()
    rows = checked_unit_rows(x)
    block = rows[np.array([0, 3])]
    assert block.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(block, axis=1), 1, atol=1e-6)
    np.testing.assert_array_equal(x, before)
    np.testing.assert_allclose(rows[2:4], rows[np.array([2, 3])])


def test_float16_unit_rows_are_accepted_without_warning(caplog):
    x = _unit().astype(np.float16)
    with caplog.at_level(logging.WARNING):
        checked_unit_rows(x)
    assert not caplog.records


def test_unnormalised_rows_are_normalised_with_a_warning(caplog):
    x = _unit()
    x[4] *= 2
    with caplog.at_level(logging.WARNING):
        checked_unit_rows(x)
    assert "row 4" in caplog.text and "normalising" in caplog.text


def test_unnormalised_rows_refused_when_required():
    x = _unit()
    x[4] *= 2
    with pytest.raises(DataError, match="row 4 has norm 2"):
        checked_unit_rows(x, require_normalized=True)


@pytest.mark.parametrize(
    ("value", "message"),
    [(np.nan, "row 6 has NaN"), (np.inf, "row 6 has NaN or infinite"), (0.0, "row 6 is all zeros")],
)
def test_bad_rows_are_named(value, message):
    x = _unit()
    x[6] = value
    with pytest.raises(DataError, match=message):
        checked_unit_rows(x)


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (np.zeros(5, dtype=np.float32), "2-D"),
        (np.zeros((0, 4), dtype=np.float32), "empty"),
        (np.ones((3, 4), dtype=np.int32), "float"),
    ],
)
def test_bad_arrays_are_refused(x, message):
    with pytest.raises(DataError, match=message):
        checked_unit_rows(x)


def test_pair_cosines_do_not_depend_on_batching():
    rows = UnitRows(_unit(50, 16))
    a = np.arange(40)
    b = (a * 7 + 3) % 50
    whole = pair_cosines(rows, a, b)
    pieces = pair_cosines(rows, a, b, batch=7)
    np.testing.assert_array_equal(whole, pieces)
    np.testing.assert_allclose(whole, np.einsum("ij,ij->i", rows[a], rows[b]), atol=1e-6)
