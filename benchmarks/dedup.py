"""Near-duplicate search: union of k-means clusterings vs exact brute force vs FAISS IVF range search.

    python benchmarks/dedup.py [--quick] [--sizes 100000,1000000] [--threshold 0.95] [--clusterings 5]

For each size: CLIP-like data with planted near-duplicates (sanitize.testing.synthetic.clip_like, d=512, float32,
written to a .npy memmap) is deduplicated by `find_duplicates` (default options) with 1, 2, ... clusterings,
each run in a fresh child process: end-to-end time from loading the memmap to writing pairs.parquet and
rows.parquet, and that process's peak RSS. True pairs come from exact FAISS IndexFlatIP range search: of
every row where that is affordable (--brute-limit), otherwise of a seeded sample of query rows, whose
time is extrapolated to all rows. Recall is also given over all planted pairs above the threshold (exact
for every size). IVF (IndexIVFFlat, as many lists as clusters) range-searches a sample of query rows with
nprobe raised until its recall matches the union of clusterings; its search time is scaled to all rows.
Prints a markdown table and writes benchmarks/results/dedup.json (with machine info and load averages:
timings on a shared 2-core machine move with whatever else runs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sanitize.dedup import (  # noqa: E402
    default_n_clusters,
    find_duplicates,
    recall_from_sample,
    true_pairs_of_sample,
)
from sanitize.dedup.pairs import CANDIDATE_MARGIN, pair_keys  # noqa: E402
from sanitize.dedup.vectors import pair_cosines  # noqa: E402
from sanitize.io.atomic import write_json, write_parquet  # noqa: E402
from sanitize.testing.synthetic import clip_like  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "dedup.json"
DIM = 512
DATA_SEED = 0
TRUTH_SEED = 12345
TRUTH_SAMPLE = 5000
IVF_QUERIES = 20000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small size (20k rows), a minute or two")
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated row counts")
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument("--clusterings", type=int, default=5)
    parser.add_argument("--brute-limit", type=int, default=200_000, help="largest size searched exhaustively")
    parser.add_argument("--workdir", default=None, help="folder for the generated data (default: a temp folder)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(json.loads(args.child))
        return
    sizes = [20_000] if args.quick else [int(s) for s in args.sizes.split(",")]
    load_at_start = os.getloadavg()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        runs = [_bench_size(n, args, Path(tmp)) for n in sizes]
    machine = {**_machine(), "load_average_at_start": load_at_start}
    result = {"machine": machine, "threshold": args.threshold, "clusterings": args.clusterings, "runs": runs}
    write_json(RESULTS, result)
    print(_markdown(result))
    print(f"\nwritten {RESULTS}")


def _bench_size(n: int, args, tmp: Path) -> dict:
    t = args.threshold
    path = tmp / f"x_{n}.npy"
    t0 = time.perf_counter()
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, DIM))
    data = clip_like(n, DIM, seed=DATA_SEED, out=out)
    out.flush()
    del out
    gen_seconds = time.perf_counter() - t0
    x = np.load(path, mmap_mode="r")
    k = default_n_clusters(n)
    log(f"n={n}: generated in {gen_seconds:.1f} s; k={k}")

    if n <= args.brute_limit:
        truth_a, truth_b, brute_seconds = _brute_force_all(x, t)
        queries, exact, brute_note = np.arange(n), True, "measured"
    else:
        truth_a, truth_b, brute_seconds, queries = _brute_force_sample(x, t)
        exact, brute_note = False, f"extrapolated from {len(queries):,} query rows"
    log(f"n={n}: brute force {brute_seconds:.1f} s ({brute_note}); {len(truth_a)} true pairs")
    truth_q, truth_keys = _credit_to_queries(truth_a, truth_b, queries, n)

    planted_a, planted_b = data.planted_pairs()
    planted_keys = pair_keys(planted_a, planted_b, n)[pair_cosines(x, planted_a, planted_b) >= t]
    runs = []
    for c in range(1, args.clusterings + 1):
        child = _run_child(path, tmp, t, c)
        found = np.load(child["pair_keys"])
        est = recall_from_sample(truth_q, np.isin(truth_keys, found), len(queries), exact=exact)
        runs.append({
            "clusterings": c,
            "recall": est.recall,
            "ci_low": est.ci_low,
            "ci_high": est.ci_high,
            "planted_pair_recall": float(np.isin(planted_keys, found).mean()) if len(planted_keys) else None,
            "wall_seconds": child["wall_seconds"],
            "peak_rss_gib": child["peak_rss_gib"],
            "self_reported_recall": child["stats"]["recall"],
            "stats": child["stats"],
        })
        log(f"n={n}: x{c}: recall {runs[-1]['recall']:.4f}, {child['wall_seconds']:.1f} s, "
            f"{child['peak_rss_gib']:.2f} GiB")

    ivf_queries = np.sort(np.random.default_rng(TRUTH_SEED + 1).choice(queries, min(len(queries), IVF_QUERIES),
                                                                        replace=False))
    ivf_q, ivf_truth = _credit_to_queries(truth_a, truth_b, ivf_queries, n)
    ivf = _ivf(x, k, ivf_queries, ivf_q, ivf_truth, runs[-1]["recall"], t)
    return {
        "rows": n,
        "dim": DIM,
        "n_clusters": k,
        "generate_seconds": gen_seconds,
        "true_pairs": len(truth_a),
        "planted_true_pairs": len(planted_keys),
        "truth": "all rows" if exact else f"{len(queries):,} sampled query rows",
        "brute_force": {"seconds": brute_seconds, "how": brute_note},
        "by_clusterings": runs,
        "ivf": ivf,
    }


def _credit_to_queries(a: np.ndarray, b: np.ndarray, queries: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """True pairs touching `queries` (sorted row ids): position of the first query row in each, and the keys."""
    in_a = np.isin(a, queries)
    touching = in_a | np.isin(b, queries)
    q_row = np.where(in_a, a, b)[touching]
    return np.searchsorted(queries, q_row), pair_keys(a[touching], b[touching], n)


def _run_child(path: Path, tmp: Path, threshold: float, clusterings: int) -> dict:
    spec = {"path": str(path), "out": str(tmp / f"out_{clusterings}"), "threshold": threshold,
            "clusterings": clusterings}
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"dedup child failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _child(spec: dict) -> None:
    """Run in a fresh process: dedup a .npy memmap end to end and report time and peak memory."""
    out = Path(spec["out"])
    t0 = time.perf_counter()
    x = np.load(spec["path"], mmap_mode="r")
    result = find_duplicates(x, threshold=spec["threshold"], n_clusterings=spec["clusterings"])
    write_parquet(out / "pairs.parquet", result.pairs)
    write_parquet(out / "rows.parquet", result.rows)
    wall = time.perf_counter() - t0
    n = x.shape[0]
    a, b = result.pairs["a"].to_numpy(), result.pairs["b"].to_numpy()
    np.save(out / "keys.npy", pair_keys(a, b, n))
    np.save(out / "clustering.npy", result.pairs["clustering"].to_numpy())
    report = {
        "wall_seconds": wall,
        "peak_rss_gib": _peak_rss_gib(),
        "stats": result.stats,
        "pair_keys": str(out / "keys.npy"),
        "pair_clustering": str(out / "clustering.npy"),
    }
    print(json.dumps(report))


def _peak_rss_gib() -> float:
    """Peak resident memory of this process.

    VmHWM, not getrusage's ru_maxrss: a child started by fork/vfork + exec inherits its parent's
    high-water mark in ru_maxrss, which here would count the parent's copy of the data.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _brute_force_all(x: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Exact range search of every row against every row (FAISS IndexFlatIP), timed: pairs (a < b)."""
    n = x.shape[0]
    t0 = time.perf_counter()
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(np.ascontiguousarray(x))
    qs, js = [], []
    for start in range(0, n, 8192):
        lims, _, hits = index.range_search(np.ascontiguousarray(x[start : start + 8192]), threshold - CANDIDATE_MARGIN)
        qs.append(start + np.repeat(np.arange(len(lims) - 1), np.diff(lims.astype(np.int64))))
        js.append(hits)
    seconds = time.perf_counter() - t0
    q, j = np.concatenate(qs), np.concatenate(js)
    a, b = q[q < j], j[q < j]
    true = pair_cosines(x, a, b) >= threshold
    return a[true], b[true], seconds


def _brute_force_sample(x: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
    """Exact search of TRUTH_SAMPLE seeded rows against all rows; time scaled to all rows."""
    n = x.shape[0]
    sample = np.sort(np.random.default_rng(TRUTH_SEED).choice(n, size=TRUTH_SAMPLE, replace=False))
    t0 = time.perf_counter()
    _, a, b = true_pairs_of_sample(x, sample, threshold)
    seconds = (time.perf_counter() - t0) * n / TRUTH_SAMPLE
    return a, b, seconds, sample


def _ivf(x, k, queries, truth_q, truth_keys, target, threshold) -> dict:
    """IndexIVFFlat (k lists) range search of `queries`, nprobe raised until recall >= target.

    FAISS's IVF range search scans lists row by row (no matrix products), so it is timed on `queries` and
    the time is scaled to a search of every row.
    """
    n, d = x.shape
    t0 = time.perf_counter()
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, k, faiss.METRIC_INNER_PRODUCT)
    index.cp.min_points_per_centroid = 1  # trained on 32 points per list, like the clusterings
    train = np.sort(np.random.default_rng(0).choice(n, size=min(n, 32 * k), replace=False))
    index.train(np.ascontiguousarray(x[train]))
    for start in range(0, n, 65536):
        index.add(np.ascontiguousarray(x[start : start + 65536]))
    build_seconds = time.perf_counter() - t0
    sweep = []
    for nprobe in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32):
        index.nprobe = nprobe
        t1 = time.perf_counter()
        keys = _ivf_pairs(index, x, threshold, queries)
        seconds = time.perf_counter() - t1
        est = recall_from_sample(truth_q, np.isin(truth_keys, keys), len(queries), exact=len(queries) == n)
        sweep.append({"nprobe": nprobe, "recall": est.recall, "ci_low": est.ci_low, "ci_high": est.ci_high,
                      "search_seconds_all_rows": seconds * n / len(queries)})
        log(f"  IVF nprobe={nprobe}: recall {est.recall:.4f}, {seconds:.1f} s for {len(queries)} queries")
        if est.recall is not None and target is not None and est.recall >= target:
            break
    best = sweep[-1]
    return {"build_seconds": build_seconds, "timed_queries": len(queries), "sweep": sweep, "matched": best,
            "total_seconds": build_seconds + best["search_seconds_all_rows"]}


def _ivf_pairs(index, x, threshold, queries) -> np.ndarray:
    n = x.shape[0]
    keys = []
    for start in range(0, len(queries), 16384):
        q_ids = queries[start : start + 16384]
        lims, _, hits = index.range_search(np.ascontiguousarray(x[q_ids]), threshold - CANDIDATE_MARGIN)
        q = np.repeat(q_ids, np.diff(lims.astype(np.int64)))
        other = q != hits
        a, b = np.minimum(q[other], hits[other]), np.maximum(q[other], hits[other])
        true = pair_cosines(x, a, b) >= threshold
        keys.append(pair_keys(a[true], b[true], n))
    return np.unique(np.concatenate(keys))


def _machine() -> dict:
    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "faiss": faiss.__version__,
        "faiss_threads": faiss.omp_get_max_threads(),
        "load_average_at_end": os.getloadavg(),
    }


def _fmt_recall(r: dict) -> str:
    if r["recall"] is None:
        return "n/a"
    if r["ci_low"] == r["ci_high"]:
        return f"{100 * r['recall']:.2f}%"
    return f"{100 * r['recall']:.2f}% ({100 * r['ci_low']:.1f}–{100 * r['ci_high']:.1f})"


def _markdown(result: dict) -> str:
    lines = []
    for run in result["runs"]:
        lines.append(f"\n### {run['rows']:,} × {run['dim']}: k = {run['n_clusters']} clusters, threshold "
                     f"{result['threshold']}, truth from {run['truth']} ({run['true_pairs']:,} true pairs)\n")
        lines.append("| method | pair recall (95% CI) | recall of all planted pairs | self-reported recall "
                     "| seconds, end to end | peak RSS GiB |")
        lines.append("|---|---|---|---|---|---|")
        for r in run["by_clusterings"]:
            lines.append(f"| `find_duplicates`, {r['clusterings']} clustering{'s' if r['clusterings'] > 1 else ''} | "
                         f"{_fmt_recall(r)} | {100 * r['planted_pair_recall']:.2f}% | "
                         f"{_fmt_recall(r['self_reported_recall'])} | {r['wall_seconds']:.1f} | "
                         f"{r['peak_rss_gib']:.2f} |")
        bf = run["brute_force"]
        lines.append(f"| exact brute force, IndexFlatIP range search ({bf['how']}) | 100% | | | "
                     f"{bf['seconds']:.0f} | |")
        ivf = run["ivf"]
        m = ivf["matched"]
        how = "measured" if ivf["timed_queries"] == run["rows"] else f"search extrapolated from " \
            f"{ivf['timed_queries']:,} queries"
        lines.append(f"| IVF range search, IndexIVFFlat {run['n_clusters']} lists, nprobe={m['nprobe']} "
                     f"(build + search, {how}) | {_fmt_recall(m)} | | | {ivf['total_seconds']:.0f} | |")
        sweep = ", ".join(f"nprobe {p['nprobe']}: {100 * p['recall']:.2f}% in {p['search_seconds_all_rows']:.0f} s"
                          for p in ivf["sweep"])
        lines.append(f"\nIVF sweep (recall on the timed queries; search seconds scaled to all rows; build "
                     f"{ivf['build_seconds']:.0f} s): {sweep}")
    m = result["machine"]
    lines.append(f"\n{m['cpu_count']} CPUs ({m['processor']}), {m['platform']}, faiss {m['faiss']}, numpy "
                 f"{m['numpy']}; load average (1, 5, 15 min) at start {_loads(m['load_average_at_start'])}, "
                 f"at end {_loads(m['load_average_at_end'])}")
    return "\n".join(lines)


def _loads(values) -> str:
    return ", ".join(f"{v:.1f}" for v in values)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
