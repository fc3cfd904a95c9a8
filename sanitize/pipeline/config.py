"""The pipeline's configuration: a TOML file with one table per stage, every key a CLI option of that stage.

```toml
[run]                # which stages, which engine
[input]              # how to read the manifest (the --preset / --*-col options)
[embed] [classify] [dedup] [audit] [export]
```

`OPTIONS` is the single list of what can be set: name, type, default and help. It validates a config (unknown
keys get the nearest valid key in the error, wrong types name the key and the type wanted), resolves defaults,
and writes the commented starter file of `sanitize init`. Keys are the CLI option names with ``_`` for ``-``.
"""

from __future__ import annotations

import difflib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sanitize.clip.models import DEFAULT_MODEL, DEFAULT_PRETRAINED
from sanitize.errors import ConfigError
from sanitize.io.images import DEFAULT_MAX_PIXELS
from sanitize.io.manifest import PRESETS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

STAGES = ("embed", "classify", "dedup", "audit", "export")
ENGINES = ("local", "ray")


@dataclass(frozen=True)
class Option:
    """One settable key. `kind` is int, float, bool, str, "str?" (a string or unset), "int?", "float?",
    "list[str]" or "dict[str,float]"; `choices` restricts a string."""

    section: str
    name: str
    kind: str
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    example: Any = None  # shown, commented out, for an option that is unset by default


OPTIONS: tuple[Option, ...] = (
    Option("run", "stages", "list[str]", list(STAGES), "Stages to run, in pipeline order.", STAGES),
    Option("run", "skip", "list[str]", [], "Stages not to run (their earlier results in the run folder still count).",
           STAGES),
    Option("run", "engine", str, "local", "Where the work runs: this process, or Ray (pip install '.[ray]').",
           ENGINES),
    Option("run", "ray_address", "str?", None, "Ray cluster to join ('auto', 'ray://host:10001'); unset: local Ray.",
           example="auto"),
    Option("run", "ray_num_cpus", "int?", None, "CPUs of the local Ray started for you (unset: all).", example=4),
    Option("run", "seed", int, 0, "Seed of every random choice (k-means, samples)."),
    Option("input", "preset", str, "auto", "Layout of the manifest (the tool that wrote it).", ("auto", *PRESETS)),
    Option("input", "id_col", "str?", None, "Column with a stable unique id per row.", example="uid"),
    Option("input", "caption_col", "str?", None, "Column with the caption.", example="caption"),
    Option("input", "image_col", "str?", None, "Column with the image path (relative to image_root).",
           example="image_path"),
    Option("input", "url_col", "str?", None, "Column with the image URL.", example="url"),
    Option("input", "image_root", "str?", None, "Folder that image paths are relative to.", example="images/"),
    Option("embed", "model", str, DEFAULT_MODEL, "open_clip architecture, local-dir:PATH or hf-hub:ORG/REPO."),
    Option("embed", "pretrained", "str?", DEFAULT_PRETRAINED,
           "Weights tag or checkpoint path; 'none' for random weights (tests, the demo)."),
    Option("embed", "device", "str?", None, "cpu, cuda, cuda:1 … (unset: CUDA when present, else CPU).",
           example="cuda"),
    Option("embed", "precision", "str?", None, "fp32, fp16 or bf16 (unset: fp16 on GPU, fp32 on CPU).",
           ("fp32", "fp16", "bf16"), example="fp16"),
    Option("embed", "batch_size", int, 64, "Images per forward pass."),
    Option("embed", "workers", int, 2, "Decoding processes per model."),
    Option("embed", "max_pixels", int, DEFAULT_MAX_PIXELS, "Larger images are recorded as too_large."),
    Option("classify", "project", "str?", None,
           "Labeling project folder with the classifiers (unset: classify is skipped).", example="labels/"),
    Option("classify", "categories", "list[str]", [], "Categories to filter (empty: every one with a classifier)."),
    Option("dedup", "threshold", float, 0.95, "Cosine at or above which two rows are near-duplicates."),
    Option("dedup", "clusterings", int, 5, "Independent k-means clusterings whose pairs are united."),
    Option("dedup", "clusters", "int?", None, "Clusters per clustering (unset: from the row count).", example=4096),
    Option("dedup", "keep_by", "str?", None, "Column whose largest (keep = 'max') or smallest value is kept.",
           example="width"),
    Option("dedup", "keep", str, "max", "Which end of keep_by wins.", ("max", "min")),
    Option("dedup", "refuse_chains", bool, False, "Remove only rows within threshold of the kept row."),
    Option("dedup", "hash_col", "str?", "sha256", "Rows with equal values are exact duplicates."),
    Option("dedup", "require_normalized", bool, False, "Refuse rows that are not L2-normalised."),
    Option("dedup", "recall_sample", int, 1000, "Rows searched exhaustively to estimate pair recall (0: skip)."),
    Option("audit", "attributes", "list[str]", ["caption_gender", "occupations"],
           "Lexicon or zero-shot names, lexicon:PATH, zero-shot:PATH or column:NAME."),
    Option("audit", "weight_on", "list[str]", [], "Attributes whose pre-filter distribution the weights restore."),
    Option("audit", "target", "dict[str,float]", {},
           "Target mix for weight_on instead, e.g. {young = 0.75, old = 0.25}."),
    Option("audit", "device", "str?", None, "Device of the CLIP text tower (zero-shot attributes).", example="cuda"),
    Option("export", "out", "str?", None, "Folder of the kept manifest (unset: RUN/export).", example="kept/"),
)
SECTIONS = tuple(dict.fromkeys(o.section for o in OPTIONS))


def default_config() -> dict[str, dict[str, Any]]:
    """Every option at its default, as {section: {key: value}} (fresh copies of lists and dicts)."""
    out: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    for o in OPTIONS:
        out[o.section][o.name] = o.default.copy() if isinstance(o.default, (list, dict)) else o.default
    return out


def load_config(path: str | os.PathLike | None, overrides: list[str] = ()) -> dict[str, dict[str, Any]]:
    """Read and check the TOML file at `path` (None: defaults only), apply ``section.key=value`` overrides
    (values in TOML syntax; a bare word is a string), and return the full resolved config.

    Raises ConfigError naming the file and key: unknown section or key (with the nearest valid one), wrong
    type, value outside its choices, unreadable TOML.
    """
    raw: dict[str, Any] = {}
    where = "config"
    if path is not None:
        where = str(path)
        try:
            raw = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found (write one with `sanitize init`)") from None
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: not readable TOML ({exc})") from None
    for item in overrides:
        section, key, value = _parse_override(item)
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise ConfigError(f"{where}: [{section}] must be a table")
        raw[section][key] = value
    return resolve_config(raw, where=where)


def resolve_config(raw: dict[str, Any], *, where: str = "config") -> dict[str, dict[str, Any]]:
    """Check `raw` ({section: {key: value}}) against `OPTIONS` and fill in defaults; see `load_config`."""
    config = default_config()
    by_key = {(o.section, o.name): o for o in OPTIONS}
    for section, table in raw.items():
        if section not in SECTIONS:
            raise ConfigError(f"{where}: unknown section [{section}]{_nearest(section, SECTIONS, '[{}]')}")
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: [{section}] must be a table of keys, got {type(table).__name__}")
        for key, value in table.items():
            option = by_key.get((section, key))
            if option is None:
                names = [o.name for o in OPTIONS if o.section == section]
                elsewhere = [o.section for o in OPTIONS if o.name == key]
                hint = (f"; it belongs in [{elsewhere[0]}]" if elsewhere
                        else _nearest(key, names, f"{section}.{{}}"))
                raise ConfigError(f"{where}: unknown key {section}.{key}{hint}")
            config[section][key] = _checked(option, value, where)
    run = config["run"]
    if run["engine"] == "local" and (run["ray_address"] is not None or run["ray_num_cpus"] is not None):
        raise ConfigError(f"{where}: run.ray_address / run.ray_num_cpus need run.engine = \"ray\"")
    return config


def planned_stages(config: dict[str, dict[str, Any]]) -> list[str]:
    """The stages the config asks for, in pipeline order, minus the skipped ones."""
    run = config["run"]
    return [s for s in STAGES if s in run["stages"] and s not in run["skip"]]


def starter_config() -> str:
    """The commented TOML that `sanitize init` writes: every key at its default, each with its help line."""
    lines = ["# sanitize run MANIFEST --config sanitize.toml --out RUN", "#",
             "# Every key is a CLI option of its stage (- written as _). Unset optional keys are commented out.",
             "# `sanitize run … --dry-run` prints the resolved plan without running anything.", ""]
    for section in SECTIONS:
        lines.append(f"[{section}]")
        for o in (o for o in OPTIONS if o.section == section):
            choices = f" One of: {', '.join(o.choices)}." if o.choices and o.kind != "list[str]" else ""
            lines.append(f"# {o.help}{choices}")
            if o.default is None:
                lines.append(f"# {o.name} = {_toml_value(o.example)}" if o.example is not None else f"# {o.name} =")
            else:
                lines.append(f"{o.name} = {_toml_value(o.default)}")
        lines.append("")
    return "\n".join(lines)


def to_toml(config: dict[str, dict[str, Any]]) -> str:
    """A resolved config as TOML (unset keys left out), e.g. for the demo's config file."""
    lines = []
    for section in SECTIONS:
        lines.append(f"[{section}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in config[section].items() if v is not None]
        lines.append("")
    return "\n".join(lines)


# ---- checking --------------------------------------------------------------------------------------------------


def _checked(o: Option, value: Any, where: str) -> Any:
    key = f"{o.section}.{o.name}"
    kind = o.kind
    optional = isinstance(kind, str) and kind.endswith("?")
    base = {"str?": str, "int?": int, "float?": float}.get(kind, kind) if optional else kind
    if optional and (value is None or value == ""):
        return None
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if base in (int, float, str, bool):
        if not isinstance(value, base) or (base is int and isinstance(value, bool)):
            raise ConfigError(f"{where}: {key} must be {_kind_name(kind)}, got {value!r}")
        if o.choices and value not in o.choices:
            raise ConfigError(f"{where}: {key} = {value!r} is not one of {', '.join(o.choices)}"
                              f"{_nearest(str(value), o.choices, '{}')}")
        return value
    if kind == "list[str]":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: {key} must be a list of strings, got {value!r}")
        for v in value:
            if o.choices and v not in o.choices:
                raise ConfigError(f"{where}: {key}: {v!r} is not one of {', '.join(o.choices)}"
                                  f"{_nearest(v, o.choices, '{}')}")
        return list(value)
    if kind == "dict[str,float]":
        if not isinstance(value, dict) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value.values()):
            raise ConfigError(f"{where}: {key} must be a table of numbers, e.g. {{young = 0.75, old = 0.25}}")
        return {str(k): float(v) for k, v in value.items()}
    raise AssertionError(f"unknown option kind {kind!r}")


def _kind_name(kind: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
             "str?": "a string", "int?": "an integer", "float?": "a number"}
    return names[kind]


def _nearest(word: str, candidates: Any, fmt: str) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.5)
    return f"; did you mean {fmt.format(close[0])}?" if close else ""


def _parse_override(item: str) -> tuple[str, str, Any]:
    name, eq, text = item.partition("=")
    section, dot, key = name.strip().partition(".")
    if not eq or not dot or not section or not key:
        raise ConfigError(f"--set {item!r}: expected SECTION.KEY=VALUE, e.g. dedup.threshold=0.9")
    try:
        value = tomllib.loads(f"v = {text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = text.strip()  # a bare word: a string
    return section, key.strip(), value


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else _toml_value(key)
