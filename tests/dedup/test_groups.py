from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sanitize.dedup.groups import decide_groups, keep_priority
from sanitize.dedup.vectors import pair_cosines
from sanitize.errors import ConfigError, DataError

THRESHOLD = 0.95


def _chain():
    """Rows 0~1 and 1~2 within the threshold, 0 and 2 not; row 3 unrelated."""
    step = np.arccos(0.96)
    angles = np.array([0.0, step, 2 * step])
    x = np.zeros((4, 3), dtype=np.float32)
    x[:3, 0] = np.cos(angles)
    x[:3, 1] = np.sin(angles)
    x[3, 2] = 1.0
    return x, np.array([0, 1]), np.array([1, 2])


def test_chain_is_one_group_by_default():
    x, a, b = _chain()
    assert x[0] @ x[2] < THRESHOLD
    g = decide_groups(x, a, b, THRESHOLD)
    np.testing.assert_array_equal(g.keep, [True, False, False, True])
    np.testing.assert_array_equal(g.duplicate_of, [-1, 0, 0, -1])
    np.testing.assert_array_equal(g.group_id, [0, 0, 0, -1])
    assert g.cosine_to_kept[2] < THRESHOLD <= g.cosine_to_kept[1]
    assert g.n_groups == 1


def test_refused_chain_keeps_the_far_end():
    x, a, b = _chain()
    g = decide_groups(x, a, b, THRESHOLD, refuse_chains=True)
    np.testing.assert_array_equal(g.keep, [True, False, True, True])
    np.testing.assert_array_equal(g.duplicate_of, [-1, 0, -1, -1])
    np.testing.assert_array_equal(g.group_id, [0, 0, -1, -1])


def test_refused_chain_with_the_middle_kept_removes_both_ends():
    x, a, b = _chain()
    priority = keep_priority(4, np.array([1.0, 5.0, 2.0, 0.0]), "max")
    g = decide_groups(x, a, b, THRESHOLD, priority=priority, refuse_chains=True)
    np.testing.assert_array_equal(g.keep, [False, True, False, True])
    np.testing.assert_array_equal(g.duplicate_of, [1, -1, 1, -1])


def test_refused_rows_form_new_groups():
    # 0~1, 1~2, 2~3 along one arc: keep 0, remove 1; 2 and 3 are too far from 0 and become their own group.
    step = np.arccos(0.96)
    angles = step * np.arange(4)
    x = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    g = decide_groups(x, np.array([0, 1, 2]), np.array([1, 2, 3]), THRESHOLD, refuse_chains=True)
    np.testing.assert_array_equal(g.keep, [True, False, True, False])
    np.testing.assert_array_equal(g.duplicate_of, [-1, 0, -1, 2])
    np.testing.assert_array_equal(g.group_id, [0, 0, 1, 1])


def test_exactly_equal_rows_are_never_refused():
    x, a, b = _chain()
    exact_rep = np.array([0, 1, 0, 3])  # rows 0 and 2 share a hash, though their embeddings differ
    g = decide_groups(x, a, b, THRESHOLD, refuse_chains=True, exact_rep=exact_rep)
    assert not g.keep[2] and g.duplicate_of[2] == 0


@pytest.mark.parametrize(("keep", "kept"), [("max", 2), ("min", 1)])
def test_keep_by_value(keep, kept):
    x, a, b = _chain()
    values = np.array([5.0, 1.0, 9.0, 0.0])
    g = decide_groups(x, a, b, THRESHOLD, priority=keep_priority(4, values, keep))
    assert np.flatnonzero(g.keep[:3]).tolist() == [kept]
    assert set(g.duplicate_of[:3].tolist()) == {-1, kept}


def test_priority_ties_and_nan():
    np.testing.assert_array_equal(keep_priority(4, np.array([2.0, 3.0, 3.0, np.nan]), "max"), [2, 0, 1, 3])
    np.testing.assert_array_equal(keep_priority(4, np.array([2.0, np.nan, 1.0, 1.0]), "min"), [2, 3, 0, 1])
    np.testing.assert_array_equal(keep_priority(3), [0, 1, 2])


def test_priority_errors():
    with pytest.raises(ConfigError, match="keep must be one of"):
        keep_priority(3, None, "largest")
    with pytest.raises(DataError, match="expected 3 values"):
        keep_priority(3, np.ones(4))
    with pytest.raises(DataError, match="expected numbers"):
        keep_priority(2, np.array(["a", "b"]))


@settings(max_examples=60, deadline=None)
@given(
    edges=st.lists(st.tuples(st.integers(0, 11), st.integers(0, 11)), max_size=30),
    values=st.lists(st.floats(-3, 3), min_size=12, max_size=12),
    refuse=st.booleans(),
    seed=st.integers(0, 3),
)
def test_no_over_pruning_on_random_graphs(edges, values, refuse, seed):
    x = np.random.default_rng(seed).standard_normal((12, 4)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    pairs = sorted({(min(i, j), max(i, j)) for i, j in edges if i != j})
    a = np.array([p[0] for p in pairs], dtype=np.int64)
    b = np.array([p[1] for p in pairs], dtype=np.int64)
    priority = keep_priority(12, np.array(values), "max")
    g = decide_groups(x, a, b, 0.0, priority=priority, refuse_chains=refuse)
    removed = np.flatnonzero(~g.keep)
    assert g.keep[g.duplicate_of[removed]].all()  # every removed row points at a kept row
    assert (g.group_id[removed] == g.group_id[g.duplicate_of[removed]]).all()
    for group in range(g.n_groups):
        members = np.flatnonzero(g.group_id == group)
        assert g.keep[members].sum() == 1 and len(members) >= 2
    if refuse:
        assert (g.cosine_to_kept[removed] >= 0.0).all()
    shuffled = np.random.default_rng(seed).permutation(len(a))
    again = decide_groups(x, a[shuffled], b[shuffled], 0.0, priority=priority, refuse_chains=refuse)
    np.testing.assert_array_equal(g.duplicate_of, again.duplicate_of)


def test_refused_chain_keeps_rows_exactly_at_the_threshold_as_duplicates():
    # "within the threshold" is cosine >= threshold: a row whose exact cosine to the kept row equals the
    # threshold is removed, one an ulp further away stays.
    x, a, b = _chain()
    at = float(pair_cosines(x, np.array([2]), np.array([0]))[0])
    g = decide_groups(x, a, b, at, refuse_chains=True)
    np.testing.assert_array_equal(g.keep, [True, False, False, True])
    assert g.cosine_to_kept[2] == at
    g = decide_groups(x, a, b, np.nextafter(at, 1.0), refuse_chains=True)
    np.testing.assert_array_equal(g.keep, [True, False, True, True])


def test_refused_rows_are_grouped_only_by_their_own_pairs():
    # 0 ~ 1 ~ 2 and 1 ~ 3 along one arc; 2 and 3 are the same point but were never paired. Keeping 0 removes 1
    # and refuses 2 and 3 (too far from 0); a removed row does not link them, so both stay.
    step = np.arccos(0.96)
    angles = np.array([0.0, step, 2 * step, 2 * step])
    x = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    g = decide_groups(x, np.array([0, 1, 1]), np.array([1, 2, 3]), THRESHOLD, refuse_chains=True)
    np.testing.assert_array_equal(g.keep, [True, False, True, True])
    np.testing.assert_array_equal(g.duplicate_of, [-1, 0, -1, -1])


def test_no_rows_no_groups_and_decisions_are_frozen():
    g = decide_groups(np.zeros((0, 3), np.float32), np.array([], np.int64), np.array([], np.int64), THRESHOLD)
    assert g.n_groups == 0 and g.keep.shape == (0,)
    x, a, b = _chain()
    g = decide_groups(x, a, b, THRESHOLD)
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.keep = np.zeros(4, bool)
