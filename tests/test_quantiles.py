"""The exact k-th largest value from sparse per-shard histograms equals a full sort, for any split into shards."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sanitize.quantiles import (
    add_counts,
    high_counts,
    kth_largest_key,
    locate,
    low_counts,
    sortable_keys,
    value_of_key,
)

finite32 = st.floats(allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=300, deadline=None)
@given(values=st.lists(finite32, min_size=1, max_size=400), data=st.data())
def test_kth_largest_from_shards_equals_a_sort(values, data):
    v = np.array(values, dtype=np.float32)
    k = data.draw(st.integers(1, len(v)))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(v)), max_size=4)))
    parts = np.split(v, cuts)
    high = add_counts([high_counts(p) for p in parts])
    key = kth_largest_key(high, lambda b: add_counts([low_counts(p, b) for p in parts]), k)
    expected = np.sort(v)[::-1][k - 1]
    assert value_of_key(key) == expected
    assert int((sortable_keys(v) >= key).sum()) >= k  # ties with the cut are all at or above it
    assert int((sortable_keys(v) > key).sum()) < k


def test_keys_sort_like_floats():
    v = np.array([-np.inf, -3.5, -1e-30, -0.0, 0.0, 1e-30, 0.25, 2.0, np.inf], dtype=np.float32)
    keys = sortable_keys(v)
    assert (np.diff(keys.astype(np.int64)) > 0).all()
    assert [value_of_key(int(k)) for k in keys] == v.tolist()


# -- pinned by mutation testing (tools/mutate.py sanitize/quantiles.py) ---------------------------------------------

def test_locate_gives_the_bin_and_the_rank_within_it_counting_from_the_top():
    counts = np.array([0, 1, 0, 2])  # bin 3 holds the two largest values, bin 1 the third
    assert locate(counts, 1) == (3, 1)
    assert locate(counts, 2) == (3, 2)
    assert locate(counts, 3) == (1, 1)
    assert locate(np.array([0, 3, 0, 0]), 2) == (1, 2)
    assert locate(np.array([0, 0, 1, 2]), 3) == (2, 1)  # the bin just below the top one


@pytest.mark.parametrize("k", [0, -1, 4])
def test_locate_refuses_a_rank_outside_the_counted_values(k):
    with pytest.raises(ValueError, match=f"k={k} is outside 1..3"):
        locate(np.array([0, 1, 0, 2]), k)


def test_histograms_have_one_bin_per_16_bit_half():
    """A dense histogram covers every value of a 16-bit half of a key: 65,536 bins, the last one included."""
    total = add_counts([(np.array([0, 65535]), np.array([2, 3])), (np.array([65535]), np.array([1]))])
    assert total.shape == (65536,) and (total[0], total[-1], int(total.sum())) == (2, 4, 6)
