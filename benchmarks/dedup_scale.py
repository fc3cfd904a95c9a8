"""Out-of-core dedup at corpus scale: wall time, pair recall and peak memory from 1M to 10M rows.

    python benchmarks/dedup_scale.py [--sizes 1000000,2000000,5000000,10000000] [--threshold 0.95]
                                     [--shard-rows 100000] [--workdir DIR] [--in-memory-limit 1000000]
                                     [--engines local,ray] [--ray-limit 2000000] [--merge]

For each size, CLIP-like float16 rows (d=512, planted near-duplicates; `sanitize.testing.synthetic.clip_like`,
as benchmarks/dedup.py makes them) are written to DIR/x_N.npy once (reused by later runs), then deduplicated by
`find_duplicates_sharded` (default options: 5 clusterings, default clusters, recall sample 1000) reading them as
shards of --shard-rows rows, in a child process run under `/usr/bin/time -v`: wall seconds, peak RSS as time
reports it, phase seconds from the result, the recall the run reports about itself, and the recall of the planted
pairs whose cosine is at or above the threshold. Sizes up to --in-memory-limit also run the in-memory
`find_duplicates` on the same file for comparison (same pairs expected). With `ray` in --engines, sizes up to
--ray-limit also run on a Ray cluster of two raylets on this machine (one CPU each) that this script starts: the
driver's peak RSS, the peak proportional set size (PSS) of the whole process tree (driver, raylets, workers, the
shared object store counted once), and the bytes the engine put into and got back from the object store. Prints a
markdown table and writes benchmarks/results/dedup_scale.json with the machine's details; with --merge, the runs
are added to those already there (a run of the same mode and size replaced), so sizes can be measured one at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sanitize.io.atomic import write_json  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "dedup_scale.json"
DIM = 512
DATA_SEED = 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000000,2000000,5000000,10000000")
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument("--shard-rows", type=int, default=100_000)
    parser.add_argument("--workdir", default="/tmp/dedup_scale", help="generated data and phase files")
    parser.add_argument("--in-memory-limit", type=int, default=1_000_000)
    parser.add_argument("--engines", default="local", help="local and/or ray, comma-separated")
    parser.add_argument("--ray-limit", type=int, default=2_000_000)
    parser.add_argument("--merge", action="store_true", help="add to the runs already in the results file")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(json.loads(args.child))
        return
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    runs = []
    sizes = [int(s) for s in args.sizes.split(",")]
    engines = args.engines.split(",")
    plan = [(n, mode) for n in sizes if "local" in engines
            for mode in ["sharded"] + (["memory"] if n <= args.in_memory_limit else [])]
    ray_sizes = [n for n in sizes if n <= args.ray_limit] if "ray" in engines else []
    cluster = None
    for n, mode in plan + [(n, "ray") for n in ray_sizes]:
        if mode == "ray" and cluster is None:  # started after the local runs, so their process trees exclude it
            cluster = _ray_cluster()
        path, planted = generated_data(work, n)
        run = _run_child(mode, path, work, n, args, cluster.address if mode == "ray" else None)
        found = np.load(run.pop("pairs"))
        true = planted["cosine"] >= args.threshold
        keys = set(zip(found["a"].tolist(), found["b"].tolist(), strict=True))
        hit = [(a, b) in keys for a, b in zip(planted["a"][true].tolist(), planted["b"][true].tolist(),
                                              strict=True)]
        run["planted_pairs"] = len(hit)
        run["planted_pair_recall"] = float(np.mean(hit)) if hit else None
        run["code"] = _commit()
        run["load_average_at_end"] = list(os.getloadavg())
        runs.append(run)
        print(_row(run), flush=True)
    if cluster is not None:
        cluster.shutdown()
    if args.merge and RESULTS.exists():
        earlier = json.loads(RESULTS.read_text())
        if earlier.get("threshold") != args.threshold or earlier.get("shard_rows") != args.shard_rows:
            raise SystemExit(f"{RESULTS} holds runs at another threshold or shard size; run without --merge")
        new = {(r["mode"], r["rows"]) for r in runs}
        runs = [r for r in earlier["runs"] if (r["mode"], r["rows"]) not in new] + runs
    result = {"machine": _machine(), "threshold": args.threshold, "shard_rows": args.shard_rows,
              "note": "runs marked by the code they measured (commit)", "runs": runs}
    write_json(RESULTS, result)
    print(_markdown(result))
    print(f"\nwritten {RESULTS}")


def generated_data(work: Path, n: int, giant_share: float = 0.0) -> tuple[Path, dict]:
    """x_N.npy (float16, made once; x_giantS_N.npy when one concept is forced to hold a share S of the rows) and its
    planted pairs with their cosines."""
    from sanitize.testing.synthetic import clip_like

    tag = f"{n}" if giant_share == 0 else f"giant{giant_share:g}_{n}"
    path = work / f"x_{tag}.npy"
    planted_path = work / f"planted_{tag}.npz"
    if not (path.exists() and planted_path.exists()):
        t0 = time.perf_counter()
        tmp = work / f".x_{tag}.npy"
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(n, DIM))
        data = clip_like(n, DIM, seed=DATA_SEED, giant_share=giant_share, out=out)
        out.flush()
        a, b = data.planted_pairs()
        cos = _cosines(out, a, b)
        del out, data
        os.replace(tmp, path)
        np.savez(planted_path, a=a, b=b, cosine=cos)
        print(f"{path.name}: generated in {time.perf_counter() - t0:.0f} s", flush=True)
    planted = dict(np.load(planted_path))
    return path, planted


def _ray_cluster():
    """Two raylets on this machine, one CPU and a 1 GiB object store each (started from here, so they are part of
    this process tree)."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "object_store_memory": 2**30, "include_dashboard": False})
    cluster.add_node(num_cpus=1, object_store_memory=2**30)
    cluster.wait_for_nodes()
    return cluster


def _run_child(mode: str, path: Path, work: Path, n: int, args, address: str | None) -> dict:
    out = work / f"run_{mode}_{n}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    spec = {"mode": mode, "path": str(path), "out": str(out), "threshold": args.threshold,
            "shard_rows": args.shard_rows, "address": address}
    cmd = ["/usr/bin/time", "-v", sys.executable, __file__, "--child", json.dumps(spec)]
    sampler = _TreePss(os.getpid())
    sampler.start()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    sampler.stop()
    if proc.returncode != 0:
        raise SystemExit(f"child failed ({mode}, n={n}):\n{proc.stderr[-4000:]}")
    rss_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    child = json.loads((out / "result.json").read_text())
    return {"mode": mode, "rows": n, "wall_seconds": round(wall, 1), "peak_rss_gib": round(rss_kib / 2**20, 3),
            "tree_peak_pss_gib": round(sampler.peak / 2**30, 3), "pairs": str(out / "pairs.npz"), **child}


class _TreePss:
    """Peak of the summed PSS of every process below `root` (this script's children and theirs), sampled twice a
    second from /proc/PID/smaps_rollup; this script itself is left out."""

    def __init__(self, root: int) -> None:
        import threading

        self.root, self.peak, self._stop = root, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.peak = max(self.peak, sum(_pss(pid) for pid in _descendants(self.root)))


def _descendants(root: int) -> list[int]:
    parent = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parent[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    children: dict[int, list[int]] = {}
    for pid, ppid in parent.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def _pss(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    match = re.search(r"^Pss:\s+(\d+) kB", text, re.M)
    return int(match.group(1)) * 1024 if match else 0


def _child(spec: dict) -> None:
    """Deduplicate spec['path'] and write pairs.npz, result.json (stats) under spec['out']."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = Path(spec["out"])
    t0 = time.perf_counter()
    transfer = None
    if spec["mode"] in ("sharded", "ray"):
        from sanitize.dedup.sharded import find_duplicates_sharded
        from sanitize.dedup.shards import NpyShards
        from sanitize.engines import get_engine

        with get_engine("ray" if spec["mode"] == "ray" else "local", address=spec["address"]) as engine:
            memory = _PhaseRss()
            memory.start()
            result = find_duplicates_sharded(NpyShards(spec["path"], spec["shard_rows"]), out / "work",
                                             threshold=spec["threshold"], task_map=engine.map_tasks,
                                             progress=memory.progress)
            memory.stop()
            transfer = getattr(engine, "transfer", None)
        shutil.rmtree(out / "work")
    else:
        from sanitize.dedup import find_duplicates

        memory = None
        result = find_duplicates(np.load(spec["path"], mmap_mode="r"), threshold=spec["threshold"])
    seconds = time.perf_counter() - t0
    a, b, cos = (result.pairs[c].to_numpy() for c in ("a", "b", "cosine"))
    np.savez(out / "pairs.npz", a=a, b=b)
    stats = result.stats
    write_json(out / "result.json", {
        "seconds": round(seconds, 1), "phase_seconds": {k: round(v, 1) for k, v in stats["seconds"].items()},
        "found_pairs": len(a), "removed": stats["removed"], "n_clusters": stats["n_clusters"],
        "self_reported_recall": stats["recall"], "object_store": transfer, "device": stats["device"],
        "driver_rss_gib_by_phase": memory.peaks_gib() if memory else None,
        "cosine_min": float(cos.min()) if len(cos) else None})


class _PhaseRss:
    """Peak resident memory of this process (the driver; with Ray it runs no tasks) in each stretch of a sharded
    dedup run, sampled every 50 ms; stretches end at the run's progress reports: "scan+exact" (up to the exact
    copies), "train+assign" (up to the first clustering's pairs), "pairs" (the rest of the pair search; the pairs
    found so far are held), "graph" (union, confirmation and group decisions over the duplicate graph), "recall"."""

    _NEXT: ClassVar[dict] = {("exact", True): "train+assign", ("clustering", False): "pairs",
                             ("clustering", True): "graph", ("groups", True): "recall"}

    def __init__(self) -> None:
        import threading

        self.stretch, self.peaks, self._stop = "scan+exact", {}, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def progress(self, phase: str, done: int, total: int) -> None:
        self._sample()
        self.stretch = self._NEXT.get((phase, done == total), self.stretch)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def peaks_gib(self) -> dict[str, float]:
        return {k: round(v / 2**30, 3) for k, v in self.peaks.items()}

    def _sample(self) -> None:
        status = Path("/proc/self/status").read_text()
        rss = int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1)) * 1024
        self.peaks[self.stretch] = max(self.peaks.get(self.stretch, 0), rss)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self._sample()


def _cosines(x: np.ndarray, a: np.ndarray, b: np.ndarray, batch: int = 65536) -> np.ndarray:
    """Cosine of each pair of rows of `x`, in float64, a batch at a time."""
    out = np.empty(len(a))
    for i in range(0, len(a), batch):
        xa = np.asarray(x[a[i : i + batch]], dtype=np.float64)
        xb = np.asarray(x[b[i : i + batch]], dtype=np.float64)
        out[i : i + batch] = np.einsum("ij,ij->i", xa, xb) / (np.linalg.norm(xa, axis=1) * np.linalg.norm(xb, axis=1))
    return out


def _commit() -> str:
    """The repository's HEAD commit (short), "+dirty" when the tree has changes."""
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return head.stdout.strip() + ("+dirty" if dirty else "")


def _machine() -> dict:
    import faiss

    return {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "numpy": np.__version__, "faiss": faiss.__version__, "load_average_at_end": list(os.getloadavg())}


def _row(run: dict) -> str:
    recall = run["self_reported_recall"] or {}
    phases = run["phase_seconds"]
    store = run.get("object_store") or {}
    moved = (store.get("put_bytes", 0) + store.get("returned_bytes", 0)) / 2**20 if store else None
    by_phase = run.get("driver_rss_gib_by_phase") or {}
    before = max((v for k, v in by_phase.items() if k not in ("graph", "recall")), default=float("nan"))
    return (f"| {run['rows']:,} | {run['mode']} | {run['wall_seconds']:.0f} | {run['peak_rss_gib']:.2f} | "
            f"{before:.2f} | {by_phase.get('graph', float('nan')):.2f} | "
            f"{run['tree_peak_pss_gib']:.2f} | {'–' if moved is None else f'{moved:.1f}'} | "
            f"{run['planted_pair_recall']:.4f} | {recall.get('recall') or float('nan'):.4f} | "
            f"{phases.get('check', 0) + phases.get('exact', 0):.0f} | {phases.get('assign', 0):.0f} | "
            f"{phases.get('pairs', 0):.0f} | {phases.get('recall', 0):.0f} |")


def _markdown(result: dict) -> str:
    head = ("| rows | mode | wall s | driver peak RSS GiB | before the graph | in the graph phase | "
            "process tree peak PSS GiB | object store MiB | "
            "planted-pair recall | self-reported recall | scan+exact s | assign s | pairs s | recall s |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    return "\n".join([head, *(_row(r) for r in result["runs"])])


if __name__ == "__main__":
    main()
