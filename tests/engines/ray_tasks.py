"""Small functions and workers for the Ray engine tests, in a module that is cheap for a Ray worker to import."""

from __future__ import annotations

import numpy as np

from sanitize.errors import DataError


def offset_rows(x: np.ndarray, offset: float, item: int) -> np.ndarray:
    """A map_tasks task: row `item` of `x` plus `offset`; DataError for a negative item."""
    if item < 0:
        raise DataError(f"row {item}: negative")
    return x[item] + offset


class FailingWorker:
    """A ShardWorker that fails on shard 1 with a DataError."""

    uses_gpu = False

    def setup(self) -> None:
        pass

    def __call__(self, index: int) -> int:
        if index == 1:
            raise DataError(f"shard {index}: unreadable")
        return index
