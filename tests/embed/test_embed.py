from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from sanitize.clip.embed import ShardEmbeddings, embed_shard
from sanitize.errors import ConfigError, DataError
from sanitize.io.images import decode_image

from .test_images import encode, noise, png_claiming_size

CLIP_TEST_IMAGES = ["123_456", "208_495", "416_264", "456_123", "321_421", "389_535", "524_316"]


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Good and bad images of every kind the manifest may point at."""
    root = tmp_path_factory.mktemp("images")
    cases = {
        "good0.jpg": encode(noise(64, 48, 0), "JPEG"),
        "good1.png": encode(noise(30, 90, 1), "PNG"),
        "sub/good2.webp": encode(noise(70, 70, 2), "WEBP"),
        "cmyk.jpg": encode(Image.new("CMYK", (20, 20), (0, 255, 255, 0)), "JPEG"),
        "la.png": encode(Image.new("LA", (20, 20), (90, 128)), "PNG"),
        "i16.png": encode(Image.fromarray(np.full((20, 20), 40000, dtype=np.uint16)), "PNG"),
        "truncated.jpg": encode(noise(160, 120, 3), "JPEG")[:3000],
        "text.jpg": b"not an image\n" * 20,
        "empty.jpg": b"",
        "bomb.png": png_claiming_size(30_000, 30_000),
    }
    for name, data in cases.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def mixed_table() -> pa.Table:
    rows = [
        ("good0.jpg", "a red car", None),
        ("truncated.jpg", "cut short", None),
        ("good1.png", None, None),  # null caption embeds as ""
        ("text.jpg", "a text file", None),
        ("missing.jpg", "gone", None),
        ("cmyk.jpg", "printer ink", None),
        ("empty.jpg", "nothing", None),
        (None, "remote only", "https://example.com/x.jpg"),
        ("bomb.png", "huge", None),
        (None, "no image at all", None),
        ("la.png", "grey with alpha", None),
        ("sub/good2.webp", "a square", None),
        ("i16.png", "sixteen bit", None),
    ]
    return pa.table(
        {
            "uid": [f"u{i}" for i in range(len(rows))],
            "caption": [r[1] for r in rows],
            "image": [r[0] for r in rows],
            "url": [r[2] for r in rows],
            "key": pa.nulls(len(rows), pa.string()),
        }
    )


EXPECTED_STATUS = [
    "ok",
    "decode_error:truncated",
    "ok",
    "decode_error:not_image",
    "missing",
    "ok",
    "decode_error:empty",
    "skipped_remote",
    "too_large",
    "no_image",
    "ok",
    "ok",
    "ok",
]


def assert_same(a: ShardEmbeddings, b: ShardEmbeddings) -> None:
    assert a.status == b.status and a.error == b.error
    assert np.array_equal(a.ok_rows, b.ok_rows)
    assert np.array_equal(a.img_emb, b.img_emb) and np.array_equal(a.text_emb, b.text_emb)


@pytest.fixture(scope="module")
def mixed_result(tiny_model, image_folder) -> ShardEmbeddings:
    return embed_shard(mixed_table(), tiny_model, image_root=image_folder, batch_size=4, num_workers=0)


def test_every_row_gets_a_status_and_bad_rows_a_message(mixed_result):
    assert mixed_result.status == EXPECTED_STATUS
    for status, error in zip(mixed_result.status, mixed_result.error, strict=True):
        assert (error is None) == (status == "ok")
        assert error is None or "\n" not in error
    assert mixed_result.counts()["ok"] == 6
    assert mixed_result.counts()["decode_error:truncated"] == 1
    assert "missing.jpg" in mixed_result.error[4]


def test_outputs_are_row_aligned_unit_float16(tiny_model, image_folder, mixed_result):
    ok = [i for i, s in enumerate(EXPECTED_STATUS) if s == "ok"]
    assert mixed_result.ok_rows.dtype == np.int64 and mixed_result.ok_rows.tolist() == ok
    for emb in (mixed_result.img_emb, mixed_result.text_emb):
        assert emb.dtype == np.float16 and emb.shape == (len(ok), tiny_model.dim)
        np.testing.assert_allclose(np.linalg.norm(emb.astype(np.float32), axis=1), 1.0, atol=2e-3)
    table = mixed_table()
    captions = [table["caption"][i].as_py() or "" for i in ok]
    np.testing.assert_allclose(mixed_result.text_emb, tiny_model.encode_text(captions), atol=2e-3)
    pixels = torch.stack(
        [tiny_model.preprocess(decode_image((image_folder / table["image"][i].as_py()).read_bytes())) for i in ok]
    )
    np.testing.assert_allclose(mixed_result.img_emb, tiny_model.encode_images(pixels), atol=2e-3)


def test_worker_processes_give_identical_output(tiny_model, image_folder, mixed_result):
    with_workers = embed_shard(mixed_table(), tiny_model, image_root=image_folder, batch_size=4, num_workers=2)
    assert_same(with_workers, mixed_result)


def test_batch_size_changes_nothing_beyond_float16_rounding(tiny_model, image_folder, mixed_result):
    for batch_size in (1, 5):
        other = embed_shard(mixed_table(), tiny_model, image_root=image_folder, batch_size=batch_size)
        assert other.status == mixed_result.status and other.error == mixed_result.error
        assert np.array_equal(other.ok_rows, mixed_result.ok_rows)
        np.testing.assert_allclose(other.img_emb, mixed_result.img_emb, atol=1e-3, rtol=0)
        np.testing.assert_allclose(other.text_emb, mixed_result.text_emb, atol=1e-3, rtol=0)


def test_without_text_the_image_embeddings_and_statuses_are_unchanged(tiny_model, image_folder, mixed_result,
                                                                        monkeypatch):
    def no_text_tower(*args, **kwargs):
        raise AssertionError("the text tower ran")

    monkeypatch.setattr(tiny_model, "encode_text", no_text_tower)
    images_only = embed_shard(mixed_table(), tiny_model, image_root=image_folder, batch_size=4, text=False)
    assert images_only.text_emb is None
    assert images_only.status == mixed_result.status and images_only.error == mixed_result.error
    assert np.array_equal(images_only.ok_rows, mixed_result.ok_rows)
    assert np.array_equal(images_only.img_emb, mixed_result.img_emb)


def test_progress_counts_every_row_once(tiny_model, image_folder):
    seen: list[int] = []
    embed_shard(mixed_table(), tiny_model, image_root=image_folder, batch_size=3, num_workers=0, progress=seen.append)
    assert sum(seen) == mixed_table().num_rows


def test_missing_columns_and_empty_table(tiny_model, image_folder):
    only_images = pa.table({"uid": ["a", "b"], "image": ["good0.jpg", "text.jpg"]})
    result = embed_shard(only_images, tiny_model, image_root=image_folder, num_workers=0)
    assert result.status == ["ok", "decode_error:not_image"]
    np.testing.assert_allclose(result.text_emb, tiny_model.encode_text([""]), atol=2e-3)
    empty = embed_shard(pa.table({"uid": pa.array([], pa.string())}), tiny_model)
    assert empty.img_emb.shape == (0, tiny_model.dim) and empty.status == [] and empty.ok_rows.size == 0


def test_all_rows_bad(tiny_model, image_folder):
    table = pa.table({"uid": ["a", "b"], "image": ["text.jpg", "missing.jpg"], "caption": ["x", "y"]})
    result = embed_shard(table, tiny_model, image_root=image_folder, num_workers=2)
    assert result.status == ["decode_error:not_image", "missing"]
    assert result.img_emb.shape == result.text_emb.shape == (0, tiny_model.dim)


@pytest.mark.parametrize(("option", "value"), [("batch_size", 0), ("num_workers", -1), ("max_pixels", 0)])
def test_bad_options(tiny_model, option, value):
    with pytest.raises(ConfigError, match=option):
        embed_shard(pa.table({"uid": ["a"]}), tiny_model, **{option: value})


def test_missing_tar_is_a_data_error(tiny_model, tmp_path):
    with pytest.raises(DataError, match="00007.tar"):
        embed_shard(pa.table({"uid": ["a"], "key": ["k"]}), tiny_model, tar_path=tmp_path / "00007.tar")


def test_webdataset_tar_shard(tiny_model, tmp_path, image_folder):
    path = tmp_path / "00000.tar"
    members = {
        "000000000.jpg": (image_folder / "good0.jpg").read_bytes(),
        "000000000.txt": b"a red car",
        "000000000.json": json.dumps({"key": "000000000"}).encode(),
        "000000001.jpg": (image_folder / "truncated.jpg").read_bytes(),
        "000000002.png": (image_folder / "good1.png").read_bytes(),
    }
    with tarfile.open(path, "w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    table = pa.table(
        {
            "uid": ["a", "b", "c", "d", "e"],
            "caption": ["a red car", "cut", "square", "gone", "local"],
            "key": ["000000000", "000000001", "000000002", "000000003", None],
            "image": [None, None, None, None, "good0.jpg"],  # a row without key falls back to its file
            "url": [None, None, None, None, None],
        }
    )
    result = embed_shard(table, tiny_model, tar_path=path, image_root=image_folder, batch_size=2, num_workers=2)
    assert result.status == ["ok", "decode_error:truncated", "ok", "missing", "ok"]
    assert "000000003" in result.error[3]
    assert np.array_equal(result.img_emb[0], result.img_emb[2])  # same bytes from the tar and from the file


def test_clip_retrieval_images_from_files_and_tars(tiny_model, shared_data):
    base = shared_data / "clip_retrieval_test"
    files = pa.table({"uid": CLIP_TEST_IMAGES, "image": [f"{n}.jpg" for n in CLIP_TEST_IMAGES]})
    from_files = embed_shard(files, tiny_model, image_root=base / "test_images", batch_size=3, num_workers=2)
    assert from_files.status == ["ok"] * 7
    assert not np.isnan(from_files.img_emb).any()

    by_key = {}
    for tar_name in ("image1.tar", "image2.tar"):  # together they hold the 7 images once
        tar_path = base / "test_tars" / tar_name
        with tarfile.open(tar_path) as archive:
            keys = [Path(m.name).stem for m in archive.getmembers()]
        shard = pa.table({"uid": keys, "key": keys})
        result = embed_shard(shard, tiny_model, tar_path=tar_path, batch_size=3, num_workers=0)
        assert result.status == ["ok"] * len(keys)
        by_key.update(zip(keys, result.img_emb, strict=True))
    assert sorted(by_key) == sorted(CLIP_TEST_IMAGES)
    # The tar members are the same JPEGs, so equal to within batch-composition rounding.
    for name, emb in zip(CLIP_TEST_IMAGES, from_files.img_emb, strict=True):
        np.testing.assert_allclose(by_key[name], emb, atol=1e-3, rtol=0)


def test_real_vit_b32_matches_clip_retrieval_reference_when_weights_are_here(shared_data):
    """Golden test for machines that hold the OpenAI ViT-B/32 weights (skipped where they cannot be had)."""
    from sanitize.clip.models import load_clip

    try:
        model = load_clip("ViT-B-32", "openai", device="cpu")
    except ConfigError as exc:
        pytest.skip(f"no ViT-B-32/openai weights on this machine: {exc}")
    base = shared_data / "clip_retrieval_test"
    names = json.loads((base / "test_embeddings" / "image_filenames.json").read_text())
    reference = np.load(base / "test_embeddings" / "image_embs_vit_b32_openai.npy", allow_pickle=False)
    table = pa.table({"uid": names, "image": [f"{n}.jpg" for n in names]})
    result = embed_shard(table, model, image_root=base / "test_images", num_workers=0)
    assert result.status == ["ok"] * len(names)
    cosine = np.sum(result.img_emb.astype(np.float32) * reference.astype(np.float32), axis=1)
    assert cosine.min() > 0.99, cosine
