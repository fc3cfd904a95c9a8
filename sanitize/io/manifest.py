"""Read image-text manifests in the layouts the field's tools write, one shard at a time.

A manifest is a parquet file, a glob of parquet files, or a folder of shards. A *preset* says which columns hold
the caption, the image, the url and the identity for one tool's layout:

- ``img2dataset``: ``NNNNN.parquet`` (+ ``NNNNN.tar`` webdataset shards): key, url, caption, status, error_message,
  width, height, sha256. Only ``status == "success"`` rows have an image (in the tar, member ``<key>.jpg``).
- ``laion``: LAION metadata: URL, TEXT, WIDTH, HEIGHT, similarity, punsafe, pwatermark, SAMPLE_ID, hash.
- ``datacomp``: uid, url, text, clip scores.
- ``clip-retrieval``: an inference output folder; manifests are ``metadata/metadata_N.parquet``.
- ``generic``: explicit ``--id-col --caption-col --image-col --url-col``.

Every shard is given to the caller as a table with canonical columns ``uid, caption, image, url, key, shard, row``.
``uid`` is a string, unique in the dataset and stable across reruns and resharding; ``shard`` and ``row`` are
positional and only for joins inside one run. The input files are only ever read.
"""

from __future__ import annotations

import glob as globlib
import hashlib
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sanitize.errors import ConfigError, DataError, first_line, reading

logger = logging.getLogger(__name__)

UID_CHECK_MEMORY = 256 << 20  # bytes of uid hashes `Manifest.check_unique_uids` holds at once (~32M rows)
CANONICAL_SCHEMA = pa.schema(
    [
        ("uid", pa.string()),
        ("caption", pa.string()),
        ("image", pa.string()),
        ("url", pa.string()),
        ("key", pa.string()),
        ("shard", pa.int32()),
        ("row", pa.int64()),
    ]
)


@dataclass(frozen=True)
class ColumnMap:
    """Which input column plays which role. ``id_cols`` are tried in order; none present → hash of url+caption.

    ``success_col``/``success_value`` mark rows that have an image (img2dataset's ``status == "success"``).
    """

    id_cols: tuple[str, ...] = ()
    caption: str | None = None
    image: str | None = None
    url: str | None = None
    key: str | None = None
    embedding: str | None = None
    success_col: str | None = None
    success_value: str | None = None


PRESETS: dict[str, ColumnMap] = {
    # img2dataset's `key` is positional (shard + row): it changes when the crawl is resharded, so it is kept only
    # for finding the image in the tar; identity is a saved `uid` column (--save_additional_columns), else
    # url + caption.
    "img2dataset": ColumnMap(
        id_cols=("uid",), caption="caption", url="url", key="key", success_col="status", success_value="success"
    ),
    "laion": ColumnMap(id_cols=("SAMPLE_ID", "hash"), caption="TEXT", url="URL"),
    "datacomp": ColumnMap(id_cols=("uid",), caption="text", url="url"),
    "clip-retrieval": ColumnMap(id_cols=("uid",), caption="caption", image="image_path", url="url"),
    "generic": ColumnMap(),
}

_GENERIC_GUESSES = {
    "id_cols": ("uid", "id", "key", "SAMPLE_ID", "sha256"),
    "caption": ("caption", "text", "TEXT"),
    "image": ("image", "image_path", "path", "filepath"),
    "url": ("url", "URL"),
}


@dataclass(frozen=True)
class ManifestSpec:
    """Everything needed to reopen the same manifest later (stored in run.json)."""

    path: str
    preset: str
    columns: ColumnMap
    image_root: str | None = None

    def to_dict(self) -> dict:
        return {"path": self.path, "preset": self.preset, "image_root": self.image_root,
                "columns": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self.columns).items()}}

    @classmethod
    def from_dict(cls, d: dict) -> ManifestSpec:
        cols = dict(d["columns"])
        cols["id_cols"] = tuple(cols.get("id_cols") or ())
        return cls(path=d["path"], preset=d["preset"], columns=ColumnMap(**cols), image_root=d.get("image_root"))


@dataclass
class ManifestShard:
    """One shard of a manifest: ``table`` has the canonical columns, ``path`` is the input file it came from."""

    index: int
    path: Path
    table: pa.Table
    tar_path: Path | None = None
    extra: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.stem

    def __len__(self) -> int:
        return self.table.num_rows


class Manifest:
    """A manifest opened with a preset. Cheap to build; shards are read lazily, one at a time.

    Build with :func:`open_manifest`. Iterate with :meth:`shards`; check identity with :meth:`check_unique_uids`.
    """

    def __init__(self, spec: ManifestSpec, files: list[Path]):
        self.spec = spec
        self.files = files

    @property
    def columns(self) -> ColumnMap:
        return self.spec.columns

    @property
    def image_root(self) -> Path | None:
        if self.spec.image_root:
            return Path(self.spec.image_root)
        # Relative image paths in a single-file or folder manifest are relative to the manifest's folder.
        first = self.files[0]
        return first.parent

    def __len__(self) -> int:
        return sum(count_rows(f) for f in self.files)

    def shards(self, start: int = 0) -> Iterator[ManifestShard]:
        """Yield shards in a fixed order (sorted file names), reading one file at a time."""
        for index in range(start, len(self.files)):
            yield self.read_shard(index)

    def read_shard(self, index: int) -> ManifestShard:
        """Read shard ``index`` into canonical columns. Raises DataError naming the file on any problem."""
        path = self.files[index]
        raw = read_parquet(path, columns=self._needed_columns(path))
        table = canonical_table(raw, self.columns, path=path, shard=index)
        tar = path.with_suffix(".tar")
        return ManifestShard(index=index, path=path, table=table, tar_path=tar if tar.exists() else None)

    def read_raw_shard(self, index: int) -> pa.Table:
        """The shard with the input's own columns, as written by its tool (for export)."""
        return read_parquet(self.files[index])

    def _needed_columns(self, path: Path) -> list[str]:
        names = set(read_schema(path).names)
        c = self.columns
        wanted = [*c.id_cols, c.caption, c.image, c.url, c.key, c.success_col]
        if "error_message" in names:
            wanted.append("error_message")
        missing = [
            (flag, col)
            for flag, col in (("--caption-col", c.caption), ("--image-col", c.image), ("--url-col", c.url),
                              ("--key-col", c.key), ("status column", c.success_col))
            if col and col not in names
        ]
        if missing:
            flag, col = missing[0]
            raise DataError(f"{path}: column {col!r} ({flag}, preset {self.spec.preset}) not found; "
                            f"columns are: {', '.join(sorted(names))}")
        if c.id_cols and not any(col in names for col in c.id_cols) and self.spec.preset == "generic":
            raise DataError(f"{path}: id column {c.id_cols[0]!r} (--id-col) not found; "
                            f"columns are: {', '.join(sorted(names))}")
        return [w for w in dict.fromkeys(wanted) if w and w in names]

    def check_unique_uids(self, max_examples: int = 5, *, memory: int = UID_CHECK_MEMORY) -> int:
        """Stream all shards; raise DataError with examples when a uid appears twice. Returns the row count.

        Memory: a 64-bit hash per row, at most `memory` bytes of them at once: beyond that (about 32M rows at the
        default) the hashes are spilled to temporary files by hash partition and each partition is checked on its
        own, so the check holds one shard and one partition, never every row. One more pass only when duplicates
        exist.
        """
        import polars as pl  # here, not at the top: reading a config or --help must not pay for it

        rows = sum(_parquet_rows(f) for f in self.files)
        n_parts = max(1, -(-8 * rows // memory))

        def hashes() -> Iterator[np.ndarray]:
            for shard in self.shards():
                yield pl.Series(shard.table.column("uid").to_numpy(zero_copy_only=False)).hash(seed=0).to_numpy()

        total, dup_hashes = _duplicate_hashes(hashes(), n_parts)
        if not dup_hashes:
            return total
        examples: dict[str, list[str]] = {}
        for shard in self.shards():
            uids = shard.table.column("uid").to_pylist()
            h = pl.Series(uids).hash(seed=0).to_numpy()
            for row in np.flatnonzero(np.isin(h, np.fromiter(dup_hashes, np.uint64))):
                places = examples.setdefault(uids[row], [])
                places.append(f"{shard.path.name} row {row}")
        real = {u: p for u, p in examples.items() if len(p) > 1}
        if not real:  # 64-bit hash collision between different uids: astronomically rare, but not an error
            return total
        shown = "; ".join(f"{u!r} ({', '.join(p[:3])})" for u, p in list(real.items())[:max_examples])
        raise DataError(f"{self.spec.path}: {len(real)} duplicate uid(s), e.g. {shown}; "
                        "give a unique --id-col or deduplicate the manifest first")

    def fingerprint(self) -> str:
        """A digest of the input files' names, sizes and modification times (cheap; no content read)."""
        h = hashlib.sha256()
        for f in self.files:
            st = f.stat()
            h.update(f"{f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()[:16]


def open_manifest(
    path: str | os.PathLike,
    *,
    preset: str = "auto",
    id_col: str | None = None,
    caption_col: str | None = None,
    image_col: str | None = None,
    url_col: str | None = None,
    embedding_col: str | None = None,
    image_root: str | os.PathLike | None = None,
) -> Manifest:
    """Open a manifest: a parquet file, a glob, a folder of shards, or a clip-retrieval output folder.

    ``preset="auto"`` recognises the layout from the folder structure and the first file's columns. Explicit
    ``*_col`` options override the preset's columns. Raises DataError when the path matches no parquet file or a
    file is not parquet; ConfigError for an unknown preset.
    """
    if preset != "auto" and preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of: auto, {', '.join(PRESETS)}")
    files = list_shard_files(path)
    if preset == "auto":
        preset = detect_preset(path, files[0])
    columns = PRESETS[preset]
    if preset == "generic":
        columns = _guess_generic(files[0])
    overrides = {k: v for k, v in {"caption": caption_col, "image": image_col, "url": url_col,
                                   "embedding": embedding_col}.items() if v}
    if id_col:
        overrides["id_cols"] = (id_col,)
    columns = replace(columns, **overrides)
    if preset == "generic" and id_col is None and not columns.id_cols and not (columns.url or columns.caption):
        raise DataError(f"{files[0]}: cannot tell which column identifies a row; pass --id-col "
                        f"(columns are: {', '.join(read_schema(files[0]).names)})")
    spec = ManifestSpec(path=str(path), preset=preset, columns=columns,
                        image_root=str(image_root) if image_root else None)
    manifest = Manifest(spec, files)
    if len(manifest) == 0:
        raise DataError(f"{path}: the manifest has no rows")
    return manifest


def list_shard_files(path: str | os.PathLike) -> list[Path]:
    """Parquet files for a file, glob or folder, sorted by name. Raises DataError when there are none."""
    p = Path(path)
    if any(ch in str(path) for ch in "*?["):
        files = [Path(f) for f in globlib.glob(str(path), recursive=True)]
    elif p.is_file():
        files = [p]
    elif p.is_dir():
        meta = p / "metadata"
        base = meta if meta.is_dir() else p
        files = sorted(base.glob("*.parquet")) or sorted(base.rglob("*.parquet"))
    else:
        raise DataError(f"{path}: no such file or folder")
    files = sorted(f for f in files if f.is_file() and not f.name.startswith((".", "_")))
    if not files:
        raise DataError(f"{path}: no parquet files found")
    return files


def detect_preset(path: str | os.PathLike, first_file: Path) -> str:
    """Name the preset whose layout matches ``path``; ``generic`` when none does."""
    p = Path(path)
    if p.is_dir() and (p / "metadata").is_dir() and ((p / "img_emb").is_dir() or (p / "text_emb").is_dir()):
        return "clip-retrieval"
    names = set(read_schema(first_file).names)
    if {"key", "url", "caption", "status"} <= names:
        return "img2dataset"
    if {"URL", "TEXT"} <= names:
        return "laion"
    if {"uid", "url", "text"} <= names:
        return "datacomp"
    return "generic"


def read_schema(path: Path) -> pa.Schema:
    """The schema of a parquet file. Raises DataError naming the file when unreadable."""
    with reading(path, "parquet file"):
        return pq.read_schema(path)


def count_rows(path: Path) -> int:
    """The row count of a parquet file, from its footer. Raises DataError naming the file when unreadable."""
    with reading(path, "parquet file"):
        return pq.ParquetFile(path).metadata.num_rows


def read_parquet(path: Path, columns: list[str] | None = None) -> pa.Table:
    """Read a parquet file (optionally some columns). Raises DataError naming the file when unreadable."""
    with reading(path, "parquet file"):
        return pq.read_table(path, columns=columns)


def text_column(table: pa.Table, col: str, *, path: Path) -> pa.Array:
    """Column ``col`` of ``table`` as strings. Raises DataError naming the file and column when its type (a list,
    a struct) has no text form, or its bytes are not UTF-8."""
    column = table.column(col)
    try:
        text = column.cast(pa.string()).combine_chunks()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise DataError(f"{path}: column {col!r} has type {column.type}, not text or a number "
                        f"({first_line(e)})") from e
    try:
        text.validate(full=True)  # parquet readers do not check that strings are UTF-8
    except pa.ArrowInvalid as e:
        raise DataError(f"{path}: column {col!r} holds bytes that are not UTF-8 text ({first_line(e)})") from e
    return text


def uid_column(table: pa.Table, col: str, *, path: Path) -> pa.Array:
    """Id column ``col`` as strings. Raises DataError naming the file, column and first row without a value."""
    uid = text_column(table, col, path=path)
    if uid.null_count:
        bad = int(np.flatnonzero(uid.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(f"{path}: row {bad}: id column {col!r} is empty")
    return uid


def canonical_table(raw: pa.Table, columns: ColumnMap, *, path: Path, shard: int) -> pa.Table:
    """Map an input table to the canonical columns (uid, caption, image, url, key, shard, row).

    Rows that the tool marked as failed (img2dataset status != success) get a null image and null key.
    """
    n = raw.num_rows
    names = set(raw.column_names)

    def text(col: str | None) -> pa.Array:
        if col is None or col not in names:
            return pa.nulls(n, pa.string())
        return text_column(raw, col, path=path)

    caption, url, key, image = text(columns.caption), text(columns.url), text(columns.key), text(columns.image)
    id_col = next((c for c in columns.id_cols if c in names), None)
    if id_col is not None:
        uid = uid_column(raw, id_col, path=path)
    elif not {columns.url, columns.image, columns.caption} & names:
        raise DataError(f"{path}: no id column ({', '.join(columns.id_cols) or '--id-col'}) and no url, image or "
                        f"caption column to make uids from; columns are: {', '.join(raw.column_names)}")
    else:
        # Without an id column, a row is its url (or, for local files, its image path) plus its caption.
        where = [u if u is not None else i for u, i in zip(url.to_pylist(), image.to_pylist(), strict=True)]
        uid = pa.array(url_caption_uids(where, caption.to_pylist()), pa.string())
    if columns.success_col and columns.success_col in names:
        # A row the tool failed to download has no image anywhere: null its key and url (after the uid is made).
        import pyarrow.compute as pc

        ok = pc.fill_null(pc.equal(text(columns.success_col), columns.success_value), False)
        key = pc.if_else(ok, key, pa.scalar(None, pa.string()))
        url = pc.if_else(ok, url, pa.scalar(None, pa.string()))
    return pa.table(
        [uid, caption, image, url, key, pa.array(np.full(n, shard, np.int32)), pa.array(np.arange(n, dtype=np.int64))],
        schema=CANONICAL_SCHEMA,
    )


def url_caption_uids(urls: list[str | None], captions: list[str | None]) -> list[str]:
    """Stable uids from url + caption: 16 hex digits of BLAKE2b. Same inputs → same uid, on any machine."""
    out = []
    for u, c in zip(urls, captions, strict=True):
        digest = hashlib.blake2b(f"{u or ''}\x1f{c or ''}".encode(), digest_size=8).hexdigest()
        out.append(digest)
    return out


def _guess_generic(first_file: Path) -> ColumnMap:
    names = read_schema(first_file).names
    picks = {role: next((c for c in options if c in names), None) for role, options in _GENERIC_GUESSES.items()}
    id_col = picks.pop("id_cols")
    return ColumnMap(id_cols=(id_col,) if id_col else (), **picks)


def _parquet_rows(path: Path) -> int:
    """Rows of a parquet file, from its footer."""
    with reading(path, "parquet file"):
        return pq.ParquetFile(path).metadata.num_rows


def _duplicate_hashes(chunks: Iterator[np.ndarray], n_parts: int) -> tuple[int, set[int]]:
    """(number of hashes, the hashes that occur more than once) of the uint64 arrays `chunks`. With `n_parts` > 1
    the hashes are written to that many temporary files by `hash % n_parts` and each file is checked alone."""
    import tempfile

    if n_parts == 1:
        allh = np.concatenate(list(chunks) or [np.empty(0, np.uint64)])
        uniq, counts = np.unique(allh, return_counts=True)
        return int(allh.size), set(uniq[counts > 1].tolist())
    total, found = 0, set()
    with tempfile.TemporaryDirectory(prefix="sanitize-uids-") as tmp:
        paths = [Path(tmp) / f"{p:04d}.u64" for p in range(n_parts)]
        files = [open(path, "wb") for path in paths]  # noqa: SIM115 - closed below, all at once
        try:
            for h in chunks:
                total += h.size
                part = (h % np.uint64(n_parts)).astype(np.int64)
                order = np.argsort(part, kind="stable")
                bounds = np.concatenate([[0], np.cumsum(np.bincount(part, minlength=n_parts))])
                for p in np.flatnonzero(np.diff(bounds)):
                    h[order[bounds[p] : bounds[p + 1]]].astype(np.uint64).tofile(files[p])
        finally:
            for f in files:
                f.close()
        for path in paths:
            uniq, counts = np.unique(np.fromfile(path, dtype=np.uint64), return_counts=True)
            found |= set(uniq[counts > 1].tolist())
    return total, found
