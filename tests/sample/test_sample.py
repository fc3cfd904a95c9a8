"""The sample generator: determinism, layouts, broken files, near-duplicates and planted motifs."""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image, UnidentifiedImageError

from sanitize.demo.sample import MAX_ROWS, VARIANT_KINDS, make_sample
from sanitize.errors import ConfigError
from sanitize.testing.fixtures import IMG2DATASET_COLUMNS

FEMALE_WORDS = {"woman", "girl", "mother", "she"}
MALE_WORDS = {"man", "boy", "father", "he"}


def _folder_digest(root: Path) -> dict[str, str]:
    files = (p for p in root.rglob("*") if p.is_file())
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image.convert("RGB")


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """The default sample (img2dataset layout, 1,200 rows), its truth and every tar entry by uid."""
    info = make_sample(tmp_path_factory.mktemp("sample") / "out")
    truth = pq.read_table(info.truth).to_pylist()
    rows, members = [], {}
    for shard in sorted(info.manifest.glob("*.parquet")):
        shard_rows = pq.read_table(shard).to_pylist()
        rows += shard_rows
        uid_of = {r["key"]: r["uid"] for r in shard_rows}
        with tarfile.open(shard.with_suffix(".tar")) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                members.setdefault(uid_of[key], {})[ext] = tar.extractfile(m).read()
    return info, truth, rows, members


def test_same_seed_gives_identical_bytes_and_another_seed_does_not(tmp_path):
    a = make_sample(tmp_path / "a", n_rows=150, seed=3)
    b = make_sample(tmp_path / "b", n_rows=150, seed=3)
    c = make_sample(tmp_path / "c", n_rows=150, seed=4)
    assert _folder_digest(a.root) == _folder_digest(b.root)
    assert _folder_digest(a.root) != _folder_digest(c.root)
    assert set(_folder_digest(a.root)) == set(_folder_digest(c.root))


def test_files_layout_is_deterministic_too(tmp_path):
    a = make_sample(tmp_path / "a", n_rows=120, layout="files")
    b = make_sample(tmp_path / "b", n_rows=120, layout="files")
    assert _folder_digest(a.root) == _folder_digest(b.root)


def test_row_counts_and_summary(sample):
    info, truth, rows, _ = sample
    assert info.n_rows == len(rows) == len(truth) == 1200 <= MAX_ROWS
    assert {r["uid"] for r in rows} == {t["uid"] for t in truth}
    assert len({r["uid"] for r in rows}) == len(rows)
    summary = json.loads((info.root / "sample.json").read_text())
    assert summary == info.as_dict()
    assert summary["n_images"] == sum(t["broken"] is None for t in truth)


def test_img2dataset_parquet_matches_the_tool(sample):
    info, truth, rows, _ = sample
    shard = pq.read_table(info.manifest / "00000.parquet")
    assert tuple(shard.column_names) == ("uid", *IMG2DATASET_COLUMNS)
    types = {f.name: str(f.type) for f in shard.schema}
    assert all(types[c] == "int32" for c in ("width", "height", "original_width", "original_height"))
    assert all(types[c] == "string" for c in ("uid", "caption", "url", "key", "status", "error_message", "sha256"))
    assert sorted(p.name for p in info.manifest.iterdir()) == [
        "00000.parquet",
        "00000.tar",
        "00000_stats.json",
        "00001.parquet",
        "00001.tar",
        "00001_stats.json",
    ]
    keys = [r["key"] for r in rows]
    assert all(re.fullmatch(r"0000[01]\d{4}", k) for k in keys)
    assert keys[0] == "000000000" and "000010000" in keys
    by_key = {t["key"]: t for t in truth}
    assert all(by_key[r["key"]]["uid"] == r["uid"] for r in rows)
    stats = json.loads((info.manifest / "00000_stats.json").read_text())
    assert stats["count"] == sum(k.startswith("00000") for k in keys)


def test_successful_members_decode_and_match_their_row(sample):
    _, truth, rows, members = sample
    broken = {t["uid"]: t["broken"] for t in truth}
    checked = 0
    for row in rows:
        if broken[row["uid"]] is not None:
            continue
        entry = members[row["uid"]]
        assert set(entry) == {"jpg", "json", "txt"}
        image = _decode(entry["jpg"])
        assert image.size == (row["width"], row["height"]) == (row["original_width"], row["original_height"])
        assert hashlib.sha256(entry["jpg"]).hexdigest() == row["sha256"]
        assert entry["txt"].decode() == row["caption"]
        assert json.loads(entry["json"]) == row
        assert row["status"] == "success" and row["error_message"] is None and max(image.size) <= 96
        checked += 1
    assert checked > 1100


def test_broken_rows_are_broken_as_intended(sample):
    info, truth, rows, members = sample
    row_of = {r["uid"]: r for r in rows}
    kinds: dict[str, list[str]] = {}
    for t in truth:
        if t["broken"]:
            kinds.setdefault(t["broken"], []).append(t["uid"])
    assert {k: len(v) for k, v in kinds.items()} == {
        "failed_to_download": 12,
        "truncated": 3,
        "zero_byte": 1,
        "not_an_image": 1,
        "missing": 1,
    }
    for uid in kinds["failed_to_download"]:
        assert row_of[uid]["status"] == "failed_to_download" and row_of[uid]["error_message"]
        assert row_of[uid]["sha256"] is None and row_of[uid]["width"] is None and uid not in members
    for uid in kinds["missing"]:
        assert row_of[uid]["status"] == "success" and uid not in members
    for uid in kinds["truncated"]:
        with pytest.raises(OSError, match="truncated"):
            _decode(members[uid]["jpg"])
    for uid in kinds["zero_byte"]:
        assert members[uid]["jpg"] == b""
    for uid in kinds["zero_byte"] + kinds["not_an_image"]:
        with pytest.raises(UnidentifiedImageError):
            _decode(members[uid]["jpg"])
    for kind in ("truncated", "zero_byte", "not_an_image"):
        for uid in kinds[kind]:
            # The download was fine; the file was damaged afterwards, so the recorded hash no longer matches.
            assert row_of[uid]["status"] == "success"
            assert hashlib.sha256(members[uid]["jpg"]).hexdigest() != row_of[uid]["sha256"]
    assert info.n_images == len(rows) - sum(len(v) for v in kinds.values())


def _unit(image: Image.Image) -> np.ndarray:
    v = np.asarray(image.resize((24, 24)), dtype=np.float64).ravel()
    v -= v.mean()
    return v / np.linalg.norm(v)


def test_near_duplicates_are_recorded_and_nearest_to_their_original(sample):
    _, truth, _, members = sample
    by_uid = {t["uid"]: t for t in truth}
    variants = [t for t in truth if t["variant"] != "original"]
    assert {t["variant"] for t in variants} == set(VARIANT_KINDS)
    assert len(variants) == 96 and all(sum(t["variant"] == k for t in variants) == 24 for k in VARIANT_KINDS)
    originals = [t["uid"] for t in truth if t["variant"] == "original" and t["broken"] is None]
    matrix = np.stack([_unit(_decode(members[u]["jpg"])) for u in originals])
    for t in variants:
        source = by_uid[t["dup_group"]]
        assert source["variant"] == "original" and source["dup_group"] == source["uid"]
        assert t["caption"] == source["caption"]
        assert (t["sexual"], t["violence"]) == (source["sexual"], source["violence"])
        image = _decode(members[t["uid"]]["jpg"])
        assert members[t["uid"]]["jpg"] != members[source["uid"]]["jpg"]
        if t["variant"] in ("resize", "crop"):
            assert image.size != (96, 96)
        similarity = matrix @ _unit(image)
        assert originals[int(similarity.argmax())] == source["uid"], t["variant"]
    groups = {t["dup_group"] for t in truth if t["dup_group"]}
    assert all(by_uid[g]["dup_group"] == g for g in groups)
    assert all(t["dup_group"] is None for t in truth if t["variant"] == "original" and t["uid"] not in groups)


def _dark_red_share(image: Image.Image) -> float:
    a = np.asarray(image).astype(int)
    return float(((a[..., 0] > 110) & (a[..., 1] < 45) & (a[..., 2] < 45)).mean())


def _blob_share(image: Image.Image) -> float:
    a = np.asarray(image).astype(int)
    return float(((abs(a[..., 0] - 232) <= 14) & (abs(a[..., 1] - 180) <= 16) & (abs(a[..., 2] - 150) <= 16)).mean())


@pytest.mark.parametrize(("motif", "share"), [("violence", _dark_red_share), ("sexual", _blob_share)])
def test_motifs_are_drawn_in_the_labelled_images(sample, motif, share):
    _, truth, _, members = sample
    healthy = [t for t in truth if t["broken"] is None and t["variant"] == "original"]
    positive = np.array([share(_decode(members[t["uid"]]["jpg"])) for t in healthy if t[motif]])
    negative = np.array([share(_decode(members[t["uid"]]["jpg"])) for t in healthy if not t[motif]])
    # The motif's pixel share ranks labelled images above unlabelled ones (AUC); red cars and skin-toned
    # heads are the planted distractors that keep it below 1.
    auc = (positive[:, None] > negative[None, :]).mean() + 0.5 * (positive[:, None] == negative[None, :]).mean()
    assert auc > 0.95
    assert positive.min() > 0.01


def test_motif_prevalence_is_a_few_percent_and_higher_for_women(sample):
    _, truth, _, _ = sample
    for motif in ("sexual", "violence"):
        prevalence = np.mean([t[motif] for t in truth])
        assert 0.02 <= prevalence <= 0.08, (motif, prevalence)
        rate = {g: np.mean([t[motif] for t in truth if t["caption_gender"] == g]) for g in ("female", "male")}
        assert rate["female"] >= 2 * rate["male"] > 0, (motif, rate)
        mentioned = [t["motif_in_caption"] for t in truth if t[motif]]
        assert 0 < sum(mentioned) < len(mentioned)
    assert not any(t["motif_in_caption"] for t in truth if not (t["sexual"] or t["violence"]))


def test_captions_carry_the_planted_gender_and_occupation(sample):
    _, truth, _, _ = sample
    genders = {t["caption_gender"] for t in truth}
    assert genders == {"female", "male", "mixed", "neutral", "none"}
    for t in truth:
        words = set(re.findall(r"[a-z]+", t["caption"].lower()))
        female, male = bool(words & FEMALE_WORDS), bool(words & MALE_WORDS)
        expected = {"female": (True, False), "male": (False, True), "mixed": (True, True)}.get(
            t["caption_gender"], (False, False)
        )
        assert (female, male) == expected, t["caption"]
        if t["occupation"]:
            assert t["occupation"].lower() in t["caption"].lower()
        assert (t["n_people"] == 0) == (t["caption_gender"] == "none")
    occupations = {t["occupation"] for t in truth if t["occupation"]}
    assert {"nurse", "doctor", "engineer", "CEO", "cleaner", "teacher", "pilot"} <= occupations
    nurses = [t["caption_gender"] == "female" for t in truth if t["occupation"] == "nurse"]
    engineers = [t["caption_gender"] == "female" for t in truth if t["occupation"] == "engineer"]
    assert np.mean(nurses) > 0.6 > 0.4 > np.mean(engineers)


def test_files_layout(tmp_path):
    info = make_sample(tmp_path / "out", n_rows=200, layout="files", image_size=64)
    manifest = pq.read_table(info.manifest)
    assert info.manifest == info.root / "manifest.parquet"
    assert manifest.column_names == ["uid", "caption", "image", "url", "width", "height"]
    truth = {t["uid"]: t for t in pq.read_table(info.truth).to_pylist()}
    assert len(manifest) == len(truth) == 200
    assert not any(t["broken"] == "failed_to_download" for t in truth.values())
    decoded = 0
    for row in manifest.to_pylist():
        path = info.root / row["image"]
        broken = truth[row["uid"]]["broken"]
        assert truth[row["uid"]]["image"] == row["image"]
        if broken == "missing":
            assert not path.exists()
        elif broken is not None:
            with pytest.raises((OSError, UnidentifiedImageError)):
                _decode(path.read_bytes())
        else:
            assert _decode(path.read_bytes()).size == (row["width"], row["height"])
            decoded += 1
    assert decoded == info.n_images
    assert len(list((info.root / "images").iterdir())) == 199


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_rows": MAX_ROWS + 1}, "n_rows"),
        ({"n_rows": 10}, "n_rows"),
        ({"n_rows": 150.0}, "n_rows"),
        ({"image_size": 8}, "image_size"),
        ({"layout": "tfrecord"}, "layout"),
        ({"n_shards": 0}, "n_shards"),
    ],
)
def test_bad_arguments_raise_config_error(tmp_path, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        make_sample(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("user data")
    with pytest.raises(ConfigError, match="new or empty"):
        make_sample(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
