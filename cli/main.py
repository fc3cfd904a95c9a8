"""`sanitize` — the click application. Commands parse options and call `sanitize.*`; nothing else lives here.

Exit codes: 0 success, 1 data error (bad input), 2 usage error (bad option or config). Errors are one line:
`error: <message>` on stderr, also for an unexpected exception (a bug), unless `--debug` (or SANITIZE_DEBUG=1)
asks for the traceback.

Commands are imported on first use (`LazyGroup`, with the table in `sanitize_cli.commands`): `sanitize --help`
imports no command module, and a command imports only what it needs, so no command that needs no CLIP model
loads torch.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import json
import logging
import sys
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

import click

from sanitize.errors import SanitizeError
from sanitize_cli.commands import COMMANDS


class LazyCommands(MutableMapping[str, click.Command]):
    """A group's commands by name. A name of `table` (name -> ("module:attribute", first paragraph of its help))
    is imported on first access, and that paragraph is put before the command's own help (its docstring)."""

    def __init__(self, table: Mapping[str, tuple[str, str]], loaded: Mapping[str, click.Command]) -> None:
        self.table = dict(table)
        self.loaded = dict(loaded)

    def __getitem__(self, name: str) -> click.Command:
        if name not in self.loaded:
            target, first = self.table[name]
            module, _, attribute = target.partition(":")
            command = copy.copy(getattr(importlib.import_module(module), attribute))  # a copy: its help changes
            command.help = "\n\n".join([first, *([inspect.cleandoc(command.help)] if command.help else [])])
            self.loaded[name] = command
        return self.loaded[name]

    def __setitem__(self, name: str, command: click.Command) -> None:
        self.loaded[name] = command

    def __delitem__(self, name: str) -> None:
        if name not in self:
            raise KeyError(name)
        self.table.pop(name, None)
        self.loaded.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        return iter({**self.table, **self.loaded})

    def __len__(self) -> int:
        return len({**self.table, **self.loaded})

    def stand_in(self, name: str) -> click.Command:
        """The command if it is imported, else a stand-in with its help line (to list it without importing it)."""
        if name in self.loaded:
            return self.loaded[name]
        return click.Command(name, help=self.table[name][1])


class LazyGroup(click.Group):
    """A click group whose commands (`lazy`: name -> ("module:attribute", first paragraph of its help)) are imported
    when one runs or shows its help; the group's own --help lists them without importing any. `group.commands`
    still maps every name to its command (`LazyCommands`), so code that looks a command up works unchanged."""

    def __init__(self, *args: Any, lazy: Mapping[str, tuple[str, str]] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands = LazyCommands(lazy or {}, self.commands)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """click's command list, with each help line from the table for commands not imported yet."""
        rows = [(name, self.commands.stand_in(name)) for name in self.list_commands(ctx)]
        rows = [(name, command) for name, command in rows if not command.hidden]
        if rows:
            limit = formatter.width - 6 - max(len(name) for name, _ in rows)
            with formatter.section("Commands"):
                formatter.write_dl([(name, command.get_short_help_str(limit)) for name, command in rows])


class SanitizeGroup(LazyGroup):
    """The `sanitize` group: lazy commands, and errors as one line on stderr with the right exit code.

    A library error (`SanitizeError`) exits with its own code; an OSError with an errno (a vanished file, a
    read-only folder, a full disk) exits 1 naming the file; any other exception is a bug and exits 1 with a hint
    to rerun with --debug. With --debug both keep their traceback. click's own errors (usage, abort) pass through.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as e:
            _close_progress_bars()
            if ctx.params.get("debug"):
                raise
            if isinstance(e, SanitizeError):
                click.echo(f"error: {_one_line(str(e))}", err=True)
                sys.exit(e.exit_code)
            if isinstance(e, OSError) and e.errno is not None:
                # the environment, not a bug: a file vanished, a folder is read-only, the disk is full
                click.echo(f"error: {_one_line(_os_error(e))}", err=True)
                sys.exit(1)
            message = _one_line(f"{type(e).__name__}: {e}" if str(e).strip() else type(e).__name__)
            click.echo(f"error: unexpected {message} (rerun with --debug for the traceback)", err=True)
            sys.exit(1)


def _close_progress_bars() -> None:
    """Close the progress bars a failed command left open, so its error starts a line of its own."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        bar.close()


def _os_error(e: OSError) -> str:
    """``<file>: <reason>`` (both files for a rename) for an OSError from the file system."""
    reason = e.strerror or str(e)
    if e.filename is None:
        return reason
    files = f"{e.filename} -> {e.filename2}" if e.filename2 is not None else str(e.filename)
    return f"{files}: {reason}"


def _one_line(text: str) -> str:
    """``text`` with its lines joined by spaces, so that an error is always one line."""
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


@click.group(cls=SanitizeGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sanitize-data")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.option("--debug", is_flag=True, envvar="SANITIZE_DEBUG",
              help="Show the traceback of an error instead of one line (also: SANITIZE_DEBUG=1).")
def cli(verbose: int, debug: bool) -> None:
    """Sanitize image-text pretraining data: embed, filter, deduplicate, audit, export."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def emit(summary: dict, as_json: bool, lines: list[str]) -> None:
    """Print a command's summary: JSON on stdout with --json, else human lines."""
    if as_json:
        context = click.get_current_context(silent=True)
        stream = context.meta.get("json_stdout") if context is not None else None
        click.echo(json.dumps(summary, indent=2, sort_keys=True, default=str), file=stream)
    else:
        for line in lines:
            click.echo(line)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="sanitize")
