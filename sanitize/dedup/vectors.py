"""Embedding rows as float32 unit vectors: input checks and bounded-memory row access.

Everything in `sanitize.dedup` reads embeddings through `UnitRows`, so the input may be a float16 memmap of
a billion rows: rows are converted and scaled only when a block of them is read, and the input is never
written to.
"""

from __future__ import annotations

import logging

import numpy as np

from sanitize.errors import DataError

logger = logging.getLogger(__name__)

# float16 storage alone moves row norms by ~1e-3; beyond 1e-2 the rows were not normalised at all.
NORM_TOLERANCE = 1e-2
CHECK_BATCH_ROWS = 65536


class UnitRows:
    """Read-only access to the rows of an (n, d) float array as float32 unit vectors.

    `x` may be an in-memory array or a np.memmap of float16/32/64. `inv_norms` ((n,) float32) scales each
    row when it is read; None means the rows are already unit length. Indexing with an int array or a
    slice returns a C-contiguous float32 (m, d) array (treat it as read-only: without scaling it may be a
    view of `x`). Build one with `checked_unit_rows`, which validates and measures the norms.
    """

    def __init__(self, x: np.ndarray, inv_norms: np.ndarray | None = None) -> None:
        self.x = x
        self.inv_norms = inv_norms

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.x.shape[0]), int(self.x.shape[1]))

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, idx: np.ndarray | slice) -> np.ndarray:
        rows = np.asarray(self.x[idx], dtype=np.float32)
        if self.inv_norms is not None:
            # Not in place: `rows` may be a view of the caller's array.
            rows = rows * self.inv_norms[idx][:, None]
        return np.ascontiguousarray(rows)


def checked_unit_rows(
    x: np.ndarray, *, require_normalized: bool = False, name: str = "embeddings"
) -> UnitRows:
    """Validate an (n, d) embedding array and return unit-length row access to it.

    One streaming pass over `x` (bounded memory). Raises DataError, naming `name` and the first bad row,
    when `x` is not a non-empty 2-D float array, a row holds NaN or inf, or a row is all zeros. Rows whose
    norm is off 1 by more than NORM_TOLERANCE are normalised with a logged warning, or refused with
    DataError when `require_normalized` is set. The returned rows are always scaled to exact unit length.
    """
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) != 2:
        raise DataError(f"{name}: expected a 2-D array (rows × dimensions), got shape {shape}")
    n, d = int(shape[0]), int(shape[1])
    if n == 0 or d == 0:
        raise DataError(f"{name}: empty array of shape ({n}, {d})")
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"{name}: expected float embeddings, got dtype {x.dtype}")

    inv_norms = np.empty(n, dtype=np.float32)
    worst_row, worst_dev = 0, -1.0
    for start in range(0, n, CHECK_BATCH_ROWS):
        block = np.asarray(x[start : start + CHECK_BATCH_ROWS], dtype=np.float32)
        finite = np.isfinite(block).all(axis=1)
        if not finite.all():
            row = start + int(np.argmin(finite))
            raise DataError(f"{name}: row {row} has NaN or infinite values")
        norms = row_norms(block)
        if not norms.all():
            row = start + int(np.argmin(norms))
            raise DataError(f"{name}: row {row} is all zeros (an empty or failed embedding)")
        inv_norms[start : start + len(block)] = 1.0 / norms
        dev = np.abs(norms - 1.0)
        i = int(np.argmax(dev))
        if dev[i] > worst_dev:
            worst_row, worst_dev = start + i, float(dev[i])
    if worst_dev > NORM_TOLERANCE:
        norm = 1.0 / float(inv_norms[worst_row])
        if require_normalized:
            raise DataError(
                f"{name}: rows are not unit length (row {worst_row} has norm {norm:.4g}); "
                "normalise them or allow normalisation"
            )
        logger.warning(
            "%s: rows are not unit length (row %d has norm %.4g); normalising them for the search",
            name,
            worst_row,
            norm,
        )
    return UnitRows(x, inv_norms)


def row_norms(block: np.ndarray) -> np.ndarray:
    """L2 norm of each row of a float32 block, as float32 (one SIMD dot product per row: ~25x faster than
    np.linalg.norm here). Each row's value depends only on that row, so every path that reads a row gets its bits."""
    return np.sqrt(np.einsum("ij,ij->i", block, block))


def pair_cosines(x: UnitRows | np.ndarray, a: np.ndarray, b: np.ndarray, *, batch: int = 4096) -> np.ndarray:
    """Cosine of each pair (a[i], b[i]) of unit rows, as float64.

    Each value is the float64 dot product of the two float32 unit rows, so it depends only on the two rows,
    not on which matrix block found the pair: the same pair gets the same bits on every run, thread count
    and device. That makes threshold decisions reproducible.
    """
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    out = np.empty(len(a), dtype=np.float64)
    for start in range(0, len(a), batch):
        xa = np.asarray(x[a[start : start + batch]], dtype=np.float64)
        xb = np.asarray(x[b[start : start + batch]], dtype=np.float64)
        out[start : start + batch] = np.einsum("ij,ij->i", xa, xb)
    return out
