from __future__ import annotations

import multiprocessing
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sanitize.errors import ConfigError, DataError
from sanitize.safety.labels import (
    SCHEMA,
    LabelConflictError,
    LabelStore,
    UnknownUidError,
    read_label_file,
)

KNOWN = {f"u{i}" for i in range(100)}
T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)


def test_add_and_read_back(tmp_path):
    store = LabelStore(tmp_path, "sexual")
    result = store.add(["u1", "u2", "u3"], [1, 0, "yes"], source="seed", round=0, annotator="ann", timestamp=T0)
    assert (result.added, result.unchanged, result.conflicts) == (3, 0, [])
    assert store.path == tmp_path / "labels" / "sexual.parquet"
    table = store.read()
    assert table.schema == SCHEMA
    assert table.to_pylist()[0] == {
        "uid": "u1", "label": 1, "source": "seed", "round": 0, "annotator": "ann", "timestamp": T0,
    }
    uids, labels = store.current()
    assert uids.tolist() == ["u1", "u2", "u3"] and labels.tolist() == [1, 0, 1]


def test_empty_store(tmp_path):
    store = LabelStore(tmp_path, "violence")
    assert store.read().num_rows == 0
    uids, labels = store.current()
    assert len(uids) == len(labels) == 0


def test_identical_resubmission_is_idempotent(tmp_path):
    store = LabelStore(tmp_path, "c")
    store.add(["u1", "u2"], [1, 0], source="active", round=2)
    again = store.add(["u1", "u2", "u3"], [1, 0, 0], source="active", round=2)
    assert (again.added, again.unchanged) == (1, 2)
    assert store.read().num_rows == 3
    # Same label from another source is a new answer (e.g. an audit agreeing with the seed), not a conflict.
    audit = store.add(["u1"], [1], source="random-audit", round=3)
    assert audit.added == 1 and store.read().num_rows == 4


def test_answers_without_a_round_take_the_next_one_and_are_stored_once(tmp_path):
    # round=None (a label file without a round column): the next round, chosen under the lock; the same answers
    # added again (or by a second process) are unchanged, whatever round they would have had.
    store = LabelStore(tmp_path, "c")
    store.add(["u1"], [1], source="seed", round=0)
    first = store.add(["u2", "u3"], [1, 0], source="active", round=None)
    assert first.added == 2 and set(store.read()["round"].to_pylist()) == {0, 1}
    again = store.add(["u2", "u3", "u4"], [1, 0, 1], source="active", round=None)
    assert (again.added, again.unchanged) == (1, 2)
    assert store.read().num_rows == 4 and store.read()["round"].to_pylist()[-1] == 2
    assert store.add(["u2"], [0], source="active", round=None, on_conflict="skip").conflicts[0].stored_label == 1


def test_conflicts_raise_with_the_list_and_write_nothing(tmp_path):
    store = LabelStore(tmp_path, "c")
    store.add(["u1", "u2", "u3"], [1, 0, 1], source="seed", round=0)
    before = store.path.read_bytes()
    message = r"2 uids are already labelled differently: u1 \(1→0\), u2 \(0→1\)"
    with pytest.raises(LabelConflictError, match=message) as info:
        store.add(["u1", "u2", "u4"], [0, 1, 1], source="active", round=1)
    assert [(c.uid, c.stored_label, c.new_label, c.stored_source, c.stored_round) for c in info.value.conflicts] == [
        ("u1", 1, 0, "seed", 0),
        ("u2", 0, 1, "seed", 0),
    ]
    assert store.path.read_bytes() == before


def test_conflicts_skip_and_override(tmp_path):
    store = LabelStore(tmp_path, "c")
    store.add(["u1", "u2"], [1, 0], source="seed", round=0)
    skipped = store.add(["u1", "u3"], [0, 1], source="active", round=1, on_conflict="skip")
    assert skipped.added == 1 and [c.uid for c in skipped.conflicts] == ["u1"]
    assert dict(zip(*[a.tolist() for a in store.current()], strict=True)) == {"u1": 1, "u2": 0, "u3": 1}
    corrected = store.add(["u1"], [0], source="active", round=2, on_conflict="override")
    assert corrected.added == 1 and len(corrected.conflicts) == 1
    assert dict(zip(*[a.tolist() for a in store.current()], strict=True))["u1"] == 0
    assert store.read().num_rows == 4  # the history keeps both answers


def test_contradiction_within_one_submission(tmp_path):
    with pytest.raises(DataError, match="1 uids have both labels in one submission: u1"):
        LabelStore(tmp_path, "c").add(["u1", "u1"], [1, 0], source="seed", round=0)


def test_unknown_uids_rejected_with_the_list(tmp_path):
    store = LabelStore(tmp_path, "c")
    for known in (KNOWN, np.array(sorted(KNOWN))):
        with pytest.raises(UnknownUidError, match="2 labelled uids are not in the dataset: zz1, zz2") as info:
            store.add(["u1", "zz1", "zz2"], [1, 0, 0], source="seed", round=0, known_uids=known)
        assert info.value.uids == ["zz1", "zz2"]
    assert not store.path.exists()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"source": "manual", "round": 0}, ConfigError, "label source 'manual'"),
        ({"source": "seed", "round": -1}, ConfigError, "round must be an integer >= 0"),
        ({"source": "seed", "round": 0, "on_conflict": "merge"}, ConfigError, "on_conflict 'merge'"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, error, message):
    with pytest.raises(error, match=message):
        LabelStore(tmp_path, "c").add(["u1"], [1], **kwargs)


def test_bad_label_value(tmp_path):
    with pytest.raises(DataError, match="label 1: 'maybe' is not a label"):
        LabelStore(tmp_path, "c").add(["u1", "u2"], [1, "maybe"], source="seed", round=0)


def test_malformed_store_file(tmp_path):
    store = LabelStore(tmp_path, "c")
    store.path.parent.mkdir(parents=True)
    store.path.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="not a readable parquet label file"):
        store.read()
    pq.write_table(pa.table({"uid": ["a"], "label": [1]}), store.path)
    with pytest.raises(DataError, match="lacks column 'source'"):
        store.read()
    bad = SCHEMA.empty_table().to_pydict()
    bad.update(uid=["a"], label=[3], source=["seed"], round=[0], annotator=[""], timestamp=[T0])
    pq.write_table(pa.table(bad, schema=SCHEMA), store.path)
    with pytest.raises(DataError, match="row 0: label 3 is not 0 or 1"):
        store.read()


def _append_many(project, worker, count):
    store = LabelStore(project, "c")
    for i in range(count):
        store.add([f"w{worker}-{i}"], [i % 2], source="active", round=1, annotator=str(worker))


def test_concurrent_appends_from_two_processes_lose_nothing(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_append_many, args=(tmp_path, w, 25)) for w in range(2)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(60)
        assert p.exitcode == 0
    table = LabelStore(tmp_path, "c").read()
    assert table.num_rows == 50
    assert len(set(table["uid"].to_pylist())) == 50


def test_read_label_file_csv_with_blank_answers(tmp_path):
    path = tmp_path / "answers.csv"
    path.write_text("uid,caption,label,round\nu1,a cat,1,3\nu2,,0,3\nu3,x,,3\nu4,y, yes ,3\n", encoding="utf-8")
    answers = read_label_file(path)
    assert answers.uids == ["u1", "u2", "u4"]
    assert answers.labels == [1, 0, 1]
    assert answers.rounds == [3, 3, 3]
    assert answers.unanswered == 1


def test_read_label_file_parquet_paths_mapped_to_uids(tmp_path):
    path = tmp_path / "seed.parquet"
    pq.write_table(pa.table({"path": ["img/a.jpg", "img/b.jpg"], "label": [True, False]}), path)
    answers = read_label_file(path, path_to_uid={"img/a.jpg": "u1", "img/b.jpg": "u2"})
    assert (answers.uids, answers.labels, answers.rounds) == (["u1", "u2"], [1, 0], None)
    with pytest.raises(DataError, match="1 image paths are not in the dataset: img/b.jpg"):
        read_label_file(path, path_to_uid={"img/a.jpg": "u1"})
    with pytest.raises(ConfigError, match="pass a path-to-uid mapping"):
        read_label_file(path)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.csv", "", "label file is empty"),
        ("header.csv", "uid,label\n", "label file has no rows"),
        ("nolabel.csv", "uid,answer\nu1,1\n", "lacks a 'label' column"),
        ("noid.csv", "caption,label\nx,1\n", "needs a 'uid' or image 'path' column"),
        ("bad.csv", "uid,label\nu1,1\nu2,maybe\n", r"row 2, column 'label': 'maybe' is not a label"),
        ("blank.csv", "uid,label\nu1,\n", "no answered rows"),
        ("noid2.csv", "uid,label\n,1\n", "row 1: column 'uid' is empty"),
        ("labels.json", "{}", "unsupported label file type '.json'"),
        ("broken.parquet", "PAR1 garbage", "not a readable parquet file"),
    ],
)
def test_malformed_label_files(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        read_label_file(path)


def test_missing_label_file(tmp_path):
    with pytest.raises(DataError, match="label file not found"):
        read_label_file(tmp_path / "none.csv")
