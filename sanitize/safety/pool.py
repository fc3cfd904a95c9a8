"""The unlabelled pool: uids and CLIP image embeddings, in memory, memory-mapped, or streamed shard by shard.

Strategies and status only ever read the pool block by block, so one code path serves a 1k-row test
array and a 10M-row memmap. A block keeps the rows as stored (float16 on disk) and converts them to float32
only when asked: on a 10M-row pool that conversion, not the scoring, was most of a labeling round, so the
round's scan multiplies float16 blocks directly (`Block.project`, 5-10x faster). NaN or infinite rows are an
error (`DataError` naming the uid and global row): a non-finite embedding means a broken embedding shard, and
silently skipping it would hide the problem.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from sanitize.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

DEFAULT_BLOCK_ROWS = 65_536
# Measured on a 2-core x86 machine, 65k x 512 block: float16 matrix-vector 5-8x faster than converting first;
# at 8 columns they break even; at 64 columns float16 is 4x slower (no fast float16 GEMM kernel on CPUs).
HALF_PRODUCT_MAX_COLUMNS = 4


class Block:
    """A contiguous slice of the pool: `start` is the global row of its first row, `raw` the rows as stored."""

    def __init__(self, start: int, uids: np.ndarray, raw: np.ndarray) -> None:
        self.start = start
        self.uids = uids
        self.raw = raw
        self._X: np.ndarray | None = None

    @property
    def X(self) -> np.ndarray:
        """The rows as float32 (converted once, then cached); DataError when a row is NaN or infinite."""
        if self._X is None:
            X = np.asarray(self.raw, dtype=np.float32)
            _check_finite(self.uids, X, self.start)
            self._X = X
        return self._X

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """float32 copies of just the given rows (block-relative indices)."""
        return np.asarray(self.raw[rows], dtype=np.float32) if self._X is None else self._X[rows]

    def project(self, W: np.ndarray) -> np.ndarray:
        """``rows @ W`` for a (d, k) matrix, as float32 (n, k); DataError when a row is NaN or infinite.

        float16 blocks times a narrow W (a classifier's weights, a few prompts) are multiplied in float16 by
        torch (float32 accumulation, results rounded to float16: ~3 significant digits, enough to rank rows)
        instead of being converted first; a wider W is a real GEMM, faster in float32 after conversion. Results that
        are not finite are recomputed in float32, so only a truly non-finite row raises.
        """
        W = np.asarray(W, dtype=np.float32)
        if (self._X is not None or self.raw.dtype != np.float16 or len(self.uids) == 0
                or W.shape[1] > HALF_PRODUCT_MAX_COLUMNS):
            return self.X @ W
        import torch

        with torch.inference_mode(), warnings.catch_warnings():
            # Memory-mapped shards are read-only; the product only reads them.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            rows = torch.from_numpy(np.ascontiguousarray(self.raw))
            out = (rows @ torch.from_numpy(W).half()).float().numpy()
        bad = np.flatnonzero(~np.isfinite(out).all(axis=1))
        if len(bad):  # a non-finite embedding, or a product beyond float16's range
            rows = self.rows(bad)
            broken = bad[~np.isfinite(rows.sum(axis=1))]
            if len(broken):
                _raise_non_finite(self.uids, broken, self.start)
            out[bad] = rows @ W
        return out

    def check_finite(self) -> None:
        """DataError naming the first NaN or infinite row, without converting the block to float32."""
        self.project(np.ones((self.raw.shape[1], 1), np.float32))


class EmbeddingPool:
    """A re-readable pool of (uid, embedding) rows.

    Build it from arrays (`EmbeddingPool(uids, X)`, X may be a `np.memmap`) or from a factory that returns a
    fresh iterator of `(uids, X)` shard blocks on each call (`EmbeddingPool.from_blocks(factory)`), for
    pools that do not fit in memory. Every pass yields the rows in the same order.
    """

    def __init__(self, uids: np.ndarray, X: np.ndarray, *, block_rows: int = DEFAULT_BLOCK_ROWS) -> None:
        uids = np.asarray(uids)
        if X.ndim != 2:
            raise DataError(f"pool embeddings must be 2-d (rows, dim), got shape {X.shape}")
        if len(uids) != X.shape[0]:
            raise DataError(f"pool has {len(uids)} uids but {X.shape[0]} embedding rows")
        if block_rows < 1:
            raise ConfigError(f"block_rows must be >= 1, got {block_rows}")
        self._uids = uids
        self._X = X
        self._factory: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]] | None = None
        self.block_rows = block_rows
        self.dim = int(X.shape[1])
        self.source: str | None = None  # where the rows come from (a run folder), named in errors

    @classmethod
    def from_blocks(
        cls,
        factory: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]],
        dim: int,
        *,
        block_rows: int = DEFAULT_BLOCK_ROWS,
        source: str | None = None,
    ) -> EmbeddingPool:
        """A pool read from `factory()`, which must return a new iterator of `(uids, X)` blocks per call.

        Blocks larger than `block_rows` (a whole shard, say) are sliced, so float32 copies stay bounded. `source`
        (where the blocks come from) starts the message of a uid not found.
        """
        pool = cls(np.empty(0, dtype=str), np.empty((0, dim), dtype=np.float32), block_rows=block_rows)
        pool._factory = factory
        pool.source = source
        return pool

    @classmethod
    def of(cls, pool: EmbeddingPool | tuple[np.ndarray, np.ndarray]) -> EmbeddingPool:
        """Accept either a pool or a `(uids, X)` pair."""
        if isinstance(pool, EmbeddingPool):
            return pool
        uids, X = pool
        return cls(uids, X)

    def __len__(self) -> int:
        if self._factory is not None:
            raise TypeError("the length of a streamed pool is only known after a pass")
        return len(self._uids)

    def blocks(self) -> Iterator[Block]:
        """Yield the pool block by block; rows are checked for NaN/inf when a block is converted or projected."""
        start = 0
        for uids, X in self._raw_blocks():
            uids = np.asarray(uids)
            if X.ndim != 2 or X.shape[1] != self.dim or len(uids) != X.shape[0]:
                raise DataError(
                    f"pool block at row {start}: {len(uids)} uids and embeddings of shape {X.shape},"
                    f" expected (rows, {self.dim})"
                )
            yield Block(start, uids, X)
            start += len(uids)

    def _raw_blocks(self) -> Iterable[tuple[np.ndarray, np.ndarray]]:
        step = self.block_rows
        if self._factory is None:
            for i in range(0, len(self._uids), step):
                yield self._uids[i : i + step], self._X[i : i + step]
            return
        for uids, X in self._factory():
            if len(uids) != len(X):
                raise DataError(f"pool block has {len(uids)} uids but {len(X)} embedding rows")
            for i in range(0, len(uids), step):
                yield uids[i : i + step], X[i : i + step]

    def gather(self, uids: Iterable[str]) -> np.ndarray:
        """Embeddings (float32, in the order of `uids`) of the given uids.

        Raises `DataError` listing the uids that are not in the pool.
        """
        wanted = np.asarray(list(uids), dtype=str)
        out = np.zeros((len(wanted), self.dim), dtype=np.float32)
        if len(wanted) == 0:
            return out
        position = {u: i for i, u in enumerate(wanted.tolist())}
        if len(position) != len(wanted):
            raise DataError("gather: the requested uids contain duplicates")
        found = np.zeros(len(wanted), dtype=bool)
        # Array pools are searched by uid slices only; the (much larger) embedding matrix is touched just
        # for the hits. Streamed pools have to be read in full.
        if self._factory is None:
            step = self.block_rows
            passes = ((i, self._uids[i : i + step], None) for i in range(0, len(self._uids), step))
        else:
            passes = ((b.start, b.uids, b.X) for b in self.blocks())
        for start, block_uids, block_X in passes:
            hit = member_mask(block_uids, position)
            if not hit.any():
                continue
            rows = np.flatnonzero(hit)
            targets = np.array([position[u] for u in block_uids[rows].tolist()])
            out[targets] = block_X[rows] if block_X is not None else self._X[start + rows]
            found[targets] = True
        if not found.all():
            missing = wanted[~found]
            where = f"{self.source}: " if self.source else ""
            raise DataError(f"{where}{len(missing)} uids are not in the pool: {_preview(missing)}")
        _check_finite(wanted, out, None)
        return out


def member_mask(values: np.ndarray, members: set[str] | dict[str, int]) -> np.ndarray:
    """Boolean mask: which of `values` (strings) are in `members` (a small set, e.g. the labelled uids).

    Fixed-width numpy string arrays take a vectorised path (a 64-bit fingerprint per string, then an exact
    check of the few fingerprint hits), about 10x faster than a Python loop on million-row blocks.
    """
    values = np.asarray(values)
    if not members or len(values) == 0:
        return np.zeros(len(values), dtype=bool)
    if values.dtype.kind != "U" or values.ndim != 1 or len(values) < 1024:
        return np.fromiter((v in members for v in values.tolist()), dtype=bool, count=len(values))
    # Members longer than the array's width are truncated here; the exact check below rejects those matches.
    wanted = np.array(list(members), dtype=values.dtype)
    keys = np.sort(_fingerprint(wanted))
    found = _fingerprint(values)
    hit = keys[np.minimum(np.searchsorted(keys, found), len(keys) - 1)] == found
    candidates = np.flatnonzero(hit)
    hit[candidates] = [v in members for v in values[candidates].tolist()]
    return hit


def _fingerprint(values: np.ndarray) -> np.ndarray:
    width = values.dtype.itemsize // 4  # numpy stores str as UTF-32 code points
    codes = np.ascontiguousarray(values).view(np.uint32).reshape(len(values), width).astype(np.uint64)
    # Integer overflow wraps modulo 2**64, which is what a multiplicative hash wants.
    return (codes * _HASH_WEIGHTS[:width]).sum(axis=1) if width <= len(_HASH_WEIGHTS) else _long_fingerprint(codes)


def _long_fingerprint(codes: np.ndarray) -> np.ndarray:
    weights = np.resize(_HASH_WEIGHTS, codes.shape[1]) * (np.arange(codes.shape[1], dtype=np.uint64) | np.uint64(1))
    return (codes * weights).sum(axis=1)


_HASH_WEIGHTS = np.random.default_rng(20240601).integers(1, 2**62, size=64, dtype=np.uint64) | np.uint64(1)


def _check_finite(uids: np.ndarray, X: np.ndarray, start: int | None) -> None:
    # Summing rows is cheaper than isfinite over the whole matrix and catches NaN and inf alike.
    bad = np.flatnonzero(~np.isfinite(X.sum(axis=1))) if X.size else np.zeros(0, dtype=np.int64)
    if len(bad):
        _raise_non_finite(uids, bad, start)


def _raise_non_finite(uids: np.ndarray, bad: np.ndarray, start: int | None) -> None:
    first = int(bad[0])
    where = f"row {start + first}" if start is not None else "gathered row"
    raise DataError(f"pool: {len(bad)} embeddings are NaN or infinite; first: uid {str(uids[first])!r} ({where})")


def _preview(values: np.ndarray, k: int = 5) -> str:
    shown = ", ".join(repr(str(v)) for v in values[:k])
    return shown + (f", … ({len(values) - k} more)" if len(values) > k else "")
