"""Which unlabelled images to label next: modAL's strategies, DALL·E 2's two, random, and a zero-shot cold start.

Every strategy is a pure function of (classifier, pool, current labels, n, seed) and returns a `Selection`:
n unique, unlabelled uids, best first, each with its classifier score and a one-line reason.

Strategies (`STRATEGIES`):
- ``uncertainty``, ``margin``, ``entropy`` — modAL's sampling functions. For a binary classifier all three
  rank rows by closeness of P(category) to 0.5, so they pick the same rows; they are kept under their own
  names because users know them by those names.
- ``ranked_batch`` — modAL's `uncertainty_batch_sampling` (Cardoso et al.): uncertainty traded against
  distance to the labelled set and to the rows already picked, so a batch is not n copies of one image.
- ``committee`` — query by committee: modAL `Committee` of classifiers trained on seeded, class-stratified
  bootstraps of the labels; rows where members disagree most (max KL from the consensus).
- ``flagged`` — DALL·E 2: rows the model flags at the threshold that keeps ~100% of the known positives
  (`flag_recall`), most confident first; their labels expose the filter's false positives.
- ``missed_neighbours`` — DALL·E 2: nearest neighbours of known positives that the model scores below
  `threshold`; their labels expose false negatives. Picks rotate over the positives they are nearest to. The
  search is exact inner product (what FAISS's IndexFlatIP computes), done as one float16 product per pool
  block against the positives, so it rides on the same single pass as the scoring.
- ``random`` — a seeded uniform sample (the baseline, and `random-audit` labels).
`rank_by_prompts` is the cold start: similarity to the category's text prompts, before any positive exists.

Large pools are read once, block by block (`EmbeddingPool`), keeping a bounded set of candidates: the most
uncertain rows for the modAL strategies (modAL then runs on those only; exact for uncertainty/margin/entropy,
a preselection for ranked batch and committee), the highest-scoring flagged rows, the closest missed
neighbours. Memory is O(candidates × dim), time linear in the pool.

modAL's `ActiveLearner.teach()` is broken on scikit-learn >= 1.8, so learners are always built from the full
label set (`ActiveLearner(estimator, X_training=..., y_training=...)`), never taught incrementally.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from sklearn.base import BaseEstimator

from sanitize.errors import ConfigError, DataError
from sanitize.safety.classifier import TRAINABLE_KINDS, EmbeddingClassifier
from sanitize.safety.names import COLD_START, STRATEGIES
from sanitize.safety.pool import Block, EmbeddingPool, member_mask

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class Selection:
    """Rows chosen for labeling, best first.

    `uids` are unique and unlabelled; `rows` are their global pool rows (to join captions or paths);
    `scores` are P(category) from the classifier, or the prompt similarity for the cold start.
    """

    strategy: str
    uids: np.ndarray
    rows: np.ndarray
    scores: np.ndarray
    reasons: list[str]

    def __len__(self) -> int:
        return len(self.uids)

    def to_table(self) -> pa.Table:
        return pa.table(
            {
                "uid": pa.array(self.uids.tolist(), pa.string()),
                "row": pa.array(self.rows, pa.int64()),
                "score": pa.array(self.scores, pa.float32()),
                "strategy": pa.array([self.strategy] * len(self), pa.string()),
                "reason": pa.array(self.reasons, pa.string()),
            }
        )


def select_batch(
    strategy: str,
    classifier: EmbeddingClassifier,
    pool: EmbeddingPool | tuple[np.ndarray, np.ndarray],
    labels: tuple[Sequence[str] | np.ndarray, Sequence[int] | np.ndarray],
    n: int,
    *,
    seed: int = 0,
    threshold: float = 0.5,
    flag_recall: float = 1.0,
    n_candidates: int | None = None,
    committee_size: int = 5,
    max_neighbour_queries: int = 64,
) -> Selection:
    """Choose `n` unlabelled pool rows to label next with `strategy` (one of `STRATEGIES`).

    `labels` is (uids, 0/1 labels) of everything labelled so far: those uids are excluded, and some
    strategies learn from them (their embeddings are read from the pool; uids not in the pool raise
    `DataError`). `threshold` is the decision threshold of the classifier (what counts as "missed");
    `flag_recall` the share of known positives the `flagged` threshold keeps. `n_candidates` bounds the
    preselection for ranked batch and committee (default max(20·n, 1000)). Same inputs and seed, same result.
    Fewer than `n` uids come back only when fewer unlabelled rows qualify.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if n < 1:
        raise ConfigError(f"batch size n must be >= 1, got {n}")
    if not 0.0 < threshold < 1.0:
        raise ConfigError(f"threshold must be in (0, 1), got {threshold}")
    if not 0.0 < flag_recall <= 1.0:
        raise ConfigError(f"flag_recall must be in (0, 1], got {flag_recall}")
    pool = EmbeddingPool.of(pool)
    if classifier.dim != pool.dim:
        raise DataError(f"classifier expects {classifier.dim}-d embeddings, the pool has {pool.dim}-d")
    lab_uids = np.asarray(labels[0], dtype=str)
    y = np.asarray(labels[1]).astype(np.int64)
    if len(lab_uids) != len(y):
        raise DataError(f"labels: {len(lab_uids)} uids but {len(y)} labels")
    X_lab = pool.gather(lab_uids)
    labelled = set(lab_uids.tolist())
    rng = np.random.default_rng(seed)

    if strategy in ("uncertainty", "margin", "entropy"):
        # All three rank by closeness of P to 0.5 on a binary task, so the n best rows are the exact answer.
        best = _scan(pool, classifier, labelled, n, rank=_closeness_to_half)
        return _modal_uncertainty(strategy, best, classifier, n)
    if strategy in ("ranked_batch", "committee"):
        capacity = max(n, n_candidates) if n_candidates is not None else max(20 * n, 1000)
        best = _scan(pool, classifier, labelled, capacity, rank=_closeness_to_half)
        if strategy == "ranked_batch":
            return _ranked_batch(best, classifier, X_lab, y, n)
        return _committee(best, classifier, X_lab, y, n, rng, committee_size)
    if strategy == "flagged":
        positives = classifier.positive_proba(X_lab[y == 1])
        if len(positives) == 0:
            raise DataError("strategy 'flagged' needs at least one labelled positive")
        flag_at = recall_threshold(positives, flag_recall)
        best = _scan(pool, classifier, labelled, n, rank=lambda p, block: {"key": p}, keep=lambda p: p >= flag_at)
        reason = f"flagged at P≥{flag_at:.3f} (keeps {flag_recall:.0%} of {len(positives)} known positives)"
        return _selection("flagged", best, [f"{reason}: P={p:.3f}" for p in best["p"]])
    if strategy == "missed_neighbours":
        return _missed_neighbours(
            pool, classifier, labelled, X_lab, lab_uids, y, n, threshold, rng, max_neighbour_queries
        )
    best = _scan(pool, classifier, labelled, n, rank=lambda p, block: {"key": rng.random(len(p))})
    return _selection("random", best, ["random sample"] * len(best["p"]))


def rank_by_prompts(
    pool: EmbeddingPool | tuple[np.ndarray, np.ndarray],
    prompt_embeddings: np.ndarray,
    n: int,
    *,
    labelled_uids: Sequence[str] | np.ndarray = (),
    reduce: str = "max",
    prompts: Sequence[str] | None = None,
) -> Selection:
    """Cold start: the `n` unlabelled rows most similar to the category's text prompts, most similar first.

    `prompt_embeddings` (k, d) come from the CLIP text tower of the model that embedded the pool; they are
    L2-normalised here. `reduce` is "max" (closest prompt) or "mean" (average over prompts).
    """
    pool = EmbeddingPool.of(pool)
    if n < 1:
        raise ConfigError(f"batch size n must be >= 1, got {n}")
    Q = _prompt_matrix(prompt_embeddings, pool.dim)
    if reduce not in ("max", "mean"):
        raise ConfigError(f"reduce must be 'max' or 'mean', got {reduce!r}")
    labelled = set(np.asarray(labelled_uids, dtype=str).tolist())

    def similarity(p, block):
        sims = block.project(Q.T)
        return {"key": sims.max(axis=1) if reduce == "max" else sims.mean(axis=1), "prompt": sims.argmax(axis=1)}

    best = _scan(pool, None, labelled, n, rank=similarity)
    best["p"] = best["key"].astype(np.float32)
    names = list(prompts) if prompts is not None else [f"prompt {i}" for i in range(len(Q))]
    reasons = [
        f"{reduce} prompt similarity {s:.3f} (closest: {names[i]!r})"
        for s, i in zip(best["key"], best["prompt"], strict=True)
    ]
    return _selection(COLD_START, best, reasons)


def random_sample(
    pool: EmbeddingPool | tuple[np.ndarray, np.ndarray],
    n: int,
    *,
    labelled_uids: Sequence[str] | np.ndarray = (),
    seed: int = 0,
) -> Selection:
    """A seeded uniform sample of `n` unlabelled rows that needs no classifier (scores are NaN).

    Used before a classifier exists, e.g. to collect negatives after a cold start found only positives.
    """
    pool = EmbeddingPool.of(pool)
    if n < 1:
        raise ConfigError(f"batch size n must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    labelled = set(np.asarray(labelled_uids, dtype=str).tolist())
    best = _scan(pool, None, labelled, n, rank=lambda p, block: {"key": rng.random(len(p))})
    best["p"] = np.full(len(best["uid"]), np.nan, np.float32)
    return _selection("random", best, ["random sample (no classifier yet)"] * len(best["uid"]))


def zero_shot_scores(X: np.ndarray, prompt_embeddings: np.ndarray, *, reduce: str = "max") -> np.ndarray:
    """Cosine similarity of each row of `X` (n, d) to the prompts (k, d), reduced over prompts: (n,) float32."""
    Q = _prompt_matrix(prompt_embeddings, X.shape[1])
    sims = np.asarray(X, np.float32) @ Q.T
    return sims.max(axis=1) if reduce == "max" else sims.mean(axis=1)


def recall_threshold(positive_scores: np.ndarray, recall: float) -> float:
    """The highest threshold t with share(positive_scores >= t) >= recall (recall=1: the lowest score)."""
    s = np.sort(np.asarray(positive_scores, dtype=np.float64))
    allowed_misses = int(np.floor((1.0 - recall) * len(s) + 1e-9))
    return float(s[min(allowed_misses, len(s) - 1)])


# ---- the streaming scan ------------------------------------------------------------------------------------


def _scan(pool, classifier, labelled, capacity, *, rank, keep=None) -> dict[str, np.ndarray]:
    """One pass over the pool: the `capacity` unlabelled rows with the largest key, ties broken by row.

    `rank(p, block)` returns a dict with "key" (n,) and any extra per-row arrays to keep; `keep(p)` optionally
    filters rows first. Returns arrays ``key, row, uid, X, p`` plus the extras, sorted by key descending.
    Blocks are scored as stored (`Block.project`): only the surviving rows are converted to float32.
    """
    best: dict[str, np.ndarray] | None = None
    for block in pool.blocks():
        if classifier is not None:
            p = classifier.positive_proba_projected(block.project)
        else:
            block.check_finite()
            p = np.zeros(len(block.uids), np.float32)
        ranked = rank(p, block)
        key = np.asarray(ranked.pop("key"), dtype=np.float64)
        eligible = ~member_mask(block.uids, labelled)
        if keep is not None:
            eligible &= keep(p)
        rows = np.flatnonzero(eligible)
        if len(rows) > capacity:
            # Keep every row tied with the capacity-th key so the tie-break by row below stays exact.
            cut = np.partition(key[rows], len(rows) - capacity)[len(rows) - capacity]
            rows = rows[key[rows] >= cut]
        if len(rows) == 0:
            continue
        # Only the surviving rows are copied: a full-block copy would cost as much as scoring it.
        part = {"key": key[rows], "row": block.start + rows, "uid": block.uids[rows], "X": block.rows(rows),
                "p": p[rows]}
        part.update({name: np.asarray(v)[rows] for name, v in ranked.items()})
        if best is not None:
            part = {name: np.concatenate([best[name], v]) for name, v in part.items()}
        order = np.lexsort((part["row"], -part["key"]))[:capacity]
        best = {name: v[order] for name, v in part.items()}
    if best is None:
        logger.info("no unlabelled pool rows qualify")
        X = np.zeros((0, pool.dim), np.float32)
        p = np.zeros(0, np.float32)
        extras = {name: np.zeros(0, v.dtype) for name, v in rank(p, Block(0, np.zeros(0, str), X)).items()}
        best = {**extras, "key": np.zeros(0), "row": np.zeros(0, np.int64), "uid": np.zeros(0, str), "X": X, "p": p}
    return best


def _closeness_to_half(p: np.ndarray, X: np.ndarray) -> dict[str, np.ndarray]:
    return {"key": -np.abs(p - 0.5)}


def _selection(strategy: str, best: dict[str, np.ndarray], reasons: list[str], order=None) -> Selection:
    idx = np.arange(len(best["uid"])) if order is None else np.asarray(order, dtype=np.int64)
    return Selection(
        strategy=strategy,
        uids=best["uid"][idx],
        rows=best["row"][idx].astype(np.int64),
        scores=best["p"][idx].astype(np.float32),
        reasons=[reasons[i] for i in idx],
    )


# ---- modAL strategies on the candidates --------------------------------------------------------------------


class _Fitted(BaseEstimator):
    """An already-fitted classifier as modAL's estimator: `fit` is a no-op, it was trained on these labels."""

    def __init__(self, classifier: EmbeddingClassifier | None = None) -> None:
        self.classifier = classifier

    def fit(self, X, y):
        return self

    def predict_proba(self, X):
        return self.classifier.predict_proba(X)

    def predict(self, X):
        return self.classifier.predict(X)

    @property
    def classes_(self):
        return self.classifier.classes_


def _modal_uncertainty(strategy: str, best, classifier, n) -> Selection:
    from modAL.uncertainty import entropy_sampling, margin_sampling, uncertainty_sampling

    sampler = {"uncertainty": uncertainty_sampling, "margin": margin_sampling, "entropy": entropy_sampling}[strategy]
    m = min(n, len(best["uid"]))
    if m == 0:
        return _selection(strategy, best, [])
    idx, utility = sampler(classifier, best["X"], n_instances=m)
    # modAL returns the chosen set unordered; order by utility (margin: smallest first), then by row.
    order = np.lexsort((best["row"][idx], utility if strategy == "margin" else -utility))
    reasons = [""] * len(best["uid"])
    for i, u in zip(idx, utility, strict=True):
        reasons[i] = f"{strategy} {u:.3f}: P={best['p'][i]:.3f}"
    return _selection(strategy, best, reasons, order=idx[order])


def _ranked_batch(best, classifier, X_lab, y, n) -> Selection:
    from modAL.batch import uncertainty_batch_sampling
    from modAL.models import ActiveLearner

    m = min(n, len(best["uid"]))
    if m == 0:
        return _selection("ranked_batch", best, [])
    has_labels = len(y) > 0
    learner = ActiveLearner(
        _Fitted(classifier),
        query_strategy=uncertainty_batch_sampling,
        X_training=X_lab if has_labels else None,
        y_training=y if has_labels else None,
    )
    idx, _ = uncertainty_batch_sampling(learner, best["X"], n_instances=m)
    idx = np.asarray(idx, dtype=np.int64)
    reasons = [""] * len(best["uid"])
    for rank, i in enumerate(idx):
        reasons[i] = f"ranked batch #{rank + 1} (uncertainty vs. distance to labelled): P={best['p'][i]:.3f}"
    return _selection("ranked_batch", best, reasons, order=idx)


def _committee(best, classifier, X_lab, y, n, rng, committee_size) -> Selection:
    from modAL.disagreement import max_disagreement_sampling
    from modAL.models import ActiveLearner, Committee

    m = min(n, len(best["uid"]))
    if m == 0:
        return _selection("committee", best, [])
    if committee_size < 2:
        raise ConfigError(f"committee_size must be >= 2, got {committee_size}")
    kind = classifier.kind if classifier.kind in TRAINABLE_KINDS else "logistic"
    members = []
    for _ in range(committee_size):
        boot = _stratified_bootstrap(y, rng)
        estimator = EmbeddingClassifier(kind=kind, random_state=int(rng.integers(2**31)))
        members.append(ActiveLearner(estimator, X_training=X_lab[boot], y_training=y[boot]))
    committee = Committee(learner_list=members, query_strategy=max_disagreement_sampling)
    idx, disagreement = max_disagreement_sampling(committee, best["X"], n_instances=m)
    order = np.lexsort((best["row"][idx], -disagreement))
    idx, disagreement = idx[order], disagreement[order]
    reasons = [""] * len(best["uid"])
    for i, d in zip(idx, disagreement, strict=True):
        reasons[i] = f"committee of {committee_size} disagrees (max KL {d:.3f}): P={best['p'][i]:.3f}"
    return _selection("committee", best, reasons, order=idx)


def _stratified_bootstrap(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # Resampling within each class keeps both classes (with their counts) in every member's training set.
    parts = [rng.choice(np.flatnonzero(y == c), size=int((y == c).sum()), replace=True) for c in (0, 1)]
    return np.sort(np.concatenate(parts))


# ---- missed neighbours -------------------------------------------------------------------------------------


def _missed_neighbours(pool, classifier, labelled, X_lab, lab_uids, y, n, threshold, rng, max_queries) -> Selection:
    pos = np.flatnonzero(y == 1)
    if len(pos) == 0:
        raise DataError("strategy 'missed_neighbours' needs at least one labelled positive")
    if len(pos) > max_queries:
        # Each query costs one pass of dot products over the pool; a seeded sample bounds the round's time.
        pos = np.sort(rng.choice(pos, size=max_queries, replace=False))
    positives_T = np.ascontiguousarray(X_lab[pos].T, dtype=np.float32)

    def nearest_positive(p, block):
        sims = block.project(positives_T)
        which = sims.argmax(axis=1)
        return {"key": sims[np.arange(len(which)), which], "nearest": which}

    capacity = max(4 * n, n + len(pos))
    best = _scan(pool, classifier, labelled, capacity, rank=nearest_positive, keep=lambda p: p < threshold)
    # Take the closest missed row of each positive in turn (closest positives first), so one dense cluster of
    # positives does not fill the whole batch. `best` is sorted by similarity, so each queue is too.
    queues = [np.flatnonzero(best["nearest"] == q) for q in np.unique(best["nearest"])]
    queues.sort(key=lambda queue: (-best["key"][queue[0]], best["row"][queue[0]]))
    depth = max((len(queue) for queue in queues), default=0)
    order = [queue[d] for d in range(depth) for queue in queues if d < len(queue)][:n]
    positive_uids = lab_uids[pos].tolist()
    reasons = [
        f"missed neighbour: cos {best['key'][i]:.3f} to positive {positive_uids[best['nearest'][i]]!r},"
        f" P={best['p'][i]:.3f} < {threshold:g}"
        for i in range(len(best["uid"]))
    ]
    return _selection("missed_neighbours", best, reasons, order=order)


def _prompt_matrix(prompt_embeddings: np.ndarray, dim: int) -> np.ndarray:
    Q = np.atleast_2d(np.asarray(prompt_embeddings, dtype=np.float32))
    if Q.shape[0] == 0 or Q.shape[1] != dim:
        raise DataError(f"prompt embeddings have shape {Q.shape}, expected (k >= 1, {dim})")
    norms = np.linalg.norm(Q, axis=1, keepdims=True)
    if not np.isfinite(Q).all() or (norms == 0).any():
        raise DataError("prompt embeddings contain NaN, infinite or all-zero rows")
    return Q / norms
