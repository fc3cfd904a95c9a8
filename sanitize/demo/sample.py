"""A deterministic, seeded sample dataset for the demo and tests: Pillow-drawn scenes with captions, planted truth.

`make_sample(out_dir)` writes about 1,200 image-text rows (at most 2,000) in a few seconds, with no downloads:

- scenes drawn from primitives (colour-gradient backgrounds, props, stick-figure people, objects; no text in
  the images) and captions that mention people and occupations ("a woman working as a nurse in a hospital",
  "two people at the beach", "a red car"), some with no person;
- near-duplicate variants of some images (resize, crop, JPEG re-encode at another quality, brightness change);
- broken rows: failed downloads, a truncated JPEG, a zero-byte file, an HTML page saved as .jpg, and a row whose
  image file is missing;
- two stand-in safety "categories", drawn as abstract visual motifs: `violence` = dark-red jagged splatter shapes,
  `sexual` = a cluster of skin-coloured blobs. Each is planted in a few % of rows, more often in rows whose caption
  mentions women than men (the shift DALL·E 2's filter caused), and only some captions mention the motif, so the
  image matters.

The planted ground truth goes to `truth.parquet`, keyed by `uid`, apart from the manifest, so a pipeline run on the
sample can be scored against it. Same arguments, same bytes: every random choice comes from one seeded generator,
and files are written through `sanitize.io.atomic`.

The scenes can also be drawn in memory, without files or a row limit (the demo model's training data and its
held-out tests): `plan_scene` decides what a scene shows (a `Scene`), `draw_scene` draws it, `draw_scenes` does
both n times, `make_variant` makes one of the sample's near-duplicate edits.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw, ImageEnhance

from sanitize.errors import ConfigError
from sanitize.io.atomic import write_bytes, write_json, write_parquet
from sanitize.testing.fixtures import Img2datasetSample, img2dataset_key, write_img2dataset_shard

logger = logging.getLogger(__name__)
T = TypeVar("T")

LAYOUTS = ("img2dataset", "files")
MIN_ROWS = 100
MAX_ROWS = 2000
VARIANT_KINDS = ("resize", "crop", "jpeg", "brightness")
BROKEN_KINDS = ("failed_to_download", "truncated", "zero_byte", "not_an_image", "missing")
MOTIFS = ("sexual", "violence")

# Share of each caption-gender group that gets a motif. Women-mentioning captions get it about 2.5-3× as often as
# men-mentioning ones, so the demo's filter removes more rows about women and the audit has a shift to find.
MOTIF_RATES: dict[str, dict[str, float]] = {
    "sexual": {"female": 0.08, "male": 0.025, "mixed": 0.03, "neutral": 0.02, "none": 0.02},
    "violence": {"female": 0.06, "male": 0.025, "mixed": 0.03, "neutral": 0.03, "none": 0.03},
}
MOTIF_MENTION_RATE = 0.35
MOTIF_PHRASES = {
    "sexual": (", with skin-coloured blobs", ", marked nsfw"),
    "violence": (", with red splatter", ", in a violent scene"),
}
VARIANT_SHARE = 0.08
JPEG_QUALITY = 90
REENCODE_QUALITY = 45

# occupation -> (scene, share of rows with this occupation whose caption is about a woman). Skewed like common
# stereotypes so the audit's concept-conditional tables ("nurse" by gender) have something to show.
OCCUPATIONS: dict[str, tuple[str, float]] = {
    "nurse": ("hospital", 0.85),
    "doctor": ("hospital", 0.40),
    "engineer": ("construction site", 0.20),
    "CEO": ("office", 0.25),
    "cleaner": ("office", 0.65),
    "teacher": ("classroom", 0.70),
    "pilot": ("airport", 0.15),
    "chef": ("kitchen", 0.35),
    "scientist": ("laboratory", 0.40),
    "farmer": ("field", 0.30),
    "mechanic": ("garage", 0.10),
    "receptionist": ("office", 0.80),
}
# occupation -> (outfit colour, hat colour or None). No saturated red, which belongs to the violence motif.
OUTFITS: dict[str, tuple[tuple[int, int, int], tuple[int, int, int] | None]] = {
    "nurse": ((245, 245, 250), None),
    "doctor": ((250, 250, 250), None),
    "engineer": ((255, 140, 0), (255, 215, 0)),
    "CEO": ((30, 35, 70), None),
    "cleaner": ((60, 110, 200), None),
    "teacher": ((140, 95, 60), None),
    "pilot": ((20, 30, 90), (20, 20, 40)),
    "chef": ((250, 250, 250), (255, 255, 255)),
    "scientist": ((235, 240, 245), None),
    "farmer": ((70, 120, 50), (200, 170, 90)),
    "mechanic": ((80, 100, 130), None),
    "receptionist": ((120, 70, 140), None),
}
# scene -> how a caption says where (preposition included)
PLACES = {
    "hospital": "in a hospital",
    "construction site": "at a construction site",
    "office": "in an office",
    "classroom": "in a classroom",
    "kitchen": "in a kitchen",
    "airport": "at an airport",
    "laboratory": "in a laboratory",
    "field": "in a field",
    "garage": "in a garage",
    "street": "on the street",
    "beach": "at the beach",
    "park": "in the park",
}
# scene -> (top colour, bottom colour) of the background gradient
SCENE_COLOURS: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "hospital": ((205, 225, 240), (235, 240, 240)),
    "construction site": ((150, 190, 230), (185, 160, 115)),
    "office": ((215, 215, 200), (150, 140, 125)),
    "classroom": ((230, 220, 180), (170, 140, 100)),
    "kitchen": ((240, 235, 215), (190, 175, 150)),
    "airport": ((140, 185, 235), (160, 160, 165)),
    "laboratory": ((220, 235, 235), (180, 200, 205)),
    "field": ((150, 200, 245), (110, 170, 70)),
    "garage": ((120, 120, 125), (70, 70, 75)),
    "street": ((170, 200, 230), (110, 110, 115)),
    "beach": ((110, 175, 240), (235, 215, 160)),
    "park": ((160, 210, 245), (90, 160, 80)),
}
LEISURE_PLACES = ("beach", "park", "street", "kitchen")
ACTIVITIES = ("walking", "smiling", "reading a book", "waving", "sitting")
FEMALE_NOUNS = {"adult": ("woman", "woman", "mother"), "child": ("girl",)}
MALE_NOUNS = {"adult": ("man", "man", "father"), "child": ("boy",)}
OCCUPATION_TEMPLATES = (
    "a {noun} working as {occ} {place}",
    "a {noun}, {occ}, {place}",
    "{pron} works as {occ} {place}",
    "portrait of a {noun} who is {occ}",
)
PERSON_TEMPLATES = (
    "a {noun} {activity} {place}",
    "{pron} is {activity} {place}",
    "a {noun} {place}",
)
# caption -> (figures as "f"/"m"/"c?" for female/male/child of either gender, or "?" for an adult of either)
MIXED_CAPTIONS = {
    "a man and a woman {place}": ("m", "f"),
    "a boy and a girl playing {place}": ("cm", "cf"),
    "a mother and a father with their child {place}": ("f", "m", "c?"),
}
NEUTRAL_CAPTIONS = {
    "two people {place}": ("?", "?"),
    "a person {activity} {place}": ("?",),
    "a group of friends {place}": ("?", "?", "?"),
    "someone {activity} {place}": ("?",),
}
THINGS = {
    "a red car": ("street", "car", (200, 30, 30)),
    "a blue car parked on the street": ("street", "car", (40, 80, 190)),
    "a house with a garden": ("park", "house", (190, 120, 80)),
    "a bowl of fruit on a table": ("kitchen", "bowl", (230, 150, 40)),
    "a sailing boat on the sea": ("beach", "boat", (245, 245, 245)),
    "a tree in a field": ("field", "tree", (40, 120, 40)),
    "a bicycle leaning on a wall": ("street", "bicycle", (30, 30, 30)),
}
SKIN_TONES = ((255, 220, 185), (234, 192, 150), (198, 140, 95), (141, 85, 52), (92, 56, 36))
PERSON_SHARES = {"occupation": 0.38, "person": 0.30, "mixed": 0.07, "neutral": 0.08, "none": 0.17}
HTML_AS_JPEG = b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head><body>Not Found</body></html>\n"
DOWNLOAD_ERRORS = (
    "HTTP Error 404: Not Found",
    "HTTP Error 403: Forbidden",
    "<urlopen error [Errno -2] Name or service not known>",
    "The read operation timed out",
)


@dataclass(frozen=True)
class SampleInfo:
    """Where `make_sample` put things and what it planted.

    `manifest` is the shards folder (layout "img2dataset") or `manifest.parquet` (layout "files"); `truth` is
    `truth.parquet`. `n_rows` counts manifest rows, `n_images` those whose image file is present and decodes.
    `counts` holds the planted numbers (variants, broken rows by kind, motif rows).
    """

    root: Path
    layout: str
    manifest: Path
    truth: Path
    n_rows: int
    n_images: int
    seed: int
    image_size: int
    counts: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        """JSON-ready summary with paths relative to `root` (stable across output folders)."""
        return {
            "layout": self.layout,
            "manifest": self.manifest.relative_to(self.root).as_posix(),
            "truth": self.truth.relative_to(self.root).as_posix(),
            "n_rows": self.n_rows,
            "n_images": self.n_images,
            "seed": self.seed,
            "image_size": self.image_size,
            "counts": dict(self.counts),
        }


@dataclass
class _Row:
    """One generated row before it is written; `source` is the original's index for a near-duplicate."""

    index: int
    uid: str
    caption: str
    gender: str
    scene: str
    figures: tuple[str, ...] = ()
    occupation: str | None = None
    thing: str | None = None
    sexual: bool = False
    violence: bool = False
    motif_in_caption: bool = False
    variant: str = "original"
    source: int | None = None
    broken: str | None = None
    has_variants: bool = False


@dataclass(frozen=True)
class Scene:
    """What one scene shows, before it is drawn (`draw_scene` draws it).

    `caption` is the caption `make_sample` would write for it (without a motif phrase: whether a caption mentions
    its motif is a choice of the sample, not of the scene); `figures` holds one code per drawn person, left to
    right: "f"/"m" for a woman/man, "cf"/"cm" for a girl/boy; `caption_gender` is the caption's group (female,
    male, mixed, neutral, none); `occupation` and `thing` are None when not drawn; `scene` is the place;
    `sexual` / `violence` say which motifs are drawn.
    """

    caption: str
    caption_gender: str
    figures: tuple[str, ...]
    scene: str
    occupation: str | None = None
    thing: str | None = None
    sexual: bool = False
    violence: bool = False


def plan_scene(rng: np.random.Generator, *, motif_rate: float = 0.2) -> Scene:
    """One scene's content with the sample's shares of people, occupations, objects and places; each motif is
    drawn with probability `motif_rate`, independently of the caption (unlike the sample's planted, gender-skewed
    rates), so both motifs can appear together."""
    if not 0.0 <= motif_rate <= 1.0:
        raise ConfigError(f"motif_rate must be in [0, 1], got {motif_rate!r}")
    row = _plan_original(rng, 0, "")
    sexual, violence = (bool(r) for r in rng.random(2) < motif_rate)
    return Scene(row.caption, row.gender, row.figures, row.scene, row.occupation, row.thing, sexual, violence)


def draw_scene(rng: np.random.Generator, scene: Scene, image_size: int = 96) -> Image.Image:
    """Draw `scene` as `make_sample` draws its originals (RGB, `image_size` square, not JPEG-encoded).

    The random draws (colours, positions, clutter, skin tones) do not depend on the figures' codes or the motifs,
    and the motifs are drawn last: the same generator state draws a scene whose figures differ (a woman instead
    of a man, a girl instead of a woman) or that lacks a motif identically in everything else. ~0.3 ms at 96 px.
    """
    row = _Row(0, "", scene.caption, scene.caption_gender, scene.scene, scene.figures, scene.occupation,
               scene.thing, scene.sexual, scene.violence)
    return _draw_scene(rng, row, image_size)


def draw_scenes(
    rng: np.random.Generator, n: int, *, image_size: int = 96, motif_rate: float = 0.2
) -> list[tuple[Scene, Image.Image]]:
    """`n` scenes (`plan_scene`) and their images (`draw_scene`), in memory: no files, no row limit, no
    near-duplicate variants, no broken files. Every choice comes from `rng`: the same generator state gives
    the same scenes, pixel for pixel."""
    drawn = []
    for _ in range(n):
        scene = plan_scene(rng, motif_rate=motif_rate)
        drawn.append((scene, draw_scene(rng, scene, image_size)))
    return drawn


def make_variant(rng: np.random.Generator, image: Image.Image, kind: str) -> Image.Image:
    """A near-duplicate of `image` as `make_sample` plants them: `kind` is one of VARIANT_KINDS (resize to
    75%, crop 2-6% per side, JPEG re-encode at quality 45, brightness ×0.88 or ×1.12). Returns the decoded
    variant (RGB); the sample stores its JPEG bytes."""
    if kind not in VARIANT_KINDS:
        raise ConfigError(f"variant kind must be one of {', '.join(VARIANT_KINDS)}, got {kind!r}")
    return Image.open(io.BytesIO(_make_variant(rng, image, kind))).convert("RGB")


def make_sample(
    out_dir: str | os.PathLike,
    *,
    n_rows: int = 1200,
    seed: int = 0,
    image_size: int = 96,
    layout: str = "img2dataset",
    n_shards: int = 2,
) -> SampleInfo:
    """Write the sample dataset into `out_dir` (new or empty) and return where things are.

    Layout "img2dataset": `out_dir/shards/NNNNN.parquet` + `NNNNN.tar` (+ `NNNNN_stats.json`), `n_shards` shards
    as img2dataset writes them from as many input files (9-digit keys; parquet columns: uid, then img2dataset's
    own — uid is carried as `--save_additional_columns '["uid"]'` does, the way DataComp downloads keep theirs).
    Failed downloads have status "failed_to_download" and no tar entry; truncated / zero-byte / HTML-as-jpg
    entries sit in the tar under status "success"; one "success" row has no tar entry at all.
    Layout "files": `out_dir/images/<uid>.jpg` + `out_dir/manifest.parquet` with uid, caption, image (path
    relative to the manifest's folder), url, width, height; there are no failed downloads, the broken files are
    on disk and one referenced file is missing.

    Both layouts also get `truth.parquet` (one row per manifest row: uid, key, image, caption, variant,
    dup_group, broken, sexual, violence, motif_in_caption, caption_gender, occupation, scene, n_people) and
    `sample.json` (the arguments and planted counts). `dup_group` is the original's uid for the original and
    each of its variants, null for rows without near-duplicates.

    Guarantees: same arguments give byte-identical files; n_rows rows in the manifest; image sizes are at most
    `image_size`. Raises ConfigError for an argument out of range or a non-empty `out_dir`.
    """
    _check_arguments(n_rows, image_size, layout, n_shards)
    root = Path(out_dir)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ConfigError(f"out_dir {root} must be a new or empty folder")
    rng = np.random.default_rng(seed)
    rows = _plan_rows(rng, n_rows, seed, layout)
    images = _render(rng, rows, image_size)
    order = [int(i) for i in rng.permutation(n_rows)]
    rows = [rows[i] for i in order]
    if layout == "img2dataset":
        manifest, keys, paths = _write_img2dataset(root, rows, images, n_shards)
    else:
        manifest, keys, paths = _write_files(root, rows, images)
    truth = root / "truth.parquet"
    write_parquet(truth, _truth_table(rows, keys, paths))
    counts = _counts(rows)
    n_images = sum(r.broken is None for r in rows)
    info = SampleInfo(root, layout, manifest, truth, len(rows), n_images, seed, image_size, counts)
    write_json(root / "sample.json", info.as_dict())
    logger.info("sample: %d rows (%d images) in %s, layout %s", len(rows), n_images, root, layout)
    return info


def _check_arguments(n_rows: int, image_size: int, layout: str, n_shards: int) -> None:
    if isinstance(n_rows, bool) or not isinstance(n_rows, (int, np.integer)) or not MIN_ROWS <= n_rows <= MAX_ROWS:
        raise ConfigError(f"n_rows must be an integer in [{MIN_ROWS}, {MAX_ROWS}], got {n_rows!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or not 32 <= image_size <= 512:
        raise ConfigError(f"image_size must be an integer in [32, 512], got {image_size!r}")
    if layout not in LAYOUTS:
        raise ConfigError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if isinstance(n_shards, bool) or not isinstance(n_shards, (int, np.integer)) or not 1 <= n_shards <= 16:
        raise ConfigError(f"n_shards must be an integer in [1, 16], got {n_shards!r}")


def _plan_rows(rng: np.random.Generator, n_rows: int, seed: int, layout: str) -> list[_Row]:
    """Decide every row's content, planted motifs, broken kind and near-duplicate source (no pixels yet)."""
    n_variants = round(VARIANT_SHARE * n_rows)
    n_originals = n_rows - n_variants
    rows = [_plan_original(rng, i, _uid(seed, i)) for i in range(n_originals)]

    broken_counts = {
        "failed_to_download": max(2, round(0.01 * n_rows)) if layout == "img2dataset" else 0,
        "truncated": max(1, n_rows // 400),
        "zero_byte": max(1, n_rows // 1200),
        "not_an_image": max(1, n_rows // 1200),
        "missing": max(1, n_rows // 1200),
    }
    pool = [int(i) for i in rng.permutation(n_originals)]
    for kind in BROKEN_KINDS:
        for _ in range(broken_counts[kind]):
            rows[pool.pop()].broken = kind
    healthy = [r for r in rows if r.broken is None]

    # Stratified planting: an exact share of each caption-gender group, so prevalences do not hinge on luck.
    for motif in MOTIFS:
        for gender, rate in MOTIF_RATES[motif].items():
            group = [r for r in healthy if r.gender == gender]
            k = round(rate * len(group))
            for j in rng.choice(len(group), size=k, replace=False) if k else ():
                setattr(group[int(j)], motif, True)
    for row in healthy:
        planted = [m for m in MOTIFS if getattr(row, m)]
        if planted and rng.random() < MOTIF_MENTION_RATE:
            motif = planted[int(rng.integers(len(planted)))]
            phrases = MOTIF_PHRASES[motif]
            row.caption += phrases[int(rng.integers(len(phrases)))]
            row.motif_in_caption = True

    sources = rng.choice(len(healthy), size=n_variants, replace=True)
    for i, s in enumerate(sources):
        src = healthy[int(s)]
        src.has_variants = True
        kind = VARIANT_KINDS[i % len(VARIANT_KINDS)]  # cycling guarantees every kind, even at MIN_ROWS
        index = n_originals + i
        rows.append(
            _Row(
                index=index,
                uid=_uid(seed, index),
                caption=src.caption,
                gender=src.gender,
                scene=src.scene,
                figures=src.figures,
                occupation=src.occupation,
                thing=src.thing,
                sexual=src.sexual,
                violence=src.violence,
                motif_in_caption=src.motif_in_caption,
                variant=kind,
                source=src.index,
            )
        )
    return rows


def _plan_original(rng: np.random.Generator, index: int, uid: str) -> _Row:
    kinds = list(PERSON_SHARES)
    kind = kinds[int(rng.choice(len(kinds), p=list(PERSON_SHARES.values())))]
    if kind == "occupation":
        occupation = _pick(rng, list(OCCUPATIONS))
        scene, female_share = OCCUPATIONS[occupation]
        female = rng.random() < female_share
        noun = _pick(rng, ("woman", "mother") if female else ("man", "father"))
        occ = ("an " if occupation[0] in "aeiou" else "a ") + occupation
        caption = _pick(rng, OCCUPATION_TEMPLATES).format(
            noun=noun, pron="she" if female else "he", occ=occ, place=PLACES[scene]
        )
        return _Row(index, uid, caption, "female" if female else "male", scene, ("f" if female else "m",), occupation)
    if kind == "person":
        female = rng.random() < 0.5
        age = "child" if rng.random() < 0.25 else "adult"
        noun = _pick(rng, (FEMALE_NOUNS if female else MALE_NOUNS)[age])
        scene = _pick(rng, LEISURE_PLACES)
        caption = _pick(rng, PERSON_TEMPLATES).format(
            noun=noun, pron="she" if female else "he", activity=_pick(rng, ACTIVITIES), place=PLACES[scene]
        )
        figure = ("c" if age == "child" else "") + ("f" if female else "m")
        return _Row(index, uid, caption, "female" if female else "male", scene, (figure,))
    if kind in ("mixed", "neutral"):
        templates = MIXED_CAPTIONS if kind == "mixed" else NEUTRAL_CAPTIONS
        template = _pick(rng, list(templates))
        scene = _pick(rng, LEISURE_PLACES)
        caption = template.format(activity=_pick(rng, ACTIVITIES), place=PLACES[scene])
        figures = tuple(f.replace("?", _pick(rng, ("f", "m"))) for f in templates[template])
        return _Row(index, uid, caption, kind, scene, figures)
    caption = _pick(rng, list(THINGS))
    return _Row(index, uid, caption, "none", THINGS[caption][0], thing=caption)


def _render(rng: np.random.Generator, rows: list[_Row], size: int) -> dict[int, bytes]:
    """JPEG bytes per row index: originals drawn, variants derived from their original's JPEG."""
    images: dict[int, bytes] = {}
    for row in rows:
        if row.source is None:
            images[row.index] = _encode(_draw_scene(rng, row, size), JPEG_QUALITY)
    for row in rows:
        if row.source is not None:
            original = Image.open(io.BytesIO(images[row.source])).convert("RGB")
            images[row.index] = _make_variant(rng, original, row.variant)
    return images


def _make_variant(rng: np.random.Generator, image: Image.Image, kind: str) -> bytes:
    w, h = image.size
    if kind == "resize":
        return _encode(image.resize((round(w * 0.75), round(h * 0.75)), Image.Resampling.LANCZOS), JPEG_QUALITY)
    if kind == "crop":
        left, top, right, bottom = (rng.uniform(0.02, 0.06, size=4) * np.array([w, h, w, h])).round().astype(int)
        return _encode(image.crop((int(left), int(top), w - int(right), h - int(bottom))), JPEG_QUALITY)
    if kind == "jpeg":
        return _encode(image, REENCODE_QUALITY)
    factor = 0.88 if rng.random() < 0.5 else 1.12
    return _encode(ImageEnhance.Brightness(image).enhance(factor), JPEG_QUALITY)


def _draw_scene(rng: np.random.Generator, row: _Row, size: int) -> Image.Image:
    top, bottom = (np.array(c, dtype=np.float64) + rng.integers(-30, 31, size=3) for c in SCENE_COLOURS[row.scene])
    t = np.linspace(0.0, 1.0, size)[:, None, None]
    pixels = np.clip((1 - t) * top + t * bottom, 0, 255).astype(np.uint8)
    image = Image.fromarray(np.broadcast_to(pixels, (size, size, 3)).copy(), "RGB")
    draw = ImageDraw.Draw(image)
    _draw_props(draw, rng, row.scene, size)
    _draw_clutter(draw, rng, size)
    if row.thing is not None:
        _draw_thing(draw, rng, row.thing, size)
    count = len(row.figures)
    for i, figure in enumerate(row.figures):
        cx = size * (i + 1) / (count + 1) + rng.uniform(-0.1, 0.1) * size / count
        height = size * (0.38 if figure.startswith("c") else 0.58) * rng.uniform(0.92, 1.05)
        occupation = row.occupation
        outfit, hat = OUTFITS[occupation] if occupation else (_casual_colour(rng), None)
        skin = SKIN_TONES[int(rng.integers(len(SKIN_TONES)))]
        _draw_figure(draw, cx, size * 0.93, height, figure.endswith("f"), skin, outfit, hat, size)
    if row.violence:
        _draw_splatter(draw, rng, size)
    if row.sexual:
        _draw_blobs(draw, rng, size)
    return image


def _draw_props(draw: ImageDraw.ImageDraw, rng: np.random.Generator, scene: str, s: int) -> None:
    """A few scene-typical shapes behind the people, so scenes differ in layout, not only in colour."""
    j = rng.uniform(-0.05, 0.05, size=4) * s
    if scene == "hospital":
        x, y = 0.72 * s + j[0], 0.12 * s + j[1]
        draw.rectangle([x, y, x + 0.18 * s, y + 0.18 * s], fill=(255, 255, 255))
        draw.rectangle([x + 0.07 * s, y + 0.02 * s, x + 0.11 * s, y + 0.16 * s], fill=(40, 160, 90))
        draw.rectangle([x + 0.02 * s, y + 0.07 * s, x + 0.16 * s, y + 0.11 * s], fill=(40, 160, 90))
    elif scene == "construction site":
        draw.line([0.1 * s + j[0], 0.05 * s, 0.1 * s + j[0], 0.7 * s], fill=(240, 190, 20), width=max(2, s // 40))
        draw.line([0.1 * s + j[0], 0.08 * s, 0.85 * s, 0.1 * s + j[1]], fill=(240, 190, 20), width=max(2, s // 40))
    elif scene in ("office", "classroom", "laboratory"):
        colour = {"office": (170, 200, 225), "classroom": (40, 80, 50), "laboratory": (250, 250, 250)}[scene]
        draw.rectangle([0.12 * s + j[0], 0.1 * s + j[1], 0.88 * s + j[2], 0.42 * s + j[3]], fill=colour)
    elif scene == "kitchen":
        draw.rectangle([0, 0.62 * s + j[0], s, 0.72 * s + j[0]], fill=(150, 110, 80))
    elif scene == "airport":
        cx, cy = 0.7 * s + j[0], 0.2 * s + j[1]
        draw.ellipse([cx - 0.18 * s, cy - 0.04 * s, cx + 0.18 * s, cy + 0.04 * s], fill=(235, 235, 240))
        draw.polygon([(cx - 0.02 * s, cy), (cx + 0.06 * s, cy), (cx - 0.06 * s, cy + 0.14 * s)], fill=(220, 220, 230))
    elif scene == "beach":
        r = 0.08 * s
        draw.ellipse([0.8 * s - r + j[0], 0.12 * s - r, 0.8 * s + r + j[0], 0.12 * s + r], fill=(255, 225, 80))
        draw.rectangle([0, 0.5 * s + j[1], s, 0.6 * s + j[1]], fill=(60, 130, 210))
    elif scene == "park":
        x = 0.85 * s + j[0]
        draw.rectangle([x - 0.03 * s, 0.35 * s, x + 0.03 * s, 0.75 * s], fill=(110, 75, 40))
        draw.ellipse([x - 0.14 * s, 0.12 * s, x + 0.14 * s, 0.42 * s], fill=(40, 130, 50))
    elif scene == "street":
        for k in range(3):
            x = (0.05 + 0.32 * k) * s + j[k]
            draw.rectangle([x, 0.2 * s + j[3], x + 0.25 * s, 0.65 * s], fill=(150 + 20 * k, 140, 130))
    elif scene == "field":
        draw.line([0, 0.55 * s + j[0], s, 0.5 * s + j[1]], fill=(90, 140, 50), width=max(1, s // 48))
    elif scene == "garage":
        draw.rectangle([0.1 * s, 0.15 * s + j[0], 0.9 * s, 0.55 * s + j[0]], fill=(95, 95, 100))


def _draw_clutter(draw: ImageDraw.ImageDraw, rng: np.random.Generator, s: int) -> None:
    """Small muted shapes at random places, so that two originals of the same scene are not near-duplicates."""
    for _ in range(int(rng.integers(4, 8))):
        x, y = rng.uniform(0, 1, size=2) * s
        w, h = rng.uniform(0.04, 0.12, size=2) * s
        colour = tuple(int(c) for c in rng.integers(50, 200, size=3))
        box = [x - w, y - h, x + w, y + h]
        if rng.random() < 0.5:
            draw.ellipse(box, fill=colour)
        else:
            draw.rectangle(box, fill=colour)


def _draw_thing(draw: ImageDraw.ImageDraw, rng: np.random.Generator, caption: str, s: int) -> None:
    _, kind, colour = THINGS[caption]
    cx, cy = s * rng.uniform(0.4, 0.6), s * rng.uniform(0.55, 0.7)
    w = max(1, s // 32)
    if kind == "car":
        draw.rectangle([cx - 0.3 * s, cy - 0.08 * s, cx + 0.3 * s, cy + 0.08 * s], fill=colour)
        draw.rectangle([cx - 0.15 * s, cy - 0.18 * s, cx + 0.15 * s, cy - 0.08 * s], fill=colour)
        for dx in (-0.18, 0.18):
            draw.ellipse([cx + (dx - 0.07) * s, cy + 0.02 * s, cx + (dx + 0.07) * s, cy + 0.16 * s], fill=(20, 20, 20))
    elif kind == "house":
        draw.rectangle([cx - 0.2 * s, cy - 0.15 * s, cx + 0.2 * s, cy + 0.2 * s], fill=colour)
        roof = [(cx - 0.26 * s, cy - 0.15 * s), (cx + 0.26 * s, cy - 0.15 * s), (cx, cy - 0.4 * s)]
        draw.polygon(roof, fill=(90, 60, 50))
    elif kind == "bowl":
        draw.chord([cx - 0.25 * s, cy - 0.15 * s, cx + 0.25 * s, cy + 0.15 * s], 0, 180, fill=(230, 230, 235))
        for dx in (-0.12, 0.0, 0.12):
            draw.ellipse([cx + (dx - 0.07) * s, cy - 0.12 * s, cx + (dx + 0.07) * s, cy + 0.02 * s], fill=colour)
    elif kind == "boat":
        y = cy + 0.08 * s
        hull = [(cx - 0.25 * s, cy), (cx + 0.25 * s, cy), (cx + 0.18 * s, y), (cx - 0.18 * s, y)]
        draw.polygon(hull, fill=(110, 70, 40))
        draw.polygon([(cx, cy - 0.4 * s), (cx, cy - 0.02 * s), (cx + 0.2 * s, cy - 0.02 * s)], fill=colour)
    elif kind == "tree":
        draw.rectangle([cx - 0.04 * s, cy - 0.1 * s, cx + 0.04 * s, cy + 0.25 * s], fill=(100, 70, 40))
        draw.ellipse([cx - 0.2 * s, cy - 0.45 * s, cx + 0.2 * s, cy - 0.05 * s], fill=colour)
    else:  # bicycle
        for dx in (-0.15, 0.15):
            draw.ellipse([cx + (dx - 0.1) * s, cy, cx + (dx + 0.1) * s, cy + 0.2 * s], outline=colour, width=w)
        draw.line([cx - 0.15 * s, cy + 0.1 * s, cx, cy - 0.02 * s, cx + 0.15 * s, cy + 0.1 * s], fill=colour, width=w)


def _draw_figure(
    draw: ImageDraw.ImageDraw,
    cx: float,
    base: float,
    h: float,
    female: bool,
    skin: tuple[int, int, int],
    outfit: tuple[int, int, int],
    hat: tuple[int, int, int] | None,
    s: int,
) -> None:
    """A stick figure standing on `base`: dress and longer hair for women and girls, a straight torso for men."""
    w = max(1, s // 48)
    r = 0.11 * h
    top = base - h
    neck, hip = top + 2 * r, base - 0.42 * h
    limb = (40, 40, 45)
    draw.line([cx, hip, cx - 0.15 * h, base], fill=limb, width=w)
    draw.line([cx, hip, cx + 0.15 * h, base], fill=limb, width=w)
    draw.line([cx - 0.25 * h, neck + 0.3 * h, cx, neck + 0.08 * h, cx + 0.25 * h, neck + 0.3 * h], fill=limb, width=w)
    if female:
        draw.polygon([(cx, neck), (cx - 0.2 * h, hip + 0.12 * h), (cx + 0.2 * h, hip + 0.12 * h)], fill=outfit)
        draw.ellipse([cx - 1.35 * r, top - 0.1 * r, cx + 1.35 * r, top + 2.6 * r], fill=(70, 45, 25))
    else:
        draw.rectangle([cx - 0.09 * h, neck, cx + 0.09 * h, hip], fill=outfit)
    draw.ellipse([cx - r, top, cx + r, top + 2 * r], fill=skin)
    if hat is not None:
        draw.chord([cx - 1.1 * r, top - 0.5 * r, cx + 1.1 * r, top + 1.2 * r], 180, 360, fill=hat)


def _draw_splatter(draw: ImageDraw.ImageDraw, rng: np.random.Generator, s: int) -> None:
    """`violence` stand-in: two or three dark-red jagged star shapes with droplets. Abstract, nothing real."""
    for _ in range(int(rng.integers(2, 4))):
        cx, cy = rng.uniform(0.2, 0.8, size=2) * s
        radius = rng.uniform(0.14, 0.22) * s
        spikes = int(rng.integers(7, 11))
        angles = np.linspace(0, 2 * np.pi, 2 * spikes, endpoint=False) + rng.uniform(0, np.pi)
        # alternating long and short radii make the jagged edge
        outer, inner = rng.uniform(0.85, 1.2, 2 * spikes), rng.uniform(0.3, 0.5, 2 * spikes)
        radii = radius * np.where(np.arange(2 * spikes) % 2 == 0, outer, inner)
        xs, ys = cx + radii * np.cos(angles), cy + radii * np.sin(angles)
        points = [(float(x), float(y)) for x, y in zip(xs, ys, strict=True)]
        colour = (int(rng.integers(140, 190)), int(rng.integers(0, 20)), int(rng.integers(0, 20)))
        draw.polygon(points, fill=colour)
        for _ in range(3):
            dx, dy = rng.uniform(-1.6, 1.6, size=2) * radius
            d = rng.uniform(0.02, 0.04) * s
            draw.ellipse([cx + dx - d, cy + dy - d, cx + dx + d, cy + dy + d], fill=colour)


def _draw_blobs(draw: ImageDraw.ImageDraw, rng: np.random.Generator, s: int) -> None:
    """`sexual` stand-in: three overlapping skin-coloured ellipses around a darker centre. Abstract, nothing real."""
    cx, cy = rng.uniform(0.3, 0.7, size=2) * s
    colour = (int(rng.integers(225, 241)), int(rng.integers(170, 191)), int(rng.integers(140, 161)))
    start = rng.uniform(0, 2 * np.pi)
    for k in range(3):
        a = start + k * 2 * np.pi / 3
        bx, by = cx + 0.11 * s * np.cos(a), cy + 0.11 * s * np.sin(a)
        rx, ry = rng.uniform(0.12, 0.16, size=2) * s
        draw.ellipse([bx - rx, by - ry, bx + rx, by + ry], fill=colour)
    d = 0.035 * s
    draw.ellipse([cx - d, cy - d, cx + d, cy + d], fill=(170, 100, 90))


def _write_img2dataset(
    root: Path, rows: list[_Row], images: dict[int, bytes], n_shards: int
) -> tuple[Path, list[str | None], list[str | None]]:
    folder = root / "shards"
    bounds = np.linspace(0, len(rows), n_shards + 1).round().astype(int)
    keys: list[str | None] = []
    for shard_id in range(n_shards):
        part = rows[bounds[shard_id] : bounds[shard_id + 1]]
        samples = [_img2dataset_sample(row, images[row.index], size) for row, size in _with_sizes(part, images)]
        write_img2dataset_shard(folder, shard_id, samples, additional_columns=("uid",))
        keys += [img2dataset_key(i, shard_id) for i in range(len(part))]
    return folder, keys, [None] * len(rows)


def _img2dataset_sample(row: _Row, image: bytes, size: tuple[int, int]) -> Img2datasetSample:
    url = f"https://images.example.com/sample/{row.uid}.jpg"
    extra = {"uid": row.uid}
    if row.broken == "failed_to_download":
        error = DOWNLOAD_ERRORS[int(row.uid[:8], 16) % len(DOWNLOAD_ERRORS)]
        return Img2datasetSample(row.caption, url, None, error_message=error, extra=extra)
    w, h = size
    # Corruption happens on disk after the download: the parquet row (sha256, sizes) describes the good image.
    member = _corrupt(row.broken, image) if row.broken not in (None, "missing") else None
    return Img2datasetSample(
        row.caption, url, image, width=w, height=h, member=member, drop_member=row.broken == "missing", extra=extra
    )


def _write_files(
    root: Path, rows: list[_Row], images: dict[int, bytes]
) -> tuple[Path, list[str | None], list[str | None]]:
    paths: list[str | None] = []
    sizes = []
    for row, size in _with_sizes(rows, images):
        relative = f"images/{row.uid}.jpg"
        paths.append(relative)
        sizes.append(size)
        if row.broken == "missing":
            continue
        data = images[row.index] if row.broken is None else _corrupt(row.broken, images[row.index])
        write_bytes(root / relative, data)
    manifest = root / "manifest.parquet"
    table = pa.table(
        {
            "uid": pa.array([r.uid for r in rows], pa.string()),
            "caption": pa.array([r.caption for r in rows], pa.string()),
            "image": pa.array(paths, pa.string()),
            "url": pa.array([f"https://images.example.com/sample/{r.uid}.jpg" for r in rows], pa.string()),
            "width": pa.array([w for w, _ in sizes], pa.int32()),
            "height": pa.array([h for _, h in sizes], pa.int32()),
        }
    )
    write_parquet(manifest, table)
    return manifest, [None] * len(rows), paths


def _with_sizes(rows: list[_Row], images: dict[int, bytes]) -> list[tuple[_Row, tuple[int, int]]]:
    return [(row, Image.open(io.BytesIO(images[row.index])).size) for row in rows]


def _corrupt(kind: str, image: bytes) -> bytes:
    if kind == "truncated":
        return image[: len(image) // 3]
    if kind == "zero_byte":
        return b""
    if kind == "not_an_image":
        return HTML_AS_JPEG
    raise ValueError(f"no corruption for broken kind {kind!r}")


def _truth_table(rows: list[_Row], keys: list[str | None], paths: list[str | None]) -> pa.Table:
    by_index = {r.index: r for r in rows}

    def dup_group(row: _Row) -> str | None:
        if row.source is not None:
            return by_index[row.source].uid
        return row.uid if row.has_variants else None

    return pa.table(
        {
            "uid": pa.array([r.uid for r in rows], pa.string()),
            "key": pa.array(keys, pa.string()),
            "image": pa.array(paths, pa.string()),
            "caption": pa.array([r.caption for r in rows], pa.string()),
            "variant": pa.array([r.variant for r in rows], pa.string()),
            "dup_group": pa.array([dup_group(r) for r in rows], pa.string()),
            "broken": pa.array([r.broken for r in rows], pa.string()),
            "sexual": pa.array([int(r.sexual) for r in rows], pa.int8()),
            "violence": pa.array([int(r.violence) for r in rows], pa.int8()),
            "motif_in_caption": pa.array([r.motif_in_caption for r in rows], pa.bool_()),
            "caption_gender": pa.array([r.gender for r in rows], pa.string()),
            "occupation": pa.array([r.occupation for r in rows], pa.string()),
            "scene": pa.array([r.scene for r in rows], pa.string()),
            "n_people": pa.array([len(r.figures) for r in rows], pa.int8()),
        }
    )


def _counts(rows: list[_Row]) -> dict[str, int]:
    counts = {f"variant_{k}": sum(r.variant == k for r in rows) for k in VARIANT_KINDS}
    counts.update({f"broken_{k}": sum(r.broken == k for r in rows) for k in BROKEN_KINDS})
    counts.update({m: sum(bool(getattr(r, m)) for r in rows) for m in MOTIFS})
    counts["dup_groups"] = sum(r.has_variants for r in rows)
    return counts


def _encode(image: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _casual_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    palette = ((60, 120, 200), (90, 160, 90), (230, 200, 60), (150, 90, 170), (240, 150, 50), (70, 70, 80))
    return palette[int(rng.integers(len(palette)))]


def _pick(rng: np.random.Generator, options: Sequence[T]) -> T:
    return options[int(rng.integers(len(options)))]


def _uid(seed: int, index: int) -> str:
    return hashlib.blake2b(f"sanitize-sample:{seed}:{index}".encode(), digest_size=16).hexdigest()
