"""Labeling-page load: a bounded burst of requests from concurrent local clients against one label server.

Builds a 200-row demo sample, embeds it with the demo model (random weights: only the mechanics matter here),
seeds a labeling project and starts `LabelServer` on a free loopback port. `--clients` threads, each with one
keep-alive HTTP/1.1 connection, send `--requests` requests in all and stop: a third are `GET /api/state`, the
rest `POST /api/answer` for the batch's items, one answer in seven contradicting the expected label (the server
answers 409 with the conflict). Every answer rewrites or re-reads the label store under its file lock, and
every reply carries the page state, so this measures the store path end to end, not an in-memory queue.

Reports p50/p99/max latency (all requests and per kind), requests per second, the status counts, and checks
the outcome: every batch item stored exactly once, no 5xx.

    python benchmarks/label_server_load.py [--requests 5000] [--clients 4] [--n 12]

Writes benchmarks/results/label_server_load.json (with machine info).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sanitize.io.atomic import write_json

RESULTS = Path(__file__).resolve().parent / "results" / "label_server_load.json"
CATEGORY = "sexual"
SPEC = """
[categories.sexual]
description = "Demo stand-in: a cluster of skin-coloured blobs (abstract, nothing real)."
guidelines = "Label 1 when the image shows the blob cluster."
prompts = ["skin-coloured blobs"]
target_recall = 0.8
confidence = 0.8
"""


def build_project(root: Path) -> tuple[Path, Path]:
    """(project folder, run folder): a 200-row embedded demo sample and 5 positive + 15 negative seed labels."""
    import polars as pl

    from sanitize.clip.models import load_clip
    from sanitize.demo.sample import make_sample
    from sanitize.io.manifest import open_manifest
    from sanitize.io.runfolder import RunFolder
    from sanitize.pipeline.stage import run_stage
    from sanitize.pipeline.stages.embed import EmbedConfig, EmbedStage
    from sanitize.safety.project import LabelProject

    info = make_sample(root / "sample", n_rows=200, seed=0)
    run = RunFolder.create(root / "run", open_manifest(info.manifest))
    model = load_clip("sanitize-demo-clip", None, device="cpu", seed=0)
    run_stage(EmbedStage(EmbedConfig(batch_size=64, workers=0), model=model), run)
    (root / "spec.toml").write_text(SPEC)
    project = LabelProject.init(root / "project", root / "spec.toml")
    truth = pl.read_parquet(info.truth)
    seeds = pl.concat([truth.filter(pl.col(CATEGORY) == 1).head(5), truth.filter(pl.col(CATEGORY) == 0).head(15)])
    project.store(CATEGORY).add(seeds["uid"].to_list(), seeds[CATEGORY].to_list(), source="seed", round=0)
    return project.path, run.path


def start_server(project_dir: Path, run_dir: Path, n: int):
    """A `LabelServer` over a fresh session (batch of `n`), serving in a background thread."""
    from sanitize.io.runfolder import RunFolder
    from sanitize.labelserver.app import LabelServer
    from sanitize.labelserver.session import LabelingSession
    from sanitize.safety.project import LabelProject

    session = LabelingSession(LabelProject.open(project_dir), RunFolder.open(run_dir), CATEGORY, n=n,
                              annotator="load")
    session.load()
    server = LabelServer(session, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


def client(port: int, token: str, worker: int, count: int, uids: list[str], log: list) -> None:
    """Send `count` requests on one keep-alive connection; append (kind, uid, status, action, seconds) each."""
    from sanitize.labelserver.app import TOKEN_HEADER

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {TOKEN_HEADER: token, "Content-Type": "application/json"}
    try:
        for i in range(count):
            uid = uids[(i + worker) % len(uids)]
            kind = "state" if i % 3 == 0 else ("contradict" if i % 7 == 0 else "answer")
            label = uids.index(uid) % 2 ^ (kind == "contradict")
            body = None if kind == "state" else json.dumps({"uid": uid, "label": label, "round": 1}).encode()
            started = time.perf_counter()
            conn.request("GET" if kind == "state" else "POST", "/api/state" if kind == "state" else "/api/answer",
                         body=body, headers=headers)
            response = conn.getresponse()
            reply = json.loads(response.read())
            elapsed = time.perf_counter() - started
            log.append((kind, uid, response.status, (reply.get("outcome") or {}).get("action"), elapsed))
    finally:
        conn.close()


def percentiles(seconds: list[float]) -> dict[str, float]:
    """p50, p99 and max in milliseconds."""
    ms = np.asarray(seconds) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "max_ms": round(float(ms.max()), 2), "count": len(ms)}


def check(project_dir: Path, uids: list[str], log: list) -> dict[str, object]:
    """The outcome: every batch item stored exactly once, one accepted answer per item, no 5xx."""
    from sanitize.safety.labels import LabelStore

    table = LabelStore(project_dir, CATEGORY).read()
    active = [u for u, s in zip(table["uid"].to_pylist(), table["source"].to_pylist(), strict=True) if s == "active"]
    stored_once = Counter(active) == Counter(uids)
    added = Counter(uid for kind, uid, _, action, _ in log if kind != "state" and action == "added")
    server_errors = sum(1 for entry in log if entry[2] >= 500)
    return {"every_item_stored_once": stored_once, "one_accepted_answer_per_item": added == Counter(uids),
            "server_errors": server_errors}


def run(requests: int, clients: int, n: int) -> dict[str, object]:
    """Build, serve, burst, check; the result record."""
    root = Path(tempfile.mkdtemp(prefix="label-load-"))
    try:
        project_dir, run_dir = build_project(root)
        server = start_server(project_dir, run_dir, n)
        uids = server.session.uids
        logs: list[list] = [[] for _ in range(clients)]
        threads = [threading.Thread(target=client, args=(server.port, server.token, w, requests // clients, uids,
                                                         logs[w])) for w in range(clients)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - started
        server.shutdown()
        server.server_close()
        log = [entry for worker_log in logs for entry in worker_log]
        outcome = check(project_dir, uids, log)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    by_kind = {kind: percentiles([e[4] for e in log if e[0] == kind]) for kind in ("state", "answer", "contradict")}
    return {
        "requests": len(log), "clients": clients, "batch_size": n, "seconds": round(wall, 3),
        "requests_per_second": round(len(log) / wall, 1), "latency": percentiles([e[4] for e in log]),
        "latency_by_kind": by_kind, "status_counts": {str(k): v for k, v in sorted(Counter(e[2] for e in log).items())},
        "outcome": outcome,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000, help="requests in all (default 5000)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent client threads (default 4)")
    parser.add_argument("--n", type=int, default=12, help="batch size of the labeling round (default 12)")
    args = parser.parse_args()
    result = run(args.requests, args.clients, args.n)
    lat = result["latency"]
    print(f"{result['requests']} requests, {result['clients']} clients: {result['requests_per_second']} req/s, "
          f"p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms, max {lat['max_ms']} ms")
    for kind, stats in result["latency_by_kind"].items():
        print(f"  {kind:<10} n={stats['count']:<5} p50 {stats['p50_ms']} ms  p99 {stats['p99_ms']} ms")
    print(f"  statuses {result['status_counts']}; outcome {result['outcome']}")
    write_json(RESULTS, result)
    print(f"wrote {RESULTS}")
    if not (result["outcome"]["every_item_stored_once"] and result["outcome"]["one_accepted_answer_per_item"]
            and result["outcome"]["server_errors"] == 0):
        raise SystemExit("load check failed: an answer was lost or stored twice, or the server answered 5xx")


if __name__ == "__main__":
    main()
