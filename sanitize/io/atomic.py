"""Atomic file writes: write to a temporary file beside the target, fsync, then rename.

A reader never sees a half-written file: either the old content (or nothing) or the new one. Rename within
one folder is atomic on POSIX file systems. Completion markers are written with the same function, last.

A write that fails for a reason of the file system (disk full, quota, read-only, permission denied) raises
`WriteError`: an `OSError` and a `SanitizeError` at once, whose message names the target file, so the CLI prints
one line (``<file>: cannot write (No space left on device)``) and exits 1. The temporary file is deleted first:
nothing half-written is left under the target's name or beside it.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sanitize.errors import SanitizeError, first_line

# mkstemp creates files readable by the owner only; give finished files the usual mode (0666 less the umask).
_UMASK = os.umask(0)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK
# Errors of the writing body that are the file system's, not the caller's: reported as a WriteError of the target.
# (Other OSErrors of the body, e.g. reading an input inside the `with`, pass through unchanged.)
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})


class WriteError(SanitizeError, OSError):
    """Writing `filename` failed (disk full, read-only folder, permission denied): exit 1, one line naming it."""

    exit_code = 1

    def __init__(self, path: str | os.PathLike, cause: OSError) -> None:
        errno_, reason = cause.errno, cause.strerror or first_line(cause)
        if errno_ is None and _nearly_full(Path(path).parent):  # numpy's short write carries no errno
            errno_, reason = errno.ENOSPC, f"{os.strerror(errno.ENOSPC)}: {reason}"
        super().__init__(errno_, reason, os.fspath(path))

    def __str__(self) -> str:
        return f"{self.filename}: cannot write ({self.strerror})"


@contextmanager
def atomic_path(path: str | os.PathLike, *, durable: bool = True, writes_only: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it onto `path`, on error delete it.

    The parent folder is created when missing. The temporary name keeps the suffix, so libraries that
    look at extensions (numpy's .npy) behave. `durable`: fsync before the rename, so the file survives a power
    loss too; scratch files that a rerun can rebuild skip it (a killed process still never leaves half a file).
    Failures of the file system raise `WriteError` naming `path`: those of creating, syncing and renaming the
    file always, those of the body when their errno says so (`WRITE_ERRNOS`), or always with `writes_only` (a body
    that only writes the temporary file: numpy reports a short write as an OSError without an errno).
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{target.suffix}", dir=target.parent)
        os.close(fd)
    except OSError as exc:
        raise WriteError(target, exc) from exc
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
        except OSError as exc:
            if isinstance(exc, SanitizeError) or not (writes_only or exc.errno in WRITE_ERRNOS):
                raise
            raise WriteError(target, exc) from exc
        try:
            if durable:
                with open(tmp_path, "rb+") as f:
                    os.fsync(f.fileno())
            os.chmod(tmp_path, _FILE_MODE)
            os.replace(tmp_path, target)
        except OSError as exc:
            raise WriteError(target, exc) from exc
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Atomically write `data` to `path`."""
    with atomic_path(path, writes_only=True) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically write UTF-8 `text` to `path`."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write `obj` as indented, key-sorted JSON (stable bytes for equal content)."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def write_parquet(path: str | os.PathLike, table: pa.Table) -> None:
    """Atomically write an Arrow table as parquet (zstd). Equal tables give byte-identical files."""
    with atomic_path(path, writes_only=True) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def write_npy(path: str | os.PathLike, array: np.ndarray, *, durable: bool = True) -> None:
    """Atomically write a numpy array in .npy format (readable with np.load(mmap_mode='r'))."""
    with atomic_path(path, durable=durable, writes_only=True) as tmp, open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)


def write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray], *, durable: bool = True) -> None:
    """Atomically write named arrays as an uncompressed .npz (np.load reads each name on its own)."""
    with atomic_path(path, durable=durable, writes_only=True) as tmp, open(tmp, "wb") as f:
        np.savez(f, **{name: np.asarray(a) for name, a in arrays.items()})


def _nearly_full(folder: Path) -> bool:
    """Whether the file system of `folder` has less than 1 MiB left for this user."""
    try:
        stats = os.statvfs(folder)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < 1 << 20


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
