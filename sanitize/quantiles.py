"""The exact k-th largest of many float32 values from per-shard histograms: nothing N-sized on the driver.

A float32 maps to a uint32 key that sorts like the float (`sortable_keys`). The high 16 bits of the keys are counted
per shard (`high_counts`) and summed; the bin that holds the k-th largest value is found from the top
(`locate`); then the low 16 bits of that bin's keys are counted per shard (`low_counts`), summed, and located the
same way. The two 16-bit halves are the exact key of the k-th largest value. Shards return sparse counts (the
non-empty bins); the driver only ever adds them into vectors of 65,536 integers, so the result does not depend on
the order shards are counted in or on the engine.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

BINS = 1 << 16


def sortable_keys(values: np.ndarray) -> np.ndarray:
    """uint32 keys that sort like the float32 `values` (NaN not allowed: check before)."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    negative = (bits >> 31).astype(bool)
    return np.where(negative, ~bits, bits | np.uint32(0x80000000)).astype(np.uint32)


def value_of_key(key: int) -> float:
    """The float32 whose `sortable_keys` key is `key` (the inverse map)."""
    key = np.uint32(key)
    bits = key & np.uint32(0x7FFFFFFF) if key >> np.uint32(31) else ~key
    return float(np.array([bits], dtype=np.uint32).view(np.float32)[0])


Counts = tuple[np.ndarray, np.ndarray]  # (bins, counts): the non-empty bins of a histogram, sparse


def high_counts(values: np.ndarray) -> Counts:
    """Counts of the values' keys by their high 16 bits, as (bins, counts) of the non-empty bins."""
    return _sparse(sortable_keys(values) >> 16)


def low_counts(values: np.ndarray, high: int) -> Counts:
    """Counts, by their low 16 bits, of the keys whose high 16 bits are `high`, as (bins, counts)."""
    keys = sortable_keys(values)
    return _sparse(keys[(keys >> 16) == high] & 0xFFFF)


def add_counts(parts: list[Counts]) -> np.ndarray:
    """The sum of sparse histograms as one dense histogram of `BINS` int64 counts."""
    total = np.zeros(BINS, dtype=np.int64)
    for bins, counts in parts:
        np.add.at(total, bins, counts)
    return total


def _sparse(bins: np.ndarray) -> Counts:
    values, counts = np.unique(bins.astype(np.int64), return_counts=True)
    return values, counts.astype(np.int64)


def locate(counts: np.ndarray, k: int) -> tuple[int, int]:
    """(bin, rank within that bin) of the k-th largest value counted in `counts` (k >= 1; rank 1 = its largest).

    Raises ValueError when fewer than `k` values were counted.
    """
    if k < 1 or k > int(counts.sum()):
        raise ValueError(f"k={k} is outside 1..{int(counts.sum())}")
    from_top = np.cumsum(counts[::-1])
    position = int(np.searchsorted(from_top, k))  # first position (from the top) where the count reaches k
    bin_ = len(counts) - 1 - position
    above = int(from_top[position - 1]) if position > 0 else 0
    return bin_, k - above


def kth_largest_key(high: np.ndarray, low_of: Callable[[int], np.ndarray], k: int) -> int:
    """The key of the k-th largest value, given the summed `high` counts and `low_of(bin)`, which returns the summed
    `low_counts` of that bin (a second pass over the shards)."""
    bin_, rank = locate(high, k)
    low, _ = locate(low_of(bin_), rank)
    return (bin_ << 16) | low
