"""`sanitize` — the click application. Commands parse options and call `sanitize.*`; nothing else lives here.

Exit codes: 0 success, 1 data error (bad input), 2 usage error (bad option or config). Errors are one line.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import click

from sanitize.errors import SanitizeError


class SanitizeGroup(click.Group):
    """A click group that turns library errors into one-line messages with the right exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SanitizeError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)


@click.group(cls=SanitizeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sanitize-data")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """Sanitize image-text pretraining data: embed, filter, deduplicate, audit, export."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def emit(summary: dict, as_json: bool, lines: list[str]) -> None:
    """Print a command's summary: JSON on stdout with --json, else human lines."""
    if as_json:
        click.echo(json.dumps(summary, indent=2, sort_keys=True, default=str))
    else:
        for line in lines:
            click.echo(line)


def main() -> None:
    """Console-script entry point."""
    from sanitize_cli import commands  # noqa: F401  (registers the commands on `cli`)

    cli(prog_name="sanitize")
