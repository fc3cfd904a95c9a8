"""The pipeline on precomputed embeddings: classify + dedup + audit, local engine then Ray engine.

    python benchmarks/pipeline.py [--rows 1000000] [--quick] [--shards 20] [--ray-cpus 2] [--workdir DIR]

Setup (not timed as a stage): CLIP-like float16 unit embeddings, d=512 (sanitize.testing.synthetic.clip_like: planted
near-duplicates, concepts), a manifest (datacomp layout: uid, text, url) whose captions name genders and
occupations, a run folder with the embeddings in clip-retrieval layout, and a labeling project whose one
category is a rare concept (concepts 1 and 2, about 2% of rows): seed labels train its classifier, a random
audit sample of 3,000 labels certifies its threshold. Positive rows more often have captions naming women, so
the filter shifts the gender mix and the audit has something to flag.

Then the same three stages on two fresh run folders sharing those embeddings (hard links): with the local
engine, then with the Ray engine (a local Ray with --ray-cpus CPUs, started and timed separately). Per stage:
seconds, rows/s, the driver's peak RSS during the stage (VmHWM, reset before each stage), and for Ray the
peak over the stage of the summed PSS of every Ray process (raylet, GCS, workers; sampled every 0.2 s; PSS
counts shared pages such as the object store once). Finally the two runs' stage files and audit report are
compared byte for byte. Prints a markdown table and writes benchmarks/results/pipeline.json (machine info and
load averages: timings on a shared 2-core machine move with whatever else runs). --quick: 100k rows.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sanitize.engines import get_engine  # noqa: E402
from sanitize.io.atomic import write_json, write_parquet  # noqa: E402
from sanitize.io.embeddings import write_embedding_shard  # noqa: E402
from sanitize.io.manifest import open_manifest  # noqa: E402
from sanitize.io.runfolder import RunFolder  # noqa: E402
from sanitize.pipeline.stage import run_stage  # noqa: E402
from sanitize.pipeline.stages.audit import AuditConfig, AuditStage  # noqa: E402
from sanitize.pipeline.stages.classify import ClassifyConfig, ClassifyStage  # noqa: E402
from sanitize.pipeline.stages.dedup import DedupStage  # noqa: E402
from sanitize.safety.project import LabelProject  # noqa: E402
from sanitize.safety.workflow import add_answers, draw_audit_batch  # noqa: E402
from sanitize.testing.synthetic import clip_like  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "pipeline.json"
DIM = 512
CATEGORY = "rare_concept"
POSITIVE_CONCEPTS = (1, 2)
AUDIT_LABELS = 3000
SPEC = f"""
[categories.{CATEGORY}]
description = "Benchmark stand-in: synthetic concepts {POSITIVE_CONCEPTS}."
prompts = ["a rare concept"]
target_recall = 0.9
confidence = 0.9
"""
GENDERS = ("woman", "man", "girl", "boy", "person", "group of friends")
OCCUPATIONS = ("nurse", "doctor", "engineer", "teacher", "chef", "pilot", "", "", "", "")
SCENES = ("kitchen", "park", "office", "street", "hospital", "classroom", "beach")
STAGES = ("classify", "dedup", "audit")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="100k rows")
    parser.add_argument("--shards", type=int, default=20)
    parser.add_argument("--ray-cpus", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder, removed at the end")
    args = parser.parse_args()
    rows = 100_000 if args.quick else args.rows
    work = Path(tempfile.mkdtemp(prefix="pipeline-bench-", dir=args.workdir))
    try:
        result = run(rows, args.shards, args.ray_cpus, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_json(RESULTS, result)
    print(markdown(result))
    print(f"\nwritten {RESULTS}")


def run(rows: int, shards: int, ray_cpus: int, work: Path) -> dict:
    result = {"rows": rows, "dim": DIM, "shards": shards, "ray_cpus": ray_cpus, "machine": machine(),
              "load_average_at_start": list(os.getloadavg())}
    started = time.perf_counter()
    manifest, base = build_run(rows, shards, work)
    project = build_project(work / "project", base, rows)
    result["setup_seconds"] = round(time.perf_counter() - started, 1)
    log(f"setup: {result['setup_seconds']} s")

    runs = {}
    for name in ("local", "ray"):
        run_folder = RunFolder.create(work / name / "run", manifest)
        for path in sorted((base.embeddings_dir).rglob("*")):
            target = run_folder.embeddings_dir / path.relative_to(base.embeddings_dir)
            if path.is_dir():
                target.mkdir(parents=True, exist_ok=True)
            else:
                os.link(path, target)
        runs[name] = run_folder

    result["engines"] = {"local": stage_timings(runs["local"], project, None, rows)}
    t = time.perf_counter()
    with Watch(ray=True) as watch:
        engine = get_engine("ray", num_cpus=ray_cpus)
    ray_start = {"seconds": round(time.perf_counter() - t, 2), **watch.summary()}
    try:
        result["engines"]["ray"] = {"start": ray_start, **stage_timings(runs["ray"], project, engine, rows)}
    finally:
        engine.close()
    result["identical_outputs"] = same_outputs(runs["local"], runs["ray"])
    result["load_average_at_end"] = list(os.getloadavg())
    return result


def stage_timings(run: RunFolder, project: LabelProject, engine, rows: int) -> dict:
    out = {}
    audit = AuditConfig(attributes=("caption_gender", "occupations"), weight_on=("caption_gender",))
    stages = {"classify": ClassifyStage(ClassifyConfig(project=str(project.path))), "dedup": DedupStage(),
              "audit": AuditStage(audit)}
    calls = {name: (lambda stage=stage: run_stage(stage, run, engine=engine).to_dict())
             for name, stage in stages.items()}
    for stage in STAGES:
        t = time.perf_counter()
        with Watch(ray=engine is not None) as watch:
            stats = calls[stage]()
        seconds = time.perf_counter() - t
        out[stage] = {"seconds": round(seconds, 2), "rows_per_second": round(rows / seconds), **watch.summary()}
        if stage == "dedup":  # seconds per phase: which phases the engine spreads over workers
            out[stage]["phases"] = {k: round(v, 2) for k, v in stats["phase_seconds"].items()}
        log(f"{engine.name if engine else 'local'} {stage}: {out[stage]}")
    return out


# -- setup ------------------------------------------------------------------------------------------------------
def build_run(rows: int, shards: int, work: Path) -> tuple:
    """Synthetic embeddings + captions as a manifest and a run folder holding the embeddings."""
    t = time.perf_counter()
    data = clip_like(rows, DIM, seed=0, dtype=np.float16)
    log(f"generated {rows} x {DIM} float16 in {time.perf_counter() - t:.1f} s")
    positive = np.isin(data.concept, POSITIVE_CONCEPTS)
    captions = make_captions(positive, seed=1)
    uids = np.char.add("row", np.arange(rows).astype(str))
    bounds = np.linspace(0, rows, shards + 1).astype(int)
    for i, (a, b) in enumerate(itertools.pairwise(bounds)):
        write_parquet(work / "manifest" / f"{i:05d}.parquet", pa.table({
            "uid": uids[a:b], "text": captions[a:b], "url": np.char.add("https://example.invalid/", uids[a:b])}))
    manifest = open_manifest(work / "manifest")
    base = RunFolder.create(work / "base", manifest)
    for i, (a, b) in enumerate(itertools.pairwise(bounds)):
        write_embedding_shard(base.embeddings_dir, i, data.x[a:b], None,
                              pa.table({"uid": uids[a:b], "caption": captions[a:b]}))
    write_parquet(work / "truth.parquet", pa.table({"uid": uids, "positive": positive}))
    return manifest, base


def make_captions(positive: np.ndarray, seed: int) -> np.ndarray:
    """'a woman working as a nurse in the park': positives name women twice as often as other rows."""
    rng = np.random.default_rng(seed)
    n = len(positive)
    p_other = np.array([0.2, 0.25, 0.1, 0.1, 0.25, 0.1])
    p_positive = np.array([0.4, 0.125, 0.2, 0.05, 0.125, 0.1])
    gender = np.where(positive, rng.choice(len(GENDERS), n, p=p_positive), rng.choice(len(GENDERS), n, p=p_other))
    job = rng.integers(0, len(OCCUPATIONS), n)
    scene = rng.integers(0, len(SCENES), n)
    return np.array([f"a {GENDERS[g]}{' working as a ' + OCCUPATIONS[j] if OCCUPATIONS[j] else ''} in the "
                     f"{SCENES[s]}" for g, j, s in zip(gender.tolist(), job.tolist(), scene.tolist(), strict=True)])


def build_project(folder: Path, run: RunFolder, rows: int) -> LabelProject:
    """A project with one trained classifier and a random audit sample of AUDIT_LABELS labels."""
    spec = folder.parent / "categories.toml"
    spec.write_text(SPEC)
    project = LabelProject.init(folder, spec)
    truth = pq.read_table(folder.parent / "truth.parquet")
    uids = np.asarray(truth["uid"].to_pylist())
    positive = truth["positive"].to_numpy(zero_copy_only=False)
    label_of = dict(zip(uids.tolist(), positive.astype(int).tolist(), strict=True))
    rng = np.random.default_rng(2)
    seeds = np.concatenate([rng.choice(uids[positive], 200, replace=False),
                            rng.choice(uids[~positive], 800, replace=False)])
    seed_file = folder / "seed.csv"
    seed_file.write_text("uid,label\n" + "".join(f"{u},{label_of[u]}\n" for u in seeds.tolist()))
    add_answers(project, run, CATEGORY, seed_file, source="seed")
    drawn = draw_audit_batch(project, run, CATEGORY, min(AUDIT_LABELS, rows // 10), strategy="random", seed=0)
    drawn_uids = pq.read_table(drawn.paths["parquet"])["uid"].to_pylist()
    answers = folder / "audit_answers.csv"
    answers.write_text("uid,label\n" + "".join(f"{u},{label_of[u]}\n" for u in drawn_uids))
    add_answers(project, run, CATEGORY, answers, source="random-audit")
    return project


# -- measuring ---------------------------------------------------------------------------------------------------
class Watch:
    """Peak RSS of this process (VmHWM, reset on entry) and, with `ray`, peak summed PSS of Ray's processes."""

    def __init__(self, ray: bool) -> None:
        self.ray = ray
        self.ray_peak_kib = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Watch:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        if self.ray:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.driver_peak_kib = _status_kib("VmHWM")
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            self.ray_peak_kib = max(self.ray_peak_kib, ray_pss_kib())

    def summary(self) -> dict:
        out = {"driver_peak_rss_mib": round(self.driver_peak_kib / 1024)}
        if self.ray:
            out["ray_processes_peak_pss_mib"] = round(self.ray_peak_kib / 1024)
        return out


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def ray_pss_kib() -> int:
    """Summed PSS of every Ray process (workers `ray::…`, and raylet, GCS, agents run from Ray's package)."""
    total = 0
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            cmdline = Path(entry.path, "cmdline").read_bytes()
            if b"ray::" not in cmdline and b"/site-packages/ray/" not in cmdline:
                continue
            for line in Path(entry.path, "smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
        except OSError:  # the process ended meanwhile
            continue
    return total


def same_outputs(a: RunFolder, b: RunFolder) -> bool:
    """Every file under stages/ and audit/report.json byte-equal between the two runs."""
    names = [p.relative_to(a.path) for p in sorted((a.path / "stages").rglob("*")) if p.is_file()]
    names.append(Path("audit") / "report.json")
    other = {p.relative_to(b.path) for p in (b.path / "stages").rglob("*") if p.is_file()}
    if set(names[:-1]) != other:
        return False
    return all((a.path / n).read_bytes() == (b.path / n).read_bytes() for n in names)


def machine() -> dict:
    import ray

    return {"cpu_count": os.cpu_count(), "platform": platform.platform(), "processor": platform.machine(),
            "python": platform.python_version(), "numpy": np.__version__, "ray": ray.__version__,
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)}


def markdown(result: dict) -> str:
    lines = [f"Pipeline on {result['rows']:,} rows x {result['dim']} float16 embeddings, {result['shards']} shards "
             f"({result['machine']['cpu_count']} cores; Ray with {result['ray_cpus']} CPUs)", "",
             "| stage | engine | seconds | rows/s | driver peak RSS (MiB) | Ray processes peak PSS (MiB) |",
             "|---|---|---:|---:|---:|---:|"]
    for engine, stages in result["engines"].items():
        for stage, m in stages.items():
            rate = f"{m['rows_per_second']:,}" if "rows_per_second" in m else "–"
            lines.append(f"| {stage} | {engine} | {m['seconds']:.1f} | {rate} | {m['driver_peak_rss_mib']:,} | "
                         f"{m.get('ray_processes_peak_pss_mib', '–')} |")
    phases = {e: s["dedup"]["phases"] for e, s in result["engines"].items()}
    names = list(phases["local"])
    lines += ["", "Dedup seconds per phase (assign, pairs and recall run as engine tasks; the rest in the driver):", "",
              "| engine | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    lines += [f"| {e} | " + " | ".join(f"{p[n]:.1f}" for n in names) + " |" for e, p in phases.items()]
    lines.append("")
    lines.append(f"Outputs of the two engines byte-identical: {result['identical_outputs']}. "
                 f"Setup (data, run folder, labels): {result['setup_seconds']} s. "
                 f"Load average at start {result['load_average_at_start'][0]:.2f}, "
                 f"at end {result['load_average_at_end'][0]:.2f}.")
    return "\n".join(lines)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
