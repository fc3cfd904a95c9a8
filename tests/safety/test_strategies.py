from __future__ import annotations

import numpy as np
import pytest

from sanitize.errors import ConfigError, DataError
from sanitize.safety.classifier import EmbeddingClassifier, from_layers
from sanitize.safety.labels import next_round
from sanitize.safety.pool import EmbeddingPool
from sanitize.safety.rounds import can_train, propose_batch, train_classifier
from sanitize.safety.spec import CategorySpec
from sanitize.safety.strategies import (
    STRATEGIES,
    rank_by_prompts,
    recall_threshold,
    select_batch,
    zero_shot_scores,
)

D = 32


def rare_pool(n=2000, prevalence=0.02, seed=0):
    """Unit vectors; the rare concept is a shift along axis 0. Returns uids, X, y, concept direction."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, D)).astype(np.float32)
    y = (rng.random(n) < prevalence).astype(np.int64)
    X[y == 1, 0] += 4.0
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    uids = np.array([f"img{i:05d}" for i in range(n)])
    concept = np.zeros(D, np.float32)
    concept[0] = 1.0
    return uids, X, y, concept


@pytest.fixture(scope="module")
def world():
    uids, X, y, concept = rare_pool()
    rng = np.random.default_rng(1)
    labelled = np.concatenate([np.flatnonzero(y == 1)[:8], rng.choice(np.flatnonzero(y == 0), 60, replace=False)])
    labels = (uids[labelled], y[labelled])
    clf = EmbeddingClassifier().fit(X[labelled], y[labelled])
    return uids, X, y, concept, labels, clf


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_returns_n_unique_unlabelled_deterministic(world, strategy):
    uids, X, _y, _, labels, clf = world
    first = select_batch(strategy, clf, (uids, X), labels, 15, seed=3)
    assert len(first) == 15 and first.strategy == strategy
    assert len(set(first.uids.tolist())) == 15
    assert not set(first.uids.tolist()) & set(labels[0].tolist())
    assert (uids[first.rows] == first.uids).all()
    np.testing.assert_allclose(first.scores, clf.positive_proba(X[first.rows]), atol=1e-6)
    assert len(first.reasons) == 15 and all(first.reasons)
    again = select_batch(strategy, clf, (uids, X), labels, 15, seed=3)
    assert again.uids.tolist() == first.uids.tolist()
    assert first.to_table().num_rows == 15


def test_uncertainty_family_picks_rows_closest_to_half(world):
    uids, X, _y, _, labels, clf = world
    p = clf.positive_proba(X)
    unlabelled = ~np.isin(uids, labels[0])
    closest = np.sort(np.abs(p[unlabelled] - 0.5))[:10]
    for strategy in ("uncertainty", "margin", "entropy"):
        chosen = select_batch(strategy, clf, (uids, X), labels, 10)
        np.testing.assert_allclose(np.abs(chosen.scores - 0.5), closest, atol=1e-6)


def test_results_do_not_depend_on_block_size_or_streaming(world):
    uids, X, _y, _, labels, clf = world
    reference = select_batch("ranked_batch", clf, (uids, X), labels, 10, n_candidates=200)
    pools = [
        EmbeddingPool(uids, X, block_rows=97),
        EmbeddingPool(uids, X.astype(np.float16).astype(np.float32), block_rows=5000),
        EmbeddingPool.from_blocks(lambda: ((uids[i : i + 333], X[i : i + 333]) for i in range(0, len(uids), 333)), D),
    ]
    for pool in pools[:1] + pools[2:]:
        assert select_batch("ranked_batch", clf, pool, labels, 10, n_candidates=200).uids.tolist() == (
            reference.uids.tolist()
        )
    for strategy in ("uncertainty", "flagged", "missed_neighbours"):
        expected = select_batch(strategy, clf, (uids, X), labels, 10).uids.tolist()
        assert select_batch(strategy, clf, pools[2], labels, 10).uids.tolist() == expected


def test_memmap_float16_pool(tmp_path, world):
    uids, X, _y, _, labels, clf = world
    mm = np.lib.format.open_memmap(tmp_path / "emb.npy", mode="w+", dtype=np.float16, shape=X.shape)
    mm[:] = X
    mm.flush()
    pool = EmbeddingPool(uids, np.load(tmp_path / "emb.npy", mmap_mode="r"), block_rows=256)
    chosen = select_batch("flagged", clf, pool, labels, 5)
    assert len(chosen) == 5 and chosen.scores.dtype == np.float32


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_float16_pool_picks_what_the_float32_pool_picks(world, strategy):
    # The scan multiplies float16 blocks without converting them; its rounding must not change the picks
    # beyond near-ties (uncertainty keys of float16 and float32 scores agree to ~1e-3).
    uids, X, _y, _, labels, clf = world
    X16 = X.astype(np.float16)
    a = select_batch(strategy, clf, EmbeddingPool(uids, X16, block_rows=300), labels, 20, seed=3)
    b = select_batch(strategy, clf, EmbeddingPool(uids, X16.astype(np.float32), block_rows=300), labels, 20, seed=3)
    assert len(set(a.uids) & set(b.uids)) >= 18
    assert np.allclose(np.sort(a.scores), np.sort(b.scores), atol=5e-3)


def test_float16_block_projection_matches_float32_and_finds_bad_rows():
    from sanitize.safety.pool import Block

    rng = np.random.default_rng(0)
    X = rng.standard_normal((500, D)).astype(np.float16)
    W = rng.standard_normal((D, 3)).astype(np.float32)
    uids = np.array([f"u{i}" for i in range(500)])
    out = Block(1000, uids, X).project(W)
    assert out.dtype == np.float32 and np.allclose(out, X.astype(np.float32) @ W, rtol=2e-3, atol=2e-2)
    # A product beyond float16's range (65504) is recomputed in float32, not reported as a broken row.
    big = np.full((2, D), 60000, np.float16)
    assert np.allclose(Block(0, uids[:2], big).project(np.ones((D, 1), np.float32)), 60000.0 * D)
    X[321, 7] = np.inf
    with pytest.raises(DataError, match=r"first: uid 'u321' \(row 1321\)"):
        Block(1000, uids, X).project(W)
    with pytest.raises(DataError, match="u321"):
        Block(1000, uids, X).check_finite()


def test_mlp_projected_scores_equal_direct_scores(world):
    uids, X, _y, _, labels, _ = world
    rows = np.searchsorted(uids, labels[0])
    clf = EmbeddingClassifier(kind="mlp", hidden_layer_sizes=(8,), max_iter=50).fit(X[rows], labels[1])
    clf.input_mean_, clf.input_std_ = X.mean(axis=0), X.std(axis=0) + 0.1  # as LAION's heads carry
    assert np.allclose(clf.positive_proba_projected(lambda W: X @ W), clf.positive_proba(X), atol=1e-5)


def test_random_depends_on_seed(world):
    uids, X, _y, _, labels, clf = world
    a = select_batch("random", clf, (uids, X), labels, 20, seed=1).uids.tolist()
    b = select_batch("random", clf, (uids, X), labels, 20, seed=2).uids.tolist()
    assert a != b


def test_committee_depends_on_seed_but_is_reproducible(world):
    uids, X, _y, _, labels, clf = world
    runs = [select_batch("committee", clf, (uids, X), labels, 20, seed=s).uids.tolist() for s in (5, 5, 6)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_flagged_takes_most_confident_rows_above_the_full_recall_threshold(world):
    uids, X, y, _, labels, clf = world
    chosen = select_batch("flagged", clf, (uids, X), labels, 10)
    positive_scores = clf.positive_proba(X[np.isin(uids, labels[0][labels[1] == 1])])
    assert (chosen.scores >= positive_scores.min()).all()
    assert (np.diff(chosen.scores) <= 0).all()
    assert y[chosen.rows].mean() > 0.8  # a clean concept: what is flagged is mostly positive


def test_recall_threshold():
    scores = np.array([0.9, 0.2, 0.5, 0.7])
    assert recall_threshold(scores, 1.0) == 0.2
    assert recall_threshold(scores, 0.75) == 0.5
    assert recall_threshold(scores, 0.5) == 0.7


def test_missed_neighbours_finds_planted_false_negatives():
    rng = np.random.default_rng(7)
    background = rng.standard_normal((1500, D)).astype(np.float32)
    background[:, 0] = -np.abs(background[:, 0])  # the background scores low
    known = rng.standard_normal((6, D)).astype(np.float32) * 0.3
    known[:, 0] = 2.0
    known /= np.linalg.norm(known, axis=1, keepdims=True)
    planted = known.copy()
    planted[:, 0] -= 0.3  # pushed across the boundary: the model misses them, yet each sits next to a positive
    X = np.vstack([background, known, planted])
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    uids = np.array([f"r{i}" for i in range(len(X))])
    boundary = (X[1500:1506, 0].min() + X[1506:, 0].max()) / 2
    assert X[1506:, 0].max() < boundary < X[1500:1506, 0].min()
    # A fixed linear model: P > 0.5 exactly when x0 > boundary.
    clf = from_layers([(np.eye(D, 1, dtype=np.float32) * 50, np.array([-50 * boundary]))], kind="logistic")
    p = clf.positive_proba(X)
    assert (p[1500:1506] > 0.5).all() and (p[1506:] < 0.5).all()
    labels = (np.concatenate([uids[1500:1506], uids[:40]]), np.array([1] * 6 + [0] * 40))
    chosen = select_batch("missed_neighbours", clf, (uids, X), labels, 6)
    assert sorted(chosen.uids.tolist()) == sorted(uids[1506:].tolist())
    assert all("missed neighbour" in r for r in chosen.reasons)
    # More neighbours than planted rows: the rest come from the background, after the planted ones.
    more = select_batch("missed_neighbours", clf, (uids, X), labels, 10)
    assert set(more.uids[:6].tolist()) == set(uids[1506:].tolist())


def test_ranked_batch_avoids_duplicates_that_uncertainty_takes(world):
    uids, X, _y, _, labels, clf = world
    p = clf.positive_proba(X)
    most_uncertain = int(np.argmin(np.abs(p - 0.5) + np.isin(uids, labels[0])))
    X_dup = np.vstack([X, np.repeat(X[most_uncertain : most_uncertain + 1], 12, axis=0)])
    uids_dup = np.concatenate([uids, [f"dup{i}" for i in range(12)]])
    plain = select_batch("uncertainty", clf, (uids_dup, X_dup), labels, 10)
    ranked = select_batch("ranked_batch", clf, (uids_dup, X_dup), labels, 10)
    copies = {f"dup{i}" for i in range(12)} | {uids[most_uncertain]}
    assert len(copies & set(plain.uids.tolist())) == 10
    assert len(copies & set(ranked.uids.tolist())) <= 2


def test_fewer_rows_than_asked(world):
    uids, X, _y, _, labels, clf = world
    small = (uids[:30], X[:30])
    in_small = np.isin(labels[0], small[0])
    chosen = select_batch("uncertainty", clf, small, (labels[0][in_small], labels[1][in_small]), 50)
    assert len(chosen) == 30 - in_small.sum()


def test_nan_embedding_in_the_pool_names_the_uid(world):
    uids, X, _y, _, labels, clf = world
    X_bad = X.copy()
    X_bad[1234, 5] = np.nan
    with pytest.raises(DataError, match=r"1 embeddings are NaN or infinite; first: uid 'img01234' \(row 1234\)"):
        select_batch("uncertainty", clf, (uids, X_bad), labels, 5)
    X_bad[1234, 5] = np.inf
    with pytest.raises(DataError, match="img01234"):
        select_batch("random", clf, EmbeddingPool(uids, X_bad, block_rows=100), labels, 5)


def test_bad_inputs(world):
    uids, X, _y, _, labels, clf = world
    pool = (uids, X)
    with pytest.raises(ConfigError, match="unknown strategy 'greedy'"):
        select_batch("greedy", clf, pool, labels, 5)
    with pytest.raises(ConfigError, match="n must be >= 1"):
        select_batch("random", clf, pool, labels, 0)
    with pytest.raises(DataError, match="2 uids are not in the pool: 'ghost1', 'ghost2'"):
        select_batch("random", clf, pool, (np.array(["ghost1", "ghost2"]), np.array([1, 0])), 5)
    with pytest.raises(DataError, match="classifier expects 32-d embeddings, the pool has 16-d"):
        select_batch("random", clf, (uids, X[:, :16]), labels, 5)
    no_positives = (labels[0][labels[1] == 0], labels[1][labels[1] == 0])
    for strategy in ("flagged", "missed_neighbours"):
        with pytest.raises(DataError, match=f"strategy '{strategy}' needs at least one labelled positive"):
            select_batch(strategy, clf, pool, no_positives, 5)
    with pytest.raises(DataError, match="0 positive and 60 negative; need at least 5 of each class"):
        select_batch("committee", clf, pool, no_positives, 5)
    with pytest.raises(DataError, match="uids but"):
        EmbeddingPool(uids[:10], X)


def test_cold_start_ranks_by_prompt_similarity(world):
    uids, X, y, concept, _labels, _ = world
    other = np.ones(D, np.float32)
    chosen = rank_by_prompts((uids, X), np.stack([concept, other]), 20, prompts=["concept", "other"])
    assert chosen.strategy == "prompts"
    assert y[chosen.rows].mean() > 0.9
    assert (np.diff(chosen.scores) <= 0).all()
    assert "closest: 'concept'" in chosen.reasons[0]
    excluded = rank_by_prompts((uids, X), concept, 20, labelled_uids=chosen.uids[:5])
    assert not set(excluded.uids.tolist()) & set(chosen.uids[:5].tolist())
    mean = zero_shot_scores(X[:3], np.stack([concept, -concept]), reduce="mean")
    np.testing.assert_allclose(mean, 0.0, atol=1e-6)
    with pytest.raises(DataError, match=r"prompt embeddings have shape \(1, 5\), expected"):
        rank_by_prompts((uids, X), np.ones(5), 5)
    with pytest.raises(ConfigError, match="reduce must be"):
        rank_by_prompts((uids, X), concept, 5, reduce="median")


def fake_encoder(concept):
    def encode(prompts: list[str]) -> np.ndarray:
        # A stand-in for CLIP's text tower: every prompt of the category points at the concept.
        rng = np.random.default_rng(len(prompts))
        return concept[None, :] + 0.05 * rng.standard_normal((len(prompts), D)).astype(np.float32)

    return encode


def test_propose_batch_cold_start_then_strategies(world):
    uids, X, y, concept, labels, clf = world
    spec = CategorySpec("rare", "a rare concept", "", ("a rare thing", "another"), 0.95, 0.95)
    cold = propose_batch(spec, (uids, X), ([], []), 10, strategy="uncertainty", encode_text=fake_encoder(concept))
    assert cold.strategy == "prompts" and y[cold.rows].mean() > 0.9
    with pytest.raises(ConfigError, match="cold start needs a text encoder"):
        propose_batch(spec, (uids, X), ([], []), 10, strategy="uncertainty")
    with pytest.raises(ConfigError, match="unknown strategy"):
        propose_batch(spec, (uids, X), labels, 10, strategy="best", classifier=clf)
    warm = propose_batch(spec, (uids, X), labels, 10, strategy="margin", classifier=clf)
    assert warm.strategy == "margin"


def test_train_classifier_and_round_helpers(world):
    uids, X, _y, _, labels, _ = world
    assert can_train(labels[1]) and not can_train(np.array([1, 1, 0]))
    clf = train_classifier((uids, X), labels, kind="logistic")
    assert clf.n_labels_ == (8, 60)
    import pyarrow as pa

    from sanitize.safety.labels import SCHEMA

    assert next_round(SCHEMA.empty_table()) == 1
    assert next_round(pa.table({"round": pa.array([0, 0, 3], pa.int32())})) == 4


def test_member_mask_vectorised_path_matches_a_set():
    from sanitize.safety.pool import member_mask

    values = np.array([f"id-{i}" for i in range(5000)])
    members = {"id-7", "id-4999", "id-123456789", "not-there", "id-"}  # one longer than the array's width
    expected = np.array([v in members for v in values.tolist()])
    np.testing.assert_array_equal(member_mask(values, members), expected)
    assert member_mask(values, members).sum() == 2
    np.testing.assert_array_equal(member_mask(values.astype(object), members), expected)
    assert not member_mask(values, set()).any()


def test_random_sample_without_classifier(world):
    from sanitize.safety.strategies import random_sample

    uids, X, _y, _, labels, _ = world
    a = random_sample((uids, X), 25, labelled_uids=labels[0], seed=4)
    assert len(set(a.uids.tolist())) == 25 and not set(a.uids.tolist()) & set(labels[0].tolist())
    assert np.isnan(a.scores).all()
    assert random_sample((uids, X), 25, labelled_uids=labels[0], seed=4).uids.tolist() == a.uids.tolist()
