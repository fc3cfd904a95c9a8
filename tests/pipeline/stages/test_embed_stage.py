"""The embed stage over a run folder: clip-retrieval output, per-row status, resume with identical bytes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from sanitize.io.embeddings import open_embeddings
from sanitize.io.manifest import open_manifest
from sanitize.io.runfolder import RunFolder
from sanitize.pipeline.stage import run_stage
from sanitize.pipeline.stages.embed import EmbedConfig, EmbedStage
from sanitize.testing.fixtures import write_img2dataset_fixture

TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    import open_clip

    from sanitize.clip.models import load_clip

    path = tmp_path_factory.mktemp("cfg") / "stage-tiny-clip.json"
    path.write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(path)
    return load_clip("stage-tiny-clip", None, device="cpu", seed=0)


def files_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in ("stats.json",)}


def test_embed_stage_writes_clip_retrieval_layout(tmp_path, model):
    m = open_manifest(write_img2dataset_fixture(tmp_path / "in", 21, n_shards=3))
    run = RunFolder.create(tmp_path / "run", m)
    stats = run_stage(EmbedStage(EmbedConfig(batch_size=4, workers=0), model=model), run).to_dict()
    assert stats["rows_in"] == 21 and stats["kept"] == 18 and stats["dropped"] == {"no_image": 3}
    src = open_embeddings(run.path)
    shards = list(src.shards())
    assert [len(s) for s in shards] == [6, 6, 6] and src.dim == 32
    assert shards[0].img_emb.dtype == np.float16 and shards[0].text_emb.shape == (6, 32)
    status = pq.read_table(run.shard_path("embed", 0)).to_pylist()
    assert status[0]["status"] == "no_image" and status[0]["keep"] is False and status[0]["reason"] == "embed:no_image"
    assert {s["uid"] for s in status if s["keep"]} == set(shards[0].uids.tolist())
    assert run.stats()["embed"]["kept"] == 18


def test_resume_after_interruption_is_byte_identical(tmp_path, model):
    m = open_manifest(write_img2dataset_fixture(tmp_path / "in", 21, n_shards=3))
    whole = RunFolder.create(tmp_path / "whole", m)
    run_stage(EmbedStage(EmbedConfig(batch_size=4, workers=0), model=model), whole)
    broken = RunFolder.create(tmp_path / "broken", m)
    run_stage(EmbedStage(EmbedConfig(batch_size=4, workers=0), model=model), broken)
    # simulate a kill during shard 1: its marker never got written, a temp file and a half shard are left behind
    broken.marker("embed", 1).unlink()
    (broken.embeddings_dir / "img_emb" / "img_emb_00001.npy").write_bytes(b"half")
    (broken.embeddings_dir / "img_emb" / ".img_emb_00002.npy.abc.tmp.npy").write_bytes(b"partial")
    run_stage(EmbedStage(EmbedConfig(batch_size=4, workers=0), model=model), broken)
    (broken.embeddings_dir / "img_emb" / ".img_emb_00002.npy.abc.tmp.npy").unlink()
    whole_files, broken_files = files_bytes(whole.path), files_bytes(broken.path)
    whole_files.pop("run.json"), broken_files.pop("run.json")
    assert whole_files == broken_files


def test_no_text_writes_no_caption_embeddings_and_is_its_own_fingerprint(tmp_path, model):
    m = open_manifest(write_img2dataset_fixture(tmp_path / "in", 21, n_shards=3))
    both = RunFolder.create(tmp_path / "both", m)
    run_stage(EmbedStage(EmbedConfig(batch_size=4, workers=0), model=model), both)
    images = RunFolder.create(tmp_path / "images", m)
    stats = run_stage(EmbedStage(EmbedConfig(batch_size=4, workers=0, text=False), model=model), images).to_dict()
    assert stats["kept"] == 18
    assert not (images.embeddings_dir / "text_emb").exists()
    for a, b in zip(open_embeddings(both.path).shards(), open_embeddings(images.path).shards(), strict=True):
        assert b.text_emb is None and np.array_equal(a.img_emb, b.img_emb) and np.array_equal(a.uids, b.uids)
    assert images.stage_config("embed")["text"] is False and "text" not in both.stage_config("embed")
