"""Options shared by several commands. Stage options come from the stages' config dataclasses
(`sanitize.pipeline.options.click_options`), so a default is written once, in the dataclass."""

from __future__ import annotations

import click

from sanitize.io.manifest import Manifest, open_manifest
from sanitize.pipeline.config import InputConfig, RunConfig
from sanitize.pipeline.options import click_options, from_cli, section_dict

json_option = click.option("--json", "as_json", is_flag=True, help="Print a JSON summary instead of text.")

# The options that say how to read a manifest: the [input] section.
manifest_options = click_options("input", InputConfig)

# --seed: the [run] section's seed, for commands that make random choices.
seed_option = click_options("run", RunConfig, only=("seed",))


def open_manifest_from(manifest: str, values: dict) -> Manifest:
    """Open `manifest` with the [input] options among a command's parsed `values`."""
    return open_manifest(manifest, **section_dict(from_cli("input", InputConfig, values)))
