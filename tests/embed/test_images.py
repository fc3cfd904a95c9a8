from __future__ import annotations

import io
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sanitize.errors import DataError
from sanitize.io.images import ImageDecodeError, TarIndex, decode_image, read_local


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def png_claiming_size(width: int, height: int) -> bytes:
    """A small valid PNG whose header is rewritten to claim width×height (a decompression bomb's header)."""
    data = bytearray(encode(Image.new("L", (8, 8)), "PNG"))
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr : ihdr + 17]))
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)


def reason_of(data: bytes, **kwargs) -> str:
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data, **kwargs)
    assert str(info.value)  # a human message beside the code
    return info.value.reason


def test_plain_rgb_jpeg_decodes():
    image = decode_image(encode(noise(40, 30), "JPEG"))
    assert (image.mode, image.size) == ("RGB", (40, 30))


def test_zero_bytes():
    assert reason_of(b"") == "empty"


def test_text_file_named_jpg():
    assert reason_of(b"this is a caption, not a picture\n" * 10) == "not_image"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file(fmt):
    data = encode(noise(160, 120), fmt)
    assert reason_of(data[: len(data) // 2]) == "truncated"


def test_cut_inside_the_header():
    data = encode(noise(160, 120), "JPEG")
    assert reason_of(data[:300]) in ("truncated", "corrupt")


def test_over_the_pixel_limit_is_rejected_before_decoding():
    data = encode(noise(100, 100), "JPEG")
    assert reason_of(data, max_pixels=100 * 100 - 1) == "too_large"
    assert decode_image(data, max_pixels=100 * 100).size == (100, 100)


@pytest.mark.parametrize("side", [10_000, 100_000])  # past our limit (Pillow warns); past Pillow's own
def test_decompression_bomb_header_costs_no_memory(side, recwarn):
    assert reason_of(png_claiming_size(side, side)) == "too_large"
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


def test_cmyk_jpeg():
    image = decode_image(encode(Image.new("CMYK", (20, 10), (0, 255, 255, 0)), "JPEG", quality=100))
    assert (image.mode, image.size) == ("RGB", (20, 10))
    r, g, b = image.getpixel((10, 5))
    assert r > 200 and g < 60 and b < 60  # pure red ink stays red


def test_la_png_is_composited_on_white():
    la = Image.new("LA", (10, 10), (0, 255))
    la.putpixel((0, 0), (0, 0))  # fully transparent black
    image = decode_image(encode(la, "PNG"))
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == (255, 255, 255)
    assert image.getpixel((5, 5)) == (0, 0, 0)


def test_rgba_half_transparent_blends_with_white():
    image = decode_image(encode(Image.new("RGBA", (4, 4), (0, 0, 0, 128)), "PNG"))
    assert all(abs(c - 127) <= 1 for c in image.getpixel((1, 1)))


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparency(fmt):
    palette_image = Image.new("P", (10, 10), 1)
    palette_image.putpalette([0, 0, 0, 255, 0, 0] + [0, 0, 0] * 254)
    palette_image.putpixel((0, 0), 0)
    data = encode(palette_image, fmt, transparency=0)
    image = decode_image(data)
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == (255, 255, 255)  # the transparent index shows the white background
    assert image.getpixel((5, 5)) == (255, 0, 0)


def test_palette_without_transparency():
    palette_image = Image.new("P", (6, 6), 1)
    palette_image.putpalette([0, 0, 0, 0, 0, 255] + [0, 0, 0] * 254)
    assert decode_image(encode(palette_image, "PNG")).getpixel((3, 3)) == (0, 0, 255)


def test_sixteen_bit_grey_is_scaled_not_clipped():
    pixels = np.array([[0, 32896, 65535]], dtype=np.uint16)
    data = encode(Image.fromarray(pixels), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    image = decode_image(data)
    assert image.mode == "RGB"
    assert [image.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_float_and_one_bit_modes():
    floats = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), mode="F")
    image = decode_image(encode(floats, "TIFF"))
    assert [image.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]
    bits = Image.new("1", (8, 8), 1)
    assert decode_image(encode(bits, "PNG")).getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    data = encode(noise(40, 20), "JPEG", exif=exif.tobytes())
    assert Image.open(io.BytesIO(data)).size == (40, 20)
    assert decode_image(data).size == (20, 40)


def test_first_frame_of_an_animation():
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert decode_image(data).getpixel((4, 4)) == (255, 0, 0)


def test_read_local(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"abc")
    assert read_local(tmp_path / "a.jpg") == b"abc"
    assert read_local(tmp_path / "missing.jpg") is None
    assert read_local(tmp_path / "a.jpg" / "below-a-file.jpg") is None


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def test_tar_index_reads_image_members_by_key(tmp_path):
    jpg, png = encode(noise(8, 8), "JPEG"), encode(noise(8, 8, seed=1), "PNG")
    path = tmp_path / "00000.tar"
    with tarfile.open(path, "w") as archive:
        _add(archive, "000000001.jpg", jpg)
        _add(archive, "000000001.txt", b"a caption")
        _add(archive, "000000001.json", b"{}")
        _add(archive, "000000002.png", png)
        _add(archive, "000000002.JPEG", jpg)  # two images for one key: .jpeg comes before .png
        _add(archive, "000000003.webp", encode(noise(8, 8), "WEBP"))
    index = TarIndex.build(path)
    assert sorted(index.members) == ["000000001", "000000002", "000000003"]
    assert index.read("000000001") == jpg
    assert index.read("000000002") == jpg
    assert decode_image(index.read("000000003")).size == (8, 8)
    assert "000000004" not in index
    with pytest.raises(KeyError):
        index.read("000000004")


def test_tar_index_errors(tmp_path):
    with pytest.raises(DataError, match="tar file not found"):
        TarIndex.build(tmp_path / "missing.tar")
    gz = tmp_path / "00000.tar"
    with tarfile.open(gz, "w:gz") as archive:
        _add(archive, "a.jpg", b"x")
    with pytest.raises(DataError, match="uncompressed tar"):
        TarIndex.build(gz)
    (tmp_path / "junk.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(DataError, match="00000.tar|junk.tar"):
        TarIndex.build(tmp_path / "junk.tar")


def test_ukbench_corrupt_jpeg(shared_data):
    for folder in ("mixed_images", "mixed_nested_images"):
        data = (shared_data / "imagededup_ukbench" / folder / "ukbench09268_corrupt.jpg").read_bytes()
        assert len(data) > 0
        assert reason_of(data) in ("not_image", "corrupt", "truncated")


def test_ukbench_format_variants_and_alpha(shared_data):
    root = shared_data / "imagededup_ukbench"
    extra = [root / "alpha_channel_image.png", root / "ukbench00120_gray.jpg"]
    paths = [*sorted((root / "formats_images").iterdir()), *extra]
    assert len(paths) >= 12
    for path in paths:
        image = decode_image(path.read_bytes())
        assert image.mode == "RGB" and min(image.size) > 0, path.name
    alpha = decode_image((root / "alpha_channel_image.png").read_bytes())
    assert alpha.size == (640, 480)


def test_ukbench_photo_with_exif_rotation(shared_data):
    path: Path = shared_data / "imagededup_ukbench" / "base_images" / "ukbench09268.jpg"
    raw = Image.open(path)
    assert raw.getexif().get(0x0112) not in (None, 1)  # this real photo carries an EXIF rotation
    assert decode_image(path.read_bytes()).size == raw.size[::-1]


@pytest.mark.parametrize(("size", "fmt", "draft", "expected"), [
    ((640, 480), "JPEG", (224, 224), (320, 240)),  # 1/2: 1/4 would be 160x120, below 224
    ((1280, 960), "JPEG", (224, 224), (320, 240)),  # 1/4
    ((4000, 3000), "JPEG", (224, 224), (500, 375)),  # 1/8 at most
    ((300, 200), "JPEG", (224, 224), (300, 200)),  # not twice the size: full decode
    ((640, 480), "PNG", (224, 224), (640, 480)),  # only JPEG decoders scale
    ((640, 480), "JPEG", None, (640, 480)),
])
def test_draft_decoding_scales_large_jpegs_never_below_the_model_input(size, fmt, draft, expected):
    buf = io.BytesIO()
    Image.new("RGB", size, (120, 30, 200)).save(buf, fmt)
    image = decode_image(buf.getvalue(), draft=draft)
    assert image.size == expected and image.mode == "RGB"
