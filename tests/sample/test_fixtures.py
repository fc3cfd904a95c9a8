"""Fixture writers: each writes the columns, dtypes and file names of the tool whose layout it copies."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from sanitize.errors import ConfigError
from sanitize.testing.fixtures import (
    IMG2DATASET_COLUMNS,
    img2dataset_key,
    write_clip_retrieval_fixture,
    write_datacomp_fixture,
    write_img2dataset_fixture,
    write_laion_fixture,
)


def _types(path) -> dict[str, str]:
    return {f.name: str(f.type) for f in pq.read_schema(path)}


def test_img2dataset_key_is_shard_times_ten_thousand_plus_row():
    assert img2dataset_key(12, 0) == "000000012"
    assert img2dataset_key(3, 1) == "000010003"
    assert img2dataset_key(9999, 12) == "000129999"


def test_img2dataset_fixture_layout(tmp_path):
    out = write_img2dataset_fixture(tmp_path / "i2d", 20, n_shards=2)
    assert sorted(p.name for p in out.iterdir()) == [
        "00000.parquet",
        "00000.tar",
        "00000_stats.json",
        "00001.parquet",
        "00001.tar",
        "00001_stats.json",
    ]
    assert tuple(pq.read_schema(out / "00000.parquet").names) == IMG2DATASET_COLUMNS
    total = 0
    for shard in ("00000", "00001"):
        rows = pq.read_table(out / f"{shard}.parquet").to_pylist()
        total += len(rows)
        assert all(r["key"].startswith("0000" + shard[-1]) and len(r["key"]) == 9 for r in rows)
        with tarfile.open(out / f"{shard}.tar") as tar:
            names = tar.getnames()
            info = tar.getmember(names[0])
            assert (info.uname, info.mode) == ("bigdata", 0o444)
            ok = [r for r in rows if r["status"] == "success"]
            assert names == [f"{r['key']}.{ext}" for r in ok for ext in ("jpg", "json", "txt")]
            for r in ok:
                data = tar.extractfile(f"{r['key']}.jpg").read()
                assert Image.open(io.BytesIO(data)).size == (r["width"], r["height"]) == (8, 8)
                assert hashlib.sha256(data).hexdigest() == r["sha256"]
                assert json.loads(tar.extractfile(f"{r['key']}.json").read()) == r
        failed = [r for r in rows if r["status"] == "failed_to_download"]
        assert failed and all(r["error_message"] and r["sha256"] is None for r in failed)
        stats = json.loads((out / f"{shard}_stats.json").read_text())
        assert (stats["count"], stats["successes"]) == (len(rows), len(ok))
    assert total == 20


def test_img2dataset_additional_columns_come_first(tmp_path):
    out = write_img2dataset_fixture(tmp_path, 5, additional_columns=("uid",))
    table = pq.read_table(out / "00000.parquet")
    assert tuple(table.column_names) == ("uid", *IMG2DATASET_COLUMNS)
    assert table.column("uid").to_pylist() == [f"uid-{i}" for i in range(5)]


def test_laion_joined_dtypes(tmp_path):
    path = write_laion_fixture(tmp_path / "laion.parquet", 30)
    assert _types(path) == {
        "URL": "string",
        "TEXT": "string",
        "WIDTH": "int32",
        "HEIGHT": "int32",
        "similarity": "double",
        "hash": "int64",
        "punsafe": "float",
        "pwatermark": "float",
    }
    table = pq.read_table(path)
    assert len(table) == 30 and len(set(table.column("URL").to_pylist())) == 30
    punsafe = table.column("punsafe").to_numpy()
    assert ((punsafe >= 0) & (punsafe <= 1)).all()
    assert (table.column("hash").to_numpy() < 0).any()


def test_laion_release_and_multilingual_dtypes(tmp_path):
    path = write_laion_fixture(tmp_path / "multi.parquet", 30, variant="release", multilingual=True)
    assert _types(path) == {
        "SAMPLE_ID": "int64",
        "URL": "string",
        "TEXT": "string",
        "HEIGHT": "double",
        "WIDTH": "double",
        "LICENSE": "string",
        "LANGUAGE": "string",
        "NSFW": "string",
        "similarity": "double",
    }
    table = pq.read_table(path)
    assert set(table.column("NSFW").to_pylist()) <= {"UNLIKELY", "UNSURE", "NSFW"}
    assert len(set(table.column("SAMPLE_ID").to_pylist())) == 30
    joined = write_laion_fixture(tmp_path / "joined.parquet", 5, multilingual=True)
    assert pq.read_schema(joined).names[5] == "LANGUAGE"


def test_datacomp_dtypes(tmp_path):
    path = write_datacomp_fixture(tmp_path / "0123456789abcdef0123456789abcdef.parquet", 40)
    assert _types(path) == {
        "uid": "string",
        "url": "string",
        "text": "string",
        "original_width": "int64",
        "original_height": "int64",
        "clip_b32_similarity_score": "float",
        "clip_l14_similarity_score": "float",
        "face_bboxes": "list<element: list<element: double>>",
        "sha256": "string",
    }
    rows = pq.read_table(path).to_pylist()
    assert all(len(r["uid"]) == 32 and int(r["uid"], 16) >= 0 and len(r["sha256"]) == 64 for r in rows)
    assert len({r["uid"] for r in rows}) == 40
    boxes = [b for r in rows for b in r["face_bboxes"]]
    assert boxes and any(not r["face_bboxes"] for r in rows)
    assert all(len(b) == 4 and 0 <= b[0] < b[2] <= 1 and 0 <= b[1] < b[3] <= 1 for b in boxes)


def test_clip_retrieval_layout(tmp_path):
    out = write_clip_retrieval_fixture(tmp_path / "cr", 25, 16, n_parts=2)
    for part, rows in (("0", 12), ("1", 13)):
        img = np.load(out / "img_emb" / f"img_emb_{part}.npy", allow_pickle=False)
        txt = np.load(out / "text_emb" / f"text_emb_{part}.npy", allow_pickle=False)
        meta = pq.read_table(out / "metadata" / f"metadata_{part}.parquet")
        assert img.dtype == txt.dtype == np.float16 and img.shape == txt.shape == (rows, 16) == (len(meta), 16)
        np.testing.assert_allclose(np.linalg.norm(img.astype(np.float32), axis=1), 1.0, atol=2e-3)
        assert meta.column_names == [
            "image_path",
            "caption",
            "url",
            "key",
            "status",
            "error_message",
            "width",
            "height",
            "original_width",
            "original_height",
            "exif",
            "sha256",
        ]
        assert str(meta.schema.field("error_message").type) == "null"
        assert meta.column("image_path").to_pylist() == meta.column("key").to_pylist()


def test_clip_retrieval_part_names_are_padded_and_metadata_optional(tmp_path):
    out = write_clip_retrieval_fixture(tmp_path, 12, 4, n_parts=11, enable_text=False, enable_metadata=False)
    assert sorted(p.name for p in (out / "img_emb").iterdir())[:2] == ["img_emb_00.npy", "img_emb_01.npy"]
    assert not (out / "text_emb").exists()
    assert pq.read_schema(out / "metadata" / "metadata_10.parquet").names == ["image_path"]


def test_writers_are_deterministic(tmp_path):
    digests = []
    for name in ("a", "b"):
        root = tmp_path / name
        write_img2dataset_fixture(root / "i2d", 9, seed=5)
        write_laion_fixture(root / "laion.parquet", 9, seed=5)
        write_datacomp_fixture(root / "dc.parquet", 9, seed=5)
        write_clip_retrieval_fixture(root / "cr", 9, 8, seed=5)
        digests.append({p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()})
    assert digests[0] == digests[1]


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda p: write_laion_fixture(p / "x.parquet", 0), "n must be"),
        (lambda p: write_laion_fixture(p / "x.parquet", 3, variant="laion400m"), "variant"),
        (lambda p: write_datacomp_fixture(p / "x.parquet", -1), "n must be"),
        (lambda p: write_clip_retrieval_fixture(p, 3, 0), "d must be"),
        (lambda p: write_img2dataset_fixture(p, 3, n_shards=0), "n_shards"),
        (lambda p: write_img2dataset_fixture(p, 3, failed_every=0), "failed_every"),
    ],
)
def test_bad_arguments(tmp_path, call, match):
    with pytest.raises(ConfigError, match=match):
        call(tmp_path)
