"""Exact duplicates, found before any clustering: byte-equal embeddings and equal content hashes.

Exact groups are collapsed to one representative (the smallest row index) so the clusterings only search
distinct rows; every other member is reported as a duplicate of its representative.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from sanitize.dedup.components import component_roots
from sanitize.errors import DataError

logger = logging.getLogger(__name__)

HASH_BATCH_ROWS = 65536
# Fixed, not the user's seed: this only hashes bytes, and every candidate group is verified byte by byte.
_HASH_SEED = 0x5EED


def exact_representatives(
    x: np.ndarray, hashes: Sequence | np.ndarray | pa.Array | None = None
) -> np.ndarray:
    """For each row of `x` ((n, d) array or memmap), the smallest row index it is exactly equal to.

    Rows are exactly equal when their embedding bytes are equal, or when `hashes` (n strings or bytes,
    e.g. sha256 of the image; None entries never match) are equal; equality is closed transitively.
    Returns rep ((n,) int64) with rep[i] <= i, and rep[i] == i exactly for representatives.
    Raises DataError when `hashes` does not have one entry per row.
    """
    n = int(x.shape[0])
    rep_bytes = _byte_equal_representatives(x)
    if hashes is None:
        return rep_bytes
    rep_hash = _hash_representatives(hashes, n)
    return _merge_representatives(rep_bytes, rep_hash)


def row_hashes(x: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each row's bytes: a random odd multiplier per 8-byte word, summed mod 2**64."""
    n = int(x.shape[0])
    row_bytes = x.dtype.itemsize * int(x.shape[1])
    n_words = -(-row_bytes // 8)
    mult = np.random.default_rng(_HASH_SEED).integers(0, 2**63, size=n_words, dtype=np.uint64) * 2 + 1
    out = np.empty(n, dtype=np.uint64)
    for start in range(0, n, HASH_BATCH_ROWS):
        block = np.ascontiguousarray(x[start : start + HASH_BATCH_ROWS]).view(np.uint8)
        block = block.reshape(len(block), row_bytes)
        if row_bytes % 8:
            block = np.pad(block, ((0, 0), (0, n_words * 8 - row_bytes)))
        out[start : start + len(block)] = block.view(np.uint64) @ mult  # wraps mod 2**64
    return out


def _byte_equal_representatives(x: np.ndarray) -> np.ndarray:
    n = int(x.shape[0])
    rep = np.arange(n, dtype=np.int64)
    h = row_hashes(x)
    order = np.argsort(h, kind="stable")  # equal hashes: ascending row index
    sorted_h = h[order]
    same_as_prev = np.empty(n, dtype=bool)
    same_as_prev[0] = False
    same_as_prev[1:] = sorted_h[1:] == sorted_h[:-1]
    if not same_as_prev.any():
        return rep
    run_start = np.maximum.accumulate(np.where(same_as_prev, 0, np.arange(n)))
    members = order[same_as_prev]
    firsts = order[run_start[same_as_prev]]
    equal = _rows_equal(x, members, firsts)
    rep[members[equal]] = firsts[equal]
    # Hash collisions (different bytes, same 64-bit hash) are astronomically rare; resolve them slowly.
    for m in members[~equal]:
        same_hash = order[(sorted_h == h[m])]
        for other in same_hash[same_hash < m]:
            if _rows_equal(x, np.array([m]), np.array([other]))[0]:
                rep[m] = rep[other]
                break
    return rep


def _rows_equal(x: np.ndarray, a: np.ndarray, b: np.ndarray, batch: int = HASH_BATCH_ROWS) -> np.ndarray:
    out = np.empty(len(a), dtype=bool)
    for start in range(0, len(a), batch):
        xa = np.ascontiguousarray(x[a[start : start + batch]])
        xb = np.ascontiguousarray(x[b[start : start + batch]])
        out[start : start + batch] = (xa.view(np.uint8) == xb.view(np.uint8)).all(axis=1)
    return out


def _hash_representatives(hashes: Sequence | np.ndarray | pa.Array, n: int) -> np.ndarray:
    arr = hashes if isinstance(hashes, (pa.Array, pa.ChunkedArray)) else pa.array(list(hashes))
    if len(arr) != n:
        raise DataError(f"hashes: {len(arr)} entries for {n} embedding rows")
    codes = arr.dictionary_encode()
    if isinstance(codes, pa.ChunkedArray):
        codes = codes.combine_chunks()
    idx = codes.indices.to_numpy(zero_copy_only=False)
    valid = ~np.asarray(codes.indices.is_null().to_numpy(zero_copy_only=False))
    rep = np.arange(n, dtype=np.int64)
    rows = np.flatnonzero(valid)
    first = np.full(len(codes.dictionary), n, dtype=np.int64)
    np.minimum.at(first, idx[rows].astype(np.int64), rows)
    rep[rows] = first[idx[rows].astype(np.int64)]
    return rep


def _merge_representatives(rep_a: np.ndarray, rep_b: np.ndarray) -> np.ndarray:
    rows = np.arange(len(rep_a), dtype=np.int64)
    # Each component's root is its smallest row, which is the representative.
    return component_roots(len(rows), np.concatenate([rows, rows]), np.concatenate([rep_a, rep_b]))
