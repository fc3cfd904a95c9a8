"""Errors that the CLI turns into a one-line message and an exit code.

`DataError` (exit 1): the input is wrong — a missing file, a bad column, duplicate uids, NaN embeddings.
`ConfigError` (exit 2): the request is wrong — an option out of range, an unknown config key.
Every message names the file, column or row it is about, so one line is enough to act on.
`reading(path, what)` wraps the reading of one input file: whatever way the file is unreadable (missing, a
folder, empty, permission denied, truncated, another format) becomes one DataError naming it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class SanitizeError(Exception):
    """Base class: an expected failure with a message meant for the user."""

    exit_code = 1


class DataError(SanitizeError):
    """The input data cannot be used as it is (exit code 1)."""

    exit_code = 1


class ConfigError(SanitizeError):
    """An option, config value or argument is invalid (exit code 2)."""

    exit_code = 2


class MissingDependencyError(SanitizeError):
    """An optional dependency is needed but not installed; the message carries the install hint."""

    exit_code = 1


# What reading a bad file raises: OSError (also pyarrow's ArrowIOError), EOFError, ValueError (pyarrow's ArrowInvalid,
# numpy's format errors), TypeError (pyarrow's ArrowTypeError), NotImplementedError (pyarrow's unsupported features).
READ_ERRORS = (OSError, EOFError, ValueError, TypeError, NotImplementedError)


def check_file(path: str | os.PathLike, what: str, error: type[SanitizeError] = DataError) -> None:
    """Raise ``error`` (DataError; ConfigError for a config file) ``"<path>: not a readable <what> (<reason>)"``
    unless ``path`` is a non-empty readable file."""
    p = Path(path)
    if p.is_dir():
        reason = "it is a folder"
    elif not p.exists():
        reason = "no such file"
    elif not os.access(p, os.R_OK):
        reason = "permission denied"
    elif p.stat().st_size == 0:
        reason = "the file is empty"
    else:
        return
    raise error(f"{path}: not a readable {what} ({reason})")


@contextmanager
def reading(path: str | os.PathLike, what: str, also: tuple[type[Exception], ...] = ()) -> Iterator[None]:
    """Check ``path`` with :func:`check_file`, then run the ``with`` body, which reads it; what the body raises
    for a bad file (:data:`READ_ERRORS`, and the exception types in ``also``) becomes
    ``DataError("<path>: not a readable <what> (<first line>)")``. SanitizeErrors in the body pass through."""
    check_file(path, what)
    try:
        yield
    except SanitizeError:
        raise
    except (*READ_ERRORS, *also) as e:
        raise DataError(f"{path}: not a readable {what} ({first_line(e)})") from e


def first_line(e: BaseException) -> str:
    """The first non-blank line of an exception's message, or its type name when it has none."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__
