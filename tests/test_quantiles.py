"""The exact k-th largest value from sparse per-shard histograms equals a full sort, for any split into shards."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sanitize.quantiles import add_counts, high_counts, kth_largest_key, low_counts, sortable_keys, value_of_key

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
