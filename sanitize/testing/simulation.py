"""Simulated audits on a known score distribution: how often does a threshold rule over-claim recall?

Used by the tests of `sanitize.safety.thresholds` and by ``benchmarks/thresholds.py`` to check the
certificate's guarantee empirically; the library itself does not use it.

- `simulate_violation_rate`: many simulated audit samples (simple random or stratified); for each, the
  certified threshold (`certified_threshold`) and the naive one, and whether their recall claim holds.
- `naive_threshold`: the uncertified rule, the highest threshold whose *empirical* audit recall is >= target.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

from sanitize.errors import ConfigError
from sanitize.safety.audit_sample import draw_audit_sample
from sanitize.safety.estimates import check_audit_arrays, check_level
from sanitize.safety.thresholds import certified_threshold


@dataclass(frozen=True)
class SimulationResult:
    """How often a threshold rule's recall claim fails, over many simulated audit samples.

    A *violation* is a trial where the rule claims recall >= target (the certificate is certified; the naive
    rule always claims it) but the true recall at its threshold is below target. ``*_se`` are Monte Carlo
    standard errors. Thresholds and removal rates (share of the pool flagged) are means over trials.
    """

    design: str
    target_recall: float
    confidence: float
    n_trials: int
    mean_positives: float
    certified_share: float
    certified_violation_rate: float
    certified_se: float
    naive_violation_rate: float
    naive_se: float
    certified_mean_threshold: float
    naive_mean_threshold: float
    certified_removal_rate: float
    naive_removal_rate: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def naive_threshold(scores: ArrayLike, labels: ArrayLike, target_recall: float) -> float:
    """The uncertified rule: the highest threshold whose *empirical* audit recall is >= target_recall."""
    s, y, _ = check_audit_arrays(scores, labels)
    pos = np.sort(s[y])
    if pos.shape[0] == 0:
        return -math.inf
    return float(pos[math.floor(pos.shape[0] * (1 - check_level(target_recall, "target_recall")))])


def simulate_violation_rate(
    *,
    target_recall: float = 0.99,
    confidence: float = 0.95,
    n_positives: int = 299,
    n_trials: int = 1000,
    prevalence: float = 0.01,
    positive_mean: float = 3.0,
    design: str = "random",
    population_size: int = 20_000,
    n_labels: int = 2_000,
    n_strata: int = 4,
    seed: int = 0,
) -> SimulationResult:
    """Measure how often certified and naive thresholds over-claim recall, on a known score distribution.

    Scores are sigmoid(z), z ~ Normal(positive_mean, 1) for positives and Normal(0, 1) for negatives, so the
    classes overlap. ``design="random"``: each trial labels `n_positives` random positives (the certificate
    holds given the number of positives, and negatives do not move the threshold); true recall and removal
    rate come from the exact distribution at the given `prevalence`. ``design="stratified"``: one finite
    pool of `population_size` rows at `prevalence` is drawn once; each trial draws a stratified audit sample
    of `n_labels` rows (`draw_audit_sample`) and certifies with its weights and strata; truth is the pool.
    Guaranteed: the same arguments give the same result.
    """
    target = check_level(target_recall, "target_recall")
    conf = check_level(confidence, "confidence")
    p = check_level(prevalence, "prevalence")
    if n_trials < 1:
        raise ConfigError(f"n_trials must be >= 1, got {n_trials}")
    rng = np.random.default_rng(seed)
    if design == "random":
        if n_positives < 1:
            raise ConfigError(f"n_positives must be >= 1, got {n_positives}")
        trials = _simulate_random(target, conf, n_positives, n_trials, p, positive_mean, rng)
        mean_positives = float(n_positives)
    elif design == "stratified":
        trials = _simulate_stratified(
            target, conf, n_trials, p, positive_mean, population_size, n_labels, n_strata, rng
        )
        mean_positives = float(np.mean(trials["n_positives"]))
    else:
        raise ConfigError(f"design must be 'random' or 'stratified', got {design!r}")

    certified = trials["certified"]
    cert_violations = certified & (trials["cert_recall"] < target)
    naive_violations = trials["naive_recall"] < target
    n = float(n_trials)
    return SimulationResult(
        design=design, target_recall=target, confidence=conf, n_trials=n_trials,
        mean_positives=mean_positives, certified_share=float(certified.mean()),
        certified_violation_rate=float(cert_violations.mean()),
        certified_se=float(np.sqrt(cert_violations.mean() * (1 - cert_violations.mean()) / n)),
        naive_violation_rate=float(naive_violations.mean()),
        naive_se=float(np.sqrt(naive_violations.mean() * (1 - naive_violations.mean()) / n)),
        certified_mean_threshold=_mean_finite(trials["cert_threshold"][certified]),
        naive_mean_threshold=_mean_finite(trials["naive_threshold"]),
        certified_removal_rate=float(trials["cert_removal"][certified].mean()) if certified.any() else math.nan,
        naive_removal_rate=float(trials["naive_removal"].mean()),
    )


def _mean_finite(values: np.ndarray) -> float:
    """Mean of the finite entries (a flag-all threshold is -inf), NaN when there is none."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


def _logit(t: np.ndarray) -> np.ndarray:
    """Inverse of the sigmoid the simulated scores go through (-inf at 0)."""
    with np.errstate(divide="ignore"):
        return np.log(t) - np.log1p(-t)


def _simulate_random(
    target: float, conf: float, n_pos: int, n_trials: int, p: float, mu: float, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Trials of `n_pos` random positives each; true recall and removal rate from the exact distribution."""
    z = rng.normal(mu, 1.0, size=(n_trials, n_pos))
    scores = 1.0 / (1.0 + np.exp(-z))
    ones = np.ones(n_pos, dtype=np.int8)
    cert = [certified_threshold(row, ones, target_recall=target, confidence=conf) for row in scores]
    cert_t = np.array([c.threshold for c in cert])
    naive_t = np.array([naive_threshold(row, ones, target) for row in scores])

    def recall(t: np.ndarray) -> np.ndarray:
        return stats.norm.sf(_logit(t) - mu)

    def removal(t: np.ndarray) -> np.ndarray:
        return p * stats.norm.sf(_logit(t) - mu) + (1 - p) * stats.norm.sf(_logit(t))

    return {
        "certified": np.array([c.certified for c in cert]),
        "cert_threshold": cert_t, "naive_threshold": naive_t,
        "cert_recall": recall(cert_t), "naive_recall": recall(naive_t),
        "cert_removal": removal(cert_t), "naive_removal": removal(naive_t),
        "n_positives": np.full(n_trials, n_pos),
    }


def _simulate_stratified(
    target: float, conf: float, n_trials: int, p: float, mu: float, population_size: int, n_labels: int,
    n_strata: int, rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Trials of one stratified audit sample each from one fixed finite pool; the truth is the pool."""
    is_pos = rng.random(population_size) < p
    z = rng.normal(np.where(is_pos, mu, 0.0), 1.0)
    scores = 1.0 / (1.0 + np.exp(-z))
    uids = np.arange(population_size).astype(str)
    pos_sorted = np.sort(scores[is_pos])
    total_pos = pos_sorted.shape[0]
    if total_pos == 0:
        raise ConfigError("the simulated pool has no positives; raise prevalence or population_size")
    sorted_scores = np.sort(scores)

    def recall(t: float) -> float:
        return (total_pos - np.searchsorted(pos_sorted, t, side="left")) / total_pos

    def removal(t: float) -> float:
        return (population_size - np.searchsorted(sorted_scores, t, side="left")) / population_size

    out: dict[str, list] = {k: [] for k in ("certified", "cert_threshold", "naive_threshold", "cert_recall",
                                            "naive_recall", "cert_removal", "naive_removal", "n_positives")}
    for _ in range(n_trials):
        sample = draw_audit_sample(
            uids, scores, n_labels, strategy="stratified", n_strata=n_strata, seed=int(rng.integers(2**63))
        )
        rows = sample.column("uid").to_numpy(zero_copy_only=False).astype(np.int64)
        weights = 1.0 / sample.column("inclusion_probability").to_numpy()
        strata = sample.column("stratum").to_numpy()
        cert = certified_threshold(
            scores[rows], is_pos[rows], target_recall=target, confidence=conf, weights=weights, strata=strata
        )
        naive = _naive_weighted(scores[rows], is_pos[rows], weights, target)
        for key, value in (
            ("certified", cert.certified), ("cert_threshold", cert.threshold), ("naive_threshold", naive),
            ("cert_recall", recall(cert.threshold)), ("naive_recall", recall(naive)),
            ("cert_removal", removal(cert.threshold)), ("naive_removal", removal(naive)),
            ("n_positives", cert.n_positives),
        ):
            out[key].append(value)
    return {k: np.asarray(v) for k, v in out.items()}


def _naive_weighted(s: np.ndarray, y: np.ndarray, w: np.ndarray, target: float) -> float:
    """Highest positive score whose weighted audit recall is >= target (the uncertified rule, weighted)."""
    order = np.argsort(s[y], kind="stable")
    pos, pw = s[y][order], w[y][order]
    if pos.shape[0] == 0:
        return -math.inf
    missed_share = (np.cumsum(pw) - pw) / pw.sum()  # weight strictly below each positive (ties aside)
    return float(pos[np.flatnonzero(missed_share <= 1 - target + 1e-12)[-1]])
