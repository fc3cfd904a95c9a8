"""The align stage: CLIP score per row, keep by threshold or by the exact top fraction, resumable, refusals."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sanitize.errors import ConfigError
from sanitize.io.embeddings import write_embedding_shard
from sanitize.io.manifest import open_manifest
from sanitize.io.runfolder import RunFolder
from sanitize.pipeline.stage import run_stage
from sanitize.pipeline.stages.align import AlignConfig, AlignStage

SHARDS = [(0, 70), (70, 150), (150, 200)]


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_run(tmp_path, *, text=True, captions=None):
    """200 rows whose caption embedding is the image embedding turned by a known angle: score = cos(angle)."""
    rng = np.random.default_rng(0)
    n, d = 200, 16
    img = unit(rng.normal(size=(n, d)))
    other = unit(rng.normal(size=(n, d)))
    other = unit(other - np.sum(other * img, axis=1, keepdims=True) * img)  # orthogonal to img
    cos = np.linspace(-0.2, 0.6, n).astype(np.float32)
    rng.shuffle(cos)
    txt = unit(cos[:, None] * img + np.sqrt(1 - cos[:, None] ** 2) * other)
    uids = [f"r{i:03d}" for i in range(n)]
    folder = tmp_path / "in"
    folder.mkdir(parents=True)
    for s, (lo, hi) in enumerate(SHARDS):
        pq.write_table(pa.table({"uid": uids[lo:hi], "caption": ["c"] * (hi - lo)}), folder / f"{s:05d}.parquet")
    run = RunFolder.create(tmp_path / "run", open_manifest(folder))
    for s, (lo, hi) in enumerate(SHARDS):
        meta = {"uid": uids[lo:hi], **({"caption": captions[lo:hi]} if captions is not None else {})}
        write_embedding_shard(run.embeddings_dir, s, img[lo:hi], txt[lo:hi] if text else None, pa.table(meta))
    truth = np.sum(img.astype(np.float16).astype(np.float32) * txt.astype(np.float16).astype(np.float32), axis=1)
    return run, dict(zip(uids, truth.tolist(), strict=True))


def decisions(run):
    return pa.concat_tables([t for _, t in run.read_stage("align")]).to_pylist()


def test_threshold_keeps_rows_at_or_above_it_with_reasons(tmp_path):
    run, truth = make_run(tmp_path)
    result = run_stage(AlignStage(AlignConfig(by="threshold", threshold=0.3)), run).to_dict()
    rows = decisions(run)
    assert len(rows) == 200 and result["rows_in"] == 200
    for r in rows:
        assert r["score"] == pytest.approx(truth[r["uid"]], abs=1e-5)
        assert r["keep"] == (r["score"] >= 0.3)
        if not r["keep"]:
            assert r["reason"] == f"align:{r['score']:.3f}<0.300"
    assert result["kept"] == sum(r["keep"] for r in rows) and result["dropped"]["misaligned"] == 200 - result["kept"]


@pytest.mark.parametrize("fraction", [0.3, 0.005, 1.0])
def test_fraction_keeps_exactly_the_top_rows(tmp_path, fraction):
    run, _ = make_run(tmp_path)
    result = run_stage(AlignStage(AlignConfig(by="fraction", fraction=fraction)), run).to_dict()
    rows = decisions(run)
    k = math.ceil(fraction * 200)
    scores = sorted((r["score"] for r in rows), reverse=True)
    assert result["kept"] == k  # no ties among these scores
    assert result["threshold"] == pytest.approx(scores[k - 1], abs=0) and result["kept_fraction"] == k / 200
    assert all(r["keep"] == (r["score"] >= scores[k - 1]) for r in rows)


def test_resume_and_refusals(tmp_path):
    run, _ = make_run(tmp_path)
    stage = AlignStage(AlignConfig(by="fraction", fraction=0.4))
    run_stage(stage, run)
    before = {i: run.shard_path("align", i).read_bytes() for i in range(3)}
    run.marker("align", 1).unlink()
    run.shard_path("align", 1).unlink()
    run_stage(stage, run)
    assert {i: run.shard_path("align", i).read_bytes() for i in range(3)} == before
    with pytest.raises(ConfigError, match=r"align.fraction must be in \(0, 1\], got 0.0"):
        run_stage(AlignStage(AlignConfig(by="fraction", fraction=0.0)), run)
    no_text, _ = make_run(tmp_path / "nt", text=False)
    with pytest.raises(ConfigError, match="no caption embeddings .* the align stage needs them"):
        run_stage(AlignStage(), no_text)


def test_rows_without_a_caption_are_removed_apart_and_left_out_of_the_fraction(tmp_path):
    # A missing or blank caption has no text to agree with: not scored, removed as align:no_caption, counted
    # apart, and the top fraction is taken over the 197 rows that have a caption.
    captions = ["a caption"] * 200
    captions[3], captions[80], captions[199] = None, "   ", ""
    run, truth = make_run(tmp_path, captions=captions)
    stats = run_stage(AlignStage(AlignConfig(by="fraction", fraction=0.5)), run).to_dict()
    rows = {r["uid"]: r for r in decisions(run)}
    for uid in ("r003", "r080", "r199"):
        assert not rows[uid]["keep"] and rows[uid]["reason"] == "align:no_caption" and math.isnan(rows[uid]["score"])
    assert stats["dropped"]["no_caption"] == 3
    assert stats["kept"] == math.ceil(0.5 * 197)
    captioned = sorted((v for k, v in truth.items() if k not in ("r003", "r080", "r199")), reverse=True)
    assert min(r["score"] for r in rows.values() if r["keep"]) == pytest.approx(captioned[math.ceil(0.5 * 197) - 1],
                                                                                abs=1e-6)
