"""Per-row attribute labels, each tagged with the method that produced it.

Three methods, one output shape (a string label per row, "unknown" when undetermined):
- zero-shot: CLIP image embeddings against averaged prompt embeddings of an `AttributeSpec`;
- lexicon: case-insensitive word-boundary matching of captions against a `Lexicon` (nouns always count, pronouns
  only when they refer to a person, hyphen compounds and excluded phrases never);
- column: an existing column (e.g. LAION's LANGUAGE) used as it is, nulls and blanks become "unknown".
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa

from sanitize.audit.specs import UNKNOWN, AttributeSpec, Lexicon
from sanitize.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

ZERO_SHOT = "zero-shot"
LEXICON = "lexicon"
COLUMN = "column"


@dataclass(frozen=True)
class AttributeInfo:
    """What an attribute column means: its method, where it came from, and its declared groups.

    `groups` lists every possible label (so a group with zero rows still shows in the report);
    `not_applicable` labels ("no_person") are counted but left out of shares and tests, like "unknown".
    """

    name: str
    method: str = COLUMN
    source: str = ""
    groups: tuple[str, ...] = ()
    not_applicable: tuple[str, ...] = ()
    description: str = ""

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "method": self.method,
            "source": self.source,
            "groups": list(self.groups),
            "not_applicable": list(self.not_applicable),
            "description": self.description,
        }

    @classmethod
    def from_json(cls, obj: dict) -> AttributeInfo:
        return cls(
            name=obj["name"],
            method=obj.get("method", COLUMN),
            source=obj.get("source", ""),
            groups=tuple(obj.get("groups", ())),
            not_applicable=tuple(obj.get("not_applicable", ())),
            description=obj.get("description", ""),
        )


def spec_info(spec: AttributeSpec, name: str | None = None) -> AttributeInfo:
    """The `AttributeInfo` of a zero-shot attribute labelled with `spec`."""
    return AttributeInfo(
        name=name or spec.name,
        method=ZERO_SHOT,
        source=spec.source,
        groups=spec.classes,
        not_applicable=spec.not_applicable,
        description=spec.description,
    )


def lexicon_info(lexicon: Lexicon, name: str | None = None) -> AttributeInfo:
    """The `AttributeInfo` of a caption attribute labelled with `lexicon`."""
    return AttributeInfo(
        name=name or lexicon.name,
        method=LEXICON,
        source=lexicon.source,
        groups=(*lexicon.classes, lexicon.multiple),
        not_applicable=(lexicon.multiple,),
        description=lexicon.description,
    )


def column_info(name: str, source: str | None = None, description: str = "") -> AttributeInfo:
    """The `AttributeInfo` of an existing column used as an attribute (groups are whatever values occur)."""
    return AttributeInfo(name=name, method=COLUMN, source=source or name, description=description)


# --- zero-shot -------------------------------------------------------------------------------------------


def _l2_normalise(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise DataError(f"{what}: expected a 2-D array, got shape {x.shape}")
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise DataError(f"{what}: row {int(np.flatnonzero(bad)[0])} has NaN or infinite values")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    zero = norms[:, 0] == 0
    if zero.any():
        raise DataError(f"{what}: row {int(np.flatnonzero(zero)[0])} is all zeros")
    return x / norms


def class_embeddings(spec: AttributeSpec, encode_text: Callable[[list[str]], np.ndarray]) -> np.ndarray:
    """Encode every prompt of `spec`, average the unit prompt vectors per class and renormalise.

    `encode_text(list[str]) -> (len, d)` is any text tower (the open_clip one in the pipeline). Returns
    a (n_classes, d) float32 array of unit rows, in `spec.classes` order.
    """
    flat = [p for class_prompts in spec.prompts for p in class_prompts]
    emb = _l2_normalise(encode_text(flat), f"{spec.source or spec.name}: prompt embeddings")
    if emb.shape[0] != len(flat):
        raise DataError(f"{spec.source or spec.name}: encode_text returned {emb.shape[0]} rows for {len(flat)} prompts")
    out = np.empty((len(spec.classes), emb.shape[1]), dtype=np.float32)
    start = 0
    for i, class_prompts in enumerate(spec.prompts):
        out[i] = emb[start : start + len(class_prompts)].mean(axis=0)
        start += len(class_prompts)
    return _l2_normalise(out, f"{spec.source or spec.name}: class embeddings")


@dataclass(frozen=True)
class ZeroShotLabels:
    """Labels (str per row, "unknown" below the margin), class probabilities (n, n_classes), and the classes."""

    labels: np.ndarray
    probabilities: np.ndarray
    classes: tuple[str, ...]


def zero_shot_attribute(
    image_emb: np.ndarray, class_emb: np.ndarray, spec: AttributeSpec, batch_size: int = 65536
) -> ZeroShotLabels:
    """Label images by softmax over `logit_scale * cosine(image, class)`.

    A row whose top-1 minus top-2 probability is below `spec.margin` is "unknown". Embeddings need not be
    normalised (they are, here). Raises DataError on shape mismatch or non-finite rows.
    """
    classes = np.asarray(spec.classes, dtype=object)
    class_emb = _l2_normalise(class_emb, f"{spec.name}: class embeddings")
    if class_emb.shape[0] != len(spec.classes):
        raise DataError(f"{spec.name}: {class_emb.shape[0]} class embeddings for {len(spec.classes)} classes")
    image_emb = np.asarray(image_emb)
    if image_emb.ndim != 2 or image_emb.shape[1] != class_emb.shape[1]:
        raise DataError(
            f"{spec.name}: image embeddings of shape {image_emb.shape} do not match class embedding "
            f"dimension {class_emb.shape[1]}"
        )
    n = image_emb.shape[0]
    probs = np.empty((n, len(spec.classes)), dtype=np.float32)
    for start in range(0, n, batch_size):
        chunk = _l2_normalise(image_emb[start : start + batch_size], f"{spec.name}: image embeddings")
        logits = spec.logit_scale * (chunk @ class_emb.T)
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        probs[start : start + len(chunk)] = e / e.sum(axis=1, keepdims=True)
    top2 = -np.sort(-probs, axis=1)[:, :2]
    labels = classes[probs.argmax(axis=1)] if n else np.empty(0, dtype=object)
    labels = np.where(top2[:, 0] - top2[:, 1] < spec.margin, UNKNOWN, labels).astype(object)
    return ZeroShotLabels(labels=labels, probabilities=probs, classes=spec.classes)


# --- lexicon ---------------------------------------------------------------------------------------------


def term_pattern(terms: Sequence[str]) -> str:
    """A case-insensitive, word-boundary regex matching any of `terms` (longest first, so
    "police officer" wins over "officer")."""
    ordered = sorted(set(terms), key=lambda t: (-len(t), t))
    return r"(?i)\b(?:" + "|".join(re.escape(t) for t in ordered) + r")\b"


def _caption_series(captions: Sequence[str | None] | pa.Array | pa.ChunkedArray | pl.Series) -> pl.Series:
    if isinstance(captions, pl.Series):
        s = captions
    elif isinstance(captions, pa.Array | pa.ChunkedArray):
        s = pl.Series(values=captions)
    else:
        s = pl.Series(values=list(captions), dtype=pl.String)
    if s.dtype != pl.String:
        raise DataError(f"captions: expected strings, got {s.dtype}")
    return s


# A word joined to another by a hyphen ("man-made", "spider-man", "cook-out"): masked, never a term.
HYPHEN_COMPOUND = r"\w+(?:[-\u2010\u2011]\w+)+"


def masked_captions(captions: Sequence[str | None] | pa.Array | pl.Series, exclude: Sequence[str] = ()) -> pl.Series:
    """Captions with hyphen compounds and the `exclude` phrases replaced by a space (nulls -> "").

    Guarantees: no term can match inside a masked span; everything else is unchanged."""
    s = _caption_series(captions).fill_null("").str.replace_all(HYPHEN_COMPOUND, " ")
    if exclude:
        s = s.str.replace_all(term_pattern(exclude), " ")
    return s


def _pronoun_classes(caption: str, person: re.Pattern, other: re.Pattern, pronoun: re.Pattern,
                     pronoun_class: dict[str, int]) -> set[int]:
    """Indices of the classes whose pronouns in `caption` (already masked) refer to a person.

    A pronoun refers to a person when the nearest referent word before it is a class noun or a `persons` word,
    or when it opens the caption ("He rides a horse"); a pronoun after an `non_persons` word ("A dog with his
    ball") or with no referent before it ("his and her sinks") does not count."""
    events = sorted([(m.start(), "person") for m in person.finditer(caption)]
                    + [(m.start(), "other") for m in other.finditer(caption)]
                    + [(m.start(), m.group(0).lower()) for m in pronoun.finditer(caption)])
    first_word = re.search(r"\w", caption)
    last: str | None = None
    out: set[int] = set()
    for start, kind in events:
        if kind in ("person", "other"):
            last = kind
        elif last == "person" or (last is None and first_word is not None and start == first_word.start()):
            out.add(pronoun_class[kind])
    return out


def _pronoun_matches(masked: pl.Series, lexicon: Lexicon) -> pl.DataFrame | None:
    """One boolean column per class: does the caption use one of its pronouns for a person. None when the
    lexicon has no pronouns. Only captions containing a pronoun are resolved (in Python), the rest are False."""
    pronoun = {w: i for i, words in enumerate(lexicon.class_pronouns()) for w in words}
    if not pronoun:
        return None
    person_words = [*lexicon.all_terms(), *lexicon.persons]
    person = re.compile(term_pattern(person_words))
    other = re.compile(term_pattern(lexicon.non_persons)) if lexicon.non_persons else re.compile(r"(?!x)x")
    pronoun_pattern = term_pattern(list(pronoun))
    has = masked.str.contains(pronoun_pattern).to_numpy()
    compiled = re.compile(pronoun_pattern)
    cols = np.zeros((len(masked), len(lexicon.classes)), dtype=bool)
    for row in np.flatnonzero(has):
        for k in _pronoun_classes(masked[int(row)], person, other, compiled, pronoun):
            cols[row, k] = True
    return pl.DataFrame({label: cols[:, k] for k, label in enumerate(lexicon.classes)})


def class_matches(captions: Sequence[str | None] | pa.Array | pl.Series, lexicon: Lexicon) -> pl.DataFrame:
    """One boolean column per lexicon class: does the caption name the class (nulls -> False).

    A class is named by one of its terms (outside hyphen compounds and `lexicon.exclude` phrases) or by one of
    its pronouns that refers to a person (see `_pronoun_classes`)."""
    masked = masked_captions(captions, lexicon.exclude)
    pairs = zip(lexicon.classes, lexicon.terms, strict=True)
    nouns = pl.DataFrame({label: masked.str.contains(term_pattern(terms)) for label, terms in pairs})
    pronouns = _pronoun_matches(masked, lexicon)
    if pronouns is None:
        return nouns
    return nouns.select(pl.col(c) | pronouns[c] for c in lexicon.classes)


def lexicon_attribute(captions: Sequence[str | None] | pa.Array | pl.Series, lexicon: Lexicon) -> pl.Series:
    """Label each caption with the single lexicon class it mentions; `lexicon.multiple` when it mentions
    several classes, "unknown" when none (or the caption is null). Returns a string Series."""
    matches = class_matches(captions, lexicon)
    hits = pl.sum_horizontal([pl.col(c).cast(pl.UInt8) for c in lexicon.classes])
    first = pl.coalesce([pl.when(pl.col(c)).then(pl.lit(c)) for c in lexicon.classes])
    return matches.select(
        pl.when(hits == 0)
        .then(pl.lit(UNKNOWN))
        .when(hits > 1)
        .then(pl.lit(lexicon.multiple))
        .otherwise(first)
        .alias(lexicon.name)
    ).to_series()


def keyword_mentions(captions: Sequence[str | None] | pa.Array | pl.Series, terms: Sequence[str],
                     exclude: Sequence[str] = ()) -> pl.Series:
    """For each caption, the distinct lower-cased `terms` it mentions (a list[str] Series; null -> []), outside
    hyphen compounds and `exclude` phrases (as `class_matches` does)."""
    s = masked_captions(captions, exclude)
    return s.str.extract_all(term_pattern(terms)).list.eval(pl.element().str.to_lowercase()).list.unique()


# --- column ----------------------------------------------------------------------------------------------


def column_attribute(values: Sequence | pa.Array | pa.ChunkedArray | pl.Series, name: str = "column") -> pl.Series:
    """An existing column as attribute labels: cast to string, nulls and blank strings become "unknown"."""
    s = values if isinstance(values, pl.Series) else pl.Series(values=values)
    if s.dtype not in (pl.String, pl.Categorical, pl.Enum) and not s.dtype.is_integer() and s.dtype != pl.Boolean:
        raise ConfigError(f"attribute column '{name}': type {s.dtype} cannot be used as group labels")
    v = pl.col("v").cast(pl.String).str.strip_chars()
    label = pl.when(v.is_null() | (v == "")).then(pl.lit(UNKNOWN)).otherwise(v)
    return pl.DataFrame({"v": s}).select(label.alias(name)).to_series()
