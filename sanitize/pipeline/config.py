"""The pipeline's configuration: a TOML file with one table per section, every key declared once.

```toml
[run]                # which stages, which engine, the seed
[input]              # how to read the manifest (the --preset / --*-col options)
[embed] [caption_length] [classify] [dedup] [audit] [export]    # one per registered stage
```

Each section is a frozen dataclass: `RunConfig` and `InputConfig` here, and each stage's ``Config`` (next to the
stage, in `sanitize/pipeline/stages/`). Its fields (`sanitize.pipeline.options.option`) are the single source of a
key's type, default, help and choices: they validate a config (unknown keys get the nearest valid key in the
error, wrong types name the key and the type wanted), fill in defaults, write the commented starter file of
`sanitize init`, and become the CLI options of the single-stage commands. Keys are the CLI option names with ``_``
for ``-``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sanitize.engines import ENGINES
from sanitize.errors import READ_ERRORS, ConfigError, check_file, first_line
from sanitize.io.manifest import PRESETS
from sanitize.pipeline.options import Option, as_plain, nearest, option, options_of, section_dict
from sanitize.pipeline.registry import stage_classes, stage_names

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

STAGES = stage_names()
DEFAULT_STAGES = tuple(s.name for s in stage_classes() if s.runs_by_default)


@dataclass(frozen=True)
class RunConfig:
    """The ``[run]`` section: which stages, where they run, and the seed of every random choice."""

    stages: tuple[str, ...] = option(DEFAULT_STAGES, "Stages to run, in pipeline order.", choices=STAGES,
                                     cli=False)
    skip: tuple[str, ...] = option((), "Stages not to run (their earlier results in the run folder still count).",
                                   choices=STAGES)
    engine: str = option("local", "Where the work runs: this process, or Ray (pip install '.[ray]').",
                         choices=ENGINES)
    ray_address: str | None = option(None, "Ray cluster to join ('auto', 'HOST:PORT', 'ray://HOST:10001'); unset: "
                                     "a local Ray.", example="auto")
    ray_num_cpus: int | None = option(None, "CPUs of the local Ray started for you (unset: all).", example=4, low=1)
    seed: int = option(0, "Seed of every random choice (k-means, samples).")


@dataclass(frozen=True)
class InputConfig:
    """The ``[input]`` section: how to read the manifest."""

    preset: str = option("auto", "Layout of the manifest (the tool that wrote it).", choices=("auto", *PRESETS))
    id_col: str | None = option(None, "Column with a stable unique id per row.", example="uid")
    caption_col: str | None = option(None, "Column with the caption.", example="caption")
    image_col: str | None = option(None, "Column with the image path (relative to image_root).",
                                   example="image_path")
    url_col: str | None = option(None, "Column with the image URL.", example="url")
    image_root: str | None = option(None, "Folder that image paths are relative to.", example="images/")


SECTION_CLASSES: dict[str, type] = {"run": RunConfig, "input": InputConfig,
                                    **{s.name: s.Config for s in stage_classes()}}
SECTIONS = tuple(SECTION_CLASSES)
OPTIONS: tuple[Option, ...] = tuple(o for name, cls in SECTION_CLASSES.items() for o in options_of(name, cls))


@dataclass(frozen=True)
class PipelineConfig:
    """A resolved config: one dataclass per section (``config["dedup"].threshold``)."""

    sections: Mapping[str, Any]

    def __getitem__(self, section: str) -> Any:
        return self.sections[section]

    @property
    def run(self) -> RunConfig:
        return self.sections["run"]

    def section_dict(self, section: str) -> dict[str, Any]:
        """One section as {key: value} (lists, not tuples), in declaration order."""
        return section_dict(self.sections[section])

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The whole config as {section: {key: value}}, JSON-ready."""
        return {name: self.section_dict(name) for name in self.sections}

    def replace(self, section: str, **changes: Any) -> PipelineConfig:
        """A copy with some keys of one section changed (checked like a TOML value)."""
        checked = {k: _checked(section, k, as_plain(v), "config") for k, v in changes.items()}
        return PipelineConfig({**self.sections, section: dataclasses.replace(self.sections[section], **checked)})

    def planned_stages(self) -> list[str]:
        """The stages the config asks for, in pipeline order, minus the skipped ones."""
        run = self.run
        return [s for s in STAGES if s in run.stages and s not in run.skip]


def default_config() -> PipelineConfig:
    """Every option at its default."""
    return PipelineConfig({name: cls() for name, cls in SECTION_CLASSES.items()})


def load_config(path: str | os.PathLike | None, overrides: list[str] = ()) -> PipelineConfig:
    """Read and check the TOML file at `path` (None: defaults only), apply ``section.key=value`` overrides
    (values in TOML syntax; a bare word is a string), and return the full resolved config.

    Raises ConfigError naming the file and key: unknown section or key (with the nearest valid one), wrong
    type, value outside its choices, unreadable TOML.
    """
    raw: dict[str, Any] = {}
    where = "config"
    if path is not None:
        where = str(path)
        raw = read_config_file(path)
    for item in overrides:
        section, key, value = _parse_override(item)
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise ConfigError(f"{where}: [{section}] must be a table")
        raw[section][key] = value
    return resolve_config(raw, where=where)


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """The TOML mapping in `path`; ConfigError naming the file when it is missing, a folder, empty, unreadable,
    not UTF-8 or not TOML."""
    if not Path(path).exists():
        raise ConfigError(f"{path}: config file not found (write one with `sanitize init`)")
    check_file(path, "TOML config", ConfigError)
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except READ_ERRORS as exc:  # OSError, UnicodeDecodeError and TOMLDecodeError (ValueErrors)
        raise ConfigError(f"{path}: not readable TOML ({first_line(exc)})") from None


def resolve_config(raw: dict[str, Any], *, where: str = "config") -> PipelineConfig:
    """Check `raw` ({section: {key: value}}) against the sections' options and fill in defaults; see
    `load_config`."""
    values: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    for section, table in raw.items():
        if section not in SECTIONS:
            raise ConfigError(f"{where}: unknown section [{section}]{nearest(section, SECTIONS, '[{}]')}")
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: [{section}] must be a table of keys, got {type(table).__name__}")
        for key, value in table.items():
            values[section][key] = _checked(section, key, value, where)
    config = PipelineConfig({name: cls(**values[name]) for name, cls in SECTION_CLASSES.items()})
    run = config.run
    if run.engine == "local" and (run.ray_address is not None or run.ray_num_cpus is not None):
        raise ConfigError(f"{where}: run.ray_address / run.ray_num_cpus need run.engine = \"ray\"")
    return config


def starter_config() -> str:
    """The commented TOML that `sanitize init` writes: every key at its default, each with its help line."""
    lines = ["# sanitize run MANIFEST --config sanitize.toml --out RUN", "#",
             "# Every key is a CLI option of its stage (- written as _). Unset optional keys are commented out.",
             "# `sanitize run … --dry-run` prints the resolved plan without running anything.", ""]
    stages = {s.name: s for s in stage_classes()}
    for section in SECTIONS:
        if section in stages:
            opt_in = "" if stages[section].runs_by_default else " (opt-in: add it to run.stages)"
            lines.append(f"# {section}: {stages[section].summary}{opt_in}")
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


def to_toml(config: PipelineConfig) -> str:
    """A resolved config as TOML (unset keys left out), e.g. for the demo's config file."""
    lines = []
    for section, values in config.to_dict().items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items() if v is not None]
        lines.append("")
    return "\n".join(lines)


def _option(section: str, key: str, where: str = "config") -> Option:
    """The option `section.key`; ConfigError naming the nearest key, or the section the key belongs to."""
    for o in OPTIONS:
        if o.section == section and o.name == key:
            return o
    names = [o.name for o in OPTIONS if o.section == section]
    elsewhere = [o.section for o in OPTIONS if o.name == key]
    hint = f"; it belongs in [{elsewhere[0]}]" if elsewhere else nearest(key, names, f"{section}.{{}}")
    raise ConfigError(f"{where}: unknown key {section}.{key}{hint}")


# ---- checking --------------------------------------------------------------------------------------------------


def _checked(section: str, key: str, value: Any, where: str) -> Any:
    """`value` checked by the option `section.key`; a NaN or infinite number (alone or in a table) is refused
    first, since no range check catches NaN."""
    numbers = value.values() if isinstance(value, dict) else [value]
    bad = next((v for v in numbers if isinstance(v, float) and not math.isfinite(v)), None)
    if bad is not None:
        raise ConfigError(f"{where}: {section}.{key} must be a finite number, got {bad!r}")
    return _option(section, key, where).check(value, where)


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
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else _toml_value(key)
