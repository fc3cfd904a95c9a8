"""The projected-space bound (`sanitize.dedup.bound`): never below a cosine, and searches give the same pairs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sanitize.dedup import bound, find_duplicates
from sanitize.dedup.bound import block_hits, bound_rows, nominees
from sanitize.dedup.buckets import TRY_BLOCKS
from sanitize.dedup.clustering import fit_projection
from sanitize.dedup.pairs import within_cluster_candidates
from sanitize.dedup.recall import true_pairs_of_sample
from sanitize.dedup.sharded import find_duplicates_sharded
from sanitize.dedup.shards import ArrayShards
from sanitize.dedup.vectors import checked_unit_rows
from sanitize.testing.synthetic import clip_like


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _orthonormal(rng: np.random.Generator, d: int, p: int) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((d, p)))
    return q.astype(np.float32)


@settings(max_examples=60, deadline=None, database=None)
@given(d=st.integers(4, 96), data=st.data(), seed=st.integers(0, 2**32 - 1),
       inside=st.floats(0.0, 1.0), copies=st.booleans())
def test_bound_is_never_below_the_cosine(d, data, seed, inside, copies):
    """Rows anywhere between inside the subspace (residual 0: the slack must cover rounding) and orthogonal to it;
    `copies` adds rows whose residuals are parallel (the case where the bound is tight)."""
    p = data.draw(st.integers(1, d - 1))
    rng = np.random.default_rng(seed)
    projection = _orthonormal(rng, d, p)
    within = rng.standard_normal((40, p)).astype(np.float32) @ projection.T
    outside = rng.standard_normal((40, d)).astype(np.float32)
    outside -= (outside @ projection) @ projection.T
    x = _unit(inside * _unit(within) + (1 - inside) * _unit(outside))
    if copies:
        x = np.concatenate([x, _unit(x + 1e-3 * rng.standard_normal(x.shape).astype(np.float32))])
    b = bound_rows(x, projection)
    assert b.shape == (len(x), p + 1) and b.dtype == np.float32
    assert np.all(b @ b.T >= x @ x.T)
    # Stored as float16 (the out-of-core search), compared at cut - STORED_MARGIN: still never below.
    stored = b.astype(bound.STORED_DTYPE).astype(np.float32)
    assert np.all(stored @ stored.T >= x @ x.T - bound.STORED_MARGIN)


def test_bound_rows_of_rows_inside_the_subspace_are_the_coordinates_and_the_slack():
    rng = np.random.default_rng(0)
    projection = _orthonormal(rng, 16, 4)
    x = _unit(rng.standard_normal((5, 4)) @ projection.T)
    b = bound_rows(x, projection)
    np.testing.assert_allclose(b[:, :4], x @ projection, rtol=0, atol=1e-7)
    np.testing.assert_allclose(b[:, 4], np.sqrt(bound.RESIDUAL_SLACK), rtol=1e-2)
    # Orthogonal to the subspace: no coordinates, the whole length outside.
    e = np.zeros((1, 16), np.float32)
    e[0, :] = (np.eye(16, dtype=np.float32) - projection @ projection.T)[0]
    e = _unit(e)
    be = bound_rows(e, projection)
    assert np.abs(be[0, :4]).max() < 1e-6 and abs(be[0, 4] - 1) < 1e-4


def _low_rank(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose energy lies mostly in 24 of 192 directions (the bound prunes), with planted near-copies."""
    x = checked_unit_rows(clip_like(n, 192, rank=24, dup_fraction=0.2, seed=seed).x)[np.arange(n)]
    return x, fit_projection(x, 32)


def _isotropic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random directions in 192-d, with planted near-copies: a 32-dim subspace holds a sixth of each row, but
    unrelated rows are near orthogonal, so the bound (about 0.7 for them) still prunes."""
    rng = np.random.default_rng(seed)
    x = _unit(rng.standard_normal((n, 192)))
    x[n // 2 :] = _unit(x[: n - n // 2] + 0.15 * _unit(rng.standard_normal((n - n // 2, 192))))
    return x, fit_projection(x, 32)


def _shared_mean(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows 0.9 along one shared direction and √0.19 in random directions, projected on 4 directions, with
    planted near-copies: nearly all of the random part lies outside the subspace, so a pair's bound is near
    0.81 + 0.19 = 1 while its cosine is near 0.81: the bound cannot prune (it nominates most pairs at 0.99)."""
    rng = np.random.default_rng(seed)
    mean = _unit(rng.standard_normal((1, 192)))[0]
    x = _unit(0.9 * mean + np.sqrt(0.19) * _unit(rng.standard_normal((n, 192))))
    x[n // 2 :] = _unit(x[: n - n // 2] + 0.1 * _unit(rng.standard_normal((n - n // 2, 192))))
    return x, fit_projection(x, 4)


@pytest.mark.parametrize("make, settled", [(_low_rank, True), (_isotropic, True), (_shared_mean, False)])
@pytest.mark.parametrize("cut", [0.95, 0.99])
def test_block_hits_are_the_full_products_hits_whether_the_bound_settles_the_block_or_not(make, settled, cut):
    x, projection = make(1200, seed=1)
    b = bound_rows(x, projection)
    for xi, xj, bi, bj, same in [(x, x, b, b, True), (x[:500], x[500:], b[:500], b[500:], False)]:
        full = np.flatnonzero(xi @ xj.T >= cut)
        want_i, want_j = np.divmod(full, len(xj))
        if same:
            upper = want_i < want_j
            want_i, want_j = want_i[upper], want_j[upper]
        li, lj, was_settled = block_hits(xi, xj, cut, same=same, bi=bi, bj=bj)
        assert was_settled is settled
        np.testing.assert_array_equal(li, want_i)
        np.testing.assert_array_equal(lj, want_j)
        assert len(li) > 0 or not same  # the planted copies are there
        li0, lj0, not_settled = block_hits(xi, xj, cut, same=same)
        assert not not_settled
        np.testing.assert_array_equal(li0, want_i)
        np.testing.assert_array_equal(lj0, want_j)


@pytest.mark.parametrize("cut", [0.9, 0.95, 0.99])
def test_stored_bounds_nominate_every_pair_at_or_above_the_cut(cut, monkeypatch):
    x, projection = _low_rank(1500, seed=4)
    stored = bound_rows(x, projection).astype(bound.STORED_DTYPE)
    monkeypatch.setattr(bound, "MAX_NOMINATED_SHARE", 1.0)  # report every nominee, however many
    li, lj = nominees(stored, stored, cut, same=True)
    want_i, want_j = np.nonzero(np.triu(x @ x.T >= cut, 1))
    assert len(want_i) > 40
    assert set(zip(want_i.tolist(), want_j.tolist(), strict=True)) <= set(zip(li.tolist(), lj.tolist(),
                                                                             strict=True))


def test_too_many_nominees_fall_back_to_the_full_product(monkeypatch):
    x, projection = _low_rank(800, seed=2)
    b = bound_rows(x, projection)
    assert block_hits(x, x, 0.95, same=True, bi=b, bj=b)[2]
    monkeypatch.setattr(bound, "MAX_NOMINATED_SHARE", 0.0)
    li, _, settled = block_hits(x, x, 0.95, same=True, bi=b, bj=b)
    assert not settled and len(li) > 0


@pytest.mark.parametrize("make", [_low_rank, _shared_mean])
def test_candidates_and_recall_pairs_are_the_same_with_the_projection(make):
    x, projection = make(3000, seed=3)
    labels = (np.arange(3000) % 7).astype(np.int32)
    plain = within_cluster_candidates(x, labels, 0.93, block_rows=256)
    bounded = within_cluster_candidates(x, labels, 0.93, block_rows=256, projection=projection)
    for got, want in zip(bounded, plain, strict=True):
        np.testing.assert_array_equal(got, want)
    sample = np.arange(0, 3000, 11)
    for got, want in zip(true_pairs_of_sample(x, sample, 0.93, block_rows=700, projection=projection),
                         true_pairs_of_sample(x, sample, 0.93, block_rows=700), strict=True):
        np.testing.assert_array_equal(got, want)


def test_dedup_results_do_not_depend_on_whether_the_bound_prunes(monkeypatch, tmp_path):
    """End to end, in memory and out of core: the bound settling most blocks (d = 192 rows with their structure in
    24 directions, projected on 32) gives the result of searching every block in full."""
    x = clip_like(5000, 192, rank=24, dup_fraction=0.15, seed=7).x
    options = {"threshold": 0.93, "n_clusterings": 2, "n_clusters": 6, "seed": 2, "recall_sample": 400,
               "clustering_dims": 32, "block_rows": 300}
    settled = []
    real_hits, real_nominees = bound.block_hits, bound.nominees

    def counting_hits(*args, **kwargs):
        out = real_hits(*args, **kwargs)
        settled.append(out[2])
        return out

    def counting_nominees(*args, **kwargs):
        out = real_nominees(*args, **kwargs)
        settled.append(out is not None)
        return out

    for module in ("sanitize.dedup.pairs", "sanitize.dedup.recall", "sanitize.dedup.buckets"):
        monkeypatch.setattr(f"{module}.block_hits", counting_hits)
    monkeypatch.setattr("sanitize.dedup.buckets.nominees", counting_nominees)
    pruned = find_duplicates(x, **options)
    assert sum(settled) > 0.5 * len(settled)  # the bound settled most blocks
    settled.clear()
    pruned_sharded = find_duplicates_sharded(ArrayShards(x, 700), tmp_path / "a", **options)
    assert sum(settled) > 0.5 * len(settled)  # the stored float16 bounds too
    monkeypatch.setattr(bound, "MAX_NOMINATED_SHARE", -1.0)  # never settles: every block in full
    settled.clear()
    full = find_duplicates(x, **options)
    full_sharded = find_duplicates_sharded(ArrayShards(x, 700), tmp_path / "b", **options)
    assert len(settled) > 0 and not any(settled)
    assert pruned.pairs.num_rows > 100
    for got, want in [(pruned, full), (pruned_sharded, full_sharded)]:
        assert got.pairs.equals(want.pairs)
        assert got.stats["recall"] == want.stats["recall"]
        assert [c["candidates"] for c in got.stats["clusterings"]] == [c["candidates"] for c in
                                                                        want.stats["clusterings"]]
    assert pruned_sharded.pairs.equals(pruned.pairs)


def test_out_of_core_search_on_stored_bounds_stays_inside_each_cluster(tmp_path):
    """Blocks much smaller than the clusters, one clustering: the out-of-core search on its stored float16 bounds
    finds exactly the in-memory pairs, no pair of two neighbouring clusters (which sit next to each other in a
    bucket) among them."""
    x = clip_like(4000, 192, rank=24, dup_fraction=0.3, dup_structure=0.9, seed=8).x
    options = {"threshold": 0.9, "n_clusterings": 1, "n_clusters": 12, "seed": 1, "recall_sample": 0,
               "clustering_dims": 32, "block_rows": 37}
    memory = find_duplicates(x, **options)
    sharded = find_duplicates_sharded(ArrayShards(x, 900), tmp_path, bucket_rows=1000, **options)
    assert memory.pairs.num_rows > 100
    assert sharded.pairs.equals(memory.pairs)
    assert sharded.stats["clusterings"][0]["candidates"] == memory.stats["clusterings"][0]["candidates"]


def _write_part(folder, x: np.ndarray, labels: np.ndarray, projection: np.ndarray, k: int) -> np.ndarray:
    """One part file set as `buckets.assign_part` writes it (rows as stored, inverse norms, float16 bound rows,
    clustering 0's order and counts); returns the counts as `_pair_task` takes them."""
    from sanitize.io import atomic

    part = folder / "part_00000"
    part.mkdir(parents=True)
    atomic.write_npy(part / "ids.npy", np.arange(len(x), dtype=np.int64))
    atomic.write_npy(part / "rows.npy", x)
    atomic.write_npy(part / "inv_norms.npy", (1 / np.linalg.norm(x, axis=1)).astype(np.float32))
    atomic.write_npy(part / "bounds.npy", bound_rows(x, projection).astype(bound.STORED_DTYPE))
    atomic.write_npy(part / "order_000.npy", np.argsort(labels, kind="stable").astype(np.int32))
    counts = np.bincount(labels, minlength=k).astype(np.int64)
    atomic.write_npy(part / "counts_000.npy", counts)
    return counts[None, :]


@pytest.mark.parametrize("block_rows", [16, 50, 1000])
def test_a_bucket_searched_on_stored_bounds_pairs_rows_of_one_cluster_only(tmp_path, block_rows):
    """Rows in near-duplicate couples (rows 2i, 2i + 1), clusters that are runs of rows, so a couple often
    straddles two neighbouring clusters (sizes not multiples of the block): the bucket's pairs are exactly the
    same-cluster pairs, with or without stored bounds."""
    from sanitize.dedup.buckets import _pair_task

    base, _ = _low_rank(700, seed=5)
    rng = np.random.default_rng(0)
    x = np.empty((1400, base.shape[1]), np.float32)
    x[0::2], x[1::2] = base, _unit(base + 0.02 * _unit(rng.standard_normal(base.shape)))
    projection = fit_projection(x, 32)
    labels = np.sort(rng.integers(0, 40, len(x))).astype(np.int32)
    near = x @ x.T >= 0.93
    same = labels[:, None] == labels[None, :]
    truth, straddling = np.triu(near & same, 1), np.triu(near & ~same, 1)
    assert truth.sum() > 500 and straddling.sum() > 10
    counts = _write_part(tmp_path, x.astype(np.float16), labels, projection, 40)
    for proj in (projection, None):
        a, b, _, _ = _pair_task(str(tmp_path), 0, counts, 0.93, block_rows, proj, (0, 40, -1))
        assert set(zip(a.tolist(), b.tolist(), strict=True)) == set(zip(*np.nonzero(truth), strict=True))
    # A bound that never settles a block: the task stops trying it after TRY_BLOCKS blocks; the same pairs.
    calls = []
    real = bound.nominees
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bound, "MAX_NOMINATED_SHARE", -1.0)
        patch.setattr("sanitize.dedup.buckets.nominees", lambda *a, **k: calls.append(1) or real(*a, **k))
        a, b, _, _ = _pair_task(str(tmp_path), 0, counts, 0.93, block_rows, projection, (0, 40, -1))
    assert set(zip(a.tolist(), b.tolist(), strict=True)) == set(zip(*np.nonzero(truth), strict=True))
    assert len(calls) == TRY_BLOCKS


def test_recall_search_on_the_bound_settles_its_blocks_and_finds_the_same_pairs(monkeypatch):
    """A small sample against large blocks, where the bound settles every block (the queries' bound rows against the
    block's): the sampled rows' true pairs are those of the search in full dimension."""
    x, projection = _low_rank(3000, seed=6)
    sample = np.arange(0, 3000, 60)
    settled = []
    real = bound.block_hits

    def counting(*args, **kwargs):
        out = real(*args, **kwargs)
        settled.append(out[2])
        return out

    monkeypatch.setattr("sanitize.dedup.recall.block_hits", counting)
    got = true_pairs_of_sample(x, sample, 0.95, block_rows=1500, projection=projection)
    assert settled == [True, True]
    want = true_pairs_of_sample(x, sample, 0.95, block_rows=1500)
    assert len(got[0]) > 5
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


def test_a_product_exactly_at_the_cut_is_a_hit_on_both_paths(monkeypatch):
    """>= cut, not > cut: rows whose product is exactly 0.5 (1 × 0.5), searched in full and on bound rows."""
    monkeypatch.setattr(bound, "MAX_NOMINATED_SHARE", 1.0)  # one pair of one: let the bound settle it
    xi = np.array([[1.0, 0.0]], np.float32)
    xj = np.array([[0.5, 0.75]], np.float32)
    bi = np.array([[1.0, 0.01]], np.float32)  # bound rows whose product (0.5075) is above the cut
    bj = np.array([[0.5, 0.75]], np.float32)
    for bounds in ({}, {"bi": bi, "bj": bj}):
        li, lj, settled = block_hits(xi, xj, 0.5, same=False, **bounds)
        assert (li.tolist(), lj.tolist(), settled) == ([0], [0], bool(bounds))


def test_only_float16_bound_rows_are_compared_below_the_cut(monkeypatch):
    """float32 bound rows are compared at the cut itself; float16 ones (the stored copies) at cut - STORED_MARGIN,
    so a bound 0.001 below the cut is nominated from the float16 copy only, and one 0.003 below from neither."""
    monkeypatch.setattr(bound, "MAX_NOMINATED_SHARE", 1.0)  # one pair of one: report it
    bi = np.array([[1.0, 0.0]], np.float32)
    bj = np.array([[0.999, 0.0]], np.float32)
    assert len(nominees(bi, bj, 1.0, same=False)[0]) == 0
    stored = nominees(bi.astype(bound.STORED_DTYPE), bj.astype(bound.STORED_DTYPE), 1.0, same=False)
    assert stored[0].tolist() == [0] and stored[1].tolist() == [0]
    far = np.array([[0.997, 0.0]], np.float32).astype(bound.STORED_DTYPE)  # 0.003 below: beyond 2^-9
    assert len(nominees(bi.astype(bound.STORED_DTYPE), far, 1.0, same=False)[0]) == 0
