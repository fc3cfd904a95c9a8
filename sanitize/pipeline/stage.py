"""The stage contract: what every stage of `sanitize run` is, so the runner can loop over stages without naming one.

A stage is one class with

- ``name``: its config section, its folder under ``RUN/stages/`` and its row in the stats table;
- ``Config``: a frozen dataclass whose fields (made with :func:`sanitize.pipeline.options.option`) are the stage's
  TOML keys, `--set` keys and single-command CLI options, each declared once;
- ``run(context)``: the work. Per-shard work goes to ``context.engine`` as a `ShardWorker`; each shard's files are
  written first and its completion marker last, and the marker holds the shard's `ShardStats`, counted by the
  worker that touched the rows. The driver adds them up (``a + b``) into the `StageResult`, which is both the row
  of the pipeline's table and the stage's entry in ``stats.json``.

Roles: a ``"source"`` stage makes the rows later stages read (embed; rows it cannot embed are dropped), a
``"filter"`` stage writes keep/reason decisions per row (classify, dedup, caption_length), a ``"report"`` stage
reads the decisions (audit), a ``"sink"`` stage writes the result (export). Export and audit consider every
filter stage's decisions, whatever its name.
"""

from __future__ import annotations

import abc
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from sanitize.engines import Engine
from sanitize.errors import ConfigError
from sanitize.io.manifest import Manifest
from sanitize.io.runfolder import RunFolder, peak_memory_mb

ROLES = ("source", "filter", "report", "sink")


@dataclass(frozen=True)
class ShardStats:
    """What one stage did to some rows: rows in, kept, dropped by reason (a row dropped for two reasons counts under
    both), and `other` additive counts a stage keeps for itself (e.g. rows two categories both removed).

    Workers return one per shard; ``a + b`` merges them. Keys come out sorted, so the sum does not depend on the
    order in which shards finished.
    """

    rows_in: int = 0
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    other: dict[str, int] = field(default_factory=dict)

    def __add__(self, other: ShardStats) -> ShardStats:
        return ShardStats(self.rows_in + other.rows_in, self.kept + other.kept,
                          _add_counts(self.dropped, other.dropped), _add_counts(self.other, other.other))

    @classmethod
    def total(cls, parts: Iterable[ShardStats]) -> ShardStats:
        """The sum of `parts` (an empty ShardStats when there are none)."""
        out = cls()
        for part in parts:
            out = out + part
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"rows_in": self.rows_in, "kept": self.kept, "dropped": dict(self.dropped), "other": dict(self.other)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShardStats:
        return cls(int(data["rows_in"]), int(data["kept"]), dict(data.get("dropped", {})), dict(data.get("other", {})))


def _add_counts(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: a.get(k, 0) + b.get(k, 0) for k in sorted(set(a) | set(b))}


@dataclass(frozen=True)
class StageResult:
    """One stage's outcome: its merged counts (None for a stage that decides on no rows), time, memory, engine,
    `details` only this stage has (e.g. certificates, pair recall), `outputs` (paths worth showing: ``report``,
    ``export``) and `note` (the table cell of a stage without counts, e.g. "3 flag(s)")."""

    stage: str
    counts: ShardStats | None
    seconds: float
    peak_memory_mb: float
    engine: str
    details: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The stats row: what `stats.json` holds for the stage and what the pipeline's table shows."""
        counts = self.counts.to_dict() if self.counts is not None else {"rows_in": None, "kept": None, "dropped": {}}
        if not counts.get("other"):
            counts.pop("other", None)
        return {"stage": self.stage, **counts, "seconds": round(self.seconds, 3),
                "peak_memory_mb": round(self.peak_memory_mb, 1), "engine": self.engine, "note": self.note,
                "outputs": dict(self.outputs), **self.details}


def stored_counts(run: RunFolder, stage: str) -> ShardStats:
    """The sum of the counts in `stage`'s completion markers: every finished shard, this call's or an earlier one's."""
    return ShardStats.total(ShardStats.from_dict(d) for d in run.shard_stats(stage) if d)


@dataclass
class StageContext:
    """What a stage runs with: the run folder, the engine, the run's seed, and an optional `progress(stage, rows)`."""

    run: RunFolder
    engine: Engine
    seed: int = 0
    progress: Callable[[str, int], Any] | None = None

    def result(self, stage: Stage, started: float, counts: ShardStats | None, **extra: Any) -> StageResult:
        """A StageResult for `stage` timed from `started` (a `time.perf_counter()` value)."""
        return StageResult(stage.name, counts, time.perf_counter() - started, peak_memory_mb(), self.engine.name,
                           **extra)


class Stage(abc.ABC):
    """One stage of the pipeline; see the module docstring. Subclasses set the class attributes and `run`."""

    name: ClassVar[str]
    Config: ClassVar[type]
    role: ClassVar[str] = "filter"
    requires: ClassVar[tuple[str, ...]] = ("embed",)
    runs_by_default: ClassVar[bool] = True
    summary: ClassVar[str] = ""  # what the stage does, in one line (heads its section in `sanitize init`)

    def __init__(self, config: Any = None) -> None:
        self.config = self.Config() if config is None else config
        if not isinstance(self.config, self.Config):
            raise TypeError(f"stage {self.name!r} takes a {self.Config.__name__}, got {type(self.config).__name__}")

    def skip_reason(self) -> str | None:
        """Why the pipeline skips this stage although it was asked for (e.g. nothing to filter with), or None."""
        return None

    def fingerprint(self, config: Any) -> dict[str, Any]:
        """What the pipeline compares between two `sanitize run` calls to tell that this stage's config changed
        (`config`: the whole `PipelineConfig`). Default: the stage's own section."""
        return config.section_dict(self.name)

    def prepare(self, seed: int) -> None:  # noqa: B027  (optional hook: most stages need nothing here)
        """Load what can fail before the run folder is touched (e.g. model weights). Default: nothing."""

    def check_plan(self, running: set[str], finished: set[str], out: str, config: Any) -> None:
        """Raise ConfigError when this stage cannot run in a plan where `running` stages run and `finished` ones
        have results in the run folder (`config`: the whole `PipelineConfig`, for what other stages will write).
        Default: every stage in `requires` runs or has finished."""
        for need in self.requires:
            if need not in running and need not in finished:
                raise ConfigError(f"{out}: the {need} stage is skipped but the folder has no {need} results, which "
                                  f"the {self.name} stage needs; run {need} first")

    @abc.abstractmethod
    def run(self, context: StageContext) -> StageResult:
        """Do the stage's work over ``context.run``, resumably; return its result (also recorded in stats.json)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"


class ManifestShardWorker:
    """Base of a `ShardWorker` that reads the run's input manifest shard by shard: it keeps the run folder's path,
    opens the manifest once per process in `setup()`, and is copied to other processes without it. Subclasses
    implement `__call__(index)` with ``self.manifest`` and ``self.run``."""

    uses_gpu = False

    def __init__(self, run_path: str | os.PathLike) -> None:
        self.run = RunFolder(run_path)
        self.manifest: Manifest | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "manifest": None}

    def setup(self) -> None:
        if self.manifest is None:
            self.manifest = self.run.manifest()


def run_stage(stage: Stage, run: RunFolder, *, engine: Engine | None = None, seed: int = 0,
              progress: Callable[[str, int], Any] | None = None) -> StageResult:
    """Run one stage over `run` (what a single-stage command and the pipeline both call) and record its result in
    stats.json. `engine` defaults to the local engine."""
    from sanitize.engines import resolve_engine

    run.stats()  # an unreadable stats.json fails here, before the stage writes anything a rerun would trust
    result = stage.run(StageContext(run, resolve_engine(engine), seed, progress))
    run.record_stats(stage.name, result.to_dict())
    return result
