"""Robust image decoding: bytes in, an RGB PIL image out, or an `ImageDecodeError` with a reason code.

Web-scale image sets hold every kind of broken and odd file. `decode_image` turns each into either an RGB
image the CLIP transform can take, or a short reason: `empty`, `not_image`, `truncated`, `corrupt`,
`too_large`, `unsupported_mode`. The pixel limit is checked from the header, before any pixel is decoded, so a
decompression bomb costs no memory. Global Pillow settings (`Image.MAX_IMAGE_PIXELS`,
`ImageFile.LOAD_TRUNCATED_IMAGES`) are never changed; Pillow's bomb warning is silenced only around
`Image.open`, with `warnings.catch_warnings`, which is process-wide: decode from processes (DataLoader
workers) or from one thread, not from many threads at once.

The byte sources of one shard — local files under an image root, members of an img2dataset webdataset tar —
are read here as well (`read_local`, `TarIndex`); remote URLs are never fetched.
"""

from __future__ import annotations

import io
import logging
import os
import tarfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sanitize.errors import DataError

if TYPE_CHECKING:  # Pillow loads when an image is decoded, not when DEFAULT_MAX_PIXELS is read (a config default)
    from PIL import Image

logger = logging.getLogger(__name__)

# Pillow's own default bomb limit (about 89.5 megapixels, a 0.25 GiB RGB buffer).
DEFAULT_MAX_PIXELS = 89_478_485
# Member extensions an img2dataset tar may hold an image under, in order of preference for one key.
TAR_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
_WHITE = (255, 255, 255)
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


class ImageDecodeError(Exception):
    """An image that cannot be turned into RGB pixels.

    `reason` is a short code for statistics (`empty`, `not_image`, `truncated`, `corrupt`, `too_large`,
    `unsupported_mode`); the message says more for a human.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                 draft: tuple[int, int] | None = None) -> Image.Image:
    """Decode encoded image bytes into an RGB image with EXIF orientation applied.

    `draft` (width, height): a JPEG at least twice that size in both sides is decoded at 1/2, 1/4 or 1/8 scale
    by the decoder itself (Pillow's draft mode), never below `draft`: what a model with that input size needs,
    at a fraction of the decoding cost. Other formats, and smaller JPEGs, decode at full size.

    Transparent images (RGBA, LA, P with a transparent colour, ...) are composited on white; CMYK, 1-bit,
    palette and grey images are converted; 16-bit and 32-bit grey (I;16, I) are scaled from 0..65535 to
    0..255; float grey (F) is read as 0..1 when its maximum is at most 1, else clipped to 0..255. Multi-frame
    files give their first frame. Raises ImageDecodeError; never anything else for bad bytes.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise ImageDecodeError("empty", "zero-byte file")
    try:
        with warnings.catch_warnings():
            # Pillow warns (and past twice its limit, raises) from the header; our own limit is checked just
            # below, so its warning is noise here.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError("too_large", f"over Pillow's pixel limit: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError("not_image", "not a recognised image format") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        reason = "truncated" if "truncated" in str(exc).lower() else "corrupt"
        raise ImageDecodeError(reason, f"unreadable header: {exc}") from exc

    width, height = image.size
    if width * height > max_pixels:
        raise ImageDecodeError("too_large", f"{width}x{height} = {width * height} pixels > {max_pixels}")
    if width == 0 or height == 0:
        raise ImageDecodeError("corrupt", f"empty image size {width}x{height}")
    if draft is not None and image.format == "JPEG":
        image.draft(image.mode, draft)  # mode unchanged: only the scale; to_rgb below converts as for any image
    try:
        image.load()
    except OSError as exc:
        reason = "truncated" if "truncated" in str(exc).lower() else "corrupt"
        raise ImageDecodeError(reason, f"pixel data: {exc}") from exc
    except (ValueError, SyntaxError, IndexError, EOFError) as exc:
        raise ImageDecodeError("corrupt", f"pixel data: {type(exc).__name__}: {exc}") from exc

    try:
        image = ImageOps.exif_transpose(image)
    except Exception as exc:  # broken EXIF is common and the pixels are still good
        logger.debug("EXIF orientation ignored: %s", exc)
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert a decoded image of any Pillow mode to RGB (see `decode_image` for the rules)."""
    from PIL import Image

    if image.mode == "P" or (image.mode in ("L", "RGB") and "transparency" in image.info):
        # A palette or colour key may mark one colour transparent: expand it to an alpha channel first.
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, _WHITE)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(_grey_to_uint8(np.asarray(image), mode), mode="L").convert("RGB")
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageDecodeError("unsupported_mode", f"cannot convert mode {mode} to RGB") from exc


def _grey_to_uint8(pixels: np.ndarray, mode: str) -> np.ndarray:
    # Pillow's own I;16 → RGB conversion clips at 255 (a mostly white image); scale the 16-bit range instead.
    values = pixels.astype(np.float64)
    if mode == "F":
        finite = values[np.isfinite(values)]
        if finite.size and finite.max() <= 1.0:
            values = values * 255.0
    else:
        values = values / 257.0
    return np.clip(np.nan_to_num(values), 0, 255).round().astype(np.uint8)


def read_local(path: str | os.PathLike) -> bytes | None:
    """The bytes of a local image file, or None when it does not exist (status "missing")."""
    try:
        return Path(path).read_bytes()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None


@dataclass(frozen=True)
class TarMember:
    """Where one member's bytes lie inside an uncompressed tar."""

    name: str
    offset: int
    size: int


class TarIndex:
    """The image members of one webdataset tar, indexed once: key (member name stem) → byte range.

    Reading a member opens the tar afresh and reads its byte range, so an index built in the parent process
    can be shared with DataLoader workers (a shared open file would share its position between processes).
    Only uncompressed tars (what img2dataset writes) can be read this way.
    """

    def __init__(self, tar_path: str | os.PathLike, members: dict[str, TarMember]) -> None:
        self.tar_path = Path(tar_path)
        self.members = members

    @classmethod
    def build(cls, tar_path: str | os.PathLike) -> TarIndex:
        """Index `tar_path`. Raises DataError for a missing, unreadable or compressed tar."""
        path = Path(tar_path)
        found: dict[str, dict[str, TarMember]] = {}
        try:
            with tarfile.open(path, mode="r:") as archive:
                for info in archive:
                    if not info.isfile():
                        continue
                    stem, ext = os.path.splitext(info.name)
                    ext = ext.lower()
                    if ext in TAR_IMAGE_EXTENSIONS:
                        # A later member of the same name wins, as when the tar is extracted.
                        found.setdefault(stem, {})[ext] = TarMember(info.name, info.offset_data, info.size)
        except FileNotFoundError as exc:
            raise DataError(f"{path}: tar file not found") from exc
        except (tarfile.TarError, OSError) as exc:
            raise DataError(f"{path}: not a readable uncompressed tar ({exc})") from exc
        members: dict[str, TarMember] = {}
        for stem, by_ext in found.items():
            ext = next(e for e in TAR_IMAGE_EXTENSIONS if e in by_ext)
            if len(by_ext) > 1:
                logger.warning("%s: key %s has several images %s; using %s", path, stem, sorted(by_ext), ext)
            members[stem] = by_ext[ext]
        logger.debug("%s: %d image members", path, len(members))
        return cls(path, members)

    def __contains__(self, key: str) -> bool:
        return key in self.members

    def __len__(self) -> int:
        return len(self.members)

    def read(self, key: str) -> bytes:
        """The bytes of the image member for `key` (KeyError when the tar has none)."""
        member = self.members[key]
        with open(self.tar_path, "rb") as f:
            f.seek(member.offset)
            data = f.read(member.size)
        if len(data) != member.size:
            raise ImageDecodeError("truncated", f"{self.tar_path}:{member.name}: tar ends inside the member")
        return data
