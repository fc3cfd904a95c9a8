"""A scripted labeler runs the whole loop through the library: cold start, 3 rounds, status."""

from __future__ import annotations

import csv

import numpy as np

from sanitize.safety.contact_sheet import write_labeling_batch
from sanitize.safety.labels import LabelStore, next_round, read_label_file
from sanitize.safety.rounds import can_train, propose_batch, train_classifier
from sanitize.safety.spec import load_spec
from sanitize.safety.status import label_status


def test_cold_start_three_rounds_and_status(tmp_path):
    rng = np.random.default_rng(0)
    n, d = 3000, 32
    X = rng.standard_normal((n, d)).astype(np.float32)
    truth = (rng.random(n) < 0.03).astype(np.int64)
    X[truth == 1, 0] += 4.0
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    uids = np.array([f"img{i}" for i in range(n)])
    truth_of = dict(zip(uids.tolist(), truth.tolist(), strict=True))
    concept = np.eye(d, 1)[:, 0].astype(np.float32)

    def encode_text(prompts):
        return np.tile(concept, (len(prompts), 1))

    category = load_spec().category("sexual")
    store = LabelStore(tmp_path / "project", category.name)
    pool = (uids, X)
    known = set(uids.tolist())
    strategies = ["uncertainty", "uncertainty", "missed_neighbours", "ranked_batch"]
    used = []
    for step in range(5):
        labelled = store.current()
        clf = train_classifier(pool, labelled, kind=category.classifier) if can_train(labelled[1]) else None
        round_no = next_round(store.read()) if step else 0
        batch = propose_batch(category, pool, labelled, 30, strategy=strategies[step - 1] if step else "prompts",
                              classifier=clf, encode_text=encode_text, seed=step)
        used.append(batch.strategy)
        paths = write_labeling_batch(tmp_path / "batches", batch, category=category, round=round_no)
        # The scripted annotator fills in the CSV.
        with open(paths["csv"], newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        for row in rows:
            row["label"] = truth_of[row["uid"]]
        with open(paths["csv"], "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        answers = read_label_file(paths["csv"])
        result = store.add(answers.uids, answers.labels, source="seed" if step == 0 else "active",
                           round=answers.rounds[0], annotator="script", known_uids=known)
        assert result.added == 30 and not result.conflicts
    # Cold start finds positives only; a random batch brings the negatives; then three classifier rounds.
    assert used == ["prompts", "random", "uncertainty", "missed_neighbours", "ranked_batch"]
    status = label_status(category.name, store.read(), pool=pool)
    assert status.n_labelled == 150
    assert [(r["source"], r["round"]) for r in status.by_source_round] == [
        ("seed", 0), ("active", 1), ("active", 2), ("active", 3), ("active", 4)
    ]
    assert status.cv_recall is not None and status.removal_rate is not None
    assert status.n_positive >= 30  # the cold start alone finds positives of a clean concept
