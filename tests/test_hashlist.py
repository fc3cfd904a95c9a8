"""The hash-list core: list formats and their errors, PDQ's hex format, what PDQ matches on real photos (UKBench),
and exhaustive matching against a list of 1M random PDQ hashes."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from PIL import Image

from sanitize.errors import ConfigError, DataError
from sanitize.hashlist import (
    DIHEDRAL,
    PDQ_DISTANCE,
    ExactIndex,
    HashList,
    MultiIndexPdq,
    PdqIndex,
    build_index,
    hamming,
    parse_list_spec,
    pdq_bits_to_bytes,
    pdq_hashes,
    read_hash_list,
)

SHA = hashlib.sha256(b"x").hexdigest()
MD5 = hashlib.md5(b"x").hexdigest()


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


# ---- list formats ---------------------------------------------------------------------------------------------


def test_text_list_with_comments_and_blank_lines(tmp_path):
    path = write(tmp_path, "known.txt", f"# a list\n\n{SHA.upper()}  # upper case is fine\n  {SHA[::-1]}\n")
    h = read_hash_list(parse_list_spec(f"sha256:{path}"))
    assert (h.name, h.kind, len(h), h.labels) == ("known", "sha256", 2, None)
    assert h.hex(0) == SHA and h.hex(1) == SHA[::-1]
    assert h.digest == hashlib.sha256(path.read_bytes()).hexdigest()


def test_csv_list_with_labels_and_md5_inferred(tmp_path):
    path = write(tmp_path, "vendor.csv", f"Hash,label\n{MD5},series-a\n{MD5[::-1]},\n")
    h = read_hash_list(parse_list_spec(str(path)))
    assert h.kind == "md5" and h.hex(0) == MD5 and h.labels == ["series-a", None]


def test_spec_parsing():
    assert parse_list_spec("PDQ:a/b.txt").kind == "pdq" and parse_list_spec("a/b.txt").kind is None
    assert parse_list_spec("c:/x/y.txt").kind is None  # not a kind: part of the path
    with pytest.raises(ConfigError, match="names no file"):
        parse_list_spec("pdq:")


@pytest.mark.parametrize(("text", "message"), [
    (f"{SHA}\n\n{SHA[:-2]}zz\n", r"bad.txt:3: '[0-9a-f]+zz' is not a hex hash"),
    (f"{SHA}\n# c\n{SHA}0\n", r"bad.txt:3: sha256 hashes have 64 hex digits, this one has 65"),
    (f"{SHA}{SHA}\n", r"bad.txt:1: sha256 hashes have 64 hex digits, this one has 128"),
    (f"{SHA} {SHA}\n", r"bad.txt:1: .* is not a hex hash"),
    ("# only comments\n", r"bad.txt: hash list holds no hashes"),
])
def test_malformed_lines_name_file_and_line(tmp_path, text, message):
    path = write(tmp_path, "bad.txt", text)
    with pytest.raises(DataError, match=message) as e:
        read_hash_list(parse_list_spec(f"sha256:{path}"))
    assert "\n" not in str(e.value)


def test_kind_errors(tmp_path):
    path = write(tmp_path, "ambiguous.txt", f"{SHA}\n")
    with pytest.raises(ConfigError, match="may be PDQ or sha256; name the kind .* as pdq:.* or sha256:"):
        read_hash_list(parse_list_spec(str(path)))
    with pytest.raises(DataError, match=r"md5s.txt:2: md5 hashes have 32 hex digits, this one has 64"):
        read_hash_list(parse_list_spec("md5:" + str(write(tmp_path, "md5s.txt", f"{MD5}\n{SHA}\n"))))
    with pytest.raises(DataError, match=r"odd.txt:1: .* not a hash of a known kind"):
        read_hash_list(parse_list_spec(str(write(tmp_path, "odd.txt", "abc123\n"))))
    with pytest.raises(DataError, match=r"nohash.csv:1: CSV hash list has no 'hash' column"):
        read_hash_list(parse_list_spec("md5:" + str(write(tmp_path, "nohash.csv", "md5,label\n"))))
    with pytest.raises(DataError, match="missing.txt: not a readable hash list"):
        read_hash_list(parse_list_spec(f"md5:{tmp_path / 'missing.txt'}"))


# ---- PDQ ------------------------------------------------------------------------------------------------------


def test_pdq_hex_is_metas_format():
    """Bits most significant first, as ThreatExchange turns `pdqhash` output into hex."""
    bits = np.random.default_rng(0).integers(0, 2, 256)
    expected = format(int("".join(str(b) for b in bits), 2), "064x")
    assert pdq_bits_to_bytes(bits)[0].tobytes().hex() == expected


def image_bytes(path):
    return path.read_bytes()


def rgb(image):
    return np.asarray(image.convert("RGB"))


def pdq(image, dihedral=True):
    return pdq_hashes(rgb(image), dihedral=dihedral)


def distance(a, b):
    """Smallest distance between b's original hash and any of a's variants."""
    return int(hamming(a, b[0:1]).min())


@pytest.fixture
def ukbench(shared_data):
    folder = shared_data / "imagededup_ukbench"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    return folder


def test_pdq_matches_edits_of_real_photos(ukbench):
    base = Image.open(ukbench / "base_images" / "ukbench00120.jpg")
    listed, quality = pdq(base, dihedral=False)
    assert quality >= 50 and listed.shape == (1, 32)
    encoded = io.BytesIO()
    base.save(encoded, "JPEG", quality=40)
    variants = {
        "resize": Image.open(ukbench / "mixed_images" / "ukbench00120_resize.jpg"),
        "grey": Image.open(ukbench / "ukbench00120_gray.jpg"),
        "jpeg q40": Image.open(io.BytesIO(encoded.getvalue())),
        "half size": base.resize((base.width // 2, base.height // 2)),
    }
    for name, image in variants.items():
        codes, _ = pdq(image)
        assert distance(codes[:1], listed) <= PDQ_DISTANCE, name
    webp, jpg = (pdq(Image.open(p), dihedral=False)[0] for p in (ukbench / "formats_images" / "ukbench09380.webp",
                                                                   ukbench / "base_images" / "ukbench09380.jpg"))
    assert int(hamming(webp, jpg)[0]) <= PDQ_DISTANCE


def test_flips_and_rotations_match_through_the_dihedral_hashes(ukbench):
    base = Image.open(ukbench / "base_images" / "ukbench00120.jpg")
    listed, _ = pdq(base, dihedral=False)
    edits = {
        "hflip (UKBench's)": Image.open(ukbench / "mixed_images" / "ukbench00120_hflip.jpg"),
        "vflip": base.transpose(Image.Transpose.FLIP_TOP_BOTTOM),
        "rot90": base.transpose(Image.Transpose.ROTATE_90),
        "rot180": base.transpose(Image.Transpose.ROTATE_180),
        "rot270": base.transpose(Image.Transpose.ROTATE_270),
        "transpose": base.transpose(Image.Transpose.TRANSPOSE),
    }
    for name, image in edits.items():
        alone, _ = pdq(image, dihedral=False)
        assert int(hamming(alone, listed)[0]) > PDQ_DISTANCE, f"{name} matched without the dihedral hashes"
        codes, _ = pdq(image)
        assert codes.shape == (len(DIHEDRAL), 32)
        assert distance(codes, listed) <= PDQ_DISTANCE, name
    # A rotation by a small angle with cropping (UKBench's "_rotation") is not a dihedral edit: PDQ does not match
    # it, a known limit of the hash.
    tilted, _ = pdq(Image.open(ukbench / "mixed_images" / "ukbench00120_rotation.jpg"))
    assert distance(tilted, listed) > PDQ_DISTANCE


def test_other_photos_do_not_match(ukbench):
    photos = sorted((ukbench / "base_images").glob("*.jpg"))
    codes = {p.name: pdq(Image.open(p))[0] for p in photos}
    for a in photos:
        for b in photos:
            if a != b:
                assert distance(codes[a.name], codes[b.name]) > PDQ_DISTANCE, (a.name, b.name)


# ---- matching -------------------------------------------------------------------------------------------------


def test_exact_index_finds_listed_hashes_only():
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 256, (1000, 32), dtype=np.uint8)
    codes[7] = codes[3]  # listed twice: the first entry is reported
    index = ExactIndex(HashList("l", "sha256", codes, None, ""))
    queries = np.concatenate([codes[[3, 500]], rng.integers(0, 256, (5, 32), dtype=np.uint8)])
    assert [(m.query, m.entry, m.distance) for m in index.search(queries)] == [(0, 3, 0), (1, 500, 0)]
    assert index.search(np.empty((0, 32), np.uint8)) == []


def test_pdq_index_over_one_million_random_hashes_finds_the_true_ones_only(ukbench):
    rng = np.random.default_rng(2)
    photos = sorted((ukbench / "base_images").glob("*.jpg"))
    originals = np.concatenate([pdq(Image.open(p), dihedral=False)[0] for p in photos[:5]])
    codes = rng.integers(0, 256, (1_000_000, 32), dtype=np.uint8)
    where = rng.choice(len(codes), size=len(originals), replace=False)
    codes[where] = originals
    listed = HashList("big", "pdq", codes, None, "")
    index = build_index(listed)
    assert isinstance(index, MultiIndexPdq)
    # Queries: every photo's eight variants, and the listed photos' edits (mirror, resized).
    queries, owner = [], []
    for i, p in enumerate(photos):
        image = Image.open(p)
        for edit in (image, image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), image.resize((200, 150))):
            queries.append(pdq(edit)[0])
            owner += [i] * len(DIHEDRAL)
    found = {(owner[m.query], m.entry) for m in index.search(np.concatenate(queries))}
    assert found == {(i, int(where[i])) for i in range(len(originals))}
    everything = np.concatenate(queries)
    matches = sorted((m.query, m.entry, m.distance) for m in index.search(everything))
    assert matches == sorted((m.query, m.entry, m.distance) for m in PdqIndex(listed).search(everything))
    for q, entry, d in matches:  # distances are true Hamming distances
        assert d == int(hamming(everything[q], codes[entry]))


@pytest.mark.parametrize("distance", [0, 7, 15, 16, 24, 31])
def test_multi_index_hashing_finds_what_the_exhaustive_search_finds(distance):
    rng = np.random.default_rng(distance)
    codes = rng.integers(0, 256, (30_000, 32), dtype=np.uint8)
    bits = np.unpackbits(codes[:300], axis=1)
    for i in range(300):  # queries at every distance 0 … 49 from a list entry
        bits[i, rng.choice(256, size=i % 50, replace=False)] ^= 1
    queries = np.concatenate([np.packbits(bits, axis=1), rng.integers(0, 256, (100, 32), dtype=np.uint8)])
    listed = HashList("l", "pdq", codes, None, "")
    got = sorted((m.query, m.entry, m.distance) for m in MultiIndexPdq(listed, distance).search(queries))
    want = sorted((m.query, m.entry, m.distance) for m in PdqIndex(listed, distance).search(queries))
    assert got == want and len(got) >= 6 * (distance + 1)
    assert isinstance(build_index(listed, 32), PdqIndex) and isinstance(build_index(listed, distance), MultiIndexPdq)
    with pytest.raises(ValueError):
        MultiIndexPdq(listed, 32)
