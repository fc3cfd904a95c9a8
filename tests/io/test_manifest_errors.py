"""Manifest bad input: each case gives a DataError/ConfigError naming the file, column or row."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sanitize.errors import ConfigError, DataError
from sanitize.io.manifest import open_manifest


def write(path, **cols):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(cols), path)
    return path


def test_missing_path(tmp_path):
    with pytest.raises(DataError, match="nope.parquet: no such file or folder"):
        open_manifest(tmp_path / "nope.parquet")


def test_glob_and_folder_without_parquet(tmp_path):
    with pytest.raises(DataError, match="no parquet files found"):
        open_manifest(str(tmp_path / "*.parquet"))
    with pytest.raises(DataError, match="no parquet files found"):
        open_manifest(tmp_path)


def test_corrupt_and_non_parquet_file(tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"this is not parquet at all")
    with pytest.raises(DataError, match="bad.parquet: not a readable parquet file"):
        open_manifest(bad)
    good = write(tmp_path / "good.parquet", uid=["a"], caption=["x"])
    truncated = tmp_path / "trunc.parquet"
    truncated.write_bytes(good.read_bytes()[:-20])
    with pytest.raises(DataError, match="trunc.parquet: not a readable parquet file"):
        open_manifest(truncated)


def test_missing_mapped_column(tmp_path):
    p = write(tmp_path / "m.parquet", uid=["a"], caption=["x"])
    with pytest.raises(DataError, match=r"m.parquet: column 'text' \(--caption-col, preset generic\) not found"):
        open_manifest(p, caption_col="text").read_shard(0)
    with pytest.raises(DataError, match=r"id column 'myid' \(--id-col\) not found"):
        open_manifest(p, id_col="myid").read_shard(0)


def test_empty_manifest(tmp_path):
    p = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"uid": pa.array([], pa.string()), "caption": pa.array([], pa.string())}), p)
    with pytest.raises(DataError, match="empty.parquet: the manifest has no rows"):
        open_manifest(p)


def test_duplicate_uids_show_examples(tmp_path):
    write(tmp_path / "m" / "00000.parquet", uid=["a", "b", "c"], caption=["1", "2", "3"])
    write(tmp_path / "m" / "00001.parquet", uid=["d", "b", "e"], caption=["4", "5", "6"])
    with pytest.raises(DataError, match=r"1 duplicate uid\(s\), e.g. 'b' \(00000.parquet row 1, 00001.parquet row 1\)"):
        open_manifest(tmp_path / "m").check_unique_uids()


@pytest.mark.parametrize("memory", [1 << 30, 64, 8])
def test_the_uid_check_spills_by_hash_partition_with_the_same_answer(tmp_path, memory):
    # Past `memory` bytes of hashes the check spills them to files by hash partition (64 bytes: 5 partitions for
    # 40 rows; 8: one per row): same count, same duplicates found.
    uids = [f"u{i}" for i in range(20)]
    write(tmp_path / "m" / "00000.parquet", uid=uids, caption=["c"] * 20)
    write(tmp_path / "m" / "00001.parquet", uid=[f"v{i}" for i in range(20)], caption=["c"] * 20)
    assert open_manifest(tmp_path / "m").check_unique_uids(memory=memory) == 40
    write(tmp_path / "d" / "00000.parquet", uid=uids, caption=["c"] * 20)
    write(tmp_path / "d" / "00001.parquet", uid=["x", "u7", "y", "u13"], caption=["c"] * 4)
    expected = r"2 duplicate uid\(s\), e.g. 'u7' \(00000.parquet row 7, 00001.parquet row 1\)"
    with pytest.raises(DataError, match=expected):
        open_manifest(tmp_path / "d").check_unique_uids(memory=memory)


def test_empty_id_value_names_row(tmp_path):
    p = write(tmp_path / "m.parquet", uid=["a", None], caption=["1", "2"])
    with pytest.raises(DataError, match="m.parquet: row 1: id column 'uid' is empty"):
        open_manifest(p).read_shard(0)


def test_unknown_preset(tmp_path):
    p = write(tmp_path / "m.parquet", uid=["a"])
    with pytest.raises(ConfigError, match="unknown preset 'webvid'"):
        open_manifest(p, preset="webvid")


def test_input_is_never_modified(tmp_path):
    p = write(tmp_path / "m.parquet", uid=["a", "b"], caption=["1", "2"])
    before = p.read_bytes()
    m = open_manifest(p)
    m.check_unique_uids()
    list(m.shards())
    assert p.read_bytes() == before


def test_generic_manifest_without_id_column_gets_url_caption_uids(tmp_path):
    p = write(tmp_path / "m.parquet", url=["http://a", "http://b"], caption=["x", "y"])
    uids = open_manifest(p).read_shard(0).table["uid"].to_pylist()
    assert len(set(uids)) == 2 and all(len(u) == 16 for u in uids)


@pytest.mark.parametrize("column,message", [
    (pa.array([[1], [2]]), r"column 'uid' has type list<.*>, not text or a number"),
    (pa.array([b"\xff", b"ok"], pa.binary()), "column 'uid' has type binary, not text or a number"),
])
def test_uid_column_that_is_not_text(tmp_path, column, message):
    p = write(tmp_path / "m.parquet", uid=column, caption=["1", "2"])
    with pytest.raises(DataError, match=rf"m.parquet: {message}"):
        open_manifest(p).read_shard(0)


def test_folder_or_empty_file_is_named(tmp_path):
    (tmp_path / "m").mkdir()
    write(tmp_path / "m" / "00000.parquet", uid=["a"], caption=["x"])
    (tmp_path / "m" / "00001.parquet").write_bytes(b"")
    with pytest.raises(DataError, match=r"00001.parquet: not a readable parquet file \(the file is empty\)"):
        len(open_manifest(str(tmp_path / "m" / "*.parquet")))
