"""`sanitize run`: the registered stages, in order, over one run folder, from one config.

Each stage is the same object its own command runs (`sanitize.pipeline.stage.run_stage`), so a pipeline run and a
sequence of single commands write the same files. The runner never names a stage; it adds:

- a plan (`plan_pipeline`): which stages run, which are skipped and why; `--dry-run` prints it;
- one run folder per run: a folder holding another input's run is refused; one whose stages were run with
  another config is refused unless ``resume`` (then those stages rerun: their fingerprints differ);
- resume: every stage skips the shards whose completion markers exist, so rerunning the same command after
  a crash (even ``kill -9``) continues and ends with the same files as an uninterrupted run;
- input checks: an input file that changes or vanishes while a stage runs (its size or modification time
  differs from the start of the run) stops the run with a DataError naming it, and that stage's record is
  voided in run.json, so a rerun (with the file restored) redoes the stage instead of trusting its shards;
- stats: each stage's `StageResult` (counted by the workers, merged on the driver) is its row in the table,
  its entry in RUN/stats.json, and part of the summary under ``"pipeline"``.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sanitize.engines import get_engine
from sanitize.errors import ConfigError, DataError
from sanitize.io import atomic
from sanitize.io.manifest import Manifest, open_manifest
from sanitize.io.runfolder import RunFolder, config_fingerprint, peak_memory_mb
from sanitize.pipeline.config import PipelineConfig
from sanitize.pipeline.registry import stage_class, stage_classes
from sanitize.pipeline.stage import Stage, StageResult, run_stage

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StagePlan:
    """What the pipeline will do with one stage: ``action`` is "run" or "skip", ``why`` says why."""

    stage: str
    action: str
    why: str


def open_input(manifest: str | os.PathLike, config: PipelineConfig) -> Manifest:
    """The manifest as the config's [input] section says to read it."""
    return open_manifest(manifest, **config.section_dict("input"))


def pipeline_stages(config: PipelineConfig) -> list[Stage]:
    """The registered stages the plan shows, built from their sections: those in ``run.stages`` or ``run.skip``,
    and those that run by default (shown as skipped when left out)."""
    run = config.run
    return [cls(config[cls.name]) for cls in stage_classes()
            if cls.name in run.stages or cls.name in run.skip or cls.runs_by_default]


def section_fingerprints(config: PipelineConfig) -> dict[str, str]:
    """Per stage, a digest of the config that stage reads (so a changed key names the stage it changes)."""
    return {cls.name: config_fingerprint(cls(config[cls.name]).fingerprint(config)) for cls in stage_classes()}


def plan_pipeline(manifest: Manifest, config: PipelineConfig, out: str | os.PathLike,
                  *, resume: bool = False) -> list[StagePlan]:
    """The stages in order with what will happen to each. Raises ConfigError when the run cannot start: OUT
    holds another run (see `check_out_folder`), or a stage's `check_plan` refuses (e.g. a skipped embed stage
    with no embeddings in OUT, an audit with no filter stage to audit)."""
    changed = check_out_folder(out, manifest, config, resume=resume)
    run = RunFolder(out)
    finished = set(run.finished_stages()) if run.run_json.exists() else set()
    begun = set(_begun(run)) if run.run_json.exists() else set()
    plans = []
    wanted = set(config.planned_stages())
    for stage in pipeline_stages(config):
        if stage.name not in wanted:
            earlier = "; its earlier results in OUT still count" if stage.name in finished else ""
            plans.append(StagePlan(stage.name, "skip", "not asked for" + earlier))
            continue
        reason = stage.skip_reason()
        if reason:
            plans.append(StagePlan(stage.name, "skip", reason))
            continue
        why = "config changed: reruns" if stage.name in changed else (
            "resumes: finished shards are kept" if stage.name in begun else "new")
        plans.append(StagePlan(stage.name, "run", why))
    running = {p.stage for p in plans if p.action == "run"}
    for stage in pipeline_stages(config):
        if stage.name in running:
            stage.check_plan(running, finished, str(out), config)
    return plans


def check_out_folder(out: str | os.PathLike, manifest: Manifest, config: PipelineConfig,
                     *, resume: bool = False) -> list[str]:
    """Refuse an OUT folder this run must not write into; return the begun stages whose config changed.

    Empty or missing: fine. A run of another input, or a non-empty folder without a run: always refused. A
    run of the same input whose begun stages had another config (or one not started by `sanitize run`):
    refused unless ``resume``.
    """
    path = Path(out)
    if not path.exists():
        return []
    if not path.is_dir():
        raise ConfigError(f"{path}: exists and is not a folder")
    run = RunFolder(path)
    if not run.run_json.exists():
        if any(path.iterdir()):
            raise ConfigError(f"{path}: folder is not empty and holds no run; choose a new --out folder")
        return []
    info = run.info()
    if info.get("input_fingerprint") != manifest.fingerprint():
        raise ConfigError(f"{path}: holds a run of another input ({(info.get('manifest') or {}).get('path')}); "
                          "choose a new --out folder")
    recorded = info.get("pipeline", {}).get("sections")
    if recorded is None:
        if not resume:
            raise ConfigError(f"{path}: holds a run not started by `sanitize run`; pass --resume to continue it")
        return []
    now = section_fingerprints(config)
    changed = [s for s in _begun(run) if s in recorded and s in now and recorded[s] != now[s]]
    if changed and not resume:
        raise ConfigError(f"{path}: holds a run whose {', '.join(changed)} config differs from this one; pass "
                          "--resume to continue it (those stages rerun) or choose a new --out folder")
    return changed


def run_pipeline(
    manifest: str | os.PathLike,
    config: PipelineConfig,
    out: str | os.PathLike,
    *,
    resume: bool = False,
    progress: Callable[[str, int], Any] | None = None,
) -> dict[str, Any]:
    """Run the planned stages of `config` on `manifest` into the run folder `out`; return the summary.

    The summary (also RUN/stats.json["pipeline"]) holds the plan, one stats row per stage that ran, and a
    totals line. Same input and config, same files — whether run at once, resumed after a crash, or on Ray.
    """
    started = time.perf_counter()
    m = open_input(manifest, config)
    plans = plan_pipeline(m, config, out, resume=resume)
    running = {p.stage for p in plans if p.action == "run"}
    stages = [s for s in pipeline_stages(config) if s.name in running]
    seed = config.run.seed
    for stage in stages:  # fails fast (e.g. missing weights) before the run folder is touched
        stage.prepare(seed)
    run = RunFolder.create(out, m)
    inputs = input_state(m)
    _record_pipeline(run, config)

    r = config.run
    results: list[StageResult] = []
    with get_engine(r.engine, address=r.ray_address, num_cpus=r.ray_num_cpus) as engine:
        for stage in stages:
            logger.info("stage %s", stage.name)
            results.append(run_stage(stage, run, engine=engine, seed=seed, progress=progress))
            check_inputs_unchanged(m, inputs, run, stage.name)
    rows = [result.to_dict() for result in results]
    summary = {
        "run": str(run.path),
        "engine": r.engine,
        "plan": [asdict(p) for p in plans],
        "stages": rows,
        "totals": _totals(results, time.perf_counter() - started),
    }
    all_stats = run.stats()
    all_stats["pipeline"] = summary
    atomic.write_json(run.stats_json, all_stats)
    return summary


# ---- input checks ----------------------------------------------------------------------------------------------


def input_state(manifest: Manifest) -> dict[str, tuple[int, int] | None]:
    """(size, modification time in ns) of each input file, None for a missing one: what the fingerprint digests,
    plus the img2dataset tars beside the shards (their images; a vanished tar would silently turn its rows into
    unfetched remote images)."""
    files = [Path(f) for f in manifest.files]
    files += [tar for f in files if (tar := f.with_suffix(".tar")).exists()]
    state: dict[str, tuple[int, int] | None] = {}
    for path in files:
        try:
            st = Path(path).stat()
        except FileNotFoundError:
            state[str(path)] = None
        else:
            state[str(path)] = (st.st_size, st.st_mtime_ns)
    return state


def check_inputs_unchanged(manifest: Manifest, before: dict[str, tuple[int, int] | None], run: RunFolder,
                           stage: str) -> None:
    """After `stage`: raise DataError naming the first input file that changed or vanished since `before`, after
    voiding the stage's record in run.json (its shards may mix old and new input, so a rerun must redo it)."""
    now = input_state(manifest)
    changed = [path for path, state in before.items() if now.get(path) != state]
    if not changed:
        return
    info = run.info()
    if stage in info.get("stages", {}):
        info["stages"][stage]["fingerprint"] = "void: input changed during the stage"
        atomic.write_json(run.run_json, info)
    how = "vanished" if now.get(changed[0]) is None else "changed (size or modification time)"
    more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
    raise DataError(f"{changed[0]}: input file {how} while stage {stage} ran{more}; restore it and rerun (the stage "
                    "is redone) or start a new --out folder")


# ---- stats -----------------------------------------------------------------------------------------------------


def _totals(results: list[StageResult], seconds: float) -> dict[str, Any]:
    """Rows and kept from the sink stage, rows removed by reason (source stages' reasons prefixed with their
    name), time, memory, and the outputs worth showing."""
    sink = next((r for r in results if stage_class(r.stage).role == "sink"), None)
    removed: Counter[str] = Counter()
    outputs: dict[str, str] = {}
    for r in results:
        role = stage_class(r.stage).role
        if r.counts is not None and role in ("source", "filter"):
            removed.update({f"{r.stage}:{k}" if role == "source" else k: v for k, v in r.counts.dropped.items()})
        outputs.update(r.outputs)
    counts = sink.counts if sink is not None else None
    return {"rows": counts.rows_in if counts else None, "kept": counts.kept if counts else None,
            "removed_by_reason": dict(removed), "seconds": round(seconds, 3),
            "peak_memory_mb": round(peak_memory_mb(), 1), "report": outputs.get("report"),
            "kept_manifest": outputs.get("kept_manifest")}


def format_table(summary: dict[str, Any]) -> list[str]:
    """The stats as a markdown table plus the summary line (what `sanitize run` prints)."""
    lines = ["| stage | rows in | kept | dropped | seconds | peak MiB |", "|---|---:|---:|---|---:|---:|"]
    for r in summary["stages"]:
        dropped = r["note"] or ", ".join(f"{k} {v}" for k, v in r["dropped"].items() if v) or "—"
        lines.append(f"| {r['stage']} | {_n(r['rows_in'])} | {_n(r['kept'])} | {dropped} | {r['seconds']:.1f} | "
                     f"{r['peak_memory_mb']:.0f} |")
    t = summary["totals"]
    line = f"{summary['run']}: "
    line += (f"kept {t['kept']:,} of {t['rows']:,} rows" if t["rows"] is not None else "done")
    line += f" in {t['seconds']:.1f} s ({summary['engine']} engine)"
    if t["report"]:
        line += f"; audit report: {t['report']}"
    if t["kept_manifest"]:
        line += f"; kept manifest: {t['kept_manifest']}"
    return [*lines, "", line]


def _n(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"


# ---- run.json bookkeeping --------------------------------------------------------------------------------------


def _record_pipeline(run: RunFolder, config: PipelineConfig) -> None:
    info = run.info()
    info["pipeline"] = {"config": config.to_dict(), "sections": section_fingerprints(config)}
    atomic.write_json(run.run_json, info)


def _begun(run: RunFolder) -> list[str]:
    """Stages recorded as begun in run.json."""
    return list(run.info().get("stages", {}))
