"""Read and write CLIP embeddings, validated, one shard at a time.

Layouts read:
- clip-retrieval inference output: ``img_emb/img_emb_N.npy`` (+ ``text_emb/text_emb_N.npy``) with
  ``metadata/metadata_N.parquet``; row i of the metadata is row i of the npy. Arrays are memory-mapped.
- a run folder (its ``embeddings/`` folder has the clip-retrieval layout);
- parquet with an embedding column (a fixed-size list or list of floats), given by ``embedding_col``;
- a single ``.npy`` file: rows get uids ``"0" .. "N-1"``.

Layout written (clip-retrieval's, so embedding-reader, clip-retrieval and autofaiss read it unchanged): float16,
L2-normalised rows, zero-padded shard numbers so that name order is numeric order, metadata with a ``uid`` column.

Every shard is checked before use: a readable 2-D float array, same dimension as the first shard, as many npy rows
as metadata rows, uids present and unique within the shard, no NaN/inf, no zero rows, values within float32's
range. Rows whose norm is off 1 are renormalised with a warning, or refused with ``require_normalized=True``.
Every problem is a DataError naming the file (and the column or row).
"""

from __future__ import annotations

import logging
import math
import os
import re
import tokenize
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from sanitize.errors import DataError, check_file, reading
from sanitize.io import atomic
from sanitize.io.manifest import PRESETS, canonical_table, list_shard_files, read_parquet, read_schema, uid_column

logger = logging.getLogger(__name__)

NORM_TOLERANCE = 1e-2  # float16 storage keeps norms within ~1e-3 of 1; more means the input was not normalised
_CHUNK = 16384  # rows checked at a time: 16384 x 768 float64 values are 100 MB
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_NPY_MAGIC = b"\x93NUMPY"
_NPY_HEADER_ERRORS = (SyntaxError, tokenize.TokenError)  # what numpy's header parser lets through for a garbled header


@dataclass
class EmbeddingShard:
    """One validated shard: ``uids[i]`` is the row of ``img_emb[i]`` (and of ``text_emb[i]`` when present)."""

    index: int
    source: str
    uids: np.ndarray
    img_emb: np.ndarray
    text_emb: np.ndarray | None = None
    metadata: pa.Table | None = None

    def __len__(self) -> int:
        return len(self.uids)


class EmbeddingSource:
    """Embedding shards from one of the supported layouts. Build with :func:`open_embeddings`."""

    def __init__(self, kind: str, parts: list[dict], *, require_normalized: bool = False,
                 embedding_col: str | None = None, id_col: str | None = None, path: str = ""):
        self.kind = kind
        self.path = path
        self._parts = parts
        self.require_normalized = require_normalized
        self.embedding_col = embedding_col
        self.id_col = id_col
        self.dim: int | None = None

    @property
    def n_shards(self) -> int:
        return len(self._parts)

    @property
    def parquet_files(self) -> list[Path]:
        """The parquet files of a parquet source (empty for other layouts)."""
        return [part["path"] for part in self._parts if "path" in part]

    def shards(self) -> Iterator[EmbeddingShard]:
        """Yield validated shards in order. Raises DataError naming the file and row of the first problem, and when
        no shard has a row."""
        rows = 0
        for index in range(len(self._parts)):
            shard = self.read_shard(index)
            rows += len(shard)
            yield shard
        if rows == 0:
            raise DataError(f"{self.path}: no embeddings (every shard has 0 rows)")

    def part_files(self, index: int) -> dict[str, Path]:
        """The files of part `index` by role: "img" (.npy), "meta" and "text" for clip-retrieval folders, "path"
        for a parquet file."""
        return {role: path for role, path in self._parts[index].items() if isinstance(path, Path)}

    def part_number(self, index: int) -> int:
        """The shard number in part `index`'s file name (a run's shard index), or `index` when it has none."""
        return self._parts[index].get("number", index)

    def part_rows(self, index: int) -> int:
        """Rows of part `index`, from its .npy header or parquet metadata (no embedding is read)."""
        part = self._parts[index]
        if "img" in part:
            with reading(part["img"], ".npy file", also=_NPY_HEADER_ERRORS):
                shape, dtype, _ = _npy_header(part["img"])
            _check_shape_and_dtype(part["img"], shape, dtype)
            return int(shape[0])
        with reading(part["path"], "parquet file"):
            return read_parquet_rows(part["path"])

    def read_uids(self, index: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """The uids of rows start..stop-1 of part `index` (object array of str), without reading embeddings."""
        part = self._parts[index]
        if self.kind == "npy":
            stop = self.part_rows(index) if stop is None else stop
            return np.arange(start, stop).astype(str).astype(object)
        if self.kind == "clip-retrieval":
            meta = read_parquet(part["meta"])
            canonical = canonical_table(meta, PRESETS["clip-retrieval"], path=part["meta"], shard=index)
            uids = np.asarray(canonical.column("uid").to_pylist(), dtype=object)
        else:
            uids = _parquet_uids(part["path"], self.id_col)
        return uids[start:stop]

    def read_shard(self, index: int, start: int = 0, stop: int | None = None) -> EmbeddingShard:
        """Part `index`, validated; `start`/`stop` read only those rows (a slice of a memory-mapped .npy)."""
        part = self._parts[index]
        if self.kind == "clip-retrieval":
            shard = _read_clip_retrieval_part(index, part)
        elif self.kind == "npy":
            x = load_npy(part["img"])
            shard = EmbeddingShard(index, str(part["img"]), np.arange(len(x)).astype(str), x)
        else:
            shard = _read_parquet_part(index, part["path"], self.embedding_col, self.id_col)
        if start or stop is not None:
            shard = _rows_of(shard, start, stop)
        if self.dim is None:
            self.dim = shard.img_emb.shape[1]
        elif shard.img_emb.shape[1] != self.dim:
            raise DataError(f"{shard.source}: embedding dimension {shard.img_emb.shape[1]} differs from "
                            f"{self.dim} in the first shard")
        shard.img_emb = checked_embeddings(shard.img_emb, shard.source, shard.uids, first_row=start,
                                           require_normalized=self.require_normalized)
        if shard.text_emb is not None:
            shard.text_emb = checked_embeddings(shard.text_emb, part.get("text", shard.source), shard.uids,
                                                first_row=start,
                                                require_normalized=self.require_normalized)
        return shard

    def load_all(self, dtype: type = np.float16) -> tuple[np.ndarray, np.ndarray]:
        """All uids and image embeddings concatenated (``dtype`` rows). For stages that need every row at once."""
        uids, xs = [], []
        for shard in self.shards():
            uids.append(shard.uids)
            xs.append(np.asarray(shard.img_emb, dtype=dtype))
        if not xs:
            raise DataError("no embeddings found")
        return np.concatenate(uids), np.concatenate(xs)


def open_embeddings(path: str | os.PathLike, *, embedding_col: str | None = None, id_col: str | None = None,
                    require_normalized: bool = False) -> EmbeddingSource:
    """Open embeddings at ``path`` (run folder, clip-retrieval folder, parquet file/glob/folder, or .npy)."""
    p = Path(path)
    if p.is_dir() and (p / "run.json").exists():
        if not (p / "embeddings" / "img_emb").is_dir():
            raise DataError(f"{p}: a run folder without embeddings/img_emb/; run `sanitize embed` first")
        p = p / "embeddings"
    if p.is_dir() and (p / "img_emb").is_dir():
        parts = _clip_retrieval_parts(p)
        return EmbeddingSource("clip-retrieval", parts, require_normalized=require_normalized, path=str(path))
    if p.suffix == ".npy":
        check_file(p, ".npy file")
        return EmbeddingSource("npy", [{"img": p}], require_normalized=require_normalized, path=str(path))
    files = list_shard_files(p)
    col = embedding_col or _guess_embedding_column(files[0])
    return EmbeddingSource("parquet", [{"path": f} for f in files], require_normalized=require_normalized,
                           embedding_col=col, id_col=id_col, path=str(path))


def checked_embeddings(x: np.ndarray, source: str, uids: np.ndarray, *, require_normalized: bool = False,
                       first_row: int = 0) -> np.ndarray:
    """Return ``x`` if every row is finite, non-zero and unit-norm; renormalise (with a warning) rows that are not.

    Raises DataError naming ``source``, the row and its uid for NaN/inf rows, values beyond float32's range and zero
    rows, and for non-unit rows when ``require_normalized``. Reads the array in chunks, so a memory-map stays mostly
    on disk. `first_row`: the file row of ``x[0]`` (``x`` a slice of the file), so messages name the file's row.
    """
    _check_shape_and_dtype(source, x.shape, x.dtype)
    off = 0
    for start in range(0, len(x), _CHUNK):
        block = np.asarray(x[start:start + _CHUNK], dtype=np.float64)
        finite = np.isfinite(block).all(axis=1)
        if not finite.all():
            row = start + int(np.flatnonzero(~finite)[0])
            raise DataError(f"{source}: row {first_row + row} (uid {uids[row]}) has a NaN or infinite value")
        huge = (np.abs(block) > _FLOAT32_MAX).any(axis=1)
        if huge.any():
            row = start + int(np.flatnonzero(huge)[0])
            raise DataError(f"{source}: row {first_row + row} (uid {uids[row]}) has a value beyond float32's range")
        norms = np.linalg.norm(block, axis=1)  # float64: squares of float32-range values cannot overflow
        if (norms == 0).any():
            row = start + int(np.flatnonzero(norms == 0)[0])
            raise DataError(f"{source}: row {first_row + row} (uid {uids[row]}) is all zeros")
        bad = np.abs(norms - 1) > NORM_TOLERANCE
        if bad.any() and require_normalized:
            row = start + int(np.flatnonzero(bad)[0])
            raise DataError(f"{source}: row {first_row + row} (uid {uids[row]}) has norm {norms[row - start]:.4f}, "
                            "not 1; drop --require-normalized to renormalise")
        off += int(bad.sum())
    if off:
        logger.warning("%s: %d of %d rows were not L2-normalised; renormalised", source, off, len(x))
        out = np.empty(x.shape, x.dtype)
        for start in range(0, len(x), _CHUNK):
            block = np.asarray(x[start:start + _CHUNK], dtype=np.float64)
            out[start:start + _CHUNK] = block / np.linalg.norm(block, axis=1, keepdims=True)
        return out
    return x


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm, as float32."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def write_embedding_shard(folder: str | os.PathLike, index: int, img_emb: np.ndarray,
                          text_emb: np.ndarray | None, metadata: pa.Table) -> None:
    """Write one shard in clip-retrieval layout: float16 unit rows, metadata (with ``uid``) written last.

    Each file is written atomically. Raises ValueError when the row counts disagree or ``uid`` is missing.
    """
    if "uid" not in metadata.column_names:
        raise ValueError("metadata must have a uid column")
    if len(img_emb) != metadata.num_rows or (text_emb is not None and len(text_emb) != metadata.num_rows):
        raise ValueError("embeddings and metadata must have the same number of rows")
    folder = Path(folder)
    atomic.write_npy(folder / "img_emb" / f"img_emb_{index:05d}.npy", np.asarray(img_emb, np.float16))
    if text_emb is not None:
        atomic.write_npy(folder / "text_emb" / f"text_emb_{index:05d}.npy", np.asarray(text_emb, np.float16))
    atomic.write_parquet(folder / "metadata" / f"metadata_{index:05d}.parquet", metadata)


def _shard_number(path: Path) -> int:
    m = re.search(r"(\d+)$", path.stem)
    return int(m.group(1)) if m else -1


def _clip_retrieval_parts(folder: Path) -> list[dict]:
    imgs = sorted((folder / "img_emb").glob("*.npy"), key=_shard_number)
    if not imgs:
        raise DataError(f"{folder / 'img_emb'}: no .npy files")
    metas = {_shard_number(f): f for f in (folder / "metadata").glob("*.parquet")}
    texts = {_shard_number(f): f for f in (folder / "text_emb").glob("*.npy")} if (folder / "text_emb").is_dir() \
        else {}
    parts = []
    for img in imgs:
        n = _shard_number(img)
        if n not in metas:
            raise DataError(f"{img}: no matching metadata/metadata_{n}.parquet")
        parts.append({"img": img, "meta": metas[n], "text": texts.get(n), "number": n})
    return parts


def _read_clip_retrieval_part(index: int, part: dict) -> EmbeddingShard:
    x = load_npy(part["img"])
    meta = read_parquet(part["meta"])
    if meta.num_rows != len(x):
        raise DataError(f"{part['img']}: {len(x)} rows but {part['meta']} has {meta.num_rows} rows")
    text = None
    if part.get("text") is not None:
        text = load_npy(part["text"])
        if len(text) != len(x):
            raise DataError(f"{part['text']}: {len(text)} rows but {part['img']} has {len(x)} rows")
    canonical = canonical_table(meta, PRESETS["clip-retrieval"], path=part["meta"], shard=index)
    uids = np.asarray(canonical.column("uid").to_pylist(), dtype=object)
    _check_unique(uids, part["meta"])
    return EmbeddingShard(index, str(part["img"]), uids, x, text, meta)


def _rows_of(shard: EmbeddingShard, start: int, stop: int | None) -> EmbeddingShard:
    """Rows start..stop-1 of a shard (views of memory-mapped arrays; nothing else is read)."""
    return EmbeddingShard(shard.index, shard.source, shard.uids[start:stop], shard.img_emb[start:stop],
                          None if shard.text_emb is None else shard.text_emb[start:stop],
                          None if shard.metadata is None else shard.metadata.slice(
                              start, (shard.metadata.num_rows if stop is None else stop) - start))


def read_parquet_rows(path: Path) -> int:
    """Rows of a parquet file, from its footer."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def _parquet_uids(path: Path, id_col: str | None) -> np.ndarray:
    names = read_schema(path).names
    id_name = id_col or next((c for c in ("uid", "key", "id") if c in names), None)
    if not id_name:
        return np.arange(read_parquet_rows(path)).astype(str).astype(object)
    table = read_parquet(path, columns=[id_name])
    return np.asarray(uid_column(table, id_name, path=path).to_pylist(), dtype=object)


def _read_parquet_part(index: int, path: Path, col: str, id_col: str | None) -> EmbeddingShard:
    names = read_schema(path).names
    if col not in names:
        raise DataError(f"{path}: embedding column {col!r} (--embedding-col) not found; columns are: "
                        f"{', '.join(names)}")
    id_name = id_col or next((c for c in ("uid", "key", "id") if c in names), None)
    if id_col and id_col not in names:
        raise DataError(f"{path}: id column {id_col!r} (--id-col) not found")
    table = read_parquet(path, columns=[c for c in (id_name, col) if c])
    x = fixed_size_list_to_numpy(table.column(col), source=f"{path}: column {col!r}")
    if id_name:
        uids = np.asarray(uid_column(table, id_name, path=path).to_pylist(), dtype=object)
        _check_unique(uids, path)
    else:
        uids = np.arange(len(x)).astype(str)
    return EmbeddingShard(index, str(path), uids, x)


def _check_unique(uids: np.ndarray, path: Path) -> None:
    """Raise DataError naming ``path``, a uid that repeats within the shard and the rows it is on."""
    if len(set(uids.tolist())) == len(uids):
        return
    first: dict[str, int] = {}
    for row, uid in enumerate(uids.tolist()):
        if uid in first:
            raise DataError(f"{path}: uid {uid!r} is on rows {first[uid]} and {row}; uids must be unique")
        first[uid] = row


def fixed_size_list_to_numpy(column: pa.ChunkedArray, *, source: str) -> np.ndarray:
    """A list<float> or fixed_size_list<float> column as a 2-D array. Raises DataError for ragged or null rows."""
    arr = column.combine_chunks()
    if arr.null_count:
        row = int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(f"{source}: row {row} has no embedding")
    if not _is_float_list(arr.type):
        raise DataError(f"{source}: type {arr.type} is not a list of floats")
    if pa.types.is_fixed_size_list(arr.type):
        width = arr.type.list_size
        flat = arr.flatten().to_numpy(zero_copy_only=False)
    elif pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
        lengths = np.diff(arr.offsets.to_numpy())
        if len(lengths) and (lengths != lengths[0]).any():
            row = int(np.flatnonzero(lengths != lengths[0])[0])
            raise DataError(f"{source}: row {row} has {lengths[row]} values, row 0 has {lengths[0]}")
        width = int(lengths[0]) if len(lengths) else 0
        flat = arr.flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(len(arr), width)


def _is_float_list(t: pa.DataType) -> bool:
    lists = pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t)
    return lists and pa.types.is_floating(t.value_type)


def _guess_embedding_column(path: Path) -> str:
    for f in read_schema(path):
        if _is_float_list(f.type):
            return f.name
    raise DataError(f"{path}: no embedding column found (a list of floats); pass --embedding-col")


def load_npy(path: Path) -> np.ndarray:
    """Memory-map the 2-D float array of a .npy file, after checking its header against the file's size."""
    with reading(path, ".npy file", also=_NPY_HEADER_ERRORS):
        shape, dtype, data_start = _npy_header(path)
        _check_shape_and_dtype(path, shape, dtype)
        needed = data_start + math.prod(shape) * dtype.itemsize
        size = path.stat().st_size
        if size < needed:
            raise DataError(f"{path}: truncated: its header says shape {shape} {dtype} ({needed} bytes), "
                            f"the file has {size} bytes")
        return np.load(path, mmap_mode="r", allow_pickle=False)


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, offset of the data) from a .npy file's header, without reading its data."""
    with open(path, "rb") as f:
        if f.read(len(_NPY_MAGIC)) != _NPY_MAGIC:
            raise DataError(f"{path}: not a .npy file (it does not start with the .npy magic bytes)")
        f.seek(0)
        major, _ = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(f)
        return shape, dtype, f.tell()


def _check_shape_and_dtype(source: str | Path, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Raise DataError naming ``source`` unless ``shape`` is 2-D with columns and ``dtype`` is a float type."""
    if dtype.kind != "f":
        raise DataError(f"{source}: embeddings must be floats (float16, float32 or float64), got dtype {dtype}")
    if len(shape) != 2:
        raise DataError(f"{source}: embeddings must be a 2-D array (rows × dim), got shape {shape}")
    if shape[1] == 0:
        raise DataError(f"{source}: embeddings have 0 columns (shape {shape})")
