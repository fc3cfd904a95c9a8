"""LabelStore.retract: the undo behind the labeling page takes back exactly one answer, locked and atomic."""

from __future__ import annotations

import threading

import pytest

from sanitize.errors import ConfigError
from sanitize.safety.labels import LabelStore


def rows(store: LabelStore) -> list[tuple]:
    table = store.read()
    return list(zip(*(table[c].to_pylist() for c in ("uid", "label", "source", "round")), strict=True))


def test_retract_removes_only_the_matching_answer(tmp_path):
    store = LabelStore(tmp_path, "cat")
    store.add(["a", "b"], [1, 0], source="seed", round=0)
    store.add(["c", "a"], [1, 1], source="active", round=1)
    store.add(["d"], [0], source="active", round=2)
    assert store.retract("a", source="active", round=1) == 1
    assert rows(store) == [("a", 1, "seed", 0), ("b", 0, "seed", 0), ("c", 1, "active", 1), ("d", 0, "active", 2)]
    assert store.retract("a", source="active", round=1) == 0
    assert store.retract("d", source="active", round=1) == 0  # another round's answer stays
    assert store.retract("b", source="active", round=0) == 0  # another source's answer stays
    assert len(rows(store)) == 4
    # an answer taken back can be given again, differently, without a conflict
    assert store.retract("c", source="active", round=1) == 1
    assert store.add(["c"], [0], source="active", round=1).added == 1


def test_retract_without_a_match_writes_nothing(tmp_path):
    store = LabelStore(tmp_path, "cat")
    assert store.retract("x", source="active", round=1) == 0 and not store.path.exists()
    store.add(["a"], [1], source="active", round=1)
    before = store.path.stat().st_mtime_ns
    assert store.retract("x", source="active", round=1) == 0
    assert store.path.stat().st_mtime_ns == before


def test_retract_the_last_row_leaves_an_empty_valid_store(tmp_path):
    store = LabelStore(tmp_path, "cat")
    store.add(["a"], [1], source="active", round=1)
    assert store.retract("a", source="active", round=1) == 1
    assert store.read().num_rows == 0 and store.current()[0].tolist() == []


def test_retract_rejects_an_unknown_source(tmp_path):
    with pytest.raises(ConfigError, match="label source 'nope'"):
        LabelStore(tmp_path, "cat").retract("a", source="nope", round=1)


def test_concurrent_adds_and_retracts_keep_every_other_answer(tmp_path):
    store = LabelStore(tmp_path, "cat")
    keep = [f"k{i}" for i in range(20)]
    churn = [f"c{i}" for i in range(20)]

    def add_keep():
        for uid in keep:
            LabelStore(tmp_path, "cat").add([uid], [1], source="active", round=1)

    def add_and_retract():
        other = LabelStore(tmp_path, "cat")
        for uid in churn:
            other.add([uid], [0], source="active", round=1)
            assert other.retract(uid, source="active", round=1) == 1

    threads = [threading.Thread(target=add_keep), threading.Thread(target=add_and_retract)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(u for u, *_ in rows(store)) == sorted(keep)
