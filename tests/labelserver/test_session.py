"""LabelingSession: answers go to the store at once, undo, skips, reload, concurrency, rounds."""

from __future__ import annotations

import threading
from collections import Counter

import pyarrow.parquet as pq
import pytest

from sanitize.errors import ConfigError
from sanitize.io.runfolder import RunFolder
from sanitize.labelserver.session import BatchNotDoneError, LabelingSession, NotInBatchError, StaleRoundError
from sanitize.safety.labels import LabelStore
from sanitize.safety.project import LabelProject

from .conftest import CATEGORY


def active_rows(project_dir) -> list[tuple[str, int, int, str]]:
    """(uid, label, round, annotator) of every stored active answer, in store order."""
    table = LabelStore(project_dir, CATEGORY).read()
    return [(u, lab, r, a) for u, lab, s, r, a in zip(*(table[c].to_pylist() for c in
                                                          ("uid", "label", "source", "round", "annotator")),
                                                        strict=True) if s == "active"]


def test_first_load_proposes_a_batch_and_a_new_session_continues_it(make_session, project_dir):
    session = make_session()
    assert session.round == 1 and len(session.uids) == 6
    assert (project_dir / "batches" / CATEGORY / "round_1.parquet").exists()
    a, b = session.uids[:2]
    session.answer(a, 1)
    session.skip(b)

    again = make_session()  # a restarted server: same batch, nothing asked twice
    assert again.round == 1 and again.uids == session.uids
    state = again.state()
    assert state["done"] == 2 and not state["complete"]
    assert [item["status"] for item in state["items"]][:2] == ["positive", "skipped"]
    assert all(item["status"] is None for item in state["items"][2:])
    assert state["guidelines"].startswith("Label 1 when") and state["category"] == CATEGORY
    assert sorted(p.name for p in (project_dir / "batches" / CATEGORY).glob("round_*.parquet")) == ["round_1.parquet"]


def test_answers_are_stored_at_once_and_never_twice(make_session, project_dir):
    session = make_session(annotator="ann")
    uid = session.uids[0]
    assert session.answer(uid, 1).action == "added"
    assert active_rows(project_dir) == [(uid, 1, 1, "ann")]
    assert session.answer(uid, 1).action == "unchanged"
    outcome = session.answer(uid, 0)
    assert outcome.action == "conflict" and outcome.conflict.stored_label == 1
    assert active_rows(project_dir) == [(uid, 1, 1, "ann")]  # the stored answer is not overwritten


def test_undo_takes_back_the_latest_action_or_the_named_one(make_session, project_dir):
    session = make_session()
    a, b, c, d = session.uids[:4]
    session.answer(a, 1)
    session.skip(b)
    session.answer(c, 0)
    session.answer(d, 1)
    assert session.undo(a).action == "retracted"  # a named uid, not the latest
    assert [r[0] for r in active_rows(project_dir)] == [c, d]
    assert (session.undo().uid, session.undo().uid) == (d, c)
    assert session.undo().uid == b and session.state()["done"] == 0


def test_undo_order_across_answers_and_skips(make_session, project_dir):
    session = make_session()
    a, b, c = session.uids[:3]
    session.answer(a, 1)
    session.skip(b)
    session.answer(c, 0)
    assert (session.undo().action, session.undo().action) == ("retracted", "unskipped")
    assert active_rows(project_dir) == [(a, 1, 1, "tester")]
    assert session.state()["done"] == 1
    reloaded = make_session()  # the undo stack is rebuilt from the store after a restart
    assert reloaded.undo().uid == a and reloaded.undo().action == "nothing"
    assert active_rows(project_dir) == []
    # seed labels (another source and round) are never taken back
    assert len(LabelStore(project_dir, CATEGORY).read()) == 20


def test_skips_persist_count_as_done_and_are_not_labels(make_session, project_dir):
    session = make_session()
    uid = session.uids[0]
    assert session.skip(uid).action == "skipped"
    assert active_rows(project_dir) == []
    assert make_session().state()["items"][0]["status"] == "skipped"
    session.answer(uid, 0)  # answering a skipped item replaces the skip
    assert make_session().state()["items"][0]["status"] == "negative"
    assert session.skip(uid).action == "already_done"


def test_two_threads_answering_the_same_items(make_session, project_dir):
    """Two tabs (two sessions, one store): every uid is stored once; the loser sees unchanged or a conflict."""
    first, second = make_session(annotator="a"), make_session(annotator="b")
    uids = first.uids
    barrier = threading.Barrier(2)
    outcomes: dict[str, list] = {"a": [], "b": []}

    def label(session, name, flip):
        barrier.wait()
        for k, uid in enumerate(uids):
            outcomes[name].append(session.answer(uid, (k % 2) ^ flip if k >= 3 else 1).action)

    threads = [threading.Thread(target=label, args=(s, n, f)) for s, n, f in ((first, "a", 0), (second, "b", 1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = active_rows(project_dir)
    assert Counter(r[0] for r in rows) == Counter(uids)  # exactly one row per uid
    for k in range(len(uids)):
        pair = sorted([outcomes["a"][k], outcomes["b"][k]])
        assert pair == (["added", "unchanged"] if k < 3 else ["added", "conflict"])
    pq.read_table(LabelStore(project_dir, CATEGORY).path)  # still a valid parquet file


def test_requests_outside_the_batch_are_refused(make_session):
    session = make_session()
    with pytest.raises(NotInBatchError, match="not in round 1"):
        session.answer("no-such-uid", 1)
    with pytest.raises(NotInBatchError):
        session.thumbnail("../../etc/passwd")
    with pytest.raises(StaleRoundError, match="round 7 is over"):
        session.answer(session.uids[0], 1, round=7)
    with pytest.raises(ConfigError, match="not a label"):
        session.answer(session.uids[0], 5)
    with pytest.raises(BatchNotDoneError):
        session.finish()
    with pytest.raises(BatchNotDoneError):
        session.next_batch()


def test_bad_options_are_config_errors(project_dir, embedded):
    def load(category=CATEGORY, **options):
        LabelingSession(LabelProject.open(project_dir), RunFolder.open(embedded[0]), category, **options).load()

    with pytest.raises(ConfigError, match="strategy 'nope'"):
        load(strategy="nope")
    with pytest.raises(ConfigError, match="batch size"):
        load(n=0)
    with pytest.raises(ConfigError, match="unknown category 'nope'"):
        load("nope")


def test_thumbnails_are_jpegs_of_batch_items(make_session):
    session = make_session()
    images = [session.thumbnail(uid) for uid in session.uids]
    assert any(images) and all(i is None or i[:2] == b"\xff\xd8" for i in images)


def test_completed_batch_retrains_and_proposes_the_next_round(make_session, project_dir):
    session = make_session()
    first = session.uids
    for k, uid in enumerate(first):
        session.skip(uid) if k == 0 else session.answer(uid, int(k < 3))
    assert session.state()["complete"]
    model = project_dir / "models" / f"{CATEGORY}.safetensors"
    metrics = session.finish()
    assert model.exists() and metrics["n_labelled"] == 25 and metrics["cv_folds"] >= 2
    assert 0 <= metrics["cv_precision"] <= 1 and 0 <= metrics["cv_recall"] <= 1
    assert 0 <= metrics["removal_rate"] <= 1 and metrics["pool_rows"] > 150
    assert metrics["certificate"] is None and session.state()["metrics"] == metrics
    with pytest.raises(ConfigError, match="strategy"):
        session.next_batch("nope")
    with pytest.raises(StaleRoundError):
        session.next_batch(round=5)
    assert session.next_batch("random") == 2
    second = session.uids
    assert session.state()["strategy"] == "random" and len(second) == 6
    assert not set(second) & set(first[1:])  # labelled uids are never proposed again
    assert make_session().round == 2  # a restart continues the new round


def test_an_all_skipped_batch_is_proposed_afresh(make_session):
    session = make_session()
    for uid in session.uids:
        session.skip(uid)
    assert session.next_batch() == 1  # no answers, so the round number is reused
    assert session.state()["done"] == 0  # the old skips do not carry over to the new batch
