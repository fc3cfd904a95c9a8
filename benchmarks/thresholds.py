"""How often does a threshold over-claim recall? Certified (order statistic / stratified bound) vs naive.

For each setting, many simulated audit samples are drawn from a known score distribution (positives
sigmoid(N(3, 1)), negatives sigmoid(N(0, 1)), so the classes overlap). A *violation* is a trial whose rule
claims recall >= target while the true recall at its threshold is below target. The certified rule must stay
at or under 1 - confidence (plus Monte Carlo error); the naive rule ("the empirical target-recall point of the
audit positives") does not. Mean threshold and the resulting removal rate show the price of certainty.

    python benchmarks/thresholds.py [--quick]

Prints markdown tables and writes benchmarks/results/thresholds.json (with machine info).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sanitize.io.atomic import write_json
from sanitize.safety.estimates import removal_rate
from sanitize.safety.thresholds import certified_threshold
from sanitize.testing.simulation import simulate_violation_rate

RESULTS = Path(__file__).resolve().parent / "results" / "thresholds.json"

# (target recall, confidence, audit positives)
RANDOM_SETTINGS = [
    (0.99, 0.95, 299),
    (0.99, 0.95, 500),
    (0.99, 0.95, 1000),
    (0.99, 0.99, 1000),
    (0.95, 0.95, 59),
    (0.95, 0.95, 200),
    (0.9, 0.9, 50),
]
# (target recall, confidence, prevalence, pool size, labels, strata)
STRATIFIED_SETTINGS = [
    (0.9, 0.9, 0.2, 20_000, 2_000, 4),
    (0.95, 0.95, 0.2, 20_000, 4_000, 4),
]


def machine() -> dict:
    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def run_random(trials: int, seed: int) -> list[dict]:
    rows = []
    for target, conf, n_pos in RANDOM_SETTINGS:
        start = time.perf_counter()
        r = simulate_violation_rate(
            target_recall=target, confidence=conf, n_positives=n_pos, n_trials=trials, seed=seed
        )
        rows.append({**r.to_dict(), "seconds": time.perf_counter() - start})
    return rows


def run_stratified(trials: int, seed: int, settings: list[tuple]) -> list[dict]:
    rows = []
    for target, conf, prevalence, pool, n_labels, n_strata in settings:
        start = time.perf_counter()
        r = simulate_violation_rate(
            design="stratified", target_recall=target, confidence=conf, prevalence=prevalence,
            population_size=pool, n_labels=n_labels, n_strata=n_strata, n_trials=trials, seed=seed,
        )
        rows.append({**r.to_dict(), "n_labels": n_labels, "n_strata": n_strata, "population_size": pool,
                     "prevalence": prevalence, "seconds": time.perf_counter() - start})
        # the same label budget spent on a simple random sample, for comparison
        start = time.perf_counter()
        srs = simulate_violation_rate(
            target_recall=target, confidence=conf, n_positives=round(prevalence * n_labels),
            prevalence=prevalence, n_trials=trials, seed=seed,
        )
        rows.append({**srs.to_dict(), "n_labels": n_labels, "n_strata": 1, "population_size": None,
                     "prevalence": prevalence, "seconds": time.perf_counter() - start})
    return rows


def run_speed() -> dict:
    rng = np.random.default_rng(0)
    n = 1_000_000
    scores = rng.random(n)
    labels = rng.random(n) < 0.3
    weights = np.where(scores > 0.5, 2.0, 20.0)
    strata = (scores > 0.5).astype(int)
    f16 = scores.astype(np.float16)
    return {
        "rows": n,
        "certified_threshold_random_s": best_of(
            lambda: certified_threshold(scores, labels, target_recall=0.99, confidence=0.95)
        ),
        "certified_threshold_stratified_s": best_of(
            lambda: certified_threshold(
                scores, labels, target_recall=0.99, confidence=0.95, weights=weights, strata=strata
            )
        ),
        "removal_rate_float16_s": best_of(lambda: removal_rate(f16, 0.5)),
    }


def pct(x: float) -> str:
    return "—" if x != x else f"{100 * x:.1f}%"


def print_random(rows: list[dict]) -> None:
    print("### Simple random audit sample (order-statistic certificate vs naive empirical point)\n")
    print("| target recall | confidence | audit positives | trials | certified: violated | naive: violated "
          "| certified: mean threshold | naive: mean threshold | certified: removal rate | naive: removal rate |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['target_recall']} | {r['confidence']} | {r['mean_positives']:.0f} | {r['n_trials']} "
            f"| {pct(r['certified_violation_rate'])} ± {pct(r['certified_se'])} "
            f"| {pct(r['naive_violation_rate'])} ± {pct(r['naive_se'])} "
            f"| {r['certified_mean_threshold']:.3f} | {r['naive_mean_threshold']:.3f} "
            f"| {pct(r['certified_removal_rate'])} | {pct(r['naive_removal_rate'])} |"
        )
    print()


def print_stratified(rows: list[dict]) -> None:
    print("### Same label budget: stratified sample (Bonferroni stratum bound) vs simple random sample\n")
    print("| design | target recall | confidence | labels | mean positives | trials | certified share "
          "| certified: violated | naive: violated | certified: removal rate | naive: removal rate |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        design = f"stratified ({r['n_strata']} strata)" if r["design"] == "stratified" else "random"
        print(
            f"| {design} | {r['target_recall']} | {r['confidence']} | {r['n_labels']} | {r['mean_positives']:.0f} "
            f"| {r['n_trials']} | {pct(r['certified_share'])} "
            f"| {pct(r['certified_violation_rate'])} ± {pct(r['certified_se'])} "
            f"| {pct(r['naive_violation_rate'])} ± {pct(r['naive_se'])} "
            f"| {pct(r['certified_removal_rate'])} | {pct(r['naive_removal_rate'])} |"
        )
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 trials per setting, one stratified setting")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    random_trials = 1000 if args.quick else 5000
    stratified = STRATIFIED_SETTINGS[:1] if args.quick else STRATIFIED_SETTINGS

    random_rows = run_random(random_trials, args.seed)
    print_random(random_rows)
    stratified_rows = run_stratified(1000, args.seed, stratified)
    print_stratified(stratified_rows)
    speed = run_speed()
    print("### Speed (best of 3, 1M audit rows, 30% positive)\n")
    print("| certified_threshold, random | certified_threshold, 2 strata | removal_rate over 1M float16 scores |")
    print("|---|---|---|")
    print(f"| {speed['certified_threshold_random_s']:.3f} s | {speed['certified_threshold_stratified_s']:.3f} s "
          f"| {speed['removal_rate_float16_s']:.4f} s |")
    write_json(RESULTS, {"quick": args.quick, "machine": machine(), "random": random_rows,
                         "stratified": stratified_rows, "speed": speed})
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
