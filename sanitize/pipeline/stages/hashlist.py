"""The hashlist stage: screen every image against lists of known-bad images before any other stage runs.

LAION-5B was withdrawn after outside researchers matched it against hash lists of known abuse imagery; its CLIP
filters had not caught those images. This stage matches each row's image against user-supplied lists
(`sanitize.hashlist`): exact sha256 and md5 of the image bytes, and PDQ (Meta's 256-bit perceptual hash) within
``pdq_distance`` bits over all eight flips/rotations of the image. A row that matches is removed before it is ever
embedded: when the run folder holds this stage's results, the embed stage skips the rows it removed, so they are
never embedded, never in a label pool, contact sheet or label page, never copied into the run or export folders.

img2dataset manifests carry a ``sha256`` column of the downloaded bytes; when it is present it is matched as it is
(the bytes are not read for sha256; they are read only when an md5 or PDQ list needs them, and then their own sha256
is matched too).

Per manifest shard it writes

- ``RUN/stages/hashlist/NNNNN.parquet``: uid, keep, reason (``hashlist:<list>:<kind>``, "; "-joined when several);
- ``RUN/stages/hashlist/rows/NNNNN.parquet``: uid, status (``ok``, ``sha256_column``, ``missing``,
  ``skipped_remote``, ``no_image``, ``decode_error:<reason>``), pdq_quality (null when not computed); rows whose
  PDQ quality is below ``pdq_quality`` are not matched by PDQ;
- ``RUN/stages/hashlist/restricted/NNNNN.parquet`` (mode 0600, folder 0700): the matched rows' uid, list, kind,
  list hash, label, distance, variant;

then the shard's marker; at the end ``RUN/stages/hashlist/restricted/matches.parquet`` (0600) joins them. The stats
give counts per list only. Opt-in: add ``hashlist`` to ``run.stages`` and name the lists in ``hashlist.lists``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sanitize.errors import ConfigError, DataError
from sanitize.hashlist import (
    DIHEDRAL,
    EXACT_KINDS,
    PDQ_DISTANCE,
    PDQ_QUALITY,
    HashList,
    Match,
    build_index,
    exact_hashes,
    parse_list_spec,
    pdq_hashes,
    read_hash_list,
)
from sanitize.io import atomic
from sanitize.io.images import DEFAULT_MAX_PIXELS, ImageDecodeError, TarIndex, decode_image, read_local
from sanitize.io.manifest import read_parquet, read_schema
from sanitize.io.runfolder import RunFolder
from sanitize.pipeline.options import option, section_dict
from sanitize.pipeline.stage import (
    ManifestShardWorker,
    ShardStats,
    Stage,
    StageContext,
    StageResult,
    stored_counts,
)

logger = logging.getLogger(__name__)

STAGE = "hashlist"
RESTRICTED = "restricted"
MATCHES = "matches.parquet"
SHA256_COLUMN = "sha256"  # img2dataset's --compute_hash default

MATCH_SCHEMA = pa.schema([("uid", pa.string()), ("list", pa.string()), ("kind", pa.string()),
                          ("hash", pa.string()), ("label", pa.string()), ("distance", pa.int16()),
                          ("variant", pa.string())])


@dataclass(frozen=True)
class HashlistConfig:
    """The ``[hashlist]`` section: the lists of known-bad images and how PDQ matches."""

    lists: tuple[str, ...] = option((), "Hash lists, each KIND:PATH (KIND: pdq, sha256 or md5; may be left out for "
                                    "md5, 32 hex digits); a text file (one hex hash per line) or a CSV with a hash "
                                    "column.", flag="--list")
    pdq_distance: int = option(PDQ_DISTANCE, "Largest PDQ Hamming distance (of 256 bits) that is a match (Meta "
                               "recommends 31).", low=0, high=128)
    pdq_quality: int = option(PDQ_QUALITY, "Images whose PDQ quality is below this are not matched by PDQ (Meta "
                              "recommends 50).", low=0, high=100)
    dihedral: bool = option(True, "Match the image's eight flips and rotations against PDQ lists.")
    max_pixels: int = option(DEFAULT_MAX_PIXELS, "Larger images get no PDQ hash (decompression-bomb guard).", low=1)


class HashlistStage(Stage):
    """Rows whose image is on a list of known-bad images are removed before anything else sees them."""

    name = STAGE
    Config = HashlistConfig
    requires = ()
    runs_by_default = False
    summary = "known-bad images: exact (sha256, md5) and PDQ hash lists, before any other stage"

    def __init__(self, config: HashlistConfig | None = None) -> None:
        super().__init__(config)
        self._lists: list[HashList] | None = None

    def skip_reason(self) -> str | None:
        return None if self.config.lists else "no [hashlist] lists"

    def prepare(self, seed: int) -> None:
        """Read and check every list (fails fast, before the run folder is touched)."""
        self._lists = load_lists(self.config)

    def run(self, context: StageContext) -> StageResult:
        started = time.perf_counter()
        run, c = context.run, self.config
        if not c.lists:
            raise ConfigError("hashlist needs hash lists (hashlist.lists = [\"pdq:known.txt\", ...])")
        lists = self._lists if self._lists is not None else load_lists(c)
        begin(run, stage_config(c, lists))
        n_shards = len(run.manifest().files)
        worker = HashlistWorker(run.path, resolved(c, lists), lists)
        context.engine.map_shards(worker, run.todo(STAGE, n_shards))
        matches = join_matches(run, n_shards)
        counts = stored_counts(run, STAGE)
        logger.info("hashlist: %d of %d rows on a list", counts.rows_in - counts.kept, counts.rows_in)
        details = {"lists": {h.name: {"kind": h.kind, "hashes": len(h),
                                      "matched_rows": counts.dropped.get(dropped_key(h.name), 0)} for h in lists},
                   "matched_rows": counts.rows_in - counts.kept, "restricted": str(matches)}
        return context.result(self, started, counts, details=details)


def dropped_key(name: str) -> str:
    """The stats key of list `name` (a row on two lists counts under both)."""
    return f"hashlist:{name}"


def load_lists(config: HashlistConfig) -> list[HashList]:
    """Every configured list, read and checked; ConfigError when two lists share a name (their file stem)."""
    specs = [parse_list_spec(text) for text in config.lists]
    names = Counter(s.name for s in specs)
    twice = [n for n, k in names.items() if k > 1]
    if twice:
        raise ConfigError(f"hashlist.lists: two lists are named {twice[0]!r} (the file name); rename one file")
    return [read_hash_list(s) for s in specs]


def resolved(config: HashlistConfig, lists: list[HashList]) -> HashlistConfig:
    """`config` with every list as KIND:ABSOLUTE-PATH (kinds as read), so a worker in another process or folder
    reads the same lists."""
    specs = [parse_list_spec(text) for text in config.lists]
    return dataclasses.replace(config, lists=tuple(f"{h.kind}:{s.path.resolve()}"
                                                   for s, h in zip(specs, lists, strict=True)))


def stage_config(config: HashlistConfig, lists: list[HashList]) -> dict[str, Any]:
    """What decides the stage's output: its options and each list's kind, file and content digest."""
    specs = [parse_list_spec(text) for text in config.lists]
    return {**section_dict(config),
            "lists": [{"name": h.name, "kind": h.kind, "path": str(s.path.resolve()), "sha256": h.digest}
                      for s, h in zip(specs, lists, strict=True)]}


def begin(run: RunFolder, config: dict[str, Any]) -> None:
    """Record the stage's config, unless run.json already holds this very config (then finished shards are kept).

    Compared here rather than by `RunFolder.begin_stage`'s fingerprint, which folds in the embed stage's: the
    embed stage runs after this one, and its results must not make this stage's finished shards stale."""
    entry = run.info().get("stages", {}).get(STAGE)
    if entry is None or _canonical(entry.get("config")) != _canonical(config):
        run.begin_stage(STAGE, config)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


# ---- per shard ----------------------------------------------------------------------------------------------------


@dataclass
class RowHashes:
    """What was hashed of one row: sha256 digests (the manifest's column and/or the bytes'), md5, PDQ variants and
    quality, and the row's `status`."""

    status: str
    sha256: list[bytes]
    md5: bytes | None = None
    pdq: np.ndarray | None = None
    quality: int | None = None


class HashlistWorker(ManifestShardWorker):
    """The stage's `ShardWorker`: hashes one manifest shard's images, matches them, writes its files and marker.

    Built with the driver's parsed `lists` (used as they are in this process); a copy sent to another process
    reads the lists again in `setup()`."""

    def __init__(self, run_path: str | os.PathLike, config: HashlistConfig,
                 lists: list[HashList] | None = None) -> None:
        super().__init__(run_path)
        self.config = config
        self.lists = lists
        self.indexes: list[Any] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "lists": None, "indexes": None}

    def setup(self) -> None:
        super().setup()
        if self.lists is None:
            self.lists = load_lists(self.config)
        if self.indexes is None:
            self.indexes = [build_index(h, self.config.pdq_distance) for h in self.lists]

    def __call__(self, index: int) -> int:
        self.setup()
        shard = self.manifest.read_shard(index)
        table = shard.table
        kinds = {h.kind for h in self.lists}
        column = sha256_column(self.manifest.files[index], table.num_rows) if "sha256" in kinds else None
        hashed = hash_rows(table, self.manifest.image_root, shard.tar_path, column, kinds, self.config)
        matches = match_rows(hashed, self.indexes, self.config.pdq_quality)
        uids = table["uid"].to_pylist()
        write_restricted(restricted_path(self.run, index), matches_table(uids, matches, self.lists))
        write_rows(self.run, index, uids, hashed)
        decisions, counts = decide(uids, matches, hashed, self.config.pdq_quality)
        self.run.write_shard(STAGE, index, decisions, counts.to_dict())
        return len(uids)


def sha256_column(path: Path, n: int) -> list[bytes | None] | None:
    """img2dataset's ``sha256`` column of manifest file `path` as digests (None for a null or malformed value), or
    None when the file has no such column."""
    if SHA256_COLUMN not in read_schema(path).names:
        return None
    values = read_parquet(path, columns=[SHA256_COLUMN])[SHA256_COLUMN].to_pylist()
    if len(values) != n:
        raise DataError(f"{path}: the sha256 column has {len(values)} rows, the shard {n}")
    return [_digest(v) for v in values]


def _digest(value: Any) -> bytes | None:
    if not isinstance(value, str) or len(value.strip()) != 64:
        return None
    try:
        return bytes.fromhex(value.strip())
    except ValueError:
        return None


def hash_rows(table: pa.Table, image_root: Path | None, tar_path: Path | None, column: list[bytes | None] | None,
              kinds: set[str], config: HashlistConfig) -> list[RowHashes]:
    """One `RowHashes` per row of canonical shard `table`. The image comes from the tar member `key`, else the file
    `image` (as the embed stage finds it); bytes are read only when a list needs them."""
    tar = TarIndex.build(tar_path) if tar_path is not None else None
    names = table.column_names
    keys = table["key"].to_pylist() if "key" in names else [None] * table.num_rows
    images = table["image"].to_pylist() if "image" in names else [None] * table.num_rows
    urls = table["url"].to_pylist() if "url" in names else [None] * table.num_rows
    out = []
    for row in range(table.num_rows):
        listed = column[row] if column is not None else None
        needs_bytes = bool(kinds - {"sha256"}) or ("sha256" in kinds and listed is None)
        if not needs_bytes:
            out.append(RowHashes("sha256_column", [listed]))
            continue
        data, status = read_image(keys[row], images[row], urls[row], image_root, tar)
        out.append(hash_bytes(data, status, listed, kinds, config))
    return out


def read_image(key: str | None, image: str | None, url: str | None, image_root: Path | None,
               tar: TarIndex | None) -> tuple[bytes | None, str]:
    """(bytes or None, status) of one row's image: ``ok``, ``missing``, ``skipped_remote`` or ``no_image``."""
    if tar is not None and key is not None:
        if str(key) not in tar:
            return None, "missing"
        try:
            return tar.read(str(key)), "ok"
        except ImageDecodeError:
            return None, "missing"
    if image is not None:
        data = read_local(image_root / image if image_root is not None else Path(image))
        return data, "ok" if data is not None else "missing"
    return None, "skipped_remote" if url is not None else "no_image"


def hash_bytes(data: bytes | None, status: str, listed: bytes | None, kinds: set[str],
               config: HashlistConfig) -> RowHashes:
    """The hashes of one image's bytes (and its listed sha256) that the configured list kinds need."""
    sha = [listed] if listed is not None else []
    if data is None:
        return RowHashes("sha256_column" if sha else status, sha)
    exact = exact_hashes(data)
    if exact["sha256"] not in sha:
        sha.append(exact["sha256"])
    row = RowHashes("ok", sha, exact["md5"])
    if "pdq" in kinds:
        try:
            rgb = np.asarray(decode_image(data, max_pixels=config.max_pixels))
        except ImageDecodeError as e:
            row.status = f"decode_error:{e.reason}"
            return row
        row.pdq, row.quality = pdq_hashes(rgb, dihedral=config.dihedral)
    return row


def match_rows(hashed: list[RowHashes], indexes: list[Any], pdq_quality: int) -> list[tuple[int, Match, str | None]]:
    """(row, match, PDQ variant or None) for every hit of every row in every list, in list then row order. PDQ
    hashes below `pdq_quality` are not searched."""
    queries: dict[str, tuple[list[int], list[str | None], np.ndarray]] = {}
    for kind in (*EXACT_KINDS, "pdq"):
        rows, variants, codes = _queries(hashed, kind, pdq_quality)
        queries[kind] = (rows, variants, codes)
    out = []
    for index in indexes:
        rows, variants, codes = queries[index.list.kind]
        for m in index.search(codes):
            out.append((rows[m.query], m, variants[m.query]))
    return out


def _queries(hashed: list[RowHashes], kind: str, pdq_quality: int) -> tuple[list[int], list[str | None],
                                                                              np.ndarray]:
    """(row per query, variant per query, (m, width) codes) of every row's `kind` hashes."""
    rows: list[int] = []
    variants: list[str | None] = []
    codes: list[np.ndarray] = []
    for row, h in enumerate(hashed):
        if kind == "sha256":
            found = [np.frombuffer(d, np.uint8) for d in h.sha256]
            names: list[str | None] = [None] * len(found)
        elif kind == "md5":
            found, names = ([np.frombuffer(h.md5, np.uint8)], [None]) if h.md5 is not None else ([], [])
        else:
            ok = h.pdq is not None and h.quality is not None and h.quality >= pdq_quality
            found = list(h.pdq) if ok else []
            names = list(DIHEDRAL[:len(found)])
        rows += [row] * len(found)
        variants += names
        codes += found
    width = {"sha256": 32, "md5": 16, "pdq": 32}[kind]
    return rows, variants, np.stack(codes) if codes else np.empty((0, width), np.uint8)


def decide(uids: list[str], matches: list[tuple[int, Match, str | None]], hashed: list[RowHashes],
           pdq_quality: int) -> tuple[pa.Table, ShardStats]:
    """The decision table (uid, keep, reason; nothing else) and counts: rows per list (``hashlist:<list>``),
    other: ``unscreened`` (no bytes and no listed sha256) and ``pdq_low_quality``."""
    reasons: dict[int, set[str]] = {}
    per_list: dict[str, set[int]] = {}
    for row, m, _ in matches:
        reasons.setdefault(row, set()).add(f"hashlist:{m.list}:{m.kind}")
        per_list.setdefault(dropped_key(m.list), set()).add(row)
    keep = [row not in reasons for row in range(len(uids))]
    reason = [None if row not in reasons else "; ".join(sorted(reasons[row])) for row in range(len(uids))]
    other = {"unscreened": sum(not h.sha256 for h in hashed),
             "pdq_low_quality": sum(h.quality is not None and h.quality < pdq_quality for h in hashed)}
    counts = ShardStats(rows_in=len(uids), kept=sum(keep),
                        dropped={k: len(v) for k, v in sorted(per_list.items())},
                        other={k: v for k, v in other.items() if v})
    table = pa.table({"uid": pa.array(uids, pa.string()), "keep": pa.array(keep, pa.bool_()),
                      "reason": pa.array(reason, pa.string())})
    return table, counts


def matches_table(uids: list[str], matches: list[tuple[int, Match, str | None]], lists: list[HashList]) -> pa.Table:
    """The restricted table of one shard: one row per (row, list entry) hit, sorted by uid, list, distance."""
    by_name = {h.name: h for h in lists}
    records = sorted(
        ((uids[row], m.list, m.kind, by_name[m.list].hex(m.entry), by_name[m.list].label(m.entry), m.distance,
          variant) for row, m, variant in matches),
        key=lambda r: (r[0], r[1], r[5], r[3], r[6] or ""))
    columns = list(zip(*records, strict=True)) if records else [[] for _ in MATCH_SCHEMA]
    return pa.table([pa.array(list(col), f.type) for col, f in zip(columns, MATCH_SCHEMA, strict=True)],
                    schema=MATCH_SCHEMA)


def write_rows(run: RunFolder, index: int, uids: list[str], hashed: list[RowHashes]) -> None:
    """RUN/stages/hashlist/rows/NNNNN.parquet: uid, status, pdq_quality per row (no hashes)."""
    atomic.write_parquet(run.stage_dir(STAGE) / "rows" / f"{index:05d}.parquet", pa.table({
        "uid": pa.array(uids, pa.string()), "status": pa.array([h.status for h in hashed], pa.string()),
        "pdq_quality": pa.array([h.quality for h in hashed], pa.int16())}))


# ---- the restricted files ------------------------------------------------------------------------------------------


def restricted_dir(run: RunFolder) -> Path:
    return run.stage_dir(STAGE) / RESTRICTED


def restricted_path(run: RunFolder, index: int) -> Path:
    return restricted_dir(run) / f"{index:05d}.parquet"


def write_restricted(path: Path, table: pa.Table) -> None:
    """Write `table` as parquet readable by the owner only: the folder is made 0700, the file is created 0600 with
    `os.open` (never wider, whatever the umask) beside `path`, fsynced, then renamed onto it."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            pq.write_table(table, f, compression="zstd")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def join_matches(run: RunFolder, n_shards: int) -> Path:
    """RUN/stages/hashlist/restricted/matches.parquet (0600): every shard's matches, in shard order."""
    tables = [read_parquet(restricted_path(run, i)) for i in range(n_shards)]
    path = restricted_dir(run) / MATCHES
    write_restricted(path, pa.concat_tables(tables).cast(MATCH_SCHEMA) if tables else MATCH_SCHEMA.empty_table())
    return path


# ---- what the embed stage reads -------------------------------------------------------------------------------------


def screening_digest(run: RunFolder, n_shards: int) -> str | None:
    """A digest of the uids this stage removed from `run` (what the embed stage's output then depends on), or None
    when the run has no hashlist results or they removed nothing. Raises ConfigError when the stage was begun but
    not finished: embedding then could embed an image it has not screened yet."""
    if STAGE not in run.info().get("stages", {}):
        return None
    missing = run.todo(STAGE, n_shards)
    if missing:
        raise ConfigError(f"{run.path}: the hashlist stage has not finished (shard {missing[0]:05d} and "
                          f"{len(missing) - 1} more); run it before embedding")
    h = hashlib.sha256()
    removed = 0
    for index in range(n_shards):
        uids = sorted(removed_uids(run, index))
        removed += len(uids)
        h.update(f"{index}\0{len(uids)}\0".encode() + "\0".join(uids).encode())
    return h.hexdigest()[:16] if removed else None


def removed_uids(run: RunFolder, index: int) -> set[str]:
    """The uids of manifest shard `index` that this stage removed (empty when it has no such shard)."""
    if not run.is_done(STAGE, index):
        return set()
    table = read_parquet(run.shard_path(STAGE, index), columns=["uid", "keep"])
    keep = table["keep"].to_pylist()
    return {uid for uid, k in zip(table["uid"].to_pylist(), keep, strict=True) if not k}
