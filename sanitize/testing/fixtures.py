"""Small, seeded files in the real on-disk layouts of the field's tools, for tests and the sample generator.

Each writer reproduces the column names, dtypes and file names that the tool itself writes, so that a reader
tested on these fixtures reads the real thing. The docstring of each writer names the source the layout was
checked against. Nothing here downloads anything; images, when a layout needs them, are tiny Pillow JPEGs.

Writers:
- `write_img2dataset_shard` / `write_img2dataset_fixture`: img2dataset webdataset output (NNNNN.parquet + NNNNN.tar
  + NNNNN_stats.json).
- `write_laion_fixture`: LAION-5B metadata parquet ("joined" release with punsafe/pwatermark/hash, or the first
  release with SAMPLE_ID/LICENSE/NSFW).
- `write_datacomp_fixture`: DataComp CommonPool metadata parquet.
- `write_clip_retrieval_fixture`: clip-retrieval inference output (img_emb/, text_emb/, metadata/).

All files go through `sanitize.io.atomic`; the same arguments give byte-identical files.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import tarfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from sanitize.errors import ConfigError
from sanitize.io.atomic import atomic_path, write_json, write_npy, write_parquet

logger = logging.getLogger(__name__)

# img2dataset's default `number_sample_per_shard` is 10,000 and shard names have 5 digits, so keys have
# 4 + 5 = 9 digits: shard 1, row 3 -> "000010003".
IMG2DATASET_SAMPLES_PER_SHARD = 10_000
IMG2DATASET_SHARD_DIGITS = 5

# The columns img2dataset appends after the input columns (caption, url) with its defaults
# (extract_exif=True, compute_hash="sha256"), in its order.
IMG2DATASET_COLUMNS = (
    "caption",
    "url",
    "key",
    "status",
    "error_message",
    "width",
    "height",
    "original_width",
    "original_height",
    "exif",
    "sha256",
)

# webdataset's TarWriter defaults; mtime is fixed here (the tool uses the wall clock) so output is reproducible.
_TAR_MODE = 0o444
_TAR_OWNER = "bigdata"
_TAR_MTIME = 1_700_000_000

_WORDS = (
    *("photo", "dog", "cat", "city", "street", "mountain", "lake", "car", "bicycle", "garden", "kitchen"),
    *("chair", "table", "flower", "sunset", "river", "bridge", "house", "window", "book", "tree", "beach"),
    *("boat", "market", "train"),
)


@dataclass(frozen=True)
class Img2datasetSample:
    """One input row of an img2dataset shard and what the download produced.

    `image` is the downloaded image (sha256 and sizes describe it); None means the download failed and
    `error_message` says why. `member` overrides the bytes stored in the tar (to plant on-disk corruption that
    the parquet does not know about); `drop_member` leaves the tar entry out although status is "success".
    `extra` holds `save_additional_columns` values (strings), e.g. DataComp's uid.
    """

    caption: str
    url: str
    image: bytes | None
    width: int | None = None
    height: int | None = None
    error_message: str | None = None
    member: bytes | None = None
    drop_member: bool = False
    extra: dict[str, str] = field(default_factory=dict)


def img2dataset_key(row: int, shard_id: int) -> str:
    """The key img2dataset gives row `row` of shard `shard_id` with its default shard size (9 digits)."""
    digits = math.ceil(math.log10(IMG2DATASET_SAMPLES_PER_SHARD)) + IMG2DATASET_SHARD_DIGITS
    return f"{IMG2DATASET_SAMPLES_PER_SHARD * shard_id + row:0{digits}d}"


def img2dataset_schema(additional_columns: Sequence[str] = ()) -> pa.Schema:
    """The parquet schema img2dataset writes: additional input columns, caption, url, then its own columns."""
    fields = [pa.field(name, pa.string()) for name in additional_columns]
    fields += [
        pa.field("caption", pa.string()),
        pa.field("url", pa.string()),
        pa.field("key", pa.string()),
        pa.field("status", pa.string()),
        pa.field("error_message", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("original_width", pa.int32()),
        pa.field("original_height", pa.int32()),
        pa.field("exif", pa.string()),
        pa.field("sha256", pa.string()),
    ]
    return pa.schema(fields)


def write_img2dataset_shard(
    folder: str | os.PathLike,
    shard_id: int,
    samples: Sequence[Img2datasetSample],
    *,
    additional_columns: Sequence[str] = (),
) -> list[str]:
    """Write one img2dataset webdataset shard: `NNNNN.parquet`, `NNNNN.tar` and `NNNNN_stats.json` in `folder`.

    Layout checked against rom1504/img2dataset `downloader.py` (schema: input columns + key, status,
    error_message, width, height, original_width, original_height (int32), exif, sha256; `compute_key`),
    `reader.py` (input columns = save_additional_columns + caption + url), `writer.py` (WebDatasetSampleWriter:
    `<key>.jpg`, `<key>.txt`, `<key>.json` = the row's metadata as JSON, only for downloaded samples) and
    `logger.py` (`write_stats`). Images are stored as given (img2dataset's resize_mode="no"), so width equals
    original_width; exif is "{}" as exifread reports for Pillow-made JPEGs.

    Returns the keys in row order. Rows are written in key order (the tool writes them in completion order).
    """
    folder = Path(folder)
    shard = f"{shard_id:0{IMG2DATASET_SHARD_DIGITS}d}"
    schema = img2dataset_schema(additional_columns)
    rows: list[dict] = []
    members: list[tuple[str, bytes]] = []
    statuses: Counter[str] = Counter()
    for row, sample in enumerate(samples):
        key = img2dataset_key(row, shard_id)
        ok = sample.image is not None
        meta = {name: sample.extra[name] for name in additional_columns}
        meta.update(
            caption=sample.caption,
            url=sample.url,
            key=key,
            status="success" if ok else "failed_to_download",
            error_message=None if ok else (sample.error_message or "HTTP Error 404: Not Found"),
            width=sample.width if ok else None,
            height=sample.height if ok else None,
            original_width=sample.width if ok else None,
            original_height=sample.height if ok else None,
            exif="{}" if ok else None,
            sha256=hashlib.sha256(sample.image).hexdigest() if ok else None,
        )
        rows.append(meta)
        statuses[meta["status"] if ok else meta["error_message"]] += 1
        if ok and not sample.drop_member:
            stored = sample.member if sample.member is not None else sample.image
            # webdataset writes a sample's entries in sorted extension order: jpg, json, txt.
            members.append((f"{key}.jpg", stored))
            members.append((f"{key}.json", json.dumps(meta, indent=4).encode("utf-8")))
            members.append((f"{key}.txt", sample.caption.encode("utf-8")))

    table = pa.Table.from_pylist(rows, schema=schema)
    write_parquet(folder / f"{shard}.parquet", table)
    _write_tar(folder / f"{shard}.tar", members)
    successes = sum(s.image is not None for s in samples)
    write_json(
        folder / f"{shard}_stats.json",
        {
            "count": len(samples),
            "successes": successes,
            "failed_to_download": len(samples) - successes,
            "failed_to_resize": 0,
            "duration": 0.0,
            "status_dict": dict(sorted(statuses.items())),
        },
    )
    return [r["key"] for r in rows]


def write_img2dataset_fixture(
    directory: str | os.PathLike,
    n: int,
    *,
    seed: int = 0,
    n_shards: int = 1,
    failed_every: int = 7,
    additional_columns: Sequence[str] = (),
) -> Path:
    """Write `n` rows of plain img2dataset webdataset output, split into `n_shards` shards, into `directory`.

    Every `failed_every`-th row (rows 0, 7, 14, … with the default) is a failed download (status
    "failed_to_download", no tar entry); the others are 8×8 single-colour JPEGs with a short caption.
    `additional_columns` adds string columns (values "<column>-<row>") as `--save_additional_columns` would.
    Shards are sized like separate input files (shard s holds rows [s*n/n_shards, (s+1)*n/n_shards)).
    Layout as in `write_img2dataset_shard`. Returns `directory`.
    """
    _check_count(n, "n")
    _check_count(n_shards, "n_shards")
    if failed_every < 1:
        raise ConfigError(f"failed_every must be >= 1, got {failed_every}")
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        caption = _random_caption(rng)
        url = f"https://images.example.com/{seed}/{i}.jpg"
        extra = {name: f"{name}-{i}" for name in additional_columns}
        if i % failed_every == 0:
            samples.append(Img2datasetSample(caption, url, None, error_message=_DOWNLOAD_ERRORS[i % 3], extra=extra))
        else:
            colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
            image = _solid_jpeg(colour, 8)
            samples.append(Img2datasetSample(caption, url, image, width=8, height=8, extra=extra))
    bounds = np.linspace(0, n, n_shards + 1).round().astype(int)
    for shard_id in range(n_shards):
        part = samples[bounds[shard_id] : bounds[shard_id + 1]]
        write_img2dataset_shard(directory, shard_id, part, additional_columns=additional_columns)
    return Path(directory)


_DOWNLOAD_ERRORS = (
    "HTTP Error 404: Not Found",
    "<urlopen error [Errno -2] Name or service not known>",
    "The read operation timed out",
)


def laion_schema(variant: str = "joined", multilingual: bool = False) -> pa.Schema:
    """The parquet schema of LAION-5B metadata for `variant` "joined" or "release" (see write_laion_fixture)."""
    if variant == "joined":
        fields = [
            pa.field("URL", pa.string()),
            pa.field("TEXT", pa.string()),
            pa.field("WIDTH", pa.int32()),
            pa.field("HEIGHT", pa.int32()),
            pa.field("similarity", pa.float64()),
        ]
        if multilingual:
            fields.append(pa.field("LANGUAGE", pa.string()))
        fields += [
            pa.field("hash", pa.int64()),
            pa.field("punsafe", pa.float32()),
            pa.field("pwatermark", pa.float32()),
        ]
    elif variant == "release":
        fields = [
            pa.field("SAMPLE_ID", pa.int64()),
            pa.field("URL", pa.string()),
            pa.field("TEXT", pa.string()),
            pa.field("HEIGHT", pa.float64()),
            pa.field("WIDTH", pa.float64()),
            pa.field("LICENSE", pa.string()),
        ]
        if multilingual:
            fields.append(pa.field("LANGUAGE", pa.string()))
        fields += [pa.field("NSFW", pa.string()), pa.field("similarity", pa.float64())]
    else:
        raise ConfigError(f"LAION variant must be 'joined' or 'release', got {variant!r}")
    return pa.schema(fields)


def write_laion_fixture(
    path: str | os.PathLike,
    n: int,
    *,
    seed: int = 0,
    variant: str = "joined",
    multilingual: bool = False,
) -> Path:
    """Write `n` rows of LAION-5B metadata as one parquet file at `path`; returns `path`.

    `variant="joined"` (laion2B-en-joined / laion2B-multi-joined / laion1B-nolang-joined, the release with the
    safety and watermark scores): URL, TEXT (string), WIDTH, HEIGHT (int32), similarity (float64), hash (int64),
    punsafe, pwatermark (float32); `multilingual=True` adds LANGUAGE (string) after similarity. Checked against the
    Hugging Face dataset cards of sets derived from laion2B-en-joined (e.g. laion/laion2B-en-aesthetic copies,
    Rexhaif/laion-2b-en-very-unsafe: same names and dtypes) and img2dataset's LAION recipes
    (`--save_additional_columns '["similarity","hash","punsafe","pwatermark","LANGUAGE"]'`).

    `variant="release"` (the first laion2B-en / laion2B-multi / laion1B-nolang parquet): SAMPLE_ID (int64), URL,
    TEXT, HEIGHT, WIDTH (float64), LICENSE, [LANGUAGE], NSFW ("UNLIKELY" / "UNSURE" / "NSFW"), similarity (float64);
    checked against the dataset_infos.json of a laion2B-multi subset (IDEA-CCNL/laion2B-multi-chinese-subset).

    hash is a signed 64-bit value derived here from URL and TEXT with blake2b; only its dtype mimics LAION's.
    """
    _check_count(n, "n")
    schema = laion_schema(variant, multilingual)
    rng = np.random.default_rng(seed)
    urls = [f"https://images.example.com/laion/{seed}/{i}.jpg" for i in range(n)]
    texts = [_random_caption(rng) for _ in range(n)]
    width = rng.integers(64, 2048, size=n)
    height = rng.integers(64, 2048, size=n)
    similarity = rng.uniform(0.28, 0.45, size=n)
    columns: dict[str, object] = {"URL": urls, "TEXT": texts, "similarity": similarity}
    languages = ["en", "de", "fr", "es", "ja", "zh", "pt", "ru"]
    if multilingual:
        columns["LANGUAGE"] = [languages[i] for i in rng.integers(0, len(languages), size=n)]
    if variant == "joined":
        columns["WIDTH"] = width.astype(np.int32)
        columns["HEIGHT"] = height.astype(np.int32)
        columns["hash"] = np.array([_hash64(u + t) for u, t in zip(urls, texts, strict=True)], dtype=np.int64)
        columns["punsafe"] = rng.beta(0.5, 8.0, size=n).astype(np.float32)
        columns["pwatermark"] = rng.beta(0.7, 3.0, size=n).astype(np.float32)
    else:
        columns["SAMPLE_ID"] = np.sort(rng.choice(10**9, size=n, replace=False)).astype(np.int64)
        columns["WIDTH"] = width.astype(np.float64)
        columns["HEIGHT"] = height.astype(np.float64)
        columns["LICENSE"] = ["?"] * n
        nsfw = np.array(["UNLIKELY", "UNSURE", "NSFW"])
        columns["NSFW"] = nsfw[rng.choice(3, size=n, p=[0.9, 0.07, 0.03])].tolist()
    table = pa.table({name: columns[name] for name in schema.names}, schema=schema)
    write_parquet(path, table)
    return Path(path)


DATACOMP_SCHEMA = pa.schema(
    [
        pa.field("uid", pa.string()),
        pa.field("url", pa.string()),
        pa.field("text", pa.string()),
        pa.field("original_width", pa.int64()),
        pa.field("original_height", pa.int64()),
        pa.field("clip_b32_similarity_score", pa.float32()),
        pa.field("clip_l14_similarity_score", pa.float32()),
        pa.field("face_bboxes", pa.list_(pa.list_(pa.float64()))),
        pa.field("sha256", pa.string()),
    ]
)


def write_datacomp_fixture(path: str | os.PathLike, n: int, *, seed: int = 0) -> Path:
    """Write `n` rows of DataComp CommonPool metadata as one parquet file at `path`; returns `path`.

    Columns and dtypes as in the mlfoundations/datacomp_small (and datacomp_1b) metadata on Hugging Face:
    uid (32 hex characters), url, text (string), original_width, original_height (int64),
    clip_b32_similarity_score, clip_l14_similarity_score (float32), face_bboxes (list of [x0, y0, x1, y1]
    float64 boxes in [0, 1], often empty), sha256 (64 hex characters). About a third of the rows have faces.
    """
    _check_count(n, "n")
    rng = np.random.default_rng(seed)
    uids = [hashlib.blake2b(f"datacomp:{seed}:{i}".encode(), digest_size=16).hexdigest() for i in range(n)]
    boxes = []
    for _ in range(n):
        count = int(rng.choice(3, p=[0.65, 0.25, 0.10]))
        row = []
        for _ in range(count):
            x0, y0 = rng.uniform(0.0, 0.7, size=2)
            w, h = rng.uniform(0.05, 0.3, size=2)
            row.append([float(x0), float(y0), float(min(x0 + w, 1.0)), float(min(y0 + h, 1.0))])
        boxes.append(row)
    columns = {
        "uid": uids,
        "url": [f"https://images.example.com/datacomp/{u}.jpg" for u in uids],
        "text": [_random_caption(rng) for _ in range(n)],
        "original_width": rng.integers(32, 2048, size=n).astype(np.int64),
        "original_height": rng.integers(32, 2048, size=n).astype(np.int64),
        "clip_b32_similarity_score": rng.uniform(0.1, 0.45, size=n).astype(np.float32),
        "clip_l14_similarity_score": rng.uniform(0.1, 0.45, size=n).astype(np.float32),
        "face_bboxes": boxes,
        "sha256": [hashlib.sha256(u.encode()).hexdigest() for u in uids],
    }
    write_parquet(path, pa.table(columns, schema=DATACOMP_SCHEMA))
    return Path(path)


def write_clip_retrieval_fixture(
    directory: str | os.PathLike,
    n: int,
    d: int = 512,
    *,
    seed: int = 0,
    n_parts: int = 1,
    enable_text: bool = True,
    enable_metadata: bool = True,
) -> Path:
    """Write clip-retrieval inference output for `n` rows of `d`-dimensional embeddings into `directory`.

    Files, per part p of `n_parts` (numbered as clip-retrieval numbers output partitions, zero-padded to
    int(log10(n_parts)) + 1 digits): `img_emb/img_emb_{p}.npy` and `text_emb/text_emb_{p}.npy` (float16, rows
    L2-normalised in float32 before the cast, as its ClipMapper does) and `metadata/metadata_{p}.parquet`;
    row i of the metadata is row i of both npy files. Metadata columns as its OutputSink writes them for a
    webdataset input: image_path (the webdataset key), caption (when `enable_text`), then, with
    `enable_metadata`, the sample's img2dataset JSON flattened: url, key, status, error_message, width, height,
    original_width, original_height (int64, from pandas), exif, sha256. error_message is all-null and so has
    Arrow type null, as pandas writes it. Checked against rom1504/clip-retrieval
    `clip_inference/writer.py`, `mapper.py` and `reader.py`.

    Returns `directory`.
    """
    _check_count(n, "n")
    _check_count(d, "d")
    _check_count(n_parts, "n_parts")
    directory = Path(directory)
    rng = np.random.default_rng(seed)
    digits = int(math.log10(n_parts)) + 1
    bounds = np.linspace(0, n, n_parts + 1).round().astype(int)
    for part in range(n_parts):
        lo, hi = int(bounds[part]), int(bounds[part + 1])
        name = str(part).zfill(digits)
        write_npy(directory / "img_emb" / f"img_emb_{name}.npy", _unit_rows_f16(rng, hi - lo, d))
        if enable_text:
            write_npy(directory / "text_emb" / f"text_emb_{name}.npy", _unit_rows_f16(rng, hi - lo, d))
        keys = [img2dataset_key(i, 0) for i in range(lo, hi)]
        columns: dict[str, pa.Array] = {"image_path": pa.array(keys, pa.string())}
        if enable_text:
            columns["caption"] = pa.array([_random_caption(rng) for _ in keys], pa.string())
        if enable_metadata:
            sizes = rng.integers(32, 512, size=(hi - lo, 2))
            columns["url"] = pa.array([f"https://images.example.com/cr/{seed}/{k}.jpg" for k in keys])
            columns["key"] = pa.array(keys, pa.string())
            columns["status"] = pa.array(["success"] * len(keys), pa.string())
            columns["error_message"] = pa.nulls(len(keys), pa.null())
            for j, col in enumerate(("width", "height")):
                columns[col] = pa.array(sizes[:, j], pa.int64())
            for j, col in enumerate(("original_width", "original_height")):
                columns[col] = pa.array(sizes[:, j], pa.int64())
            columns["exif"] = pa.array(["{}"] * len(keys), pa.string())
            columns["sha256"] = pa.array([hashlib.sha256(k.encode()).hexdigest() for k in keys], pa.string())
        write_parquet(directory / "metadata" / f"metadata_{name}.parquet", pa.table(columns))
    return directory


def _write_tar(path: Path, members: Sequence[tuple[str, bytes]]) -> None:
    with atomic_path(path) as tmp, tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = _TAR_MTIME
            info.mode = _TAR_MODE
            info.uname = info.gname = _TAR_OWNER
            tar.addfile(info, io.BytesIO(data))


def _unit_rows_f16(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float16)


def _solid_jpeg(colour: tuple[int, ...], size: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _random_caption(rng: np.random.Generator) -> str:
    return " ".join(_WORDS[i] for i in rng.integers(0, len(_WORDS), size=int(rng.integers(2, 7))))


def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little", signed=True)


def _check_count(value: int, name: str) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
