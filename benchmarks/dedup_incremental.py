"""Incremental dedup: a new batch against a kept index, against re-running the full dedup on everything.

    python benchmarks/dedup_incremental.py [--earlier 500000] [--new 50000] [--threshold 0.95] [--dim 512]
                                           [--workdir /tmp/dedup_incremental]

CLIP-like float16 rows (`sanitize.testing.synthetic.clip_like`, planted near-duplicates spread over the whole set,
so many of the batch's duplicates are of earlier rows) are cut into the earlier rows and the new batch. Three timed
runs, each with default options (5 clusterings, default clusters, recall sample 1000), reading .npy files in
shards of 100k rows:
1. the earlier rows with their index kept (`find_duplicates_sharded(..., index_dir=...)`);
2. the new batch against that index (`find_duplicates_since`);
3. the full dedup of earlier + new rows, what one would run without an index.
For 2 it also measures recall against brute force: every pair with a new row in it, found exhaustively in float32
blocks. Prints a table and writes benchmarks/results/dedup_incremental.json with the machine's details.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sanitize.dedup.incremental import DedupIndex, find_duplicates_since  # noqa: E402
from sanitize.dedup.sharded import find_duplicates_sharded  # noqa: E402
from sanitize.dedup.shards import NpyShards  # noqa: E402
from sanitize.io.atomic import write_json  # noqa: E402
from sanitize.testing.synthetic import clip_like  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "dedup_incremental.json"
SHARD_ROWS = 100_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--earlier", type=int, default=500_000)
    parser.add_argument("--new", type=int, default=50_000)
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--workdir", default="/tmp/dedup_incremental")
    args = parser.parse_args()
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    n = args.earlier + args.new
    x = clip_like(n, args.dim, seed=0, dtype=np.float16).x
    rng = np.random.default_rng(1)
    x = x[rng.permutation(n)]  # planted copies anywhere, so the batch has copies of earlier rows
    np.save(work / "earlier.npy", x[: args.earlier])
    np.save(work / "new.npy", x[args.earlier :])
    np.save(work / "all.npy", x)
    del x
    rows = {name: NpyShards(str(work / f"{name}.npy"), SHARD_ROWS) for name in ("earlier", "new", "all")}

    t0 = time.perf_counter()
    earlier = find_duplicates_sharded(rows["earlier"], work / "w_earlier", threshold=args.threshold,
                                      index_dir=work / "index")
    index_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    since = find_duplicates_since(rows["new"], DedupIndex.open(work / "index"), work / "w_new",
                                  threshold=args.threshold)
    since_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    full = find_duplicates_sharded(rows["all"], work / "w_all", threshold=args.threshold)
    full_seconds = time.perf_counter() - t0
    true = _brute_pairs(work, args.earlier, args.threshold)
    found = set(zip(since.pairs["a"].to_pylist(), since.pairs["b"].to_pylist(), strict=True))
    recall = len(true & found) / len(true) if true else None
    index_bytes = sum(p.stat().st_size for p in (work / "index").rglob("*") if p.is_file())

    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average": os.getloadavg()},
        "arguments": vars(args),
        "earlier_with_index": {"seconds": round(index_seconds, 1), "pairs": earlier.stats["pairs"],
                               "index_bytes": index_bytes},
        "incremental": {"seconds": round(since_seconds, 1), "pairs": since.stats["pairs"],
                        "pairs_with_earlier_rows": since.stats["pairs_with_earlier_rows"],
                        "removed": since.stats["removed"], "phase_seconds": since.stats["seconds"],
                        "self_reported_recall": since.stats["recall"], "brute_force_recall": recall,
                        "brute_force_pairs": len(true)},
        "full_rerun": {"seconds": round(full_seconds, 1), "pairs": full.stats["pairs"],
                       "removed_new_rows": int((~np.array(full.rows_table(args.earlier, n)["keep"]
                                                          .to_pylist())).sum())},
    }
    write_json(RESULTS, result)
    reported = since.stats["recall"]
    print(f"| run | rows | seconds | pairs | recall |\n|---|---:|---:|---:|---|\n"
          f"| earlier rows, index kept | {args.earlier:,} | {index_seconds:.1f} | {earlier.stats['pairs']:,} | |\n"
          f"| new batch against the index | {args.new:,} | {since_seconds:.1f} | {since.stats['pairs']:,} | "
          f"{recall:.4f} vs brute force; self-reported {reported['recall']:.4f} "
          f"[{reported['ci_low']:.4f}, {reported['ci_high']:.4f}] |\n"
          f"| full dedup of all rows | {n:,} | {full_seconds:.1f} | {full.stats['pairs']:,} | |")
    print(f"index on disk: {index_bytes / 2**20:.0f} MiB; load average {os.getloadavg()}")
    print(json.dumps(result["incremental"]["phase_seconds"]))


def _brute_pairs(work: Path, n_earlier: int, threshold: float, block: int = 8192) -> set[tuple[int, int]]:
    """Every pair (a < b) with a new row in it and cosine >= threshold (float32 blocks, then float64 check)."""
    earlier = np.load(work / "earlier.npy", mmap_mode="r")
    new = np.load(work / "new.npy").astype(np.float32)
    new /= np.linalg.norm(new, axis=1, keepdims=True)
    out = set()
    for start in range(0, len(earlier), block):
        x = np.asarray(earlier[start : start + block], dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        i, j = np.nonzero(new @ x.T >= threshold - 1e-4)
        cos = np.einsum("ij,ij->i", new[i].astype(np.float64), x[j].astype(np.float64))
        out.update((start + int(b), n_earlier + int(a)) for a, b in zip(i[cos >= threshold], j[cos >= threshold],
                                                                          strict=True))
    for start in range(0, len(new), block):
        i, j = np.nonzero(new[start : start + block] @ new.T >= threshold - 1e-4)
        i = i + start
        upper = i < j
        i, j = i[upper], j[upper]
        cos = np.einsum("ij,ij->i", new[i].astype(np.float64), new[j].astype(np.float64))
        out.update((n_earlier + int(a), n_earlier + int(b)) for a, b in zip(i[cos >= threshold],
                                                                             j[cos >= threshold], strict=True))
    return out


if __name__ == "__main__":
    main()
