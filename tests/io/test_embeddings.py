"""Embedding I/O: clip-retrieval layout round trip, parquet list columns, .npy, and every bad-input case."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sanitize.errors import DataError
from sanitize.io.embeddings import open_embeddings, write_embedding_shard


def unit_rows(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_clip_folder(folder, sizes=(5, 3), d=8):
    for i, n in enumerate(sizes):
        x = unit_rows(n, d, seed=i)
        meta = pa.table({"uid": [f"s{i}r{j}" for j in range(n)], "caption": [f"cap {j}" for j in range(n)]})
        write_embedding_shard(folder, i, x, x[:, ::-1].copy(), meta)
    return folder


def test_clip_retrieval_round_trip(tmp_path):
    folder = write_clip_folder(tmp_path / "emb")
    assert sorted(p.name for p in (folder / "img_emb").iterdir()) == ["img_emb_00000.npy", "img_emb_00001.npy"]
    src = open_embeddings(folder)
    shards = list(src.shards())
    assert [len(s) for s in shards] == [5, 3]
    assert shards[0].img_emb.dtype == np.float16
    assert isinstance(shards[0].img_emb, np.memmap)
    np.testing.assert_allclose(np.linalg.norm(shards[1].img_emb.astype(np.float32), axis=1), 1, atol=2e-3)
    assert shards[1].uids.tolist() == ["s1r0", "s1r1", "s1r2"]
    uids, x = src.load_all()
    assert len(uids) == 8 and x.shape == (8, 8)


def test_clip_retrieval_metadata_without_uid_gets_stable_uids(tmp_path):
    folder = tmp_path / "cr"
    (folder / "img_emb").mkdir(parents=True)
    (folder / "metadata").mkdir()
    np.save(folder / "img_emb" / "img_emb_0.npy", unit_rows(3, 4).astype(np.float16))
    pq.write_table(pa.table({"image_path": ["a.jpg", "b.jpg", "c.jpg"], "caption": ["x", "y", "z"]}),
                   folder / "metadata" / "metadata_0.parquet")
    a = next(open_embeddings(folder).shards()).uids.tolist()
    b = next(open_embeddings(folder).shards()).uids.tolist()
    assert a == b and len(set(a)) == 3


def test_run_folder_is_accepted(tmp_path):
    write_clip_folder(tmp_path / "run" / "embeddings")
    (tmp_path / "run" / "run.json").write_text(json.dumps({}))
    assert open_embeddings(tmp_path / "run").kind == "clip-retrieval"


def test_parquet_fixed_size_list_and_list_columns(tmp_path):
    x = unit_rows(4, 6)
    fixed = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 6)
    pq.write_table(pa.table({"uid": list("abcd"), "emb": fixed}), tmp_path / "f.parquet")
    pq.write_table(pa.table({"uid": list("abcd"), "vec": [list(r) for r in x]}), tmp_path / "l.parquet")
    for name, col in (("f.parquet", None), ("l.parquet", "vec")):
        shard = next(open_embeddings(tmp_path / name, embedding_col=col).shards())
        np.testing.assert_allclose(shard.img_emb, x, rtol=1e-6)
        assert shard.uids.tolist() == list("abcd")


def test_npy_rows_get_positional_uids(tmp_path):
    np.save(tmp_path / "x.npy", unit_rows(3, 4))
    shard = next(open_embeddings(tmp_path / "x.npy").shards())
    assert shard.uids.tolist() == ["0", "1", "2"]


def test_unnormalised_rows_are_renormalised_or_refused(tmp_path):
    np.save(tmp_path / "x.npy", unit_rows(3, 4) * 3)
    shard = next(open_embeddings(tmp_path / "x.npy").shards())
    np.testing.assert_allclose(np.linalg.norm(shard.img_emb, axis=1), 1, rtol=1e-5)
    with pytest.raises(DataError, match="norm 3.0000, not 1"):
        next(open_embeddings(tmp_path / "x.npy", require_normalized=True).shards())


@pytest.mark.parametrize("value,message", [(np.nan, "NaN or infinite"), (np.inf, "NaN or infinite"),
                                           (0.0, "all zeros")])
def test_bad_rows_name_file_row_and_uid(tmp_path, value, message):
    x = unit_rows(4, 4)
    x[2] = value
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(DataError, match=rf"x.npy: row 2 \(uid 2\) .*{message}"):
        next(open_embeddings(tmp_path / "x.npy").shards())


def test_dimension_mismatch_across_shards(tmp_path):
    folder = tmp_path / "emb"
    write_embedding_shard(folder, 0, unit_rows(2, 8), None, pa.table({"uid": ["a", "b"]}))
    write_embedding_shard(folder, 1, unit_rows(2, 6), None, pa.table({"uid": ["c", "d"]}))
    with pytest.raises(DataError, match="img_emb_00001.npy: embedding dimension 6 differs from 8"):
        list(open_embeddings(folder).shards())


def test_npy_vs_metadata_row_count_mismatch(tmp_path):
    folder = tmp_path / "emb"
    write_embedding_shard(folder, 0, unit_rows(3, 4), None, pa.table({"uid": ["a", "b", "c"]}))
    pq.write_table(pa.table({"uid": ["a", "b"]}), folder / "metadata" / "metadata_00000.parquet")
    with pytest.raises(DataError, match="3 rows but .*metadata_00000.parquet has 2 rows"):
        list(open_embeddings(folder).shards())


def test_missing_metadata_and_missing_column(tmp_path):
    folder = tmp_path / "emb"
    (folder / "img_emb").mkdir(parents=True)
    (folder / "metadata").mkdir()
    np.save(folder / "img_emb" / "img_emb_0.npy", unit_rows(2, 4))
    with pytest.raises(DataError, match="no matching metadata"):
        open_embeddings(folder)
    pq.write_table(pa.table({"uid": ["a"], "emb": [[1.0, 0.0]]}), tmp_path / "p.parquet")
    with pytest.raises(DataError, match="embedding column 'vec' .* not found"):
        list(open_embeddings(tmp_path / "p.parquet", embedding_col="vec").shards())


def test_ragged_list_column(tmp_path):
    pq.write_table(pa.table({"uid": ["a", "b"], "emb": [[1.0, 0.0], [1.0]]}), tmp_path / "p.parquet")
    with pytest.raises(DataError, match="row 1 has 1 values, row 0 has 2"):
        list(open_embeddings(tmp_path / "p.parquet").shards())


@pytest.mark.parametrize("array,message", [
    (np.ones(4, np.float32), r"must be a 2-D array \(rows × dim\), got shape \(4,\)"),
    (np.ones((2, 2, 2), np.float32), r"got shape \(2, 2, 2\)"),
    (np.ones((2, 4), np.int32), "must be floats .* got dtype int32"),
    (np.zeros((2, 0), np.float32), "0 columns"),
])
def test_npy_shape_and_dtype_are_checked_before_reading(tmp_path, array, message):
    np.save(tmp_path / "x.npy", array)
    with pytest.raises(DataError, match=rf"x.npy: .*{message}"):
        list(open_embeddings(tmp_path / "x.npy").shards())


def test_truncated_and_foreign_npy(tmp_path):
    np.save(tmp_path / "x.npy", unit_rows(4, 4))
    (tmp_path / "cut.npy").write_bytes((tmp_path / "x.npy").read_bytes()[:-8])
    with pytest.raises(DataError, match=r"cut.npy: truncated: its header says shape \(4, 4\) float32"):
        list(open_embeddings(tmp_path / "cut.npy").shards())
    (tmp_path / "text.npy").write_text("1,2,3\n")
    with pytest.raises(DataError, match="text.npy: not a .npy file"):
        list(open_embeddings(tmp_path / "text.npy").shards())


def test_float64_renormalised_without_overflow(tmp_path):
    x = unit_rows(3, 4).astype(np.float64) * 1e30
    np.save(tmp_path / "x.npy", x)
    shard = next(open_embeddings(tmp_path / "x.npy").shards())
    assert shard.img_emb.dtype == np.float64
    np.testing.assert_allclose(np.linalg.norm(shard.img_emb, axis=1), 1, rtol=1e-9)


def test_parquet_uids_must_be_present_and_unique(tmp_path):
    emb = [[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]
    pq.write_table(pa.table({"uid": ["a", "b", "a"], "emb": emb}), tmp_path / "dup.parquet")
    with pytest.raises(DataError, match="dup.parquet: uid 'a' is on rows 0 and 2"):
        list(open_embeddings(tmp_path / "dup.parquet").shards())
    pq.write_table(pa.table({"uid": ["a", None, "c"], "emb": emb}), tmp_path / "null.parquet")
    with pytest.raises(DataError, match="null.parquet: row 1: id column 'uid' is empty"):
        list(open_embeddings(tmp_path / "null.parquet").shards())


def test_run_folder_without_embeddings(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text(json.dumps({}))
    with pytest.raises(DataError, match="run: a run folder without embeddings/img_emb/"):
        open_embeddings(tmp_path / "run")
