"""Attribute prompt specs and caption lexicons: data files, validated on load.

An attribute spec (TOML, `resources/attributes/*.toml`) names the classes of one perceived attribute and several
text prompts per class for CLIP zero-shot labelling:

    name = "perceived_gender"
    margin = 0.2                       # top-1 minus top-2 probability below this -> "unknown"
    not_applicable = ["no_person"]     # classes that mean "the attribute does not apply"
    [[classes]]
    label = "female"
    prompts = ["a photo of a woman.", "a photo of a girl."]

A lexicon (TOML, `resources/lexicons/*.toml`) maps each class to caption words; matching is case-insensitive on
word boundaries. A caption matching two or more classes gets the `multiple` label, one matching none gets "unknown":

    name = "caption_gender"
    multiple = "mixed"
    exclude = ["game boy"]             # phrases masked before matching (optional)
    [classes]                          # nouns: always count
    female = ["woman", "women", "girl"]
    male = ["man", "men", "boy"]
    [pronouns]                         # optional: count only when they refer to a person (see attributes.py)
    female = ["she", "her"]
    male = ["he", "his"]
    [referents]                        # optional: what a pronoun may refer to besides the class nouns
    person = ["person", "player"]
    other = ["dog", "horse"]           # a pronoun whose nearest preceding referent is one of these does not count

A word joined to another by a hyphen ("man-made", "spider-man") never counts as a term.

Users add attributes by adding files; no code changes. Every problem raises `ConfigError` naming the file and entry.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from sanitize.errors import ConfigError, check_file, first_line

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 uses the tomli backport named in pyproject.toml
    import tomli as tomllib

logger = logging.getLogger(__name__)

UNKNOWN = "unknown"
DEFAULT_MARGIN = 0.1
CLIP_LOGIT_SCALE = 100.0


@dataclass(frozen=True)
class AttributeSpec:
    """Classes and prompts of one zero-shot attribute. `prompts[i]` belongs to `classes[i]`."""

    name: str
    classes: tuple[str, ...]
    prompts: tuple[tuple[str, ...], ...]
    margin: float = DEFAULT_MARGIN
    logit_scale: float = CLIP_LOGIT_SCALE
    not_applicable: tuple[str, ...] = ()
    description: str = ""
    source: str = ""


@dataclass(frozen=True)
class Lexicon:
    """Caption word lists: `terms[i]` are the (lower-case) words of `classes[i]`."""

    name: str
    classes: tuple[str, ...]
    terms: tuple[tuple[str, ...], ...]
    multiple: str = "multiple"
    description: str = ""
    source: str = ""
    pronouns: tuple[tuple[str, ...], ...] = ()
    persons: tuple[str, ...] = ()
    non_persons: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def all_terms(self) -> list[str]:
        """Every term (noun) of every class, in file order; pronouns are not terms."""
        return [t for class_terms in self.terms for t in class_terms]

    def class_pronouns(self) -> tuple[tuple[str, ...], ...]:
        """Pronouns per class, aligned with `classes` (empty tuples when the lexicon has none)."""
        return self.pronouns or tuple(() for _ in self.classes)


def _resource_dir(kind: str) -> Path:
    return Path(str(resources.files("sanitize").joinpath("resources", kind)))


def builtin_attribute_specs() -> dict[str, Path]:
    """Name -> path of the attribute specs shipped with the package."""
    return {p.stem: p for p in sorted(_resource_dir("attributes").glob("*.toml"))}


def builtin_lexicons() -> dict[str, Path]:
    """Name -> path of the caption lexicons shipped with the package."""
    return {p.stem: p for p in sorted(_resource_dir("lexicons").glob("*.toml"))}


def _read_toml(path: str | os.PathLike, kind: str, builtin: dict[str, Path]) -> tuple[dict, str]:
    """Read a TOML file given as a path or as the name of a built-in file."""
    p = Path(path)
    if not p.exists() and str(path) in builtin:
        p = builtin[str(path)]
    if not p.exists():
        raise ConfigError(f"{path}: {kind} file not found (built-in: {', '.join(builtin) or 'none'})")
    if not p.is_file() or p.stat().st_size:  # an empty file is a file without classes, said by the loader
        check_file(p, f"{kind} file", ConfigError)
    builtin_dir = next(iter(builtin.values())).parent if builtin else None
    # Built-in files are named portably, so a report does not carry this machine's install path.
    name = f"builtin:{p.stem}" if builtin_dir is not None and p.resolve().parent == builtin_dir.resolve() else str(p)
    try:
        with open(p, "rb") as f:
            return tomllib.load(f), name
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: not valid TOML: {first_line(e)}") from e
    except OSError as e:
        raise ConfigError(f"{p}: {kind} file not readable ({e.strerror})") from e


def _number(data: dict, key: str, default: float, src: str, ok: Callable[[float], bool], wanted: str) -> float:
    """The finite number `data[key]` (`default` when absent) for which `ok` holds; ConfigError naming the file and
    key otherwise (a bool, such as `margin = true`, is a typo, not a number)."""
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or not ok(value):
        raise ConfigError(f"{src}: {key} must be {wanted}, got {value!r}")
    return float(value)


def _text(data: dict, key: str, default: str, src: str) -> str:
    """The string `data[key]` (`default` when absent); ConfigError naming the file and key otherwise."""
    value = data.get(key, default)
    if not isinstance(value, str):
        raise ConfigError(f"{src}: {key} must be a string, got {value!r}")
    return value


def _label(value: object, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: class label must be a non-empty string, got {value!r}")
    if value.strip() == UNKNOWN:
        raise ConfigError(f"{where}: class label '{UNKNOWN}' is reserved for undetermined rows")
    return value.strip()


def load_attribute_spec(path: str | os.PathLike) -> AttributeSpec:
    """Load and validate a zero-shot attribute spec from a TOML path or a built-in name ("perceived_gender").

    Guarantees: at least two classes, unique labels, every class has at least one non-empty prompt,
    0 <= margin < 1, logit_scale > 0, `not_applicable` labels are classes of the spec.
    """
    data, src = _read_toml(path, "attribute spec", builtin_attribute_specs())
    name = _text(data, "name", Path(src).stem, src)
    raw_classes = data.get("classes")
    if not isinstance(raw_classes, list) or len(raw_classes) < 2:
        raise ConfigError(f"{src}: needs at least two [[classes]] entries")
    labels: list[str] = []
    prompts: list[tuple[str, ...]] = []
    for i, entry in enumerate(raw_classes):
        where = f"{src}: classes[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: must be a table with 'label' and 'prompts'")
        label = _label(entry.get("label"), where)
        where = f"{src}: class '{label}'"
        if label in labels:
            raise ConfigError(f"{where}: duplicate class label")
        class_prompts = entry.get("prompts")
        if class_prompts is not None and not isinstance(class_prompts, list):
            raise ConfigError(f"{where}: prompts must be a list of strings, got {class_prompts!r}")
        if not class_prompts:
            raise ConfigError(f"{where}: has no prompts")
        for prompt in class_prompts:
            if not isinstance(prompt, str):
                raise ConfigError(f"{where}: prompt {prompt!r} is not a string")
            if not prompt.strip():
                raise ConfigError(f"{where}: empty prompt {prompt!r}")
        labels.append(label)
        prompts.append(tuple(p.strip() for p in class_prompts))
    margin = _number(data, "margin", DEFAULT_MARGIN, src, lambda v: 0 <= v < 1, "in [0, 1)")
    scale = _number(data, "logit_scale", CLIP_LOGIT_SCALE, src, lambda v: v > 0, "a finite number > 0")
    raw_na = data.get("not_applicable", [])
    if not isinstance(raw_na, list):
        raise ConfigError(f"{src}: not_applicable must be a list of class labels, got {raw_na!r}")
    for label in raw_na:
        if label not in labels:
            raise ConfigError(f"{src}: not_applicable label '{label}' is not a class")
    return AttributeSpec(
        name=name,
        classes=tuple(labels),
        prompts=tuple(prompts),
        margin=margin,
        logit_scale=scale,
        not_applicable=tuple(raw_na),
        description=_text(data, "description", "", src).strip(),
        source=src,
    )


def load_lexicon(path: str | os.PathLike) -> Lexicon:
    """Load and validate a caption lexicon from a TOML path or a built-in name ("caption_gender").

    Terms are lower-cased and stripped. Guarantees: at least one class, every class has terms, no empty term,
    no term listed twice (within a class or across classes, compared case-insensitively).
    """
    data, src = _read_toml(path, "lexicon", builtin_lexicons())
    name = _text(data, "name", Path(src).stem, src)
    raw = data.get("classes")
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{src}: needs a non-empty [classes] table")
    seen: dict[str, str] = {}
    labels: list[str] = []
    terms: list[tuple[str, ...]] = []
    for raw_label, raw_terms in raw.items():
        label = _label(raw_label, f"{src}: classes")
        where = f"{src}: class '{label}'"
        if not isinstance(raw_terms, list):
            raise ConfigError(f"{where}: terms must be a list of strings, got {raw_terms!r}")
        if not raw_terms:
            raise ConfigError(f"{where}: has no terms")
        class_terms: list[str] = []
        for term in raw_terms:
            if not isinstance(term, str):
                raise ConfigError(f"{where}: term {term!r} is not a string")
            if not term.strip():
                raise ConfigError(f"{where}: empty term {term!r}")
            key = " ".join(term.lower().split())
            if key in seen:
                other = seen[key]
                also = "" if other == label else f" (also in class '{other}')"
                raise ConfigError(f"{where}: duplicate term '{key}'{also}")
            seen[key] = label
            class_terms.append(key)
        labels.append(label)
        terms.append(tuple(class_terms))
    multiple = data.get("multiple", "multiple")
    multiple = _label(multiple, f"{src}: multiple")
    if multiple in labels:
        raise ConfigError(f"{src}: multiple label '{multiple}' is also a class")
    pronouns = _pronouns(data.get("pronouns", {}), labels, seen, src)
    referents = data.get("referents", {})
    if not isinstance(referents, dict) or set(referents) - {"person", "other"}:
        raise ConfigError(f"{src}: [referents] may only hold 'person' and 'other' lists")
    return Lexicon(
        name=name,
        classes=tuple(labels),
        terms=tuple(terms),
        multiple=multiple,
        description=_text(data, "description", "", src).strip(),
        source=src,
        pronouns=pronouns,
        persons=_word_list(referents.get("person", []), f"{src}: referents.person", seen),
        non_persons=_word_list(referents.get("other", []), f"{src}: referents.other", seen),
        exclude=_word_list(data.get("exclude", []), f"{src}: exclude", {}),
    )


def _word_list(raw: object, where: str, seen: dict[str, str]) -> tuple[str, ...]:
    """Lower-cased, whitespace-normalised words of an optional list; raises ConfigError on a non-list, an empty
    word or a word already used (in `seen`, which is updated)."""
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: must be a list of words")
    out: list[str] = []
    for word in raw:
        if not isinstance(word, str):
            raise ConfigError(f"{where}: word {word!r} is not a string")
        if not word.strip():
            raise ConfigError(f"{where}: empty word {word!r}")
        key = " ".join(word.lower().split())
        if key in seen:
            raise ConfigError(f"{where}: duplicate word '{key}' (also in {seen[key]})")
        seen[key] = where.rsplit(": ", 1)[-1]
        out.append(key)
    return tuple(out)


def _pronouns(raw: object, labels: list[str], seen: dict[str, str], src: str) -> tuple[tuple[str, ...], ...]:
    """The optional [pronouns] table as one tuple per class (aligned with `labels`; empty when absent)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{src}: [pronouns] must be a table of class = [words]")
    if not raw:
        return ()
    unknown = [k for k in raw if k not in labels]
    if unknown:
        raise ConfigError(f"{src}: [pronouns] names '{unknown[0]}', which is not a class")
    return tuple(_word_list(raw.get(label, []), f"{src}: pronouns.{label}", seen) for label in labels)
