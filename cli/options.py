"""Options shared by several commands. Stage options come from the stages' config dataclasses
(`sanitize.pipeline.options.click_options`), so a default is written once, in the dataclass."""

from __future__ import annotations

import sys

import click

from sanitize.io.manifest import Manifest, open_manifest
from sanitize.pipeline.config import InputConfig, RunConfig
from sanitize.pipeline.options import click_options, from_cli, section_dict


def _json_mode(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    """With --json, stdout carries the summary and nothing else: while the command runs, whatever else writes to
    stdout (a library's log forwarding, such as Ray's worker-failure notices) goes to stderr; `emit` writes the
    summary to the real stdout, kept in ``ctx.meta["json_stdout"]``."""
    if value and "json_stdout" not in ctx.meta:
        real = sys.stdout
        ctx.meta["json_stdout"] = real
        sys.stdout = sys.stderr
        ctx.call_on_close(lambda: setattr(sys, "stdout", real))
    return value


json_option = click.option("--json", "as_json", is_flag=True, callback=_json_mode, expose_value=True,
                           help="Print a JSON summary instead of text.")

# The options that say how to read a manifest: the [input] section.
manifest_options = click_options("input", InputConfig)

# --seed: the [run] section's seed, for commands that make random choices.
seed_option = click_options("run", RunConfig, only=("seed",))


def open_manifest_from(manifest: str, values: dict) -> Manifest:
    """Open `manifest` with the [input] options among a command's parsed `values`."""
    return open_manifest(manifest, **section_dict(from_cli("input", InputConfig, values)))
