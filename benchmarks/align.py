"""Benchmark the align stage: CLIP score per row, kept by threshold and by the exact top fraction.

    python benchmarks/align.py [--rows 1000000] [--shards 10] [--dim 512]

Writes a run folder of generated float16 image and caption embeddings (clip-retrieval layout, unit rows, scores
spread like CLIP's), then times the stage on the local engine: by threshold and by top fraction, each from scratch
(scoring every row, then deciding), and deciding again from the stored scores (a resumed stage). Prints a table and
writes benchmarks/results/align.json with the machine it ran on. The limit is reading the embeddings: 2 · rows · dim
· 2 bytes.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sanitize.io.atomic import write_json
from sanitize.io.embeddings import write_embedding_shard
from sanitize.io.manifest import open_manifest
from sanitize.io.runfolder import RunFolder
from sanitize.pipeline.stage import run_stage
from sanitize.pipeline.stages.align import AlignConfig, AlignStage

RESULTS = Path(__file__).resolve().parent / "results" / "align.json"


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_run(root: Path, rows: int, shards: int, dim: int, seed: int = 0) -> RunFolder:
    """A run folder with `rows` embedded rows in `shards` shards; caption embeddings at CLIP-like angles."""
    rng = np.random.default_rng(seed)
    bounds = np.linspace(0, rows, shards + 1).astype(int)
    (root / "in").mkdir(parents=True)
    for s in range(shards):
        uids = [f"s{s}-{i}" for i in range(bounds[s + 1] - bounds[s])]
        pq.write_table(pa.table({"uid": uids, "caption": ["c"] * len(uids)}), root / "in" / f"{s:05d}.parquet")
    run = RunFolder.create(root / "run", open_manifest(root / "in"))
    for s in range(shards):
        n = int(bounds[s + 1] - bounds[s])
        img = unit(rng.normal(size=(n, dim)).astype(np.float32))
        noise = unit(rng.normal(size=(n, dim)).astype(np.float32))
        cos = np.clip(rng.normal(0.28, 0.06, size=(n, 1)), -1, 1).astype(np.float32)
        txt = unit(cos * img + np.sqrt(1 - cos**2) * unit(noise - np.sum(noise * img, 1, keepdims=True) * img))
        meta = pq.read_table(root / "in" / f"{s:05d}.parquet", columns=["uid"])
        write_embedding_shard(run.embeddings_dir, s, img, txt, meta)
    return run


def timed(run: RunFolder, config: AlignConfig) -> tuple[float, dict]:
    shutil.rmtree(run.stage_dir("align") / "_done", ignore_errors=True)
    started = time.perf_counter()
    result = run_stage(AlignStage(config), run).to_dict()
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--shards", type=int, default=10)
    parser.add_argument("--dim", type=int, default=512)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        run = make_run(Path(tmp), args.rows, args.shards, args.dim)
        generate = time.perf_counter() - t
        runs = []
        for label, config in [("threshold 0.28: score + decide", AlignConfig(by="threshold")),
                              ("threshold 0.28: decide from stored scores", AlignConfig(by="threshold")),
                              ("top fraction 0.3: score + 2 histogram passes + decide",
                               AlignConfig(by="fraction", fraction=0.3))]:
            if "stored" not in label:
                shutil.rmtree(run.stage_dir("align"), ignore_errors=True)
            seconds, result = timed(run, config)
            runs.append({"case": label, "seconds": round(seconds, 2), "rows_per_second": round(args.rows / seconds),
                         "kept": result["kept"], "threshold": result["threshold"]})
    read_bytes = 2 * args.rows * args.dim * 2
    out = {"rows": args.rows, "shards": args.shards, "dim": args.dim, "generate_seconds": round(generate, 1),
           "embedding_bytes_read_by_scoring": read_bytes, "runs": runs,
           "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                       "python": platform.python_version(), "load_average": list(os.getloadavg())}}
    write_json(RESULTS, out)
    print(f"align stage, {args.rows:,} rows × {args.dim} (float16 image + caption), {args.shards} shards, "
          f"{os.cpu_count()} CPUs\n")
    print("| case | seconds | rows/s | kept | cut |")
    print("|---|---:|---:|---:|---:|")
    for r in runs:
        print(f"| {r['case']} | {r['seconds']:.2f} | {r['rows_per_second']:,} | {r['kept']:,} | {r['threshold']:.4f} |")


if __name__ == "__main__":
    main()
