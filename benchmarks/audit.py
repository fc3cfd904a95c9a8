"""Benchmark the filter audit: 1M rows, 3 attributes, 3 stages, counted per shard, merged, analysed, reported.

    python benchmarks/audit.py [--quick] [--rows N] [--shards K]

Prints a markdown table and writes benchmarks/results/audit.json (with machine info). Synthetic labels and
decisions (seeded); the filters have planted group effects so the report has flags to rank. Also times caption
lexicon labelling and keyword counting of the same number of rows, and the weights (plan + per-shard apply).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from sanitize.audit import (
    AuditOptions,
    apply_weights,
    audit_report,
    count_shard,
    lexicon_attribute,
    load_attribute_spec,
    load_lexicon,
    merge_counts,
    spec_info,
    weighting_plan,
    write_report,
)
from sanitize.io.atomic import write_json

CAPTIONS = [
    "A woman riding a bike down the street.",
    "Two men playing frisbee in a park.",
    "A nurse and a doctor talking in a hallway.",
    "A plate of food with broccoli.",
    "A little girl holding a teddy bear.",
    "A chef cooking in a kitchen.",
    "A man and a woman sitting on a bench.",
]


def make_shard(n: int, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    gender = rng.choice(["female", "male", "no_person", "unknown"], n, p=[0.3, 0.35, 0.25, 0.1])
    age = rng.choice(["child", "young_adult", "middle_aged", "older", "no_person", "unknown"], n)
    race = rng.choice(
        ["white", "black", "latino_hispanic", "east_asian", "southeast_asian", "indian", "middle_eastern", "unknown"], n
    )
    return pl.DataFrame(
        {
            "uid": np.char.add(f"s{seed}-", np.arange(n).astype(str)),
            "perceived_gender": gender,
            "age": age,
            "perceived_race": race,
            "caption": rng.choice(CAPTIONS, n),
            "keep:sexual": rng.random(n) >= np.where(gender == "female", 0.06, 0.03),
            "keep:violence": rng.random(n) >= 0.01,
            "keep:dedup": rng.random(n) >= np.where(age == "older", 0.15, 0.1),
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100k rows instead of 1M")
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--shards", type=int, default=8)
    args = parser.parse_args()
    rows = args.rows or (100_000 if args.quick else 1_000_000)
    per_shard = -(-rows // args.shards)
    sizes = [min(per_shard, rows - i * per_shard) for i in range(args.shards) if rows - i * per_shard > 0]
    shards = [make_shard(n, seed) for seed, n in enumerate(sizes)]
    attributes = [spec_info(load_attribute_spec(name)) for name in ("perceived_gender", "age", "perceived_race")]
    options = AuditOptions()  # every pair of attributes is crossed

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    parts = [count_shard(s, attributes) for s in shards]
    timings["count per shard (all shards)"] = time.perf_counter() - t0

    t = time.perf_counter()
    counts = merge_counts(parts)
    timings["merge"] = time.perf_counter() - t

    t = time.perf_counter()
    plan = weighting_plan(counts, ["perceived_gender", "age"])
    report = audit_report(counts, options, weighting=plan.summary())
    timings["statistics + weighting plan"] = time.perf_counter() - t

    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        write_report(report, out)
        timings["write report (json, md, html)"] = time.perf_counter() - t
        html_kib = (Path(out) / "report.html").stat().st_size / 1024
    timings["total audit (count → report)"] = time.perf_counter() - t0

    t = time.perf_counter()
    weights = [apply_weights(s, plan) for s in shards]
    timings["apply weights (all shards)"] = time.perf_counter() - t

    lexicon = load_lexicon("caption_gender")
    t = time.perf_counter()
    for s in shards:
        lexicon_attribute(s["caption"], lexicon)
    timings["caption lexicon labels (all shards)"] = time.perf_counter() - t
    t = time.perf_counter()
    for s in shards:
        count_shard(s, attributes, keywords=lexicon)
    timings["count with keyword counts (all shards)"] = time.perf_counter() - t

    result = {
        "rows": rows,
        "shards": len(shards),
        "attributes": [a.name for a in attributes],
        "stages": list(counts.stages),
        "joint_cells": counts.cells.height,
        "report_entries": len(report["entries"]),
        "tests": report["meta"]["tests"],
        "flags": len(report["flags"]),
        "weighted_rows": int(sum(w.num_rows for w in weights)),
        "html_kib": round(html_kib, 1),
        "seconds": {k: round(v, 3) for k, v in timings.items()},
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "polars": pl.__version__,
            "numpy": np.__version__,
        },
    }
    print(f"## audit benchmark: {rows:,} rows, {len(shards)} shards, 3 attributes, 3 stages, "
          f"{os.cpu_count()} CPUs\n")
    print("| step | seconds |\n|---|---:|")
    for k, v in timings.items():
        print(f"| {k} | {v:.3f} |")
    print(
        f"\n{counts.cells.height} joint cells, {len(report['entries'])} report entries, {report['meta']['tests']} "
        f"tests, {len(report['flags'])} flags, report.html {html_kib:.0f} KiB."
    )
    out_path = Path(__file__).resolve().parent / "results" / "audit.json"
    write_json(out_path, result)
    print(f"\nwrote {out_path}")


if __name__ == "__main__":
    main()
