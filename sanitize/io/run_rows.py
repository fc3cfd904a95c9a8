"""Reading a run's embedded rows by uid: their metadata, their images, and the uid of an image path.

`sanitize embed` writes one metadata shard per embedding shard, ``RUN/embeddings/metadata/metadata_*.parquet``,
with uid, caption, url, image, key, shard and row. These functions look rows up there and fetch their image
bytes from the run's input (tar members or image files). They only read.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sanitize.errors import DataError
from sanitize.io.images import TarIndex, read_local
from sanitize.io.manifest import read_parquet, uid_column
from sanitize.io.runfolder import RunFolder

logger = logging.getLogger(__name__)


def metadata_files(run: RunFolder) -> list[Path]:
    """The run's embedding metadata shards (uid, caption, url, image, key, shard, row), in shard order.

    DataError when the run has none (it was not embedded yet).
    """
    files = sorted((run.embeddings_dir / "metadata").glob("metadata_*.parquet"))
    if not files:
        raise DataError(f"{run.path}: no embeddings (run `sanitize embed` first)")
    return files


def metadata_rows(run: RunFolder, uids: np.ndarray | list[str], columns: tuple[str, ...] = ()) -> dict[str, dict]:
    """Metadata rows (`uid` plus those of `columns` the shards have) of the `uids` the run embedded, by uid.

    Uids the run did not embed are absent from the result; the dict is in shard and row order.
    """
    wanted = set(np.asarray(uids, dtype=str).tolist())
    found: dict[str, dict] = {}
    for path in metadata_files(run):
        names = pq.read_schema(path).names
        table = read_parquet(path, columns=["uid", *[c for c in columns if c in names]])
        table = table.set_column(0, "uid", uid_column(table, "uid", path=path))  # uids as the pool spells them
        hit = pc.is_in(table["uid"], value_set=pa.array(sorted(wanted), type=pa.string()))
        for row in table.filter(hit).to_pylist():
            found[row["uid"]] = row
    return found


def row_images(run: RunFolder, rows: dict[str, dict]) -> dict[str, bytes]:
    """Image bytes of metadata `rows` (uid → row with shard, key, image) from the run's input, by uid.

    Images come from files under the manifest's image root or from the members of the input shards' tars.
    Rows whose image cannot be read are left out; a run whose manifest is gone gives {} (with a warning).
    """
    try:
        manifest = run.manifest()
    except DataError as exc:
        logger.warning("no thumbnails: %s", exc)
        return {}
    images: dict[str, bytes] = {}
    tars: dict[int, TarIndex | None] = {}
    for uid, row in rows.items():
        shard, key, image = row.get("shard"), row.get("key"), row.get("image")
        data = None
        if image and manifest.image_root is not None:
            data = read_local(manifest.image_root / image)
        elif key is not None and shard is not None:
            if shard not in tars:
                tar = manifest.files[shard].with_suffix(".tar") if shard < len(manifest.files) else None
                tars[shard] = TarIndex.build(tar) if tar is not None and tar.exists() else None
            if tars[shard] is not None and key in tars[shard]:
                data = tars[shard].read(key)
        if data:
            images[uid] = data
    return images


def image_path_to_uid(run: RunFolder) -> dict[str, str]:
    """Image path (as in the manifest, and its bare file name) → uid, for files that list images by path.

    When two images share a file name, the bare name maps to the first one; full paths are always exact.
    """
    mapping: dict[str, str] = {}
    for path in metadata_files(run):
        table = read_parquet(path, columns=["uid", "image"])
        for uid, image in zip(table["uid"].to_pylist(), table["image"].to_pylist(), strict=True):
            if image:
                mapping[image] = uid
                mapping.setdefault(Path(image).name, uid)
    return mapping
