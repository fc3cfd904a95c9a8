"""Concurrency on the labeling page: two servers on one project, and a bounded burst of requests on loopback.

Both check outcomes in the label store itself: every answered uid is stored exactly once with the answer that
won, every losing contradictory answer was reported as a conflict (HTTP 409 naming the stored label), and no
request ended in a 5xx. The burst is small (1,200 requests from 4 clients) so it stays quick on a loaded
machine; `benchmarks/label_server_load.py` runs the same kind of load for longer and reports latencies.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from sanitize.labelserver.app import TOKEN_HEADER, LabelServer
from sanitize.safety.labels import LabelStore

from .conftest import CATEGORY

BURST_REQUESTS = 1200
BURST_CLIENTS = 4


class Client:
    """One keep-alive HTTP/1.1 connection to a labeling server (`base` is http://host:port)."""

    def __init__(self, host: str, port: int, token: str) -> None:
        self.conn = http.client.HTTPConnection(host, port, timeout=30)
        self.headers = {TOKEN_HEADER: token, "Content-Type": "application/json", "Host": f"{host}:{port}"}

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        data = None if body is None else json.dumps(body).encode()
        self.conn.request(method, path, body=data, headers=self.headers)
        response = self.conn.getresponse()
        return response.status, json.loads(response.read())

    def close(self) -> None:
        self.conn.close()


def active_rows(project_dir: Path) -> list[tuple[str, int]]:
    """(uid, label) of every stored active answer, in store order."""
    table = LabelStore(project_dir, CATEGORY).read()
    return [(u, lab) for u, lab, s in zip(*(table[c].to_pylist() for c in ("uid", "label", "source")), strict=True)
            if s == "active"]


def start_cli_server(project_dir: Path, run: Path, n: int) -> tuple[subprocess.Popen, str, int, str]:
    """`sanitize label serve` in its own process on a free loopback port: (process, host, port, token)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sanitize_cli.label_serve_cmd; from sanitize_cli.main import main; main()",
         "label", "serve", CATEGORY, "--project", str(project_dir), "--run", str(run), "--port", "0",
         "--n", str(n), "--annotator", "cli"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if "open http" not in line:
        proc.kill()
        raise AssertionError(f"no URL printed: {line!r} {proc.stderr.read()}")
    url = line.rsplit(" ", 1)[1].strip()
    base, token = url.split("/?token=")
    host, port = base.removeprefix("http://").rsplit(":", 1)
    return proc, host, int(port), token


def in_process_client(server: LabelServer) -> Client:
    return Client("127.0.0.1", server.port, server.token)


def test_two_servers_in_two_processes_lose_nothing_and_report_conflicts(serve, project_dir, embedded):
    """A server in this process and `sanitize label serve` in another answer the same batch at once."""
    here = serve(n=8, annotator="here")
    proc, host, port, token = start_cli_server(project_dir, embedded[0], n=8)
    try:
        there = Client(host, port, token)
        status, state = there.call("GET", "/api/state")
        uids = [item["uid"] for item in state["items"]]
        assert status == 200 and uids == here.session.uids and state["round"] == here.session.round
        expected = {uid: k % 2 for k, uid in enumerate(uids)}
        flipped = set(uids[4:])  # the other server contradicts these
        answers: dict[str, list[tuple[str, int, dict]]] = {"here": [], "there": []}
        barrier = threading.Barrier(2)

        def submit(name: str, client: Client, flip: bool) -> None:
            barrier.wait()
            for uid in uids:
                label = expected[uid] ^ (flip and uid in flipped)
                status, out = client.call("POST", "/api/answer", {"uid": uid, "label": label, "round": 1})
                answers[name].append((uid, status, out["outcome"]))
            client.close()

        threads = [threading.Thread(target=submit, args=("here", in_process_client(here), False)),
                   threading.Thread(target=submit, args=("there", there, True))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        proc.terminate()
        proc.wait(timeout=10)

    rows = active_rows(project_dir)
    assert Counter(uid for uid, _ in rows) == Counter(uids)  # every answer stored, none twice
    stored = dict(rows)
    for k, uid in enumerate(uids):
        (_, s1, o1), (_, s2, o2) = answers["here"][k], answers["there"][k]
        actions = sorted([o1["action"], o2["action"]])
        if uid in flipped:
            assert actions == ["added", "conflict"] and sorted([s1, s2]) == [200, 409]
            conflict = (o1 if o1["action"] == "conflict" else o2)["conflict"]
            assert conflict["stored_label"] == stored[uid] and conflict["new_label"] == 1 - stored[uid]
        else:
            assert actions == ["added", "unchanged"] and (s1, s2) == (200, 200) and stored[uid] == expected[uid]


def test_skips_on_one_server_are_kept_by_the_other(serve, project_dir):
    """Each server skips a different item: both skips survive, and both servers (and a new one) show them."""
    first, second = serve(n=6), serve(n=6)
    a, b = first.session.uids[:2]
    assert in_process_client(first).call("POST", "/api/skip", {"uid": a, "round": 1})[0] == 200
    assert in_process_client(second).call("POST", "/api/skip", {"uid": b, "round": 1})[0] == 200
    for server in (first, second, serve(n=6)):
        state = in_process_client(server).call("GET", "/api/state")[1]
        statuses = {item["uid"]: item["status"] for item in state["items"]}
        assert (statuses[a], statuses[b]) == ("skipped", "skipped"), server.session.annotator
    assert active_rows(project_dir) == []


def _burst_client(server: LabelServer, worker: int, count: int, uids: list[str], log: list) -> None:
    """`count` requests: state reads, agreeing answers, and (every 7th) a contradicting one; log each."""
    client = in_process_client(server)
    try:
        for i in range(count):
            uid = uids[(i + worker) % len(uids)]
            kind = "state" if i % 3 == 0 else ("contradict" if i % 7 == 0 else "answer")
            label = uids.index(uid) % 2 ^ (kind == "contradict")
            if kind == "state":
                status, out = client.call("GET", "/api/state")
            else:
                status, out = client.call("POST", "/api/answer", {"uid": uid, "label": label, "round": 1})
            log.append((kind, uid, status, out.get("outcome")))
    finally:
        client.close()


def test_a_bounded_burst_loses_nothing_stores_nothing_twice(serve, project_dir):
    server = serve(n=12)
    uids = server.session.uids
    logs: list[list] = [[] for _ in range(BURST_CLIENTS)]
    per_client = BURST_REQUESTS // BURST_CLIENTS
    started = time.monotonic()
    threads = [threading.Thread(target=_burst_client, args=(server, w, per_client, uids, logs[w]))
               for w in range(BURST_CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    elapsed = time.monotonic() - started
    log = [entry for worker_log in logs for entry in worker_log]
    assert len(log) == BURST_REQUESTS, "a client stopped early"
    assert Counter(status for _, _, status, _ in log).keys() <= {200, 409}  # no 5xx, no refusal
    rows = active_rows(project_dir)
    assert Counter(uid for uid, _ in rows) == Counter(uids)
    stored = dict(rows)
    added = Counter(uid for kind, uid, _, outcome in log if kind != "state" and outcome["action"] == "added")
    assert added == Counter(uids)  # exactly one accepted answer per uid
    for kind, uid, status, outcome in log:
        if kind == "state":
            continue
        agrees = outcome["label"] == stored[uid]
        assert (status, outcome["action"] in ("added", "unchanged")) == ((200, True) if agrees else (409, False))
        if not agrees:
            assert outcome["conflict"]["stored_label"] == stored[uid]
    assert elapsed < 120


def test_a_full_disk_while_storing_an_answer_is_a_507_that_stores_nothing(serve, project_dir, monkeypatch):
    """The store's write fails half-way with ENOSPC: the page gets 507 and one line naming the label file; nothing
    is stored or left beside it; once there is room again the same answer is stored once."""
    import errno

    import pyarrow.parquet as pq

    server = serve(n=6)
    uid = server.session.uids[0]
    real_write = pq.write_table

    def half_then_full(table, where, **kwargs):
        real_write(table.slice(0, table.num_rows // 2), where, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    store = LabelStore(project_dir, CATEGORY)
    before = store.path.read_bytes()
    monkeypatch.setattr("sanitize.io.atomic.pq.write_table", half_then_full)
    client = in_process_client(server)
    status, out = client.call("POST", "/api/answer", {"uid": uid, "label": 1, "round": 1})
    assert status == 507 and out["error"] == f"{store.path}: cannot write (No space left on device)"
    assert out["state"]["done"] == 0 and store.path.read_bytes() == before
    assert sorted(p.name for p in store.path.parent.iterdir()) == [f".{CATEGORY}.lock", f"{CATEGORY}.parquet"]
    monkeypatch.undo()
    status, out = client.call("POST", "/api/answer", {"uid": uid, "label": 1, "round": 1})
    assert status == 200 and out["outcome"]["action"] == "added" and active_rows(project_dir) == [(uid, 1)]
    client.close()


def test_concurrent_label_add_commands_lose_nothing_and_report_conflicts(project_dir, embedded, tmp_path):
    """Four `sanitize label add` processes at once on one project, answering one batch (the files carry its round,
    as `label next` writes them): each its own uids plus three shared ones, on which two processes say 1 and two
    say 0. Every answer is stored once; each process that disagreed with the stored answer reports the conflict."""
    _run, truth = embedded
    seeds = set(LabelStore(project_dir, CATEGORY).current()[0].tolist())
    free = [uid for uid in truth["uid"].to_list() if uid not in seeds]
    shared, own = free[:3], [free[3 + 5 * w: 8 + 5 * w] for w in range(4)]
    procs = []
    for w in range(4):
        answers = tmp_path / f"answers-{w}.csv"
        rows = [f"{uid},{k % 2},1" for k, uid in enumerate(own[w])] + [f"{uid},{w % 2},1" for uid in shared]
        answers.write_text("uid,label,round\n" + "\n".join(rows) + "\n")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "sanitize_cli", "label", "add", CATEGORY, str(answers), "--project",
             str(project_dir), "--run", str(embedded[0]), "--on-conflict", "skip", "--annotator", str(w), "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    summaries = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        summaries.append(json.loads(out))
    rows = active_rows(project_dir)
    assert Counter(uid for uid, _ in rows) == Counter(shared + [uid for group in own for uid in group])
    stored = dict(rows)
    assert all(stored[uid] == k % 2 for group in own for k, uid in enumerate(group))
    winners = {stored[uid] for uid in shared}
    assert len(winners) == 1  # one process's answers landed first for all three (one locked write each)
    disagreeing = [w for w in range(4) if w % 2 not in winners]
    assert [s["conflicts"] for s in summaries] == [3 if w in disagreeing else 0 for w in range(4)]
    assert sum(s["added"] for s in summaries) == len(rows)
