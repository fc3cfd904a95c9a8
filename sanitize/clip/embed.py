"""The per-shard embedding core: one manifest shard in, its CLIP image and caption embeddings out.

Decoding runs in DataLoader worker processes while the model runs in this one, so on a GPU the model is
never left waiting for JPEG decoding, and on a CPU the decoding overlaps the matrix products. Every row gets a
status; a bad image only ever costs its own row.

Determinism: the model always sees the successfully decoded images in row order, in chunks of exactly
`batch_size` (the last may be shorter), whatever `num_workers` is and wherever the failures fall. The same
inputs, model and `batch_size` therefore give bit-identical output; another `batch_size` changes only the
low float bits that batched matrix products may round differently (well inside float16 resolution).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader, Dataset

from sanitize.clip.defaults import DEFAULT_BATCH_SIZE, DEFAULT_DECODE_WORKERS
from sanitize.clip.models import ClipModel
from sanitize.errors import ConfigError
from sanitize.io.images import DEFAULT_MAX_PIXELS, ImageDecodeError, TarIndex, decode_image, read_local

logger = logging.getLogger(__name__)

OK = "ok"
MISSING = "missing"
TOO_LARGE = "too_large"
SKIPPED_REMOTE = "skipped_remote"
NO_IMAGE = "no_image"
DECODE_ERROR = "decode_error"  # written as "decode_error:<reason>", reason from ImageDecodeError

_TAR = "tar"
_FILE = "file"


@dataclass(frozen=True)
class ShardEmbeddings:
    """The embeddings of one shard.

    `img_emb` and `text_emb`: float16 (n_ok, dim), L2-normalised rows; row j belongs to table row `ok_rows[j]`
    (text_emb holds that row's caption, "" for a null caption; None when captions were not embedded).
    `ok_rows`: int64, increasing. `status` and `error`: one entry per table row — "ok" (error None), "missing",
    "too_large", "skipped_remote", "no_image" or "decode_error:<reason>", with a one-line error message for each
    row that is not "ok".
    """

    img_emb: np.ndarray
    text_emb: np.ndarray | None
    ok_rows: np.ndarray
    status: list[str]
    error: list[str | None]

    def counts(self) -> dict[str, int]:
        """Rows per status, sorted by status name."""
        return dict(sorted(Counter(self.status).items()))


def embed_shard(
    table: pa.Table,
    model: ClipModel,
    *,
    image_root: str | os.PathLike | None = None,
    tar_path: str | os.PathLike | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    num_workers: int = DEFAULT_DECODE_WORKERS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_decode: bool = False,
    text: bool = True,
    progress: Callable[[int], Any] | None = None,
) -> ShardEmbeddings:
    """Embed the images and captions of one manifest shard.

    `table`: the shard's canonical columns — `caption`, `image` (path relative to `image_root`; absolute or
    relative to the working folder when `image_root` is None), `url`, `key` (member stem in `tar_path`); a
    missing column counts as all null. Each row's image comes from the first of: the tar member `key` (when
    `tar_path` is given and `key` is not null), the file `image`; a row with only a `url` is "skipped_remote"
    (nothing is downloaded), a row with none of them "no_image".
    `num_workers`: decoding processes (0 decodes in this process). `max_pixels`: larger images are
    "too_large", rejected from their header. `draft_decode`: a JPEG at least twice the model's input size is
    decoded at 1/2, 1/4 or 1/8 scale by the decoder (never below the input size): decoding and resizing cost a
    fraction, and the embeddings change slightly (README: measured). `text`: embed the captions too (False
    skips the text tower: `text_emb` is None; the image embeddings are the same either way). `progress`: called
    with the number of rows finished since its last call (a tqdm's `update` fits).

    Raises ConfigError for a bad argument, DataError for an unreadable tar; bad images never raise.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ConfigError(f"num_workers must be >= 0, got {num_workers}")
    if max_pixels < 1:
        raise ConfigError(f"max_pixels must be >= 1, got {max_pixels}")

    n = table.num_rows
    status: list[str] = [""] * n
    error: list[str | None] = [None] * n
    tar_index = TarIndex.build(tar_path) if tar_path is not None else None
    sources = _plan_sources(table, image_root, tar_index, status, error)
    if progress is not None and n - len(sources):
        progress(n - len(sources))

    draft = (model.input_size, model.input_size) if draft_decode and model.input_size else None
    dataset = _ShardImages(sources, model.preprocess, tar_index, max_pixels, draft)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=model.device.type == "cuda",
    )
    captions = _column(table, "caption")
    batches = _ModelBatches(model, captions if text else None, batch_size)
    for decoded in loader if sources else ():
        for row, row_status, row_error in zip(decoded.rows, decoded.status, decoded.error, strict=True):
            status[row] = row_status
            error[row] = row_error
        batches.add(decoded.ok_rows, decoded.images)
        if progress is not None:
            progress(len(decoded.rows))
    img_emb, text_emb, ok_rows = batches.finish()

    result = ShardEmbeddings(img_emb, text_emb, ok_rows, status, error)
    logger.info("embedded %d/%d rows: %s", len(ok_rows), n, result.counts())
    return result


def _column(table: pa.Table, name: str) -> list[Any]:
    if name not in table.column_names:
        return [None] * table.num_rows
    return table.column(name).to_pylist()


def _plan_sources(
    table: pa.Table,
    image_root: str | os.PathLike | None,
    tar_index: TarIndex | None,
    status: list[str],
    error: list[str | None],
) -> list[tuple[int, str, str]]:
    """(row, kind, reference) for every row with a local image; fills status/error of all other rows."""
    root = Path(image_root) if image_root is not None else None
    sources: list[tuple[int, str, str]] = []
    columns = zip(_column(table, "key"), _column(table, "image"), _column(table, "url"), strict=True)
    for row, (key, image, url) in enumerate(columns):
        if tar_index is not None and key is not None:
            if str(key) in tar_index:
                sources.append((row, _TAR, str(key)))
            else:
                status[row], error[row] = MISSING, f"no image member for key {key} in {tar_index.tar_path}"
        elif image is not None:
            sources.append((row, _FILE, str(root / image if root is not None else Path(image))))
        elif url is not None:
            status[row], error[row] = SKIPPED_REMOTE, "remote image not fetched (only local sources are read)"
        else:
            status[row], error[row] = NO_IMAGE, "row has no image, key or url"
    return sources


class _ShardImages(Dataset):
    """Decodes and preprocesses one row per item; runs in DataLoader workers. Never raises for a bad image."""

    def __init__(
        self,
        sources: list[tuple[int, str, str]],
        preprocess: Callable[[Any], torch.Tensor],
        tar_index: TarIndex | None,
        max_pixels: int,
        draft: tuple[int, int] | None = None,
    ) -> None:
        self.sources = sources
        self.preprocess = preprocess
        self.tar_index = tar_index
        self.max_pixels = max_pixels
        self.draft = draft

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str, str | None]:
        row, kind, ref = self.sources[i]
        try:
            data = self.tar_index.read(ref) if kind == _TAR else read_local(ref)
            if data is None:
                return row, None, MISSING, f"file not found: {ref}"
            pixels = self.preprocess(decode_image(data, max_pixels=self.max_pixels, draft=self.draft))
        except ImageDecodeError as exc:
            row_status = TOO_LARGE if exc.reason == "too_large" else f"{DECODE_ERROR}:{exc.reason}"
            return row, None, row_status, f"{ref}: {exc}"
        except Exception as exc:  # one image must never end the run; the message keeps what went wrong
            return row, None, f"{DECODE_ERROR}:unexpected", f"{ref}: {type(exc).__name__}: {exc}"
        return row, pixels, OK, None


@dataclass(frozen=True)
class _DecodedBatch:
    rows: list[int]
    status: list[str]
    error: list[str | None]
    ok_rows: list[int]
    images: torch.Tensor | None  # (len(ok_rows), 3, H, W), None when no row of the batch decoded

    def pin_memory(self) -> _DecodedBatch:
        # Called by the DataLoader's pinning thread when the model is on a GPU: faster, async host→GPU copies.
        return replace(self, images=self.images.pin_memory()) if self.images is not None else self


def _collate(items: list[tuple[int, torch.Tensor | None, str, str | None]]) -> _DecodedBatch:
    ok = [(row, pixels) for row, pixels, _, _ in items if pixels is not None]
    return _DecodedBatch(
        rows=[item[0] for item in items],
        status=[item[2] for item in items],
        error=[item[3] for item in items],
        ok_rows=[row for row, _ in ok],
        images=torch.stack([pixels for _, pixels in ok]) if ok else None,
    )


class _ModelBatches:
    """Regroups decoded images into model batches of exactly `batch_size` and embeds them with their captions
    (none when `captions` is None)."""

    def __init__(self, model: ClipModel, captions: list[str | None] | None, batch_size: int) -> None:
        self.model = model
        self.captions = captions
        self.batch_size = batch_size
        self.pending_rows: list[int] = []
        self.pending_images: list[torch.Tensor] = []
        self.img_parts: list[np.ndarray] = [np.zeros((0, model.dim), dtype=np.float16)]
        self.text_parts: list[np.ndarray] = [np.zeros((0, model.dim), dtype=np.float16)]
        self.rows: list[int] = []

    def add(self, rows: list[int], images: torch.Tensor | None) -> None:
        if images is None:
            return
        self.pending_rows.extend(rows)
        self.pending_images.append(images)
        while len(self.pending_rows) >= self.batch_size:
            self._run(self.batch_size)

    def finish(self) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        if self.pending_rows:
            self._run(len(self.pending_rows))
        return (
            np.concatenate(self.img_parts),
            np.concatenate(self.text_parts) if self.captions is not None else None,
            np.asarray(self.rows, dtype=np.int64),
        )

    def _run(self, size: int) -> None:
        images = torch.cat(self.pending_images)
        rows = self.pending_rows[:size]
        self.pending_rows = self.pending_rows[size:]
        self.pending_images = [images[size:]] if len(self.pending_rows) else []
        self.img_parts.append(self.model.encode_images(images[:size]).astype(np.float16))
        if self.captions is not None:
            texts = [self.captions[row] or "" for row in rows]
            self.text_parts.append(self.model.encode_text(texts, batch_size=size).astype(np.float16))
        self.rows.extend(rows)
