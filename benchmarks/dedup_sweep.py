"""Dedup across thresholds and data shapes: seconds per phase against the arithmetic limit of each phase.

    python benchmarks/dedup_sweep.py [--rows 1000000] [--thresholds 0.90,0.92,0.95,0.98]
                                     [--shapes balanced,skewed] [--mode sharded|memory] [--workdir DIR]

Data: CLIP-like float16 rows (d = 512, planted near-duplicates, `sanitize.testing.synthetic.clip_like`, made and
kept by benchmarks/dedup_scale.py's `generated_data`); "skewed" forces one concept to hold 20% of the rows
(`giant_share=0.2`). Each (shape, threshold) runs `find_duplicates_sharded` (what `sanitize dedup` runs;
`--mode memory`: the in-memory `find_duplicates`) with default options in a fresh child process, and reports the
seconds of each phase, the pair recall the run reports about itself and the recall of the planted pairs at or
above the threshold.

The limit of a phase is the time its matrix products take at the float32 GEMM rate measured here for the same
shapes (one thread per core, times the cores): training, FAISS k-means on the samples; assignment, the projection
and every clustering's centroid products, plus the recall queries' bound products (the out-of-core path folds the
recall search into that read); pairs, the bound rows' projection and the bound products of every same-cluster pair
(a block that the bound cannot settle is searched again in full, above the limit). Reading, converting, checking
and writing are what is left. Prints a markdown table and writes benchmarks/results/dedup_sweep.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from dedup_scale import generated_data  # noqa: E402

from sanitize.dedup.parallel import default_workers  # noqa: E402
from sanitize.io.atomic import write_json  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "dedup_sweep.json"
DIM, DIMS, SHARD_ROWS, RECALL_QUERIES = 512, 128, 100_000, 1000
SHAPES = {"balanced": 0.0, "skewed": 0.2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--thresholds", default="0.90,0.92,0.95,0.98")
    parser.add_argument("--shapes", default="balanced,skewed")
    parser.add_argument("--mode", choices=["sharded", "memory"], default="sharded")
    parser.add_argument("--workdir", default="/tmp/dedup_sweep", help="generated data and phase files")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(json.loads(args.child))
        return
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    rates = gemm_rates(args.rows)
    runs = []
    for shape in args.shapes.split(","):
        path, planted = generated_data(work, args.rows, SHAPES[shape])
        for threshold in (float(t) for t in args.thresholds.split(",")):
            run = _run_child(path, work, threshold, args.mode)
            found = np.load(run.pop("pairs"))
            true = planted["cosine"] >= threshold
            keys = set(zip(found["a"].tolist(), found["b"].tolist(), strict=True))
            hit = [(a, b) in keys for a, b in zip(planted["a"][true].tolist(), planted["b"][true].tolist(),
                                                  strict=True)]
            run.update(shape=shape, planted_pairs=len(hit), planted_pair_recall=float(np.mean(hit)) if hit else None,
                       limit_seconds=phase_limits(run["stats"], rates))
            runs.append(run)
            print(_row(run), flush=True)
    result = {"machine": _machine(), "rows": args.rows, "mode": args.mode, "gemm_gflops": rates, "runs": runs}
    write_json(RESULTS, result)
    print(_markdown(result))
    print(f"\nwritten {RESULTS}")


def gemm_rates(n_rows: int) -> dict[str, float]:
    """float32 GEMM GFLOP/s on all cores (one thread each, as the phases run) for each phase's product shape."""
    from threadpoolctl import threadpool_limits

    from sanitize.dedup.clustering import default_n_clusters

    k = default_n_clusters(n_rows)
    cluster = max(2, n_rows // k)
    rng = np.random.default_rng(0)
    shapes = {"assign": (4096, DIMS, k), "projection": (4096, DIM, DIMS), "pairs": (cluster, DIMS + 1, cluster),
              "full": (cluster, DIM, cluster), "recall": (RECALL_QUERIES, DIMS + 1, 4096)}
    rates = {}
    with threadpool_limits(limits=1, user_api="blas"):
        for name, (m, kk, n) in shapes.items():
            a = rng.standard_normal((m, kk)).astype(np.float32)
            b = rng.standard_normal((n, kk)).astype(np.float32)
            a @ b.T
            reps, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < 0.5:
                a @ b.T
                reps += 1
            rates[name] = 2 * m * kk * n * reps / (time.perf_counter() - t0) / 1e9 * default_workers()
    return rates


def phase_limits(stats: dict, rates: dict[str, float]) -> dict[str, float]:
    """Seconds each phase's matrix products take at the measured rates (see the module docstring)."""
    n, k, c = stats["distinct_rows"], stats["n_clusters"], stats["n_clusterings"]
    train = min(n, 32 * k)
    compared = sum(info.get("same_cluster_pairs", 0) for info in stats["clusterings"])
    projection = 2 * n * DIM * DIMS / rates["projection"]
    return {
        "train": c * 10 * 2 * train * k * DIMS / rates["assign"] / 1e9,
        "assign": (c * 2 * n * k * DIMS / rates["assign"] + projection
                   + 2 * RECALL_QUERIES * n * (DIMS + 1) / rates["recall"]) / 1e9,
        "pairs": (c * projection + 2 * 2 * compared * (DIMS + 1) / rates["pairs"]) / 1e9,
        "pairs_full_dimension": 2 * 2 * compared * DIM / rates["full"] / 1e9,
    }


def _run_child(path: Path, work: Path, threshold: float, mode: str) -> dict:
    out = work / f"run_{path.stem}_{threshold}"
    shutil.rmtree(out, ignore_errors=True)  # a fresh run: never resumed from an earlier one's phase files
    out.mkdir()
    spec = {"path": str(path), "out": str(out), "threshold": threshold, "mode": mode}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                          check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"child failed ({path.name}, {threshold}):\n{proc.stderr[-4000:]}")
    stats = json.loads((out / "stats.json").read_text())
    return {"threshold": threshold, "wall_seconds": round(wall, 1), "stats": stats, "pairs": str(out / "pairs.npz")}


def _child(spec: dict) -> None:
    from sanitize.dedup import find_duplicates
    from sanitize.dedup.sharded import find_duplicates_sharded
    from sanitize.dedup.shards import NpyShards

    out = Path(spec["out"])
    if spec["mode"] == "memory":
        result = find_duplicates(np.load(spec["path"], mmap_mode="r"), threshold=spec["threshold"])
    else:
        result = find_duplicates_sharded(NpyShards(spec["path"], SHARD_ROWS), out / "work",
                                         threshold=spec["threshold"])
    np.savez(out / "pairs.npz", a=result.pairs["a"].to_numpy(), b=result.pairs["b"].to_numpy())
    write_json(out / "stats.json", result.stats)


def _row(run: dict) -> str:
    s, limit = run["stats"], run["limit_seconds"]
    sec = s["seconds"]
    union = sec.get("confirm", 0.0) + sec.get("groups", 0.0)
    recall = s["recall"]["recall"] if s.get("recall") else None
    largest = max(info["largest_cluster_rows"] for info in s["clusterings"])
    cells = [run["shape"], f"{run['threshold']:.2f}", f"{largest:,}", f"{run['wall_seconds']:.1f}",
             f"{sec.get('train', 0):.1f} ({limit['train']:.1f})", f"{sec.get('assign', 0):.1f} ({limit['assign']:.1f})",
             f"{sec.get('pairs', 0):.1f} ({limit['pairs']:.1f}; full d {limit['pairs_full_dimension']:.1f})",
             f"{union:.1f}", f"{sec.get('recall', 0):.1f}",
             "–" if recall is None else f"{recall:.4f}",
             "–" if run["planted_pair_recall"] is None else f"{run['planted_pair_recall']:.4f}"]
    return "| " + " | ".join(cells) + " |"


def _markdown(result: dict) -> str:
    head = ("| data | threshold | largest cluster | wall s | train s (limit) | assign s (limit) | pairs s (limit) | "
            "union s | recall s | self-reported recall | planted-pair recall |")
    return "\n".join([head, "|" + "---|" * 11] + [_row(run) for run in result["runs"]])


def _machine() -> dict:
    import faiss

    return {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "numpy": np.__version__, "faiss": faiss.__version__, "load_average_at_end": os.getloadavg()}


if __name__ == "__main__":
    main()
