"""Options declared once. A config section is a frozen dataclass whose fields are made with :func:`option`; from it
come the TOML keys and their checks, the defaults, `sanitize init`'s commented starter file, ``--set`` overrides and
the click options of the single-stage commands (:func:`click_options`).

```python
@dataclass(frozen=True)
class DedupConfig:
    threshold: float = option(0.95, "Cosine at or above which two rows are near-duplicates.")
```

A field's type says what a value may be: ``int``, ``float``, ``str``, ``bool``, ``X | None`` (unset allowed),
``tuple[str, ...]`` (a TOML list; a repeatable CLI option) or ``dict[str, float]`` (a TOML table; on the command
line ``a=0.75,b=0.25``).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sanitize.errors import ConfigError


def option(default: Any, help: str, *, choices: tuple[str, ...] = (), example: Any = None, cli: bool = True,
           flag: str | None = None, low: float | None = None, high: float | None = None) -> Any:
    """A config field: its default, one line of help, allowed `choices` (strings), an `example` shown (commented
    out) in the starter file when the default is unset, whether single-stage commands offer it (`cli`), its
    command-line `flag` when not ``--`` + the name with dashes (e.g. ``--category`` for a list `categories`), and
    the range [`low`, `high`] a number must lie in."""
    metadata = {"help": help, "choices": tuple(choices), "example": example, "cli": cli, "flag": flag,
                "low": low, "high": high}
    if isinstance(default, dict):
        return dataclasses.field(default_factory=lambda: dict(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Option:
    """One settable key, read from a config dataclass field. `kind` is "int", "float", "str", "bool", "list[str]" or
    "dict[str,float]"; `optional` says that unset (None) is allowed."""

    section: str
    name: str
    kind: str
    optional: bool
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    example: Any = None
    cli: bool = True
    flag: str | None = None
    low: float | None = None
    high: float | None = None

    @property
    def key(self) -> str:
        return f"{self.section}.{self.name}"

    def check(self, value: Any, where: str) -> Any:
        """`value` as this option stores it; ConfigError naming `where` and the key when it does not fit."""
        if self.optional and (value is None or value == ""):
            return None
        if self.kind == "float" and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        base = _BASE_TYPES.get(self.kind)
        if base is not None:
            if not isinstance(value, base) or (base is int and isinstance(value, bool)):
                raise ConfigError(f"{where}: {self.key} must be {_KIND_NAMES[self.kind]}, got {value!r}")
            self._check_choice(value, where, f"{self.key} = {value!r}")
            self._check_range(value, where)
            return value
        if self.kind == "list[str]":
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{where}: {self.key} must be a list of strings, got {value!r}")
            for v in value:
                self._check_choice(v, where, f"{self.key}: {v!r}")
            return tuple(value)
        if not isinstance(value, dict) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value.values()):
            raise ConfigError(f"{where}: {self.key} must be a table of numbers, e.g. {{young = 0.75, old = 0.25}}")
        return {str(k): float(v) for k, v in value.items()}

    def _check_range(self, value: Any, where: str) -> None:
        if self.kind in ("int", "float") and ((self.low is not None and value < self.low)
                                              or (self.high is not None and value > self.high)):
            bounds = (f"between {self.low:g} and {self.high:g}" if self.low is not None and self.high is not None
                      else f"at least {self.low:g}" if self.low is not None else f"at most {self.high:g}")
            raise ConfigError(f"{where}: {self.key} must be {bounds}, got {value!r}")

    def _check_choice(self, value: str, where: str, what: str) -> None:
        if self.choices and value not in self.choices:
            raise ConfigError(f"{where}: {what} is not one of {', '.join(self.choices)}"
                              f"{nearest(str(value), self.choices, '{}')}")


_BASE_TYPES: dict[str, type] = {"int": int, "float": float, "str": str, "bool": bool}
_KIND_NAMES = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false"}


@functools.cache
def options_of(section: str, cls: type) -> tuple[Option, ...]:
    """The options of config dataclass `cls` (its fields, in order) as section `section`."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        kind, optional = _kind(hints[f.name], f"{cls.__name__}.{f.name}")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        meta = f.metadata
        if "help" not in meta:
            raise TypeError(f"{cls.__name__}.{f.name}: declare config fields with option(...)")
        out.append(Option(section, f.name, kind, optional, default, meta["help"], meta["choices"], meta["example"],
                          meta["cli"], meta["flag"], meta["low"], meta["high"]))
    return tuple(out)


def _kind(hint: Any, where: str) -> tuple[str, bool]:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        inner = [a for a in args if a is not type(None)]
        return _kind(inner[0], where)[0], True
    if hint in (int, float, str, bool):
        return hint.__name__, False
    if typing.get_origin(hint) is tuple and args == (str, ...):
        return "list[str]", False
    if typing.get_origin(hint) is dict and args == (str, float):
        return "dict[str,float]", False
    raise TypeError(f"{where}: unsupported option type {hint!r}")


def nearest(word: str, candidates: Any, fmt: str) -> str:
    """"; did you mean X?" for the closest of `candidates` (formatted with `fmt`), or ""."""
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.5)
    return f"; did you mean {fmt.format(close[0])}?" if close else ""


def as_plain(value: Any) -> Any:
    """A config value as JSON/TOML sees it (tuples as lists)."""
    return list(value) if isinstance(value, tuple) else value


def section_dict(section: Any) -> dict[str, Any]:
    """A config dataclass as {key: plain value}, in field order."""
    return {f.name: as_plain(getattr(section, f.name)) for f in dataclasses.fields(section)}


# ---- click ------------------------------------------------------------------------------------------------------


def click_options(section: str, cls: type, *, only: tuple[str, ...] | None = None,
                  overrides: bool = False) -> Callable:
    """A decorator adding one click option per CLI field of `cls` (or the `only` ones): ``--name-with-dashes``,
    with the field's default, help and choices. Click hands the values to the command under the field names;
    :func:`from_cli` turns them back into the dataclass. With `overrides`, the options have no default (None or
    empty: not given) and say that they override the config key."""
    import click

    chosen = [o for o in options_of(section, cls) if (only is None and o.cli) or (only and o.name in only)]

    def decorate(f: Callable) -> Callable:
        for o in reversed(chosen):
            kwargs = _click_kwargs(o)
            if overrides:
                kwargs.update(default=() if kwargs.get("multiple") else None, show_default=False,
                              help=f"Override {o.key}: {o.help}")
            f = click.option(*_click_decls(o), **kwargs)(f)
        return f

    return decorate


def _click_decls(o: Option) -> tuple[str, ...]:
    return (o.flag or "--" + o.name.replace("_", "-"), o.name)


def _click_kwargs(o: Option) -> dict[str, Any]:
    import click

    kwargs: dict[str, Any] = {"help": o.help, "show_default": o.default not in (None, (), {})}
    if o.kind == "bool":
        return {**kwargs, "is_flag": True, "default": o.default, "show_default": False}
    if o.kind == "list[str]":
        kwargs.update(multiple=True, default=o.default)
        if o.choices:
            kwargs["type"] = click.Choice(o.choices)
        return kwargs
    if o.kind == "dict[str,float]":
        return {**kwargs, "default": None, "metavar": "NAME=SHARE,…", "show_default": False}
    kwargs["default"] = o.default
    if o.choices:
        kwargs["type"] = click.Choice(o.choices)
    elif o.kind == "int" and (o.low is not None or o.high is not None):
        kwargs["type"] = click.IntRange(o.low, o.high)
    elif o.kind == "float" and (o.low is not None or o.high is not None):
        kwargs["type"] = click.FloatRange(o.low, o.high)
    else:
        kwargs["type"] = _BASE_TYPES[o.kind]
    return kwargs


def from_cli(section: str, cls: type, values: dict[str, Any], **fixed: Any) -> Any:
    """The `cls` instance for a command's parsed option `values` (field names; other keys ignored), checked like
    a TOML section; `fixed` sets fields the command decides itself."""
    kwargs = {}
    for o in options_of(section, cls):
        if o.name in fixed:
            kwargs[o.name] = fixed[o.name]
        elif o.name in values:
            value = values[o.name]
            if o.kind == "dict[str,float]" and isinstance(value, str):
                value = parse_shares(value, "--" + o.name.replace("_", "-"))
            kwargs[o.name] = o.check(o.default if value is None and o.kind == "dict[str,float]" else value,
                                     "command line")
    return cls(**kwargs)


def parse_shares(text: str, flag: str) -> dict[str, float]:
    """'young=0.75,old=0.25' → {'young': 0.75, 'old': 0.25}. Raises ConfigError for a malformed pair."""
    target = {}
    for pair in text.split(","):
        name, eq, value = pair.partition("=")
        try:
            share = float(value)
        except ValueError:
            raise ConfigError(f"{flag}: {pair!r} is not NAME=SHARE") from None
        if not eq or not name.strip():
            raise ConfigError(f"{flag}: {pair!r} is not NAME=SHARE")
        target[name.strip()] = share
    return target

