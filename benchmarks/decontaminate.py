"""Decontamination speed: a corpus against an evaluation set, by `sanitize dedup SOURCE --against REF`'s search.

    python benchmarks/decontaminate.py [--rows 200000] [--reference 50000] [--dim 512] [--threshold 0.95]
                                       [--workdir /tmp/decontaminate_bench]

CLIP-like float16 corpus rows (`sanitize.testing.synthetic.clip_like`, in shards of 50k rows) and a reference set
whose first 1% are noisy copies of corpus rows (written as a clip-retrieval folder), searched exhaustively by
`decontaminate_folder` (the same per-part task as the stage) on the local engine. Reports seconds, rows/s, the
arithmetic rate (rows × reference × dim multiply-adds / s), how many planted copies were found, and the time a
1M × 50k search would take at the measured rate. Prints a table and writes benchmarks/results/decontaminate.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sanitize.io.atomic import write_json  # noqa: E402
from sanitize.io.embeddings import write_embedding_shard  # noqa: E402
from sanitize.pipeline.stages.decontaminate import DecontaminateConfig, decontaminate_folder  # noqa: E402
from sanitize.testing.synthetic import clip_like  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "decontaminate.json"
SHARD_ROWS = 50_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--reference", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument("--workdir", default="/tmp/decontaminate_bench")
    args = parser.parse_args()
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    corpus_dir, ref_dir = work / "corpus", work / "evalset"
    x = clip_like(args.rows, args.dim, seed=0, dtype=np.float32).x
    rng = np.random.default_rng(1)
    ref = clip_like(args.reference, args.dim, seed=2, dtype=np.float32).x
    planted = rng.choice(args.rows, args.reference // 100, replace=False)
    noisy = x[planted] + 0.01 * rng.normal(size=(len(planted), args.dim)).astype(np.float32)
    ref[: len(planted)] = noisy / np.linalg.norm(noisy, axis=1, keepdims=True)
    for s, start in enumerate(range(0, args.rows, SHARD_ROWS)):
        rows = x[start : start + SHARD_ROWS]
        write_embedding_shard(corpus_dir, s, rows.astype(np.float16), None,
                              pa.table({"uid": [f"r{i}" for i in range(start, start + len(rows))]}))
    write_embedding_shard(ref_dir, 0, ref.astype(np.float16), None,
                          pa.table({"uid": [f"e{i}" for i in range(args.reference)]}))
    del x, ref

    started = time.perf_counter()
    stats = decontaminate_folder(corpus_dir, work / "out", DecontaminateConfig(against=(str(ref_dir),),
                                                                                threshold=args.threshold))
    seconds = time.perf_counter() - started
    found = stats["references"]["evalset"]["items_found_in_corpus"]
    madds = args.rows * args.reference * args.dim
    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average": os.getloadavg()},
        "arguments": vars(args), "seconds": round(seconds, 1), "rows_per_second": round(args.rows / seconds),
        "gflops": round(2 * madds / seconds / 1e9, 1), "planted_copies": len(planted),
        "reference_items_found": found, "rows_removed": stats["dropped"].get("contaminated", 0),
        "projected_1m_x_50k_minutes": round(2 * 1_000_000 * 50_000 * args.dim / (2 * madds / seconds) / 60, 1),
    }
    write_json(RESULTS, result)
    print("| corpus × reference | seconds | rows/s | GFLOP/s | planted copies found | 1M × 50k at this rate |\n"
          "|---|---:|---:|---:|---:|---:|\n"
          f"| {args.rows:,} × {args.reference:,} × {args.dim} | {seconds:.1f} | {result['rows_per_second']:,} | "
          f"{result['gflops']} | {found} of {len(planted)} | {result['projected_1m_x_50k_minutes']} min |")
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
