"""Category specs: what each safety category means, how to label it, and how strict its filter must be.

A project has one TOML file with any number of categories. Adding a category (``ai_generated``,
``hate_symbol``) means adding a table to that file, not code::

    [defaults]                 # optional, applies to every category that does not set the key
    target_recall = 0.95
    confidence = 0.95

    [categories.sexual]
    description = "Sexual content or nudity."
    guidelines = "Label 1 if ... Label 0 if ..."
    prompts = ["a nude photo", "explicit sexual content"]
    target_recall = 0.99       # share of true positives the final filter must remove
    confidence = 0.95          # confidence level for the certified threshold
    classifier = "logistic"    # or "mlp"

`load_spec` validates everything up front and raises `ConfigError` with one line naming the file, the
category and the key, so a typo never surfaces rounds later.
"""

from __future__ import annotations

import logging
import re
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from sanitize.errors import READ_ERRORS, ConfigError, check_file, first_line

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

logger = logging.getLogger(__name__)

CLASSIFIER_KINDS = ("logistic", "mlp")
# Category names become file names (labels/<name>.parquet), so keep them to a safe alphabet.
_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
_CATEGORY_KEYS = {"description", "guidelines", "prompts", "target_recall", "confidence", "classifier"}
_DEFAULT_KEYS = {"target_recall", "confidence", "classifier"}
_BUILTIN_DEFAULTS: dict[str, Any] = {"target_recall": 0.95, "confidence": 0.95, "classifier": "logistic"}


@dataclass(frozen=True)
class CategorySpec:
    """One validated category: every field is present and in range."""

    name: str
    description: str
    guidelines: str
    prompts: tuple[str, ...]
    target_recall: float
    confidence: float
    classifier: str = "logistic"


@dataclass(frozen=True)
class ProjectSpec:
    """All categories of one project, in file order, plus the file they came from."""

    path: Path
    categories: dict[str, CategorySpec]

    def category(self, name: str) -> CategorySpec:
        """Return the category called `name`; `ConfigError` listing the known names when there is none."""
        try:
            return self.categories[name]
        except KeyError:
            known = ", ".join(self.categories) or "none"
            raise ConfigError(f"{self.path}: unknown category {name!r} (known: {known})") from None

    @property
    def names(self) -> list[str]:
        return list(self.categories)


def default_spec_path() -> Path:
    """Path of the shipped example spec (categories `sexual` and `violence`)."""
    return Path(str(resources.files("sanitize") / "resources" / "categories" / "default.toml"))


def load_spec(path: str | Path | None = None) -> ProjectSpec:
    """Read and validate a category spec file (the shipped example when `path` is None).

    Returns a `ProjectSpec` whose categories all have non-empty prompts, 0 < target_recall < 1 and
    0 < confidence < 1. Raises `ConfigError` naming file, category and key for anything else.
    """
    spec_path = default_spec_path() if path is None else Path(path)
    return parse_spec(_read_spec_file(spec_path), spec_path)


def _read_spec_file(path: Path) -> dict[str, Any]:
    """The TOML mapping in `path`; ConfigError naming the file when it is missing, a folder, empty, unreadable,
    not UTF-8 or not TOML."""
    if not path.exists():
        raise ConfigError(f"{path}: category spec file not found")
    if not path.is_file() or path.stat().st_size:  # an empty file is a spec without categories, said below
        check_file(path, "category spec", ConfigError)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except READ_ERRORS as exc:  # OSError, UnicodeDecodeError and TOMLDecodeError (ValueErrors)
        raise ConfigError(f"{path}: not valid TOML ({first_line(exc)})") from None


def parse_spec(raw: dict[str, Any], path: str | Path = "<spec>") -> ProjectSpec:
    """Validate an already-parsed spec mapping (see `load_spec`); `path` is only used in messages."""
    path = Path(path)
    unknown_top = set(raw) - {"defaults", "categories"}
    if unknown_top:
        raise ConfigError(f"{path}: unknown top-level key {sorted(unknown_top)[0]!r} (expected defaults, categories)")
    defaults = dict(_BUILTIN_DEFAULTS)
    file_defaults = raw.get("defaults", {})
    if not isinstance(file_defaults, dict):
        raise ConfigError(f"{path}: [defaults] must be a table")
    for key in file_defaults:
        if key not in _DEFAULT_KEYS:
            raise ConfigError(f"{path}: [defaults]: unknown key {key!r} (allowed: {', '.join(sorted(_DEFAULT_KEYS))})")
    defaults.update(file_defaults)

    tables = raw.get("categories")
    if not isinstance(tables, dict) or not tables:
        raise ConfigError(f"{path}: no categories (add a [categories.<name>] table)")
    categories = {name: _parse_category(path, name, table, defaults) for name, table in tables.items()}
    logger.debug("loaded %d categories from %s", len(categories), path)
    return ProjectSpec(path=path, categories=categories)


def _parse_category(path: Path, name: str, table: Any, defaults: dict[str, Any]) -> CategorySpec:
    where = f"{path}: category {name!r}"
    if not _NAME_RE.match(name):
        raise ConfigError(f"{where}: name must match {_NAME_RE.pattern} (it becomes a file name)")
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: must be a table")
    for key in table:
        if key not in _CATEGORY_KEYS:
            raise ConfigError(f"{where}: unknown key {key!r} (allowed: {', '.join(sorted(_CATEGORY_KEYS))})")
    merged = {**defaults, **table}

    description = merged.get("description")
    if description is not None and not isinstance(description, str):
        raise ConfigError(f"{where}: key 'description' must be a string, got {description!r}")
    if not description or not description.strip():
        raise ConfigError(f"{where}: key 'description' is missing or empty")
    guidelines = merged.get("guidelines", "")
    if not isinstance(guidelines, str):
        raise ConfigError(f"{where}: key 'guidelines' must be a string")

    prompts = merged.get("prompts")
    if prompts is None:
        raise ConfigError(f"{where}: key 'prompts' is missing (text prompts for the zero-shot cold start)")
    if (
        not isinstance(prompts, list)
        or not prompts
        or not all(isinstance(p, str) and p.strip() for p in prompts)
    ):
        raise ConfigError(f"{where}: key 'prompts' must be a non-empty list of non-empty strings")

    target_recall = _fraction(where, "target_recall", merged["target_recall"])
    confidence = _fraction(where, "confidence", merged["confidence"])
    classifier = merged["classifier"]
    if classifier not in CLASSIFIER_KINDS:
        raise ConfigError(f"{where}: key 'classifier' is {classifier!r}, expected one of {', '.join(CLASSIFIER_KINDS)}")
    return CategorySpec(
        name=name,
        description=description.strip(),
        guidelines=guidelines.strip(),
        prompts=tuple(p.strip() for p in prompts),
        target_recall=target_recall,
        confidence=confidence,
        classifier=classifier,
    )


def _fraction(where: str, key: str, value: Any) -> float:
    # bool is an int subclass; `target_recall = true` is a typo, not 1.0.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) < 1.0:
        raise ConfigError(f"{where}: key {key!r} is {value!r}, must be a number strictly between 0 and 1")
    return float(value)
