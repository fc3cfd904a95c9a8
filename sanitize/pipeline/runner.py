"""`sanitize run`: the stages embed → classify → dedup → audit → export over one run folder, from one config.

Each stage is the same function its own command calls (sanitize/pipeline/stages/), so a pipeline
run and a sequence of single commands write the same files. The pipeline adds:

- a plan (`plan_pipeline`): which stages run, which are skipped and why; `--dry-run` prints it;
- one run folder per run: a folder holding another input's run is refused; one whose stages were run with
  another config is refused unless ``resume`` (then those stages rerun: their fingerprints differ);
- resume: every stage skips the shards whose completion markers exist, so rerunning the same command after
  a crash (even ``kill -9``) continues and ends with the same files as an uninterrupted run;
- stats per stage (rows in, kept, dropped by reason, seconds, peak memory) in RUN/stats.json under
  ``"pipeline"``, and a summary.
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

import pyarrow.compute as pc

from sanitize.engines import get_engine
from sanitize.errors import ConfigError
from sanitize.io import atomic
from sanitize.io.manifest import Manifest, open_manifest
from sanitize.io.runfolder import RunFolder, config_fingerprint, peak_memory_mb
from sanitize.pipeline.config import planned_stages

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StagePlan:
    """What the pipeline will do with one stage: ``action`` is "run" or "skip", ``why`` says why."""

    stage: str
    action: str
    why: str


def open_input(manifest: str | os.PathLike, config: dict[str, dict[str, Any]]) -> Manifest:
    """The manifest as the config's [input] section says to read it."""
    return open_manifest(manifest, **config["input"])


def section_fingerprints(config: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Per stage, a digest of the config that stage reads (so a changed key names the stage it changes)."""
    seed = config["run"]["seed"]
    return {
        "embed": config_fingerprint({"input": config["input"], "embed": config["embed"]}),
        "classify": config_fingerprint(config["classify"]),
        "dedup": config_fingerprint({**config["dedup"], "seed": seed}),
        "audit": config_fingerprint(config["audit"]),
        "export": config_fingerprint(config["export"]),
    }


def plan_pipeline(manifest: Manifest, config: dict[str, dict[str, Any]], out: str | os.PathLike,
                  *, resume: bool = False) -> list[StagePlan]:
    """The stages in order with what will happen to each. Raises ConfigError when the run cannot start:
    OUT holds another run (see `check_out_folder`), a skipped embed stage with no embeddings in OUT, an
    audit with no filter stage to audit."""
    wanted = planned_stages(config)
    changed = check_out_folder(out, manifest, config, resume=resume)
    run = RunFolder(out)
    has_embeddings = (run.stage_dir("embed") / "_done").is_dir()
    plans = []
    for stage in ("embed", "classify", "dedup", "audit", "export"):
        if stage not in wanted:
            earlier = run.path.exists() and stage != "embed" and stage in _finished(run)
            plans.append(StagePlan(stage, "skip", "not asked for" + (
                "; its earlier results in OUT still count" if earlier else "")))
            continue
        if stage == "classify" and not config["classify"]["project"]:
            plans.append(StagePlan(stage, "skip", "no [classify] project set"))
            continue
        why = "config changed: reruns" if stage in changed else (
            "resumes: finished shards are kept" if run.path.exists() and stage in _begun(run) else "new")
        plans.append(StagePlan(stage, "run", why))
    runs = {p.stage for p in plans if p.action == "run"}
    if "embed" not in runs and not has_embeddings and runs:
        raise ConfigError(f"{out}: the embed stage is skipped but the folder has no embeddings; run embed first")
    if "audit" in runs and not ({"classify", "dedup"} & runs) and not (run.path.exists() and _finished(run)):
        raise ConfigError("audit needs a filter stage (classify or dedup) to audit; none is run or finished")
    return plans


def check_out_folder(out: str | os.PathLike, manifest: Manifest, config: dict[str, dict[str, Any]],
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
    changed = [s for s in _begun(run) if s in recorded and recorded[s] != now[s]]
    if changed and not resume:
        raise ConfigError(f"{path}: holds a run whose {', '.join(changed)} config differs from this one; pass "
                          "--resume to continue it (those stages rerun) or choose a new --out folder")
    return changed


def run_pipeline(
    manifest: str | os.PathLike,
    config: dict[str, dict[str, Any]],
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
    runs = [p.stage for p in plans if p.action == "run"]
    model = None
    if "embed" in runs:  # fails fast (missing weights) before the run folder is touched
        from sanitize.clip.models import load_clip

        e = config["embed"]
        model = load_clip(e["model"], e["pretrained"], device=e["device"], precision=e["precision"],
                          seed=config["run"]["seed"])
    run = RunFolder.create(out, m)
    _record_pipeline(run, config)

    r = config["run"]
    rows: list[dict[str, Any]] = []
    with get_engine(r["engine"], address=r["ray_address"], num_cpus=r["ray_num_cpus"]) as engine:
        for stage in runs:
            t0 = time.perf_counter()
            logger.info("stage %s", stage)
            result = _run_stage(stage, m, run, config, model, engine, progress)
            rows.append(stage_row(run, stage, result, time.perf_counter() - t0))
    summary = {
        "run": str(run.path),
        "engine": r["engine"],
        "plan": [asdict(p) for p in plans],
        "stages": rows,
        "totals": _totals(run, rows, time.perf_counter() - started),
    }
    all_stats = run.stats()
    all_stats["pipeline"] = summary
    atomic.write_json(run.stats_json, all_stats)
    return summary


def _run_stage(stage, manifest, run, config, model, engine, progress) -> dict[str, Any]:
    # Stage modules are imported when run: dedup loads FAISS and embed torch, which a dry run never needs.
    seed = config["run"]["seed"]
    if stage == "embed":
        from sanitize.pipeline.stages.embed import run_embed_stage

        e = config["embed"]
        bar = (lambda n: progress("embed", n)) if progress else None
        return run_embed_stage(manifest, run, model, batch_size=e["batch_size"], num_workers=e["workers"],
                               max_pixels=e["max_pixels"], progress=bar, engine=engine)
    if stage == "classify":
        from sanitize.pipeline.stages.classify import run_classify_stage
        from sanitize.safety.project import LabelProject

        c = config["classify"]
        return run_classify_stage(run, LabelProject.open(c["project"]), c["categories"] or None, engine=engine)
    if stage == "dedup":
        from sanitize.pipeline.stages.dedup import run_dedup_stage

        d = config["dedup"]
        return run_dedup_stage(run.path, threshold=d["threshold"], n_clusterings=d["clusterings"],
                               n_clusters=d["clusters"], seed=seed, keep_by=d["keep_by"], keep=d["keep"],
                               refuse_chains=d["refuse_chains"], hash_col=d["hash_col"],
                               require_normalized=d["require_normalized"], recall_sample=d["recall_sample"],
                               engine=engine)
    if stage == "audit":
        from sanitize.pipeline.stages.audit import resolve_attribute, run_audit_stage
        from sanitize.pipeline.stages.embed import load_run_model

        a = config["audit"]
        encode_text = None
        if any(resolve_attribute(t).kind == "zero-shot" for t in a["attributes"]):
            encode_text = load_run_model(run, device=a["device"]).encode_text
        return run_audit_stage(run, attributes=a["attributes"], encode_text=encode_text,
                               weight_on=a["weight_on"] or None, target=a["target"] or None, engine=engine)
    from sanitize.pipeline.stages.export import export_run

    return export_run(run, config["export"]["out"])


# ---- stats -----------------------------------------------------------------------------------------------------


def stage_row(run: RunFolder, stage: str, result: dict[str, Any], seconds: float) -> dict[str, Any]:
    """One row of the stats table, counted from the stage's files (so a resumed stage counts every shard).

    rows_in: rows the stage decided on; kept; dropped: {reason: rows} (embed: by status; classify: by
    category, a row flagged by two counts in both; dedup: duplicates); seconds of this call; the process's
    peak memory so far (MiB).
    """
    row: dict[str, Any] = {"stage": stage, "rows_in": None, "kept": None, "dropped": {},
                           "seconds": round(seconds, 3), "peak_memory_mb": round(peak_memory_mb(), 1)}
    if stage == "embed":
        row.update(rows_in=result["rows_in"], kept=result["kept"], dropped=dict(result["dropped"]))
    elif stage == "classify":
        names = list(result["categories"])
        kept, rows_in = _kept_by_all(run, names)
        row.update(rows_in=rows_in, kept=kept, dropped={n: result["categories"][n]["removed"] for n in names})
    elif stage == "dedup":
        kept, rows_in = _kept_by_all(run, ["dedup"])
        row.update(rows_in=rows_in, kept=kept, dropped={"duplicate": rows_in - kept})
    elif stage == "audit":
        row.update(flags=result["flags"], report=result["paths"]["html"])
    else:
        row.update(rows_in=result["rows"], kept=result["kept"], dropped={"removed by a stage": result["removed"]},
                   out=result["out"])
    return row


def _kept_by_all(run: RunFolder, stages: list[str]) -> tuple[int, int]:
    """(rows every one of `stages` kept, rows they saw), over the stages' finished shards."""
    kept = rows = 0
    tables = [dict(run.read_stage(s)) for s in stages]
    for index in sorted(set().union(*tables)) if tables else []:
        mask = None
        for t in tables:
            if index in t:
                keep = t[index]["keep"]
                mask = keep if mask is None else pc.and_(mask, keep)
        rows += len(mask)
        kept += int(pc.sum(mask).as_py() or 0)
    return kept, rows


def _totals(run: RunFolder, rows: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    export = next((r for r in rows if r["stage"] == "export"), None)
    removed: Counter[str] = Counter()
    for r in rows:
        if r["stage"] not in ("export", "audit"):
            removed.update({f"{r['stage']}:{k}" if r["stage"] == "embed" else k: v for k, v in r["dropped"].items()})
    report = next((r["report"] for r in rows if r["stage"] == "audit"), None)
    return {"rows": export["rows_in"] if export else None, "kept": export["kept"] if export else None,
            "removed_by_reason": dict(removed), "seconds": round(seconds, 3),
            "peak_memory_mb": round(peak_memory_mb(), 1), "report": report,
            "export": export["out"] if export else None}


def format_table(summary: dict[str, Any]) -> list[str]:
    """The stats as a markdown table plus the summary line (what `sanitize run` prints)."""
    lines = ["| stage | rows in | kept | dropped | seconds | peak MiB |", "|---|---:|---:|---|---:|---:|"]
    for r in summary["stages"]:
        dropped = ", ".join(f"{k} {v}" for k, v in r["dropped"].items() if v) or "—"
        if r["stage"] == "audit":
            dropped = f"{r['flags']} flag(s)"
        lines.append(f"| {r['stage']} | {_n(r['rows_in'])} | {_n(r['kept'])} | {dropped} | {r['seconds']:.1f} | "
                     f"{r['peak_memory_mb']:.0f} |")
    t = summary["totals"]
    line = f"{summary['run']}: "
    line += (f"kept {t['kept']:,} of {t['rows']:,} rows" if t["rows"] is not None else "done")
    line += f" in {t['seconds']:.1f} s ({summary['engine']} engine)"
    if t["report"]:
        line += f"; audit report: {t['report']}"
    if t["export"]:
        line += f"; kept manifest: {t['export']}"
    return [*lines, "", line]


def _n(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"


# ---- run.json bookkeeping --------------------------------------------------------------------------------------


def _record_pipeline(run: RunFolder, config: dict[str, dict[str, Any]]) -> None:
    info = run.info()
    info["pipeline"] = {"config": config, "sections": section_fingerprints(config)}
    atomic.write_json(run.run_json, info)


def _begun(run: RunFolder) -> list[str]:
    """Pipeline stages recorded as begun in run.json (classify's categories count as classify)."""
    stages = run.info().get("stages", {})
    begun = {s if s in ("embed", "dedup", "audit", "export") else "classify" for s in stages}
    if (run.path / "audit").is_dir():
        begun.add("audit")
    if (run.path / "export" / "_done").is_dir():
        begun.add("export")
    return [s for s in ("embed", "classify", "dedup", "audit", "export") if s in begun]


def _finished(run: RunFolder) -> list[str]:
    names = run.finished_stages()
    return sorted({"dedup" if s == "dedup" else "classify" for s in names})
