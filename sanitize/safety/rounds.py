"""One labeling round, as the CLI runs it: train on the stored labels, then propose the next batch.

    seed labels ──► train_classifier ──► propose_batch (strategy, or prompts on a cold start) ──► batch files
        ▲                                                                                          │
        └──────────────────────────── LabelStore.add(answers, source="active") ◄──────────────────┘

These functions only glue the pieces (label store, pool, classifier, strategies); each piece is usable alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np

from sanitize.errors import ConfigError
from sanitize.safety.classifier import MIN_PER_CLASS, EmbeddingClassifier
from sanitize.safety.pool import EmbeddingPool
from sanitize.safety.spec import CategorySpec
from sanitize.safety.strategies import (
    COLD_START,
    STRATEGIES,
    Selection,
    random_sample,
    rank_by_prompts,
    select_batch,
)

logger = logging.getLogger(__name__)


def can_train(labels: np.ndarray, min_per_class: int = MIN_PER_CLASS) -> bool:
    """True when there are at least `min_per_class` labels of each class."""
    labels = np.asarray(labels)
    return int((labels == 1).sum()) >= min_per_class and int((labels == 0).sum()) >= min_per_class


def train_classifier(
    pool: EmbeddingPool | tuple[np.ndarray, np.ndarray],
    labels: tuple[Sequence[str] | np.ndarray, Sequence[int] | np.ndarray],
    *,
    kind: str = "logistic",
    seed: int = 0,
) -> EmbeddingClassifier:
    """Fit a classifier of `kind` on the pool embeddings of the labelled uids.

    Raises `DataError` when a labelled uid is not in the pool or a class has fewer than 5 labels.
    """
    pool = EmbeddingPool.of(pool)
    uids, y = np.asarray(labels[0], dtype=str), np.asarray(labels[1])
    X = pool.gather(uids)
    clf = EmbeddingClassifier(kind=kind, random_state=seed).fit(X, y)
    logger.info("trained %s classifier on %d positive / %d negative labels", kind, *clf.n_labels_)
    return clf


def propose_batch(
    category: CategorySpec,
    pool: EmbeddingPool | tuple[np.ndarray, np.ndarray],
    labels: tuple[Sequence[str] | np.ndarray, Sequence[int] | np.ndarray],
    n: int,
    *,
    strategy: str,
    classifier: EmbeddingClassifier | None = None,
    encode_text: Callable[[list[str]], np.ndarray] | None = None,
    seed: int = 0,
    **strategy_options,
) -> Selection:
    """The next batch to label for `category`.

    Without a classifier (fewer than 5 labels of a class and no starting head): while there are fewer than 5
    positives, the zero-shot cold start — rows ranked by similarity to the category's prompts, embedded with
    `encode_text`; once there are enough positives but too few negatives, a seeded random sample (at a rare
    category's prevalence, nearly all negatives). `strategy="prompts"` always asks for the cold start.
    With a classifier: `select_batch(strategy, classifier, ...)`. Labelled uids are never proposed again.
    """
    if strategy != COLD_START and strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r}; choose one of {', '.join((*STRATEGIES, COLD_START))}")
    if classifier is None and strategy != COLD_START and int((np.asarray(labels[1]) == 1).sum()) >= MIN_PER_CLASS:
        logger.info("category %s: enough positives but too few negatives; proposing a random sample", category.name)
        return random_sample(pool, n, labelled_uids=labels[0], seed=seed)
    if classifier is None or strategy == COLD_START:
        if encode_text is None:
            raise ConfigError(
                f"category {category.name!r}: no classifier yet (need {MIN_PER_CLASS} labels of each class),"
                " so the cold start needs a text encoder for its prompts"
            )
        prompts = list(category.prompts)
        return rank_by_prompts(pool, encode_text(prompts), n, labelled_uids=labels[0], prompts=prompts)
    return select_batch(strategy, classifier, pool, labels, n, seed=seed, **strategy_options)
