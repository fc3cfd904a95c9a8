"""Embedding rows kept in shards on disk, read one shard at a time, and compact files of selected rows.

`ShardedRows` is what the out-of-core dedup (`sanitize.dedup.sharded`) reads: a number of shards whose sizes are
known from metadata, each read whole as a (rows, d) float array, with optional per-row side values (content hashes,
the keep-by column). Row ids are global: a shard's offset plus the row's position in it. Implementations are small
picklable objects (paths, not arrays), so engine tasks on other processes or machines can read the same files.

`NodeRows` is a file of the rows a later step needs by id (the rows of the duplicate graph, a recall sample): one
streaming pass over the shards writes them in id order; reads map the file for the duration of one call only, so
the rows read do not stay in the process's memory.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from sanitize.dedup.vectors import row_norms
from sanitize.errors import DataError
from sanitize.io import atomic


class ShardedRows:
    """Rows in shards. Subclasses implement `shard_sizes` and `read`; side values default to none."""

    def shard_sizes(self) -> list[int]:
        """Rows per shard, from metadata (no embedding is read)."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """A short string that changes when the rows or side values change (files: paths, sizes, times)."""
        raise NotImplementedError

    def read(self, shard: int) -> np.ndarray:
        """Shard `shard`'s rows as stored: (rows, d) float array."""
        raise NotImplementedError

    def name(self, shard: int) -> str:
        """How messages name shard `shard` (a file, for file sources)."""
        return f"shard {shard}"

    def hashes(self, shard: int) -> pa.Array | None:
        """Shard `shard`'s content hashes (equal hashes = exact duplicates; nulls never match), or None."""
        return None

    def keep_values(self, shard: int) -> np.ndarray | None:
        """Shard `shard`'s keep-by values (numbers, one per row), or None."""
        return None

    def uids(self, shard: int) -> pa.Array | None:
        """Shard `shard`'s uids (checked to be unique across shards), or None when rows have only their ids."""
        return None


class ArrayShards(ShardedRows):
    """An (n, d) array or memmap cut into shards of `shard_rows` rows, with optional whole-array side values.

    For tests and in-process use: it pickles its arrays, so prefer `NpyShards` for engines with other processes.
    """

    def __init__(self, x: np.ndarray, shard_rows: int, *, hashes: Sequence | pa.Array | None = None,
                 keep_values: np.ndarray | None = None, uids: Sequence[str] | None = None) -> None:
        self.x = x
        self.shard_rows = int(shard_rows)
        self._hashes = None if hashes is None else (
            hashes if isinstance(hashes, (pa.Array, pa.ChunkedArray)) else pa.array(list(hashes)))
        self._keep_values = None if keep_values is None else np.asarray(keep_values)
        self._uids = None if uids is None else pa.array(list(uids), pa.string())
        for name, side in (("hashes", self._hashes), ("keep_values", self._keep_values), ("uids", self._uids)):
            if side is not None and len(side) != len(x):
                raise DataError(f"{name}: {len(side)} entries for {len(x)} embedding rows")

    def shard_sizes(self) -> list[int]:
        n = int(self.x.shape[0])
        return [min(self.shard_rows, n - start) for start in range(0, n, self.shard_rows)] or [0]

    def fingerprint(self) -> str:
        h = hashlib.sha256(np.ascontiguousarray(self.x).tobytes())
        for side in (self._hashes, self._uids):
            h.update(repr(None if side is None else side.to_pylist()).encode())
        h.update(b"" if self._keep_values is None else np.ascontiguousarray(self._keep_values).tobytes())
        return h.hexdigest()

    def read(self, shard: int) -> np.ndarray:
        start = shard * self.shard_rows
        return np.asarray(self.x[start : start + self.shard_rows])

    def hashes(self, shard: int) -> pa.Array | None:
        if self._hashes is None:
            return None
        start = shard * self.shard_rows
        return self._hashes.slice(start, min(self.shard_rows, len(self._hashes) - start))

    def keep_values(self, shard: int) -> np.ndarray | None:
        if self._keep_values is None:
            return None
        start = shard * self.shard_rows
        return self._keep_values[start : start + self.shard_rows]

    def uids(self, shard: int) -> pa.Array | None:
        if self._uids is None:
            return None
        start = shard * self.shard_rows
        return self._uids.slice(start, min(self.shard_rows, len(self._uids) - start))


class NpyShards(ShardedRows):
    """One `.npy` file of (n, d) floats read as shards of `shard_rows` rows; pickles as its path.

    Each read maps the file, copies the shard and unmaps it, so no page of the file stays in this process.
    """

    def __init__(self, path: str | os.PathLike, shard_rows: int) -> None:
        self.path = str(path)
        self.shard_rows = int(shard_rows)
        self._n = int(np.load(self.path, mmap_mode="r").shape[0])

    def shard_sizes(self) -> list[int]:
        return [min(self.shard_rows, self._n - start) for start in range(0, self._n, self.shard_rows)] or [0]

    def fingerprint(self) -> str:
        return file_fingerprint([self.path])

    def name(self, shard: int) -> str:
        return f"{self.path} (rows from {shard * self.shard_rows})"

    def read(self, shard: int) -> np.ndarray:
        x = np.load(self.path, mmap_mode="r")
        start = shard * self.shard_rows
        block = np.array(x[start : start + self.shard_rows])
        del x
        return block


def file_fingerprint(paths: Sequence[str | os.PathLike]) -> str:
    """sha256 of each file's path, size and modification time: a changed or replaced file changes it."""
    h = hashlib.sha256()
    for path in paths:
        st = os.stat(path)
        h.update(f"{os.fspath(path)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def unit_rows(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(float32 unit rows, float32 inverse norms) of raw rows, with the same bits `UnitRows` gives them.

    The caller has checked that every row is finite and nonzero.
    """
    block = np.asarray(raw, dtype=np.float32)
    inv = (1.0 / row_norms(block)).astype(np.float32)
    return np.ascontiguousarray(block * inv[:, None]), inv


def where(rows: ShardedRows, offsets: np.ndarray, row: int) -> str:
    """Global row `row` as a message names it: its shard's name and its row in that shard."""
    shard = int(np.searchsorted(offsets, row, side="right") - 1)
    return f"{rows.name(shard)} row {row - int(offsets[shard])}"


def shard_offsets(sizes: Sequence[int]) -> np.ndarray:
    """(shards + 1,) int64: global id of each shard's first row, then the total."""
    return np.concatenate([[0], np.cumsum(np.asarray(sizes, dtype=np.int64))]).astype(np.int64)


class NodeRows:
    """Selected rows (`ids`, sorted global int64 ids) kept in `folder`: raw rows and their inverse norms.

    Build with `write_node_rows`. `unit(local)` returns the float32 unit rows of positions `local` in `ids`
    (bit-equal to what the in-memory path computes); `raw(local)` the stored rows; `local_of(ids)` positions.
    """

    def __init__(self, folder: str | os.PathLike, ids: np.ndarray) -> None:
        self.folder = Path(folder)
        self.ids = np.asarray(ids, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.ids)

    def local_of(self, ids: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.ids, np.asarray(ids, dtype=np.int64))

    def raw(self, local: np.ndarray) -> np.ndarray:
        x = np.load(self.folder / "rows.npy", mmap_mode="r")
        out = np.array(x[np.asarray(local, dtype=np.int64)])
        del x
        return out

    def unit(self, local: np.ndarray) -> np.ndarray:
        local = np.asarray(local, dtype=np.int64)
        inv = np.load(self.folder / "inv_norms.npy", mmap_mode="r")
        scale = np.array(inv[local])
        del inv
        return np.ascontiguousarray(np.asarray(self.raw(local), dtype=np.float32) * scale[:, None])

    def __getitem__(self, local: np.ndarray) -> np.ndarray:
        """Unit rows by position, so a NodeRows can stand in for the row matrix of `decide_groups`."""
        return self.unit(local)

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.ids), int(np.load(self.folder / "rows.npy", mmap_mode="r").shape[1]))


def write_node_rows(rows: ShardedRows, ids: np.ndarray, folder: str | os.PathLike,
                    task_map: Callable | None = None) -> NodeRows:
    """Copy the rows `ids` (sorted, unique global ids) into `folder`, one task per shard that holds any.

    Tasks write disjoint ranges of preallocated files; a `.done` file is written last, and a folder with one
    is reused as it is (same ids: the caller keys the folder by what chose them).
    """
    from sanitize.dedup.parallel import thread_map

    folder = Path(folder)
    ids = np.asarray(ids, dtype=np.int64)
    if (folder / ".done").exists():
        return NodeRows(folder, ids)
    folder.mkdir(parents=True, exist_ok=True)
    offsets = shard_offsets(rows.shard_sizes())
    first = rows.read(0) if len(offsets) > 1 and offsets[1] > 0 else None
    dim, dtype = _shape_of(rows, offsets, first)
    np.lib.format.open_memmap(folder / "rows.npy", mode="w+", dtype=dtype, shape=(len(ids), dim)).flush()
    np.lib.format.open_memmap(folder / "inv_norms.npy", mode="w+", dtype=np.float32, shape=(len(ids),)).flush()
    bounds = np.searchsorted(ids, offsets)
    tasks = [(s, int(bounds[s]), int(bounds[s + 1])) for s in range(len(offsets) - 1) if bounds[s + 1] > bounds[s]]
    (task_map or thread_map)(_copy_node_rows, tasks, (rows, str(folder), ids, offsets))
    atomic.write_bytes(folder / ".done", b"")
    return NodeRows(folder, ids)


def _shape_of(rows: ShardedRows, offsets: np.ndarray, first: np.ndarray | None) -> tuple[int, np.dtype]:
    for s in range(len(offsets) - 1):
        if offsets[s + 1] > offsets[s]:
            block = first if s == 0 and first is not None else rows.read(s)
            return int(block.shape[1]), block.dtype
    raise DataError("no embeddings to deduplicate")


def _copy_node_rows(rows: ShardedRows, folder: str, ids: np.ndarray, offsets: np.ndarray,
                    task: tuple[int, int, int]) -> int:
    """One task of `write_node_rows`: shard `s`'s rows ids[lo:hi] into positions lo:hi of the files."""
    s, lo, hi = task
    raw = rows.read(s)
    local = ids[lo:hi] - offsets[s]
    block = raw[local]
    _, inv = unit_rows(block)
    out = np.load(Path(folder) / "rows.npy", mmap_mode="r+")
    out[lo:hi] = block
    out.flush()
    del out
    inv_out = np.load(Path(folder) / "inv_norms.npy", mmap_mode="r+")
    inv_out[lo:hi] = inv
    inv_out.flush()
    del inv_out
    return hi - lo
