"""A real Ray cluster of two raylets on this machine (one CPU each, an object store smaller than the embeddings),
joined by its address ("HOST:PORT"): dedup on it writes the same files as the local engine, with many parts, many
pair-search buckets and block-row tasks of clusters larger than a bucket; only small things go through the store.

Ray binds to this machine's own address; all traffic stays on this machine. The driver runs in a fresh process,
so it never meets a Ray that another test started in this one. Ray Client ("ray://HOST:PORT") is accepted by the
engine but not tested here: its per-client server does not start in this sandbox (connection timeout).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

from sanitize.dedup.buckets import MIN_BUCKETS  # noqa: E402
from sanitize.pipeline.stages.dedup import DedupConfig, dedup_folder  # noqa: E402
from sanitize.testing.synthetic import clip_like  # noqa: E402

CLIENT = textwrap.dedent("""
    import json, sys
    import ray
    from sanitize.engines import get_engine
    from sanitize.pipeline.stages.dedup import DedupConfig, dedup_folder

    CONFIG = DedupConfig(threshold=0.9, clusterings=2, clusters=12, recall_sample=200)
    address, source, out = sys.argv[1:4]
    with get_engine("ray", address=address) as engine:
        nodes = [n for n in ray.nodes() if n["Alive"]]
        stats = dedup_folder(source, out, CONFIG, engine=engine)
    print(json.dumps({"nodes": len(nodes), "engine": stats["engine"], "pairs": stats["pairs"],
                      "largest": max(c["largest_cluster_rows"] for c in stats["clusterings"])}))
""")


@pytest.fixture(scope="module")
def cluster():
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "object_store_memory": 80 * 1024 * 1024, "include_dashboard": False})
    cluster.add_node(num_cpus=1, object_store_memory=80 * 1024 * 1024)
    cluster.wait_for_nodes()
    try:
        yield cluster.address
    finally:
        cluster.shutdown()


@pytest.fixture(scope="module")
def embeddings(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster")
    # 45,000 x 512 float32 = 92 MB: more than the 80 MB object store of either raylet. One .npy, read in shards.
    np.save(root / "x.npy", clip_like(45_000, 512, seed=4, dup_fraction=0.1).x)
    dedup_folder(root / "x.npy", root / "local", DedupConfig(threshold=0.9, clusterings=2, clusters=12,
                                                             recall_sample=200))
    return root


def test_dedup_on_a_two_raylet_cluster_equals_the_local_engine(cluster, embeddings):
    out = embeddings / "cluster"
    result = subprocess.run([sys.executable, "-c", CLIENT, cluster, str(embeddings / "x.npy"), str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["nodes"] == 2 and summary["engine"] == "ray" and summary["pairs"] > 0
    assert summary["largest"] > 45_000 // MIN_BUCKETS  # a cluster larger than a bucket: block-row tasks ran
    for name in ("decisions.parquet", "pairs.parquet"):
        assert (out / name).read_bytes() == (embeddings / "local" / name).read_bytes(), name
