"""Many processes appending to one label store at once: nothing lost, nothing stored twice, conflicts reported.

Eight spawned processes start together (an event releases them once all are imported) and each adds, over
several rounds, its own distinct uids plus a set of uids shared by every process. On the shared uids half the
processes answer 1 and half answer 0, so exactly one answer per uid is stored and every other process is told:
``unchanged`` when it agreed with the stored answer, a `Conflict` naming the stored answer when it did not.
"""

from __future__ import annotations

import json
import multiprocessing
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

from sanitize.safety.labels import LabelStore

WORKERS = 8
ROUNDS = 3
OWN_PER_ROUND = 4
SHARED = [f"shared-{k}" for k in range(6)]
CATEGORY = "c"


def _own_uids(worker: int, rnd: int) -> list[str]:
    return [f"w{worker}-r{rnd}-{i}" for i in range(OWN_PER_ROUND)]


def _worker(project: str, worker: int, start, out: str) -> None:
    """Add this worker's labels round by round (own uids, then the shared ones); record every outcome."""
    store = LabelStore(project, CATEGORY)
    start.wait(120)
    record: dict[str, list] = {"added": [], "unchanged": [], "conflicts": []}
    for rnd in range(ROUNDS):
        own = _own_uids(worker, rnd)
        result = store.add(own, [(worker + i) % 2 for i in range(len(own))], source="active", round=rnd,
                           annotator=str(worker))
        record["added"].append(result.added)
        shared = store.add(SHARED, [worker % 2] * len(SHARED), source="active", round=0, annotator=str(worker),
                           on_conflict="skip")
        record["unchanged"].append(shared.unchanged)
        record["conflicts"] += [[c.uid, c.stored_label, c.new_label] for c in shared.conflicts]
    Path(out).write_text(json.dumps(record))


def _run_workers(project: Path) -> list[dict]:
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    outs = [project / f"outcome-{w}.json" for w in range(WORKERS)]
    procs = [ctx.Process(target=_worker, args=(str(project), w, start, str(out))) for w, out in enumerate(outs)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(180)
        assert p.exitcode == 0, f"worker exited with {p.exitcode}"
    return [json.loads(out.read_text()) for out in outs]


def test_eight_processes_adding_at_once_lose_nothing_and_report_conflicts(tmp_path):
    records = _run_workers(tmp_path)
    store = LabelStore(tmp_path, CATEGORY)
    table = pq.read_table(store.path)  # a valid parquet file, no temp file left beside it
    assert sorted(p.name for p in store.path.parent.iterdir()) == [f".{CATEGORY}.lock", f"{CATEGORY}.parquet"]
    rows = list(zip(*(table[c].to_pylist() for c in ("uid", "label", "annotator")), strict=True))

    # Every worker's own answers: each present exactly once, with the label that worker gave.
    counts = Counter(uid for uid, _, _ in rows)
    expected_own = {uid: (w + i) % 2 for w in range(WORKERS) for r in range(ROUNDS)
                    for i, uid in enumerate(_own_uids(w, r))}
    assert {uid: counts[uid] for uid in expected_own} == dict.fromkeys(expected_own, 1)
    assert {uid: label for uid, label, _ in rows if uid in expected_own} == expected_own
    assert all(rec["added"] == [OWN_PER_ROUND] * ROUNDS for rec in records)

    # Shared uids: one stored answer each; everyone else was told unchanged or shown the conflict.
    stored = {uid: (label, int(annotator)) for uid, label, annotator in rows if uid in SHARED}
    assert [counts[uid] for uid in SHARED] == [1] * len(SHARED)
    assert table.num_rows == len(expected_own) + len(SHARED)
    conflicts = Counter()
    for w, rec in enumerate(records):
        for uid, stored_label, new_label in rec["conflicts"]:
            assert (stored_label, new_label) == (stored[uid][0], w % 2)
            conflicts[uid] += 1
    for uid, (label, _) in stored.items():
        disagreeing = sum(1 for w in range(WORKERS) if w % 2 != label)
        assert conflicts[uid] == disagreeing * ROUNDS
    agreeing_answers = sum(sum(rec["unchanged"]) for rec in records)
    # Each shared uid: WORKERS*ROUNDS answers = 1 added + the agreeing re-submissions + the conflicts.
    assert agreeing_answers == len(SHARED) * WORKERS * ROUNDS - len(SHARED) - sum(conflicts.values())
