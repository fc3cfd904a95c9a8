"""Phases 1 and 2 of the out-of-core dedup: check and hash every row shard by shard, then find exact copies.

The scan task of a shard checks its rows (finite, nonzero, near unit length) and writes three 64-bit hashes per
row, split by hash partition: of the row's bytes, of its content hash (e.g. the image's sha256) and of its uid.
The exact task of a partition reads that partition from every shard and lists the rows whose hash equals an
earlier row's. The driver then checks those few candidates against the rows themselves, so a hash collision never
makes two different rows copies, and closes the relation transitively (`component_roots`). Uids that repeat are
an error. Nothing here holds more than one shard's rows or one partition's hashes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa

from sanitize.dedup.components import compact_ids, component_roots
from sanitize.dedup.exact import row_hashes
from sanitize.dedup.parallel import TaskMap
from sanitize.dedup.shards import ShardedRows, where, write_node_rows
from sanitize.dedup.vectors import NORM_TOLERANCE, row_norms
from sanitize.errors import DataError
from sanitize.io import atomic

logger = logging.getLogger(__name__)

EXACT_PARTITION_SHARDS = 64  # one hash partition per this many shards
KINDS = ("row", "col", "uid")  # hashes of the row's bytes, of its content hash, of its uid


def scan_shards(rows: ShardedRows, folder: Path, offsets: np.ndarray, require_normalized: bool, tasks: TaskMap
                ) -> int:
    """Phase 1: check every row of every shard (one task per shard not yet scanned into `folder`) and write its
    hashes split by partition. Returns the dimension; raises DataError naming the first bad row (global id)."""
    n_shards = len(offsets) - 1
    n_parts = _n_partitions(n_shards)
    folder.mkdir(parents=True, exist_ok=True)
    todo = [s for s in range(n_shards) if not (folder / f"{s:06d}.done").exists()]
    tasks(_scan_shard, todo, (rows, str(folder), offsets, n_parts))
    found = [json.loads((folder / f"{s:06d}.done").read_text()) for s in range(n_shards)]
    dims = [f["dim"] for f in found if f["rows"]]
    for s, f in enumerate(found):
        if f["rows"] and f["dim"] != dims[0]:
            raise DataError(f"{rows.name(s)}: embedding dimension {f['dim']} differs from {dims[0]} in the first shard")
    worst = max(found, key=lambda f: f["worst_deviation"])
    if worst["worst_deviation"] > NORM_TOLERANCE:
        if require_normalized:
            raise DataError(f"rows are not unit length ({where(rows, offsets, worst['worst_row'])} has norm "
                            f"{worst['worst_norm']:.4g}); normalise them or allow normalisation")
        logger.warning("rows are not unit length (%s has norm %.4g); normalising them for the search",
                       where(rows, offsets, worst["worst_row"]), worst["worst_norm"])
    return dims[0]


def _n_partitions(n_shards: int) -> int:
    return max(1, math.ceil(n_shards / EXACT_PARTITION_SHARDS))


def _scan_shard(rows: ShardedRows, folder: str, offsets: np.ndarray, n_parts: int, s: int) -> None:
    """One scan task: check shard `s`, hash its rows (and content hashes), write them by partition."""
    raw = rows.read(s)
    start = int(offsets[s])
    if raw.ndim != 2 or len(raw) != offsets[s + 1] - start:
        raise DataError(f"embeddings: shard {s} holds {raw.shape} rows, expected {offsets[s + 1] - start}")
    if not np.issubdtype(raw.dtype, np.floating):
        raise DataError(f"embeddings: expected float embeddings, got dtype {raw.dtype}")
    block = np.asarray(raw, dtype=np.float32)
    finite = np.isfinite(block).all(axis=1)
    if not finite.all():
        raise DataError(f"{rows.name(s)}: row {int(np.argmin(finite))} has NaN or infinite values")
    norms = row_norms(block)
    if len(norms) and not norms.all():
        raise DataError(f"{rows.name(s)}: row {int(np.argmin(norms))} is all zeros (an empty or failed embedding)")
    ids = np.arange(start, start + len(raw), dtype=np.int64)
    out: dict[str, np.ndarray] = {}
    _split(out, "row", row_hashes(raw) if len(raw) else np.empty(0, np.uint64), ids, n_parts)
    hashes = rows.hashes(s)
    if hashes is not None:
        if len(hashes) != len(raw):
            raise DataError(f"hashes: {len(hashes)} entries for the {len(raw)} rows of shard {s}")
        valid = ~np.asarray(hashes.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        _split(out, "col", _value_hashes(hashes)[valid], ids[valid], n_parts)
    uids = rows.uids(s)
    if uids is not None:
        _split(out, "uid", _value_hashes(uids), ids, n_parts)
    atomic.write_npz(Path(folder) / f"{s:06d}.npz", out, durable=False)
    dev = np.abs(norms - 1.0)
    i = int(np.argmax(dev)) if len(dev) else 0
    atomic.write_json(Path(folder) / f"{s:06d}.done", {
        "rows": len(raw), "dim": int(raw.shape[1]), "worst_deviation": float(dev[i]) if len(dev) else 0.0,
        "worst_row": start + i, "worst_norm": float(norms[i]) if len(norms) else 1.0})


def _split(out: dict, kind: str, h: np.ndarray, ids: np.ndarray, n_parts: int) -> None:
    part = (h % np.uint64(n_parts)).astype(np.int64)
    for p in range(n_parts):
        mine = part == p
        out[f"{kind}_hash_{p}"] = h[mine]
        out[f"{kind}_id_{p}"] = ids[mine]


def _value_hashes(values: pa.Array) -> np.ndarray:
    """A 64-bit hash of each value's text (blake2b): equal values, equal hashes, on every machine."""
    texts = values.cast(pa.string()).to_pylist() if not pa.types.is_binary(values.type) else values.to_pylist()
    return np.array([int.from_bytes(hashlib.blake2b(v.encode() if isinstance(v, str) else (v or b""),
                                                    digest_size=8).digest(), "little") for v in texts],
                    dtype=np.uint64)


def exact_copies(rows: ShardedRows, scan_folder: Path, node_folder: Path, offsets: np.ndarray, tasks: TaskMap
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Phase 2: exact copies, as (members, their representatives) sorted by member; every other row is its own.

    One task per hash partition lists rows whose hash equals an earlier row's; the candidates are checked byte by
    byte (from a node file of just those rows, in `node_folder`) or value by value. Raises DataError when two
    rows share a uid (`rows.uids`).
    """
    n_shards = len(offsets) - 1
    found = tasks(_exact_partition, list(range(_n_partitions(n_shards))), (str(scan_folder), n_shards))
    cand = {kind: (np.concatenate([f[kind][0] for f in found]), np.concatenate([f[kind][1] for f in found]))
            for kind in KINDS}
    _check_unique_uids(rows, offsets, *cand.pop("uid"))
    return _verified_exact(rows, node_folder, offsets, cand, tasks)


def _exact_partition(folder: str, n_shards: int, p: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """One exact task: in partition `p`, (row, first row with the same hash) for rows and for content hashes."""
    out = {}
    for kind in KINDS:
        hs, ids = [], []
        for s in range(n_shards):
            with np.load(Path(folder) / f"{s:06d}.npz") as f:
                if f"{kind}_hash_{p}" in f:
                    hs.append(f[f"{kind}_hash_{p}"])
                    ids.append(f[f"{kind}_id_{p}"])
        h = np.concatenate(hs) if hs else np.empty(0, np.uint64)
        i = np.concatenate(ids) if ids else np.empty(0, np.int64)
        order = np.lexsort((i, h))
        h, i = h[order], i[order]
        same = np.zeros(len(h), dtype=bool)
        same[1:] = h[1:] == h[:-1]
        run_start = np.maximum.accumulate(np.where(same, 0, np.arange(len(h))))
        out[kind] = (i[same], i[run_start[same]])
    return out


def _verified_exact(rows: ShardedRows, node_folder: Path, offsets: np.ndarray, cand: dict, tasks: TaskMap
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Exact-copy relation from hash candidates checked against the rows (or values); closed transitively."""
    pairs_a, pairs_b = [], []
    for kind, (member, first) in cand.items():
        if not len(member):
            continue
        ids = np.unique(np.concatenate([member, first]))
        if kind == "row":
            node_rows = write_node_rows(rows, ids, node_folder, tasks)
            raw_m, raw_f = node_rows.raw(node_rows.local_of(member)), node_rows.raw(node_rows.local_of(first))
            equal = (raw_m.view(np.uint8) == raw_f.view(np.uint8)).reshape(len(member), -1).all(axis=1)
        else:
            values = _values_at(rows, ids, offsets, rows.hashes)
            equal = values[np.searchsorted(ids, member)] == values[np.searchsorted(ids, first)]
        if not equal.all():
            # A 64-bit collision: compare each such row with every earlier row of the same hash.
            for m in member[~equal]:
                same = np.concatenate([first[member == m], member[(first == first[member == m][0]) & (member < m)]])
                for other in np.sort(same):
                    if _rows_equal(rows, kind, offsets, m, other):
                        pairs_a.append(np.array([other]))
                        pairs_b.append(np.array([m]))
                        break
        pairs_a.append(first[equal])
        pairs_b.append(member[equal])
    if not pairs_a:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    nodes, la, lb = compact_ids(np.concatenate(pairs_a), np.concatenate(pairs_b))
    rep = nodes[component_roots(len(nodes), la, lb)]
    copies = rep != nodes
    return nodes[copies], rep[copies]


def _rows_equal(rows: ShardedRows, kind: str, offsets: np.ndarray, a: int, b: int) -> bool:
    """Whether rows a and b are byte-equal (kind "row") or have equal content hashes (kind "col")."""
    ids = np.array(sorted((a, b)), dtype=np.int64)
    if kind == "col":
        values = _values_at(rows, ids, offsets, rows.hashes)
        return bool(values[0] == values[1])
    shard = np.searchsorted(offsets, ids, side="right") - 1
    raws = [rows.read(int(s))[i - offsets[s]] for s, i in zip(shard, ids, strict=True)]
    return raws[0].tobytes() == raws[1].tobytes()


def _values_at(rows: ShardedRows, ids: np.ndarray, offsets: np.ndarray, column: Callable) -> np.ndarray:
    """`column(shard)` values (content hashes, uids) of rows `ids` (sorted), as an object array."""
    out = []
    shard_of = np.searchsorted(offsets, ids, side="right") - 1
    for s in np.unique(shard_of):
        values = column(int(s))
        local = ids[shard_of == s] - offsets[s]
        out.extend(values.take(pa.array(local)).to_pylist())
    return np.array(out, dtype=object)


def _check_unique_uids(rows: ShardedRows, offsets: np.ndarray, member: np.ndarray, first: np.ndarray) -> None:
    """Raise DataError naming a uid that is on two rows (candidates: rows whose uid hash equals an earlier one's)."""
    if not len(member):
        return
    ids = np.unique(np.concatenate([member, first]))
    values = _values_at(rows, ids, offsets, rows.uids)
    same = values[np.searchsorted(ids, member)] == values[np.searchsorted(ids, first)]
    if same.any():
        i = int(np.argmax(same))
        raise DataError(f"uid {values[np.searchsorted(ids, member[i])]!r} is on {where(rows, offsets, first[i])} and "
                        f"{where(rows, offsets, member[i])}; deduplication needs one uid per row")
