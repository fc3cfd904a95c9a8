"""Each preset reads a fixture written in its tool's real layout (sanitize.testing.fixtures documents the sources)."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from sanitize.io.embeddings import open_embeddings
from sanitize.io.manifest import open_manifest, url_caption_uids
from sanitize.testing.fixtures import (
    write_clip_retrieval_fixture,
    write_datacomp_fixture,
    write_img2dataset_fixture,
    write_laion_fixture,
)


def test_img2dataset_folder_with_tars(tmp_path):
    folder = write_img2dataset_fixture(tmp_path / "i2d", 30, n_shards=2)
    m = open_manifest(folder)
    assert m.spec.preset == "img2dataset" and len(m.files) == 2
    shards = list(m.shards())
    assert all(s.tar_path is not None and s.tar_path.exists() for s in shards)
    t = shards[0].table
    raw = pq.read_table(m.files[0])
    ok = [s == "success" for s in raw["status"].to_pylist()]
    # only successful rows point at a tar member; failed downloads have no key
    assert [k is not None for k in t["key"].to_pylist()] == ok
    assert t["caption"].to_pylist() == raw["caption"].to_pylist()
    # identity is url + caption, not img2dataset's positional key
    assert t["uid"].to_pylist() == url_caption_uids(raw["url"].to_pylist(), raw["caption"].to_pylist())
    assert m.check_unique_uids() == 30


def test_img2dataset_uids_survive_resharding(tmp_path):
    one = open_manifest(write_img2dataset_fixture(tmp_path / "a", 20, n_shards=1))
    two = open_manifest(write_img2dataset_fixture(tmp_path / "b", 20, n_shards=3))
    uids_one = [u for s in one.shards() for u in s.table["uid"].to_pylist()]
    uids_two = [u for s in two.shards() for u in s.table["uid"].to_pylist()]
    assert uids_one == uids_two


@pytest.mark.parametrize("variant,id_col", [("joined", "hash"), ("release", "SAMPLE_ID")])
def test_laion(tmp_path, variant, id_col):
    path = write_laion_fixture(tmp_path / "laion.parquet", 12, variant=variant)
    m = open_manifest(path)
    assert m.spec.preset == "laion"
    t = m.read_shard(0).table
    raw = pq.read_table(path)
    assert t["uid"].to_pylist() == [str(v) for v in raw[id_col].to_pylist()]
    assert t["caption"].to_pylist() == raw["TEXT"].to_pylist() and t["url"].to_pylist() == raw["URL"].to_pylist()


def test_datacomp(tmp_path):
    path = write_datacomp_fixture(tmp_path / "dc.parquet", 10)
    m = open_manifest(path)
    assert m.spec.preset == "datacomp"
    t = m.read_shard(0).table
    raw = pq.read_table(path)
    assert t["uid"].to_pylist() == raw["uid"].to_pylist() and t["caption"].to_pylist() == raw["text"].to_pylist()


def test_clip_retrieval_folder_as_manifest_and_embeddings(tmp_path):
    folder = write_clip_retrieval_fixture(tmp_path / "cr", 9, d=16, n_parts=2)
    m = open_manifest(folder)
    assert m.spec.preset == "clip-retrieval" and len(m.files) == 2
    manifest_uids = [u for s in m.shards() for u in s.table["uid"].to_pylist()]
    emb_uids = [u for s in open_embeddings(folder).shards() for u in s.uids.tolist()]
    assert manifest_uids == emb_uids and len(set(emb_uids)) == 9


def test_explicit_mapping(tmp_path):
    path = write_datacomp_fixture(tmp_path / "dc.parquet", 5)
    m = open_manifest(path, preset="generic", id_col="sha256", caption_col="text", url_col="url")
    t = m.read_shard(0).table
    assert t["uid"].to_pylist() == pq.read_table(path)["sha256"].to_pylist()


def test_glob(tmp_path):
    write_img2dataset_fixture(tmp_path / "g", 10, n_shards=2)
    m = open_manifest(str(tmp_path / "g" / "*.parquet"))
    assert len(m.files) == 2 and m.spec.preset == "img2dataset"
