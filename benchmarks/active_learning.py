"""Active-learning benchmark: labels needed per strategy, and query time per round vs pool size.

Part 1 — labels needed. A simulated annotator answers with the true labels. Every run starts from the same seed
labels (5 positives, 50 negatives drawn at random), then rounds of: train a class-weighted logistic regression
on all labels, measure it on the full pool, ask the strategy for the next batch. "Reached" means: at the
threshold that keeps 95% of the pool's positives, precision is >= 0.5 (measured on every pool row). We report
the labels (seed included) used to train the first classifier that reached it; runs that exhaust the label
budget count as not reached. Mean ± standard deviation over seeds, over the runs that reached the target.
Datasets (prevalence ~1%):
- digits: scikit-learn's handwritten digits (real, ships with the package); digit 3 is the positive class,
  its rows subsampled to 1% of the pool; features are the 64 pixels, centred and L2-normalised.
- clip-like: synthetic 256-d unit vectors (256, not 512, to keep the ~4000 training rounds within minutes)
  with a shared mean direction and 64 topics, like CLIP embeddings; the rare concept has three modes of
  unequal size (60/30/10% of its rows), and 2% of the pool are "near-miss" hard negatives.

Part 2 — query time of one round (`select_batch`, n=50, 500 labels) vs pool size, float16 embeddings in a
memmap on disk (the layout of a real embedding folder), read block by block.

    python benchmarks/active_learning.py [--quick] [--max-pool 10000000] [--seeds 5]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sanitize.io.atomic import write_json  # noqa: E402
from sanitize.safety.classifier import EmbeddingClassifier  # noqa: E402
from sanitize.safety.pool import EmbeddingPool  # noqa: E402
from sanitize.safety.strategies import STRATEGIES, recall_threshold, select_batch  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "active_learning.json"
TARGET_RECALL, TARGET_PRECISION = 0.95, 0.5


# ---- data ----------------------------------------------------------------------------------------------------


def unit(X: np.ndarray) -> np.ndarray:
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)


def digits_rare(seed: int, positive_digit: int = 3, prevalence: float = 0.01):
    from sklearn.datasets import load_digits

    data = load_digits()
    rng = np.random.default_rng(seed)
    neg = np.flatnonzero(data.target != positive_digit)
    n_pos = max(6, round(prevalence * len(neg) / (1 - prevalence)))
    pos = rng.choice(np.flatnonzero(data.target == positive_digit), n_pos, replace=False)
    rows = np.concatenate([neg, pos])
    X = data.data[rows].astype(np.float32)
    X = unit(X - X.mean(axis=0))
    y = (data.target[rows] == positive_digit).astype(np.int64)
    return X, y


def clip_like(seed: int, n: int = 20_000, d: int = 256, prevalence: float = 0.01, hard: float = 0.02):
    """Synthetic CLIP-like embeddings with a rare three-mode concept and near-miss negatives."""
    rng = np.random.default_rng(seed)
    mean = unit(rng.standard_normal((1, d)))[0]
    topics = unit(rng.standard_normal((64, d)))
    modes = unit(rng.standard_normal((3, d)))
    X = 1.0 * mean + 0.8 * topics[rng.integers(64, size=n)] + rng.standard_normal((n, d)) * (0.7 / np.sqrt(d))
    y = np.zeros(n, dtype=np.int64)
    order = rng.permutation(n)
    n_pos, n_hard = round(prevalence * n), round(hard * n)
    pos, near = order[:n_pos], order[n_pos : n_pos + n_hard]
    mode = rng.choice(3, size=n_pos, p=[0.6, 0.3, 0.1])
    # Concept strength varies per image; near misses carry a weaker dose of the same directions.
    X[pos] += modes[mode] * rng.uniform(0.35, 0.7, size=(n_pos, 1))
    X[near] += modes[rng.integers(3, size=n_hard)] * rng.uniform(0.1, 0.35, size=(n_hard, 1))
    y[pos] = 1
    return unit(X), y


# ---- part 1: labels needed -----------------------------------------------------------------------------------


def precision_at_recall(scores: np.ndarray, y: np.ndarray, recall: float) -> float:
    t = recall_threshold(scores[y == 1], recall)
    flagged = scores >= t
    return float((flagged & (y == 1)).sum() / flagged.sum())


def run_active_learning(X, y, strategy: str, seed: int, batch: int, budget: int) -> dict:
    rng = np.random.default_rng(seed)
    uids = np.array([f"r{i}" for i in range(len(y))])
    labelled = np.concatenate(
        [rng.choice(np.flatnonzero(y == 1), 5, replace=False), rng.choice(np.flatnonzero(y == 0), 50, replace=False)]
    )
    pool = EmbeddingPool(uids, X)
    select_seconds = []
    while True:
        clf = EmbeddingClassifier(random_state=seed).fit(X[labelled], y[labelled])
        precision = precision_at_recall(clf.positive_proba(X), y, TARGET_RECALL)
        if precision >= TARGET_PRECISION:
            return {"labels": len(labelled), "reached": True, "select_s": float(np.mean(select_seconds or [0.0]))}
        if len(labelled) - 55 >= budget or len(labelled) >= len(y):
            return {"labels": len(labelled), "reached": False, "select_s": float(np.mean(select_seconds or [0.0]))}
        t0 = time.perf_counter()
        chosen = select_batch(strategy, clf, pool, (uids[labelled], y[labelled]), batch, seed=seed + len(labelled))
        select_seconds.append(time.perf_counter() - t0)
        if len(chosen) == 0:
            # Flagged/missed can run dry (nothing left above/below threshold); fall back to random for this round.
            chosen = select_batch("random", clf, pool, (uids[labelled], y[labelled]), batch, seed=seed)
        labelled = np.concatenate([labelled, chosen.rows])


def labels_needed(datasets: dict, strategies, seeds, log) -> list[dict]:
    rows = []
    for name, (make, batch, budget) in datasets.items():
        for strategy in strategies:
            runs = []
            for seed in seeds:
                X, y = make(seed)
                runs.append(run_active_learning(X, y, strategy, seed, batch, budget))
            reached = [r["labels"] for r in runs if r["reached"]]
            row = {
                "dataset": name,
                "pool": len(y),
                "positives": int(y.sum()),
                "strategy": strategy,
                "batch": batch,
                "budget": budget + 55,
                "reached": len(reached),
                "runs": len(runs),
                "labels_mean": float(np.mean(reached)) if reached else None,
                "labels_std": float(np.std(reached)) if reached else None,
                "labels_per_seed": [r["labels"] if r["reached"] else None for r in runs],
                "select_s_mean": float(np.mean([r["select_s"] for r in runs])),
            }
            rows.append(row)
            log(f"{name:10s} {strategy:18s} {row['labels_per_seed']}")
    return rows


# ---- part 2: query time vs pool size -------------------------------------------------------------------------


def make_memmap_pool(folder: Path, n: int, d: int, seed: int, block: int = 262_144):
    path = folder / f"emb_{n}.npy"
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, d))
    rng = np.random.default_rng(seed)
    for start in range(0, n, block):
        rows = min(block, n - start)
        mm[start : start + rows] = unit(rng.standard_normal((rows, d), dtype=np.float32))
    mm.flush()
    del mm
    uids = np.arange(n).astype(f"U{len(str(n))}")
    return uids, np.load(path, mmap_mode="r"), path


def query_times(sizes, strategies, d: int, seed: int, log) -> list[dict]:
    rows = []
    folder = Path(tempfile.mkdtemp(prefix="al-bench-", dir="/tmp"))
    try:
        for n in sizes:
            t0 = time.perf_counter()
            uids, X, path = make_memmap_pool(folder, n, d, seed)
            log(f"pool {n:>10,} x {d} float16 memmap written in {time.perf_counter() - t0:.1f}s")
            rng = np.random.default_rng(seed)
            lab = np.sort(rng.choice(n, 500, replace=False))
            X_lab = np.asarray(X[lab], dtype=np.float32)
            # Labels from a direction, so the classifier and the strategies see a real (if easy) concept.
            y_lab = (X_lab[:, 0] > np.quantile(X_lab[:, 0], 0.8)).astype(np.int64)
            clf = EmbeddingClassifier(random_state=seed).fit(X_lab, y_lab)
            pool = EmbeddingPool(uids, X)
            for strategy in strategies:
                t0 = time.perf_counter()
                chosen = select_batch(strategy, clf, pool, (uids[lab], y_lab), 50, seed=seed)
                seconds = time.perf_counter() - t0
                rows.append({"pool": n, "dim": d, "strategy": strategy, "seconds": seconds, "chosen": len(chosen),
                             "gb_on_disk": path.stat().st_size / 1e9})
                log(f"  {strategy:18s} {seconds:7.2f}s")
            del X, pool
            path.unlink()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return rows


# ---- output --------------------------------------------------------------------------------------------------


def table_labels(rows) -> str:
    lines = [
        "| dataset | pool (positives) | strategy | labels to reach R≥0.95 @ P≥0.5 (mean ± sd) | reached | "
        "select s/round |",
        "|---|---|---|---:|---:|---:|",
    ]
    for r in rows:
        labels = f"{r['labels_mean']:.0f} ± {r['labels_std']:.0f}" if r["labels_mean"] is not None else "—"
        lines.append(
            f"| {r['dataset']} | {r['pool']} ({r['positives']}) | {r['strategy']} | {labels} | "
            f"{r['reached']}/{r['runs']} (budget {r['budget']}) | {r['select_s_mean']:.3f} |"
        )
    return "\n".join(lines)


def table_times(rows) -> str:
    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    sizes = list(dict.fromkeys(r["pool"] for r in rows))
    lines = ["| pool rows | GB (f16) | " + " | ".join(strategies) + " |", "|---:|---:|" + "---:|" * len(strategies)]
    for n in sizes:
        cells = {r["strategy"]: r for r in rows if r["pool"] == n}
        gb = next(iter(cells.values()))["gb_on_disk"]
        lines.append(f"| {n:,} | {gb:.2f} | " + " | ".join(f"{cells[s]['seconds']:.2f} s" for s in strategies) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 seeds, small budgets, pools up to 100k")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per strategy (default 5, quick 2)")
    parser.add_argument("--max-pool", type=int, default=None, help="largest pool for the timing part")
    parser.add_argument("--skip-labels", action="store_true", help="only the timing part")
    parser.add_argument("--skip-timing", action="store_true", help="only the labels-needed part")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    seeds = list(range(args.seeds or (2 if args.quick else 5)))
    max_pool = args.max_pool or (100_000 if args.quick else 10_000_000)
    n_clip = 5_000 if args.quick else 20_000
    datasets = {
        "digits": (lambda s: digits_rare(s), 10, 200 if args.quick else 600),
        "clip-like": (lambda s: clip_like(s, n=n_clip), 20, 300 if args.quick else 1000),
    }
    result = {
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "processor": platform.processor(),
            "python": platform.python_version(),
            "numpy": np.__version__,
        },
        "protocol": {
            "target": f"recall >= {TARGET_RECALL} at precision >= {TARGET_PRECISION} on the full pool",
            "seed_labels": "5 positives + 50 negatives, random",
            "classifier": "EmbeddingClassifier(kind='logistic'), class_weight='balanced'",
            "seeds": seeds,
            "quick": args.quick,
        },
    }
    if not args.skip_labels:
        t0 = time.perf_counter()
        result["labels_needed"] = labels_needed(datasets, STRATEGIES, seeds, log)
        result["labels_needed_seconds"] = time.perf_counter() - t0
        print("### Labels needed (rare category, ~1% prevalence)\n")
        print(table_labels(result["labels_needed"]) + "\n")
    if not args.skip_timing:
        sizes = [s for s in (10_000, 100_000, 1_000_000, 10_000_000) if s <= max_pool]
        timed = ("uncertainty", "ranked_batch", "committee", "flagged", "missed_neighbours", "random")
        result["query_time"] = query_times(sizes, timed, d=512, seed=0, log=log)
        print("### Query time of one round (n=50, 500 labels, 512-d float16 memmap)\n")
        print(table_times(result["query_time"]) + "\n")
    if RESULTS.exists() and (args.skip_labels or args.skip_timing):
        # A partial run keeps the other part's latest numbers (with the machine they were measured on).
        previous = json.loads(RESULTS.read_text())
        for part in ("labels_needed", "labels_needed_seconds", "query_time"):
            if part not in result and part in previous:
                result[part] = previous[part]
                result.setdefault("kept_from_previous_run", {})[part] = previous.get("machine")
    write_json(RESULTS, result)
    print(f"results: {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
