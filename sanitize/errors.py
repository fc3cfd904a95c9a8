"""Errors that the CLI turns into a one-line message and an exit code.

`DataError` (exit 1): the input is wrong — a missing file, a bad column, duplicate uids, NaN embeddings.
`ConfigError` (exit 2): the request is wrong — an option out of range, an unknown config key.
Every message names the file, column or row it is about, so one line is enough to act on.
"""

from __future__ import annotations


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
