"""Per-clustering checkpoints: a finished clustering's candidate pairs, and a marker written last.

A rerun with the same checkpoint folder skips every clustering whose marker is there and matches the run
(same data fingerprint and options), so an interrupted run resumes with identical final output. A marker
from a different run is refused rather than silently mixed in.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sanitize.errors import ConfigError
from sanitize.io.atomic import write_json, write_parquet

logger = logging.getLogger(__name__)

FINGERPRINT_ROWS = 64


def data_fingerprint(x: np.ndarray, representatives: np.ndarray) -> str:
    """sha256 of the array's shape and dtype, a fixed spread of its rows, and the exact-duplicate map.

    Cheap (reads FINGERPRINT_ROWS rows); it catches a different file, not a single edited value.
    """
    n = int(x.shape[0])
    h = hashlib.sha256(f"{tuple(x.shape)}|{x.dtype.str}".encode())
    for i in np.unique(np.linspace(0, n - 1, num=min(n, FINGERPRINT_ROWS)).astype(np.int64)):
        h.update(np.ascontiguousarray(x[i]).tobytes())
    h.update(np.ascontiguousarray(representatives, dtype=np.int64).tobytes())
    return h.hexdigest()


def _paths(folder: Path, clustering: int) -> tuple[Path, Path]:
    return folder / f"clustering_{clustering:03d}.parquet", folder / f"clustering_{clustering:03d}.done.json"


def load_clustering(
    folder: str | Path, clustering: int, key: dict
) -> tuple[np.ndarray, np.ndarray] | None:
    """The saved candidate pairs (a, b) of `clustering`, or None when it has not finished.

    `key`: the run's fingerprint and options. Raises ConfigError when the folder holds this clustering
    for a different run.
    """
    table_path, marker_path = _paths(Path(folder), clustering)
    if not marker_path.exists():
        return None
    saved = json.loads(marker_path.read_text())
    if saved != json.loads(json.dumps(key)):
        differ = sorted(k for k in set(saved) | set(key) if saved.get(k) != key.get(k))
        raise ConfigError(
            f"checkpoint_dir {folder}: {marker_path.name} belongs to a different run "
            f"(differs in {', '.join(differ)}); use an empty folder"
        )
    table = pq.read_table(table_path)
    logger.info("clustering %d: resumed %d candidate pairs from %s", clustering, len(table), table_path)
    return table["a"].to_numpy(), table["b"].to_numpy()


def save_clustering(folder: str | Path, clustering: int, key: dict, a: np.ndarray, b: np.ndarray) -> None:
    """Save the candidate pairs of `clustering`, then its marker (last, so a crash leaves no marker)."""
    table_path, marker_path = _paths(Path(folder), clustering)
    write_parquet(table_path, pa.table({"a": pa.array(a, pa.int64()), "b": pa.array(b, pa.int64())}))
    write_json(marker_path, key)
