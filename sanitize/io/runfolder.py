"""The run folder: one per run, the only place a run writes.

```
RUN/
  run.json                         manifest spec, input fingerprint, versions, per-stage config + fingerprint
  embeddings/                      clip-retrieval layout (img_emb/, text_emb/, metadata/)
  stages/<stage>/00000.parquet     row-aligned sidecar: uid, keep, reason, + the stage's own columns
  stages/<stage>/_done/00000       completion marker, written after the shard's files
  stats.json                       per stage: rows in, kept, dropped by reason, seconds, peak memory
  export/                          kept manifest shards + removed.parquet
```

A stage is resumable: a shard whose marker exists is skipped on a rerun. A stage's config is fingerprinted; a
rerun with a different config for a finished stage starts that stage afresh (its old files are removed first).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import resource
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from sanitize import __version__
from sanitize.errors import ConfigError, DataError
from sanitize.io import atomic
from sanitize.io.manifest import Manifest, ManifestSpec, list_shard_files, read_parquet

logger = logging.getLogger(__name__)


def config_fingerprint(config: dict[str, Any]) -> str:
    """A short digest of a JSON-serialisable config (key order does not matter)."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def versions() -> dict[str, str]:
    """Versions of Python, this package and the libraries whose behaviour affects results."""
    out = {"python": platform.python_version(), "sanitize": __version__}
    for name in ("numpy", "pyarrow", "polars", "torch", "open_clip", "faiss", "sklearn"):
        mod = sys.modules.get(name)
        if mod is not None:
            out[name] = str(getattr(mod, "__version__", "?"))
    return out


def peak_memory_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class RunFolder:
    """A run folder on disk. Build with :meth:`create` (new or resumed run) or :meth:`open` (existing run)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    # -- lifecycle ------------------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike, manifest: Manifest | None, *, resume: bool = True) -> RunFolder:
        """Create ``path`` for ``manifest``, or reopen it when it already holds a run of the same input.

        Raises ConfigError when the folder holds another run's files (a different input fingerprint), or
        holds unrelated files, unless ``resume`` is False and it is empty.
        """
        run = cls(path)
        if run.path.exists() and not run.path.is_dir():
            raise ConfigError(f"{run.path}: exists and is not a folder")
        info = run.info() if run.run_json.exists() else None
        input_fp = manifest.fingerprint() if manifest else None
        if info is not None:
            if info.get("input_fingerprint") != input_fp:
                raise ConfigError(f"{run.path}: holds a run of another input ({info.get('manifest', {}).get('path')}); "
                                  "choose a new --out folder")
            return run
        if run.path.is_dir() and any(run.path.iterdir()):
            raise ConfigError(f"{run.path}: folder is not empty and holds no run; choose a new --out folder")
        run.path.mkdir(parents=True, exist_ok=True)
        atomic.write_json(run.run_json, {
            "sanitize_version": __version__,
            "manifest": manifest.spec.to_dict() if manifest else None,
            "input_fingerprint": input_fp,
            "input_files": [str(f) for f in manifest.files] if manifest else [],
            "versions": versions(),
            "stages": {},
        })
        return run

    @classmethod
    def open(cls, path: str | os.PathLike) -> RunFolder:
        """Open an existing run folder. Raises DataError when ``path`` holds no run.json."""
        run = cls(path)
        if not run.run_json.is_file():
            raise DataError(f"{run.path}: not a run folder (no run.json)")
        return run

    @property
    def run_json(self) -> Path:
        return self.path / "run.json"

    def info(self) -> dict[str, Any]:
        try:
            return json.loads(self.run_json.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"{self.run_json}: unreadable ({e})") from e

    def manifest(self) -> Manifest:
        """Reopen the run's input manifest exactly as it was opened for the run."""
        info = self.info()
        if not info.get("manifest"):
            raise DataError(f"{self.run_json}: this run has no input manifest")
        spec = ManifestSpec.from_dict(info["manifest"])
        files = [Path(f) for f in info.get("input_files") or []] or list_shard_files(spec.path)
        missing = [f for f in files if not f.exists()]
        if missing:
            raise DataError(f"{missing[0]}: input file of this run is missing")
        return Manifest(spec, files)

    # -- stages ---------------------------------------------------------------------------------------------
    @property
    def embeddings_dir(self) -> Path:
        return self.path / "embeddings"

    def stage_dir(self, stage: str) -> Path:
        return self.path / "stages" / stage

    def begin_stage(self, stage: str, config: dict[str, Any]) -> bool:
        """Record ``stage``'s config; returns True when finished shards from an equal config can be reused.

        A different config for a stage that already has files removes those files (the stage reruns). The
        fingerprint of every stage but embed includes embed's, so re-embedding reruns the stages after it.
        """
        info = self.info()
        # Every later stage reads the embeddings: new embeddings make its finished shards stale too.
        upstream = info.get("stages", {}).get("embed", {}).get("fingerprint") if stage != "embed" else None
        fp = config_fingerprint({**config, "_embeddings": upstream} if upstream else config)
        previous = info.get("stages", {}).get(stage)
        if previous and previous.get("fingerprint") == fp:
            return True
        folder = self.stage_dir(stage) if stage != "embed" else self.embeddings_dir
        if previous:
            logger.warning("%s: config of stage %r changed; rerunning it", self.path, stage)
            shutil.rmtree(self.stage_dir(stage), ignore_errors=True)
            if stage == "embed":
                shutil.rmtree(folder, ignore_errors=True)
        info.setdefault("stages", {})[stage] = {"fingerprint": fp, "config": config}
        atomic.write_json(self.run_json, info)
        return False

    def stage_config(self, stage: str) -> dict[str, Any] | None:
        entry = self.info().get("stages", {}).get(stage)
        return entry["config"] if entry else None

    def marker(self, stage: str, index: int) -> Path:
        return self.stage_dir(stage) / "_done" / f"{index:05d}"

    def is_done(self, stage: str, index: int) -> bool:
        return self.marker(stage, index).exists()

    def mark_done(self, stage: str, index: int) -> None:
        """Write the completion marker for one shard. Call after every file of the shard is in place."""
        atomic.write_text(self.marker(stage, index), "done\n")

    def shard_path(self, stage: str, index: int) -> Path:
        return self.stage_dir(stage) / f"{index:05d}.parquet"

    def write_shard(self, stage: str, index: int, table: pa.Table) -> None:
        """Write one row-aligned sidecar shard (must have ``uid``, ``keep``, ``reason``), then its marker."""
        for col in ("uid", "keep", "reason"):
            if col not in table.column_names:
                raise ValueError(f"stage table lacks column {col!r}")
        atomic.write_parquet(self.shard_path(stage, index), table)
        self.mark_done(stage, index)

    def read_stage(self, stage: str) -> Iterator[tuple[int, pa.Table]]:
        """Yield (shard index, table) for every finished shard of ``stage``, in shard order."""
        done = sorted(int(p.name) for p in (self.stage_dir(stage) / "_done").glob("[0-9]*"))
        for index in done:
            yield index, read_parquet(self.shard_path(stage, index))

    def finished_stages(self) -> list[str]:
        """Stages with at least one finished shard, in the order they were begun."""
        stages = self.info().get("stages", {})
        return [s for s in stages if s != "embed" and any((self.stage_dir(s) / "_done").glob("[0-9]*"))]

    # -- stats ----------------------------------------------------------------------------------------------
    @property
    def stats_json(self) -> Path:
        return self.path / "stats.json"

    def stats(self) -> dict[str, Any]:
        if not self.stats_json.exists():
            return {}
        return json.loads(self.stats_json.read_text())

    def record_stats(self, stage: str, stats: dict[str, Any]) -> None:
        """Replace ``stage``'s entry in stats.json (atomic)."""
        all_stats = self.stats()
        all_stats[stage] = stats
        atomic.write_json(self.stats_json, all_stats)
