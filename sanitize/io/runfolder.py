"""The run folder: one per run, the only place a run writes.

```
RUN/
  run.json                         layout version, manifest spec, input fingerprint, versions, per stage: config,
                                   fingerprint, role, folder and decision sets
  embeddings/                      clip-retrieval layout (img_emb/, text_emb/, metadata/)
  stages/<stage>/00000.parquet     row-aligned sidecar: uid, keep, reason, + the stage's own columns
  stages/classify/<category>/      one such set of sidecars per category, and certificate.json
  stages/<stage>/_done/00000       completion marker, written after the shard's files; holds the shard's counts
  stats.json                       per stage: rows in, kept, dropped by reason, seconds, peak memory, details
  audit/                           report.{html,md,json}, weights.parquet, _done/
  export/                          kept manifest shards + removed.parquet (+ removed/ per shard), _done/
```

A stage is resumable: a shard whose marker exists is skipped on a rerun. A stage's config is fingerprinted; a
rerun with a different config for a finished stage starts that stage afresh (its old files are removed first).
Run folders of an older layout are refused with a message naming their version (they are not migrated).
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
from sanitize.io.manifest import ColumnMap, Manifest, ManifestSpec, list_shard_files, read_parquet, read_schema

logger = logging.getLogger(__name__)

# Version of the run folder's layout. 2: stage outputs under the folders run.json names, classify's per category
# under stages/classify/, counts in the completion markers. Older folders are refused, not migrated.
LAYOUT = 2


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


def _json_object(path: Path) -> dict[str, Any]:
    """The JSON object in `path`. Raises DataError naming the file when it is unreadable, not JSON, not UTF-8 or
    not an object."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as e:  # ValueError: not JSON, or not UTF-8
        raise DataError(f"{path}: unreadable ({e})") from e
    if not isinstance(value, dict):
        raise DataError(f"{path}: unreadable (a JSON {type(value).__name__}, not an object)")
    return value


def _misshapen(info: dict[str, Any]) -> str | None:
    """What in run.json's contents has a type no writer gives it (the first such key), or None: the keys that
    readers index into are checked here once, so a hand-edited or corrupted file is one error naming the file."""
    def kind(value: Any, *types: type) -> bool:
        return isinstance(value, types) and not isinstance(value, bool)

    stages = info.get("stages", {})
    if not kind(stages, dict):
        return "'stages' is not an object"
    for name, entry in stages.items():
        if not kind(entry, dict) or not all(kind(entry.get(k), str) for k in ("fingerprint", "role", "folder")) \
                or not kind(entry.get("config"), dict) or not kind(entry.get("decisions"), dict) \
                or not all(kind(path, str) for path in entry["decisions"].values()):
            return f"stage entry {name!r} is misshapen"
    manifest = info.get("manifest")
    if manifest is not None:
        columns = manifest.get("columns") if kind(manifest, dict) else None
        if not kind(columns, dict) or not kind(manifest.get("path"), str) or not kind(manifest.get("preset"), str) \
                or not kind(manifest.get("image_root", ""), str, type(None)) \
                or not set(columns) <= set(ColumnMap.__dataclass_fields__) \
                or not all(kind(v, str, type(None)) for k, v in columns.items() if k != "id_cols") \
                or not kind(columns.get("id_cols", []), list, type(None)) \
                or not all(kind(c, str) for c in columns.get("id_cols") or []):
            return "'manifest' is misshapen"
    files = info.get("input_files", [])
    if not kind(files, list, type(None)) or not all(kind(f, str) for f in files or []):
        return "'input_files' is not a list of paths"
    if not kind(info.get("input_fingerprint", ""), str, type(None)):
        return "'input_fingerprint' is not text"
    if not kind(info.get("pipeline", {}), dict):
        return "'pipeline' is not an object"
    return None


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
            "layout": LAYOUT,
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
        """run.json's contents. Raises DataError when unreadable, ConfigError when written in another layout."""
        info = _json_object(self.run_json)
        if info.get("layout", 1) != LAYOUT:
            raise ConfigError(f"{self.run_json}: a run folder of layout {info.get('layout', 1)} (sanitize "
                              f"{info.get('sanitize_version', '?')}); this sanitize ({__version__}) reads layout "
                              f"{LAYOUT} only: rerun into a new --out folder")
        wrong = _misshapen(info)
        if wrong:
            raise DataError(f"{self.run_json}: unreadable ({wrong})")
        return info

    def manifest(self) -> Manifest:
        """Reopen the run's input manifest exactly as it was opened for the run."""
        info = self.info()
        if not info.get("manifest"):
            raise DataError(f"{self.run_json}: this run has no input manifest")
        spec = ManifestSpec.from_dict(info["manifest"])
        files = [Path(f) for f in info.get("input_files") or []] or list_shard_files(spec.path)
        missing = [f for f in files if not f.exists()]
        if missing:
            raise DataError(f"{missing[0]}: input file of this run is missing (as {self.run_json} records it)")
        c = spec.columns
        names = set(read_schema(files[0]).names)
        absent = [col for col in (c.caption, c.image, c.url, c.key, c.success_col) if col and col not in names]
        if absent:  # a hand-edited run.json, or an input replaced by another file
            raise DataError(f"{files[0]}: no column {absent[0]!r}, which {self.run_json} records as one of the "
                            "manifest's columns")
        return Manifest(spec, files)

    # -- stages ---------------------------------------------------------------------------------------------
    @property
    def embeddings_dir(self) -> Path:
        return self.path / "embeddings"

    def stage_dir(self, stage: str) -> Path:
        """Where `stage` writes by default: RUN/stages/<stage>/ (a stage may name another folder in `begin_stage`)."""
        return self.path / "stages" / stage

    def begin_stage(self, stage: str, config: dict[str, Any], *, role: str = "filter",
                    decisions: dict[str, Path] | None = None, folder: Path | None = None,
                    clear: tuple[Path, ...] | None = None) -> bool:
        """Record ``stage``'s config; returns True when finished shards from an equal config can be reused.

        `role` is the stage's role (see `sanitize.pipeline.stage`); `decisions` names the stage's sets of per-row
        decisions and their folders (default: one set named like the stage in its folder; none for a "report" or
        "sink" stage); `folder` is where its files and completion markers live (default `stage_dir`). A different
        config for a stage that already has files removes what `clear` names (default: `folder`), so the stage
        reruns. The fingerprint of every stage but embed includes embed's, so re-embedding reruns the stages after
        it. Raises ConfigError when a decision set is named like one another stage writes.
        """
        info = self.info()
        folder = self.stage_dir(stage) if folder is None else Path(folder)
        if decisions is None:
            decisions = {stage: folder} if role in ("source", "filter") else {}
        for other, entry in info.get("stages", {}).items():
            clash = set(decisions) & set(entry.get("decisions", {})) if other != stage else set()
            if clash:
                raise ConfigError(f"{self.path}: stage {stage!r} would write decisions named {sorted(clash)[0]!r}, "
                                  f"which stage {other!r} already writes; rename one of them")
        # Every later stage reads the embeddings: new embeddings make its finished shards stale too.
        upstream = info.get("stages", {}).get("embed", {}).get("fingerprint") if stage != "embed" else None
        fp = config_fingerprint({**config, "_embeddings": upstream} if upstream else config)
        previous = info.get("stages", {}).get(stage)
        if previous and previous.get("fingerprint") == fp:
            return True
        if previous:
            logger.warning("%s: config of stage %r changed; rerunning it", self.path, stage)
            for path in (folder,) if clear is None else clear:
                shutil.rmtree(path, ignore_errors=True)
        info.setdefault("stages", {})[stage] = {
            "fingerprint": fp, "config": config, "role": role, "folder": self.relative(folder),
            "decisions": {name: self.relative(path) for name, path in decisions.items()},
        }
        atomic.write_json(self.run_json, info)
        return False

    def stage_config(self, stage: str) -> dict[str, Any] | None:
        entry = self.info().get("stages", {}).get(stage)
        return entry["config"] if entry else None

    def stage_folder(self, stage: str) -> Path:
        """The folder `stage` was begun with (its files and `_done/` markers)."""
        entry = self.info().get("stages", {}).get(stage)
        return self._absolute(entry["folder"]) if entry else self.stage_dir(stage)

    def marker(self, stage: str, index: int) -> Path:
        """The completion marker of shard `index` of `stage` (or of the stage that writes decision set `stage`)."""
        return self.stage_folder(self.owner(stage)) / "_done" / f"{index:05d}"

    def is_done(self, stage: str, index: int) -> bool:
        return self.marker(stage, index).exists()

    def mark_done(self, stage: str, index: int, stats: dict[str, Any] | None = None) -> None:
        """Write the completion marker of one shard, holding what the shard's worker counted (`stats`, JSON).
        Call after every file of the shard is in place."""
        atomic.write_json(self.marker(stage, index), stats or {})

    def shard_stats(self, stage: str) -> list[dict[str, Any]]:
        """The counts stored in `stage`'s completion markers, in shard order."""
        markers = sorted((self.stage_folder(stage) / "_done").glob("[0-9]*"))
        out = []
        for path in markers:
            try:
                out.append(json.loads(path.read_text()))
            except (OSError, json.JSONDecodeError) as exc:
                raise DataError(f"{path}: unreadable completion marker ({exc})") from None
        return out

    def shard_path(self, stage: str, index: int) -> Path:
        """Shard `index` of the decision set (or single-set stage) called `stage`."""
        return self._decision_folder(stage) / f"{index:05d}.parquet"

    def write_decisions(self, name: str, index: int, table: pa.Table) -> None:
        """Write shard `index` of decision set `name` (columns ``uid``, ``keep``, ``reason`` + the stage's own)."""
        for col in ("uid", "keep", "reason"):
            if col not in table.column_names:
                raise ValueError(f"stage table lacks column {col!r}")
        atomic.write_parquet(self.shard_path(name, index), table)

    def write_shard(self, stage: str, index: int, table: pa.Table, stats: dict[str, Any] | None = None) -> None:
        """Write one row-aligned sidecar shard of a single-set stage, then its marker (holding `stats`)."""
        self.write_decisions(stage, index, table)
        self.mark_done(stage, index, stats)

    def done_shards(self, stage: str) -> set[int]:
        """Indices of the finished shards of `stage` (or of the stage that writes decision set `stage`), from one
        listing of its markers (`is_done` reads run.json per call: use this in loops over shards)."""
        return {int(p.name) for p in (self.stage_folder(self.owner(stage)) / "_done").glob("[0-9]*")}

    def todo(self, stage: str, n_shards: int) -> list[int]:
        """Shards 0 … n_shards - 1 of `stage` whose marker is missing, in order."""
        done = self.done_shards(stage)
        return [i for i in range(n_shards) if i not in done]

    def read_stage(self, stage: str, columns: list[str] | None = None) -> Iterator[tuple[int, pa.Table]]:
        """Yield (shard index, table) for every finished shard of decision set (or stage) ``stage``."""
        for index in sorted(self.done_shards(stage)):
            yield index, read_parquet(self.shard_path(stage, index), columns=columns)

    def finished_stages(self) -> list[str]:
        """Stages with at least one finished shard, in the order they were begun."""
        return [s for s in self.info().get("stages", {}) if self.done_shards(s)]

    def decision_sets(self, role: str = "filter") -> list[str]:
        """Names of the decision sets of finished stages with `role` (a classify stage has one per category),
        sorted by name."""
        stages = self.info().get("stages", {})
        finished = set(self.finished_stages())
        return sorted(name for s, entry in stages.items() if entry.get("role") == role and s in finished
                      for name in entry.get("decisions", {}))

    def _decision_folder(self, name: str) -> Path:
        for entry in self.info().get("stages", {}).values():
            if name in entry.get("decisions", {}):
                return self._absolute(entry["decisions"][name])
        return self.stage_dir(name)

    def owner(self, name: str) -> str:
        """The stage that wrote decision set `name`."""
        for stage, entry in self.info().get("stages", {}).items():
            if name in entry.get("decisions", {}):
                return stage
        return name

    def relative(self, path: Path) -> str:
        """`path` relative to the run folder when inside it, else absolute (how run.json records paths)."""
        path = Path(path)
        try:
            return str(path.relative_to(self.path))
        except ValueError:
            return str(path.resolve())

    def _absolute(self, recorded: str) -> Path:
        path = Path(recorded)
        return path if path.is_absolute() else self.path / path

    # -- stats ----------------------------------------------------------------------------------------------
    @property
    def stats_json(self) -> Path:
        return self.path / "stats.json"

    def stats(self) -> dict[str, Any]:
        """stats.json's contents ({} before any stage finished). Raises DataError when unreadable."""
        if not self.stats_json.exists():
            return {}
        return _json_object(self.stats_json)

    def record_stats(self, stage: str, stats: dict[str, Any]) -> None:
        """Replace ``stage``'s entry in stats.json (atomic)."""
        all_stats = self.stats()
        all_stats[stage] = stats
        atomic.write_json(self.stats_json, all_stats)
