"""The hashlist stage on UKBench photos: exact and PDQ matches (dihedral too), img2dataset's sha256 column used
without reading bytes, the restricted 0600 file, matched rows never embedded or exported, one-line list errors,
resume with identical bytes, and the Ray engine writing what the local one writes."""

from __future__ import annotations

import hashlib
import json
import stat

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from sanitize.engines import get_engine
from sanitize.errors import DataError
from sanitize.hashlist import pdq_hashes
from sanitize.io.embeddings import open_embeddings
from sanitize.io.manifest import open_manifest
from sanitize.io.runfolder import RunFolder
from sanitize.pipeline.config import load_config
from sanitize.pipeline.registry import stage_names
from sanitize.pipeline.stage import run_stage
from sanitize.pipeline.stages.embed import EmbedConfig, EmbedStage
from sanitize.pipeline.stages.export import ExportStage
from sanitize.pipeline.stages.hashlist import HashlistConfig, HashlistStage, load_lists, resolved
from sanitize_cli.main import cli

from ..conftest import data_files
from .test_embed_stage import model  # noqa: F401  (the tiny CLIP fixture)

UKBENCH = "imagededup_ukbench"
LISTED_PDQ = {"u_base", "u_resize", "u_gray", "u_hflip", "u_rot90"}


@pytest.fixture
def photos(shared_data):
    folder = shared_data / UKBENCH
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    return folder


def rows_of(photos, tmp_path):
    """(uid, image path or None, url) rows: edits of ukbench00120 (listed by PDQ), ukbench09380 as PNG (the same
    JPEG bytes: listed by sha256), ukbench09268 (listed by md5), four other photos, a corrupt file, a missing file
    and a remote-only row."""
    rotated = tmp_path / "rot90.png"
    Image.open(photos / "base_images" / "ukbench00120.jpg").transpose(Image.Transpose.ROTATE_90).save(rotated)
    base = photos / "base_images"
    return [
        ("u_base", base / "ukbench00120.jpg", None),
        ("u_resize", photos / "mixed_images" / "ukbench00120_resize.jpg", None),
        ("u_gray", photos / "ukbench00120_gray.jpg", None),
        ("u_hflip", photos / "mixed_images" / "ukbench00120_hflip.jpg", None),
        ("u_rot90", rotated, None),
        ("u_png", photos / "formats_images" / "ukbench09380.png", None),
        ("u_md5", base / "ukbench09268.jpg", None),
        ("u_other1", base / "ukbench01380.jpg", None),
        ("u_other2", base / "ukbench08976.jpg", None),
        ("u_other3", base / "ukbench08996.jpg", None),
        ("u_other4", base / "ukbench09012.jpg", None),
        ("u_corrupt", photos / "mixed_images" / "ukbench09268_corrupt.jpg", None),
        ("u_missing", tmp_path / "nowhere.jpg", None),
        ("u_remote", None, "https://example.com/x.jpg"),
    ]


def write_manifest(folder, rows, extra=None, shards=(7, 14)):
    folder.mkdir(parents=True)
    lo = 0
    for s, hi in enumerate(shards):
        part = rows[lo:hi]
        columns = {"uid": [r[0] for r in part], "caption": [f"a photo {r[0]}" for r in part],
                   "image": [str(r[1]) if r[1] else None for r in part], "url": [r[2] for r in part]}
        if extra:
            columns.update({k: v[lo:hi] for k, v in extra.items()})
        pq.write_table(pa.table(columns), folder / f"{s:05d}.parquet")
        lo = hi
    return open_manifest(folder)


def write_lists(photos, folder):
    folder.mkdir(parents=True, exist_ok=True)
    base = np.asarray(Image.open(photos / "base_images" / "ukbench00120.jpg").convert("RGB"))
    code = pdq_hashes(base, dihedral=False)[0][0].tobytes().hex()
    (folder / "known_pdq.txt").write_text(f"# PDQ list\n{code}\n{'0' * 64}\n")
    sha = hashlib.sha256((photos / "base_images" / "ukbench09380.jpg").read_bytes()).hexdigest()
    (folder / "vendor.csv").write_text(f"hash,label\n{sha},case-1\n")
    md5 = hashlib.md5((photos / "base_images" / "ukbench09268.jpg").read_bytes()).hexdigest()
    (folder / "md5s.txt").write_text(f"{md5}\n")
    return (f"pdq:{folder / 'known_pdq.txt'}", f"sha256:{folder / 'vendor.csv'}", str(folder / "md5s.txt"))


def screened_run(photos, tmp_path, name="run"):
    tmp_path.mkdir(parents=True, exist_ok=True)
    manifest = write_manifest(tmp_path / "in", rows_of(photos, tmp_path))
    run = RunFolder.create(tmp_path / name, manifest)
    config = HashlistConfig(lists=write_lists(photos, tmp_path / "lists"))
    return run, config


def decisions(run):
    return {r["uid"]: r for _, t in run.read_stage("hashlist") for r in t.to_pylist()}


def test_exact_and_pdq_matches_with_reasons_counts_and_a_restricted_file(photos, tmp_path):
    run, config = screened_run(photos, tmp_path)
    result = run_stage(HashlistStage(config), run).to_dict()
    rows = decisions(run)
    removed = {u: r["reason"] for u, r in rows.items() if not r["keep"]}
    assert removed == {**{u: "hashlist:known_pdq:pdq" for u in LISTED_PDQ}, "u_png": "hashlist:vendor:sha256",
                       "u_md5": "hashlist:md5s:md5"}
    assert pq.read_schema(run.shard_path("hashlist", 0)).names == ["uid", "keep", "reason"]
    assert result["rows_in"] == 14 and result["kept"] == 7
    assert result["dropped"] == {"hashlist:known_pdq": 5, "hashlist:md5s": 1, "hashlist:vendor": 1}
    assert result["other"] == {"unscreened": 2}  # the missing file and the remote-only row
    assert result["lists"] == {"known_pdq": {"kind": "pdq", "hashes": 2, "matched_rows": 5},
                               "md5s": {"kind": "md5", "hashes": 1, "matched_rows": 1},
                               "vendor": {"kind": "sha256", "hashes": 1, "matched_rows": 1}}
    status = {r["uid"]: r for _, t in [(0, pq.read_table(p)) for p in sorted(
        (run.stage_dir("hashlist") / "rows").glob("*.parquet"))] for r in t.to_pylist()}
    assert status["u_corrupt"]["status"].startswith("decode_error:") and status["u_missing"]["status"] == "missing"
    assert status["u_remote"]["status"] == "skipped_remote" and status["u_base"]["pdq_quality"] >= 50
    restricted = run.stage_dir("hashlist") / "restricted"
    assert stat.S_IMODE(restricted.stat().st_mode) == 0o700
    for path in restricted.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    matches = pq.read_table(restricted / "matches.parquet").to_pylist()
    assert {m["uid"] for m in matches} == set(removed)
    by_uid = {m["uid"]: m for m in matches}
    assert by_uid["u_png"]["label"] == "case-1" and by_uid["u_png"]["distance"] == 0
    assert by_uid["u_base"]["distance"] == 0 and by_uid["u_base"]["variant"] == "original"
    assert by_uid["u_hflip"]["variant"] != "original" and by_uid["u_hflip"]["distance"] <= 31
    stats_text = json.dumps(run.stats()["hashlist"])
    assert "u_base" not in stats_text and by_uid["u_base"]["hash"] not in stats_text  # counts and names only


def test_img2dataset_sha256_column_is_used_without_reading_bytes(photos, tmp_path):
    listed = (photos / "base_images" / "ukbench09380.jpg").read_bytes()
    rows = [("gone", tmp_path / "deleted.jpg", None), ("here", photos / "base_images" / "ukbench09380.jpg", None),
            ("other", photos / "base_images" / "ukbench01380.jpg", None)]
    sha = hashlib.sha256(listed).hexdigest()
    manifest = write_manifest(tmp_path / "in", rows, extra={"sha256": [sha, None, "not-a-hash"]}, shards=(3,))
    (tmp_path / "l.txt").write_text(sha + "\n")
    run = RunFolder.create(tmp_path / "run", manifest)
    run_stage(HashlistStage(HashlistConfig(lists=(f"sha256:{tmp_path / 'l.txt'}",))), run)
    rows = decisions(run)
    assert not rows["gone"]["keep"] and not rows["here"]["keep"] and rows["other"]["keep"]
    status = pq.read_table(run.stage_dir("hashlist") / "rows" / "00000.parquet").to_pylist()
    assert [s["status"] for s in status] == ["sha256_column", "ok", "ok"]


def test_resume_after_deleting_a_marker_gives_identical_bytes(photos, tmp_path):
    run, config = screened_run(photos, tmp_path)
    run_stage(HashlistStage(config), run)
    folder = run.stage_dir("hashlist")
    before = {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
    run.marker("hashlist", 1).unlink()
    run.shard_path("hashlist", 1).unlink()
    (folder / "restricted" / "00001.parquet").unlink()
    run_stage(HashlistStage(config), run)
    after = {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
    assert after == before


def test_matched_rows_are_never_embedded_nor_exported(photos, tmp_path, model):  # noqa: F811
    run, config = screened_run(photos, tmp_path)
    embed = EmbedStage(EmbedConfig(batch_size=4, workers=0), model=model)
    run_stage(embed, run)  # embedded before the lists were screened: the matched images are in the embeddings
    first = set(np.concatenate([s.uids for s in open_embeddings(run.path).shards()]).tolist())
    assert first >= LISTED_PDQ
    run_stage(HashlistStage(config), run)
    run_stage(embed, run)  # the rows hashlist removed changed: embed starts afresh without them
    matched = {u for u, r in decisions(run).items() if not r["keep"]}
    embedded = set(np.concatenate([s.uids for s in open_embeddings(run.path).shards()]).tolist())
    sidecar = {u for _, t in run.read_stage("embed") for u in t["uid"].to_pylist()}
    assert len(matched) == 7 and not matched & embedded and not matched & sidecar
    assert embedded == {"u_other1", "u_other2", "u_other3", "u_other4"}
    export = run_stage(ExportStage(), run).to_dict()
    removed = {r["uid"]: r for r in pq.read_table(run.path / "export" / "removed.parquet").to_pylist()}
    assert {u for u, r in removed.items() if r["stages"] == ["hashlist"]} == matched
    assert removed["u_png"]["reasons"] == "hashlist:vendor:sha256"
    kept = {u for p in (run.path / "export" / "kept").glob("*.parquet") for u in pq.read_table(p)["uid"].to_pylist()}
    assert not kept & matched and export["kept"] == 4
    listed = (photos / "base_images" / "ukbench00120.jpg").read_bytes()[1000:1064]
    for path in run.path.rglob("*"):  # no image bytes anywhere in the run folder
        assert not path.is_file() or listed not in path.read_bytes(), path


def test_a_malformed_list_is_one_line_before_anything_runs(photos, tmp_path):
    manifest = write_manifest(tmp_path / "in", rows_of(photos, tmp_path))
    bad = tmp_path / "bad.txt"
    bad.write_text("# header\n" + "a" * 64 + "\nnot-a-hash\n")
    out = tmp_path / "run"
    args = ["run", str(manifest.spec.path), "--out", str(out), "--set", 'run.stages=["hashlist", "embed"]',
            "--set", f'hashlist.lists=["pdq:{bad}"]']
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    assert result.stderr.strip().count("\n") == 0 and f"{bad}:3: 'not-a-hash' is not a hex hash" in result.stderr
    assert not out.exists()
    with pytest.raises(DataError, match="bad.txt:3"):
        HashlistStage(HashlistConfig(lists=(f"pdq:{bad}",))).prepare(0)


def test_config_order_and_opt_in():
    assert stage_names()[0] == "hashlist"
    config = load_config(None)
    assert "hashlist" not in config.run.stages
    assert HashlistStage(config["hashlist"]).skip_reason() == "no [hashlist] lists"


def test_ray_engine_writes_what_the_local_engine_writes(photos, tmp_path):
    pytest.importorskip("ray")
    local, config = screened_run(photos, tmp_path / "a")
    run_stage(HashlistStage(config), local)
    on_ray = RunFolder.create(tmp_path / "ray", local.manifest())
    with get_engine("ray", num_cpus=2) as engine:
        assert run_stage(HashlistStage(config), on_ray, engine=engine).engine == "ray"

    def files(run):
        folder = run.stage_dir("hashlist")
        return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}

    assert files(on_ray) == files(local)


def test_sanitize_run_screens_first_and_a_rerun_keeps_every_file(photos, tmp_path, model):  # noqa: F811
    manifest = write_manifest(tmp_path / "in", rows_of(photos, tmp_path))
    lists = json.dumps(list(write_lists(photos, tmp_path / "lists")))
    out = tmp_path / "run"
    args = ["run", str(manifest.spec.path), "--out", str(out), "--json",
            "--set", 'run.stages=["export", "embed", "hashlist"]', "--set", f"hashlist.lists={lists}",
            "--set", 'embed.model="stage-tiny-clip"', "--set", 'embed.pretrained="none"',
            "--set", "embed.workers=0", "--set", 'embed.device="cpu"']
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert [r["stage"] for r in summary["stages"]] == ["hashlist", "embed", "export"]
    assert summary["totals"]["removed_by_reason"]["hashlist:known_pdq"] == 5
    embedded = set(np.concatenate([s.uids for s in open_embeddings(out).shards()]).tolist())
    assert embedded == {"u_other1", "u_other2", "u_other3", "u_other4"}
    before = data_files(out)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert data_files(out) == before


def test_workers_read_the_lists_by_absolute_path_and_kind(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "old.txt").write_text(hashlib.md5(b"x").hexdigest() + "\n")
    config = HashlistConfig(lists=("old.txt",))
    assert resolved(config, load_lists(config)).lists == (f"md5:{(tmp_path / 'old.txt').resolve()}",)
