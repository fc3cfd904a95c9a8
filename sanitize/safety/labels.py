"""Label store: one parquet file of human labels per category, appended safely from several processes.

``<project>/labels/<category>.parquet`` holds one row per answer: uid, label (1 = in the category, 0 = not),
source (``seed``, ``active``, ``random-audit``), round, annotator and a UTC timestamp. The file is the history
of answers; `LabelStore.current` reduces it to one label per uid (the latest answer).

Guarantees of `LabelStore.add`:
- atomic: the file is rewritten through `sanitize.io.atomic` under an exclusive `flock` on a lock file beside it,
  so two processes (or two browser tabs behind one server) never lose each other's answers;
- idempotent: re-submitting an identical answer (same uid, label, source and round) adds no row;
- conflicts are never silently overwritten: a uid already labelled differently is reported (raised by
  default, or skipped / recorded as a correction on request);
- uids that are not in the dataset are rejected with the list, before anything is written.

`LabelStore.retract` is the one exception to append-only: an annotator's undo (the labeling page's `u` key)
removes the answers of one uid, source and round, under the same lock, and keeps every other row in order.
"""

from __future__ import annotations

import csv
import fcntl
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sanitize.errors import READ_ERRORS, ConfigError, DataError, check_file, first_line
from sanitize.io.atomic import write_parquet

logger = logging.getLogger(__name__)

SOURCES = ("seed", "active", "random-audit")
ON_CONFLICT = ("raise", "skip", "override")
SCHEMA = pa.schema(
    [
        ("uid", pa.string()),
        ("label", pa.int8()),
        ("source", pa.string()),
        ("round", pa.int32()),
        ("annotator", pa.string()),
        ("timestamp", pa.timestamp("us", tz="UTC")),
    ]
)
_TRUE = {"1", "true", "yes", "y"}
_FALSE = {"0", "false", "no", "n"}
PATH_COLUMNS = ("path", "image_path", "filepath", "file")
_CSV_REASONS = {"unexpected end of data": "a quoted field is never closed"}  # csv.Error's words, said plainly


@dataclass(frozen=True)
class Conflict:
    """A submitted label that contradicts the stored one for the same uid."""

    uid: str
    stored_label: int
    new_label: int
    stored_source: str
    stored_round: int


@dataclass(frozen=True)
class AddResult:
    """What `LabelStore.add` did: rows appended, identical re-submissions ignored, conflicts found."""

    added: int
    unchanged: int
    conflicts: list[Conflict] = field(default_factory=list)


class LabelConflictError(DataError):
    """Submitted labels contradict stored ones; `conflicts` lists them all. Nothing was written."""

    def __init__(self, message: str, conflicts: list[Conflict]) -> None:
        super().__init__(message)
        self.conflicts = conflicts


class UnknownUidError(DataError):
    """Labels refer to uids that are not in the dataset; `uids` lists them all. Nothing was written."""

    def __init__(self, message: str, uids: list[str]) -> None:
        super().__init__(message)
        self.uids = uids


class LabelStore:
    """The labels of one category in one project folder (`<project>/labels/<category>.parquet`)."""

    def __init__(self, project_dir: str | Path, category: str) -> None:
        self.category = category
        self.path = Path(project_dir) / "labels" / f"{category}.parquet"
        self.lock_path = self.path.with_name(f".{category}.lock")

    def read(self) -> pa.Table:
        """Every stored answer (the full history) as a table with `SCHEMA`; empty when there is no file yet."""
        if not self.path.exists():
            return SCHEMA.empty_table()
        return read_store_file(self.path)

    def current(self) -> tuple[np.ndarray, np.ndarray]:
        """(uids, labels): one label per labelled uid, the latest answer winning; sorted by uid."""
        return current_labels(self.read())

    def add(
        self,
        uids: Iterable[str],
        labels: Iterable[Any],
        *,
        source: str,
        round: int | None,
        annotator: str = "",
        known_uids: set[str] | np.ndarray | None = None,
        on_conflict: str = "raise",
        timestamp: datetime | None = None,
    ) -> AddResult:
        """Append answers; see the module docstring for the guarantees.

        `labels` are 0/1 (bools and "0"/"1"/"yes"/"no" are accepted). `known_uids` is the dataset's uid set:
        any uid outside it raises `UnknownUidError`. `on_conflict`: "raise" (default) raises
        `LabelConflictError` and writes nothing; "skip" writes the other answers and returns the conflicts;
        "override" records the new answers as corrections (the history keeps both; the newest wins).
        `round` None: the next round (`next_round` of the history), chosen under the lock, and an answer equal to
        the uid's latest one from the same source (in any round) is unchanged, so adding one file twice, or from
        two processes at once, stores each answer once.
        """
        if source not in SOURCES:
            raise ConfigError(f"label source {source!r} is not one of {', '.join(SOURCES)}")
        if on_conflict not in ON_CONFLICT:
            raise ConfigError(f"on_conflict {on_conflict!r} is not one of {', '.join(ON_CONFLICT)}")
        if round is not None and (isinstance(round, bool) or not isinstance(round, (int, np.integer)) or round < 0):
            raise ConfigError(f"label round must be an integer >= 0, got {round!r}")
        batch = _dedupe_batch(list(map(str, uids)), [parse_label(v, where=f"label {i}") for i, v in enumerate(labels)])
        if known_uids is not None:
            _reject_unknown(batch, known_uids)
        stamp = timestamp or datetime.now(timezone.utc)

        with self._locked():
            table = self.read()
            columns = [table[name].to_pylist() for name in ("uid", "label", "source", "round")]
            seen = set(zip(*columns, strict=True))
            latest = {uid: row for row, uid in enumerate(columns[0])}  # the last answer per uid wins
            any_round = round is None
            if any_round:
                round = next_round(table)
            new_rows: list[tuple[str, int]] = []
            conflicts: list[Conflict] = []
            unchanged = 0
            for uid, label in batch.items():
                row = latest.get(uid)
                if (uid, label, source, int(round)) in seen or (
                        any_round and row is not None and (columns[1][row], columns[2][row]) == (label, source)):
                    unchanged += 1
                elif row is not None and columns[1][row] != label:
                    conflicts.append(Conflict(uid, columns[1][row], label, columns[2][row], columns[3][row]))
                else:
                    new_rows.append((uid, label))
            if conflicts and on_conflict == "raise":
                raise LabelConflictError(
                    f"{self.path}: {len(conflicts)} uids are already labelled differently: "
                    + _preview([f"{c.uid} ({c.stored_label}→{c.new_label})" for c in conflicts])
                    + " (pass on_conflict='skip' or 'override')",
                    conflicts,
                )
            if on_conflict == "override":
                new_rows += [(c.uid, c.new_label) for c in conflicts]
            if new_rows:
                appended = pa.table(
                    {
                        "uid": [u for u, _ in new_rows],
                        "label": [lab for _, lab in new_rows],
                        "source": [source] * len(new_rows),
                        "round": [int(round)] * len(new_rows),
                        "annotator": [annotator] * len(new_rows),
                        "timestamp": [stamp] * len(new_rows),
                    },
                    schema=SCHEMA,
                )
                write_parquet(self.path, pa.concat_tables([table, appended]))
        if conflicts:
            logger.warning("%s: %d conflicting labels (%s)", self.path, len(conflicts), on_conflict)
        logger.info("%s: %d labels added, %d unchanged", self.path, len(new_rows), unchanged)
        return AddResult(added=len(new_rows), unchanged=unchanged, conflicts=conflicts)

    def retract(self, uid: str, *, source: str, round: int) -> int:
        """Take back the answers for `uid` given with `source` in `round` (an annotator's undo); return how many
        rows were removed (0 when there were none, and then nothing is written).

        The only way rows leave the history: every other row, older or newer, is kept in order. Locked and
        atomic like `add`, so a concurrent `add` or `retract` never sees a half-written file.
        """
        if source not in SOURCES:
            raise ConfigError(f"label source {source!r} is not one of {', '.join(SOURCES)}")
        with self._locked():
            table = self.read()
            match = np.array(
                [u == uid and s == source and r == round for u, s, r in zip(
                    table["uid"].to_pylist(), table["source"].to_pylist(), table["round"].to_pylist(), strict=True)],
                dtype=bool,
            )
            removed = int(match.sum())
            if removed:
                write_parquet(self.path, table.filter(pa.array(~match, pa.bool_())))
        logger.info("%s: retracted %d answers for %s (%s, round %d)", self.path, removed, uid, source, round)
        return removed

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def read_store_file(path: str | Path) -> pa.Table:
    """Read and validate a label store file; `DataError` naming the file (and column or row) when malformed."""
    path = Path(path)
    try:
        table = pq.read_table(path)
    except READ_ERRORS as exc:  # also a footer whose names are not UTF-8 (UnicodeDecodeError)
        raise DataError(f"{path}: not a readable parquet label file ({first_line(exc)})") from None
    missing = [name for name in SCHEMA.names if name not in table.column_names]
    if missing:
        raise DataError(f"{path}: label file lacks column {missing[0]!r}")
    try:
        table = table.select(SCHEMA.names).cast(SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise DataError(f"{path}: label file has a column of the wrong type ({exc})") from None
    try:
        table.validate(full=True)
    except pa.ArrowInvalid as exc:  # text that is not UTF-8
        raise DataError(f"{path}: not a readable parquet label file ({exc})") from None
    for name in ("uid", "label", "source", "round"):
        if table[name].null_count:
            raise DataError(f"{path}: column {name!r} has {table[name].null_count} empty values")
    labels = table["label"].to_numpy()
    bad = np.flatnonzero((labels != 0) & (labels != 1))
    if len(bad):
        raise DataError(f"{path}: row {bad[0]}: label {labels[bad[0]]} is not 0 or 1")
    bad_sources = sorted(set(table["source"].to_pylist()) - set(SOURCES))
    if bad_sources:
        raise DataError(f"{path}: column 'source' has unknown value {bad_sources[0]!r}")
    return table


def current_labels(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Reduce an answer history to (uids, labels), one per uid, the latest row winning; sorted by uid."""
    latest: dict[str, int] = {}
    for uid, label in zip(table["uid"].to_pylist(), table["label"].to_pylist(), strict=True):
        latest[uid] = label
    uids = np.array(sorted(latest), dtype=str)
    return uids, np.array([latest[u] for u in uids.tolist()], dtype=np.int8)


def parse_label(value: Any, *, where: str) -> int:
    """0 or 1 from an int, bool or string ("1", "0", "yes", "no", "true", "false"); `DataError` otherwise."""
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return int(value)
    if isinstance(value, (float, np.floating)) and value in (0.0, 1.0):
        return int(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return 1
        if text in _FALSE:
            return 0
    raise DataError(f"{where}: {value!r} is not a label (use 1 or 0)")


@dataclass(frozen=True)
class LabelFile:
    """Answers read from a CSV/parquet file: uids and labels, plus the batch round when the file has one."""

    uids: list[str]
    labels: list[int]
    rounds: list[int] | None
    unanswered: int


def next_round(history: pa.Table) -> int:
    """The number of the next active-learning round: 1 after the seed labels (round 0), then max + 1."""
    if history.num_rows == 0:
        return 1
    return int(max(history["round"].to_pylist())) + 1


def read_label_file(path: str | Path, *, path_to_uid: Mapping[str, str] | None = None) -> LabelFile:
    """Read labelled examples from CSV or parquet: a `uid` (or image `path`) column and a `label` column.

    Rows with an empty label (an unanswered row of a labeling batch) are skipped and counted. Image paths
    are mapped to uids through `path_to_uid`. Raises `DataError` naming the file and row for an empty file,
    a missing column, an unparsable label or an unmapped path.
    """
    path = Path(path)
    rows = _read_rows(path)
    if not rows:
        raise DataError(f"{path}: label file has no rows")
    columns = set(rows[0])
    if "label" not in columns:
        raise DataError(f"{path}: label file lacks a 'label' column (columns: {', '.join(sorted(columns))})")
    key = "uid" if "uid" in columns else next((c for c in PATH_COLUMNS if c in columns), None)
    if key is None:
        raise DataError(f"{path}: label file needs a 'uid' or image 'path' column")
    if key != "uid" and path_to_uid is None:
        raise ConfigError(f"{path}: file identifies images by {key!r}; pass a path-to-uid mapping")
    has_round = "round" in columns

    uids: list[str] = []
    labels: list[int] = []
    rounds: list[int] = []
    unmapped: list[str] = []
    first: dict[str, tuple[int, int]] = {}  # uid -> (row, label) of its first answer
    unanswered = 0
    for i, row in enumerate(rows):
        raw = row.get("label")
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            unanswered += 1
            continue
        label = parse_label(raw, where=f"{path}: row {i + 1}, column 'label'")
        ident = row.get(key)
        if ident is None or not str(ident).strip():
            raise DataError(f"{path}: row {i + 1}: column {key!r} is empty")
        ident = str(ident).strip()
        if key != "uid":
            if ident not in path_to_uid:
                unmapped.append(ident)
                continue
            ident = path_to_uid[ident]
        _check_repeat(path, first, ident, label, i + 1)
        uids.append(ident)
        labels.append(label)
        if has_round:
            rounds.append(_parse_round(row.get("round"), f"{path}: row {i + 1}, column 'round'"))
    if unmapped:
        raise DataError(f"{path}: {len(unmapped)} image paths are not in the dataset: {_preview(unmapped)}")
    if not uids:
        raise DataError(f"{path}: no answered rows (all {unanswered} labels are empty)")
    return LabelFile(uids=uids, labels=labels, rounds=rounds if has_round else None, unanswered=unanswered)


def _read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a CSV or parquet label file as dicts; DataError naming the file (and row) when it cannot be
    read: missing, a folder, empty, unreadable, not CSV/parquet inside, not UTF-8, bad CSV quoting, a column
    named twice or a row with more fields than the header."""
    if not path.exists():
        raise DataError(f"{path}: label file not found")
    if path.is_file() and path.stat().st_size == 0:
        raise DataError(f"{path}: label file is empty")
    check_file(path, "label file")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _read_csv_rows(path)
    if suffix == ".parquet":
        return _read_parquet_rows(path)
    raise DataError(f"{path}: unsupported label file type {suffix!r} (use .csv or .parquet)")


def _read_csv_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a UTF-8 CSV label file (a byte-order mark, as spreadsheets write, is allowed)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, strict=True)
            header = reader.fieldnames
            rows = list(reader)
    except csv.Error as exc:
        reason = _CSV_REASONS.get(str(exc), str(exc))
        # line_num counts the lines of the records read whole: the bad one starts on the next line
        raise DataError(f"{path}: not a readable CSV file (line {reader.line_num + 1}: {reason})") from None
    except READ_ERRORS as exc:
        raise DataError(f"{path}: not a readable CSV file ({first_line(exc)})") from None
    if header is None:
        raise DataError(f"{path}: CSV file has no header row")
    twice = sorted({name for name in header if header.count(name) > 1})
    if twice:
        raise DataError(f"{path}: CSV header names column {twice[0]!r} twice")
    for i, row in enumerate(rows):
        if None in row:  # DictReader's key for the fields beyond the header
            raise DataError(f"{path}: row {i + 1} has {len(header) + len(row[None])} fields, the header "
                            f"{len(header)}")
    return rows


def _read_parquet_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a parquet label file whose uid / image path columns hold text or integers."""
    try:
        table = pq.read_table(path)
    except READ_ERRORS as exc:
        raise DataError(f"{path}: not a readable parquet file ({first_line(exc)})") from None
    key = next((name for name in ("uid", *PATH_COLUMNS) if name in table.column_names), None)
    if key is not None and not _is_text_or_integer(table.schema.field(key).type):
        raise DataError(f"{path}: column {key!r} has type {table.schema.field(key).type}, not text or an integer")
    return table.to_pylist()


def _is_text_or_integer(kind: pa.DataType) -> bool:
    """Whether a column of type `kind` holds identifiers: text or integers, dictionary-encoded or not."""
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_integer(kind)


def _check_repeat(path: Path, first: dict[str, tuple[int, int]], uid: str, label: int, row: int) -> None:
    """Remember the first (row, label) of `uid` in `first`; DataError naming both rows when a later row gives
    the uid the other label (the same label twice is a harmless repeat)."""
    first_row, first_label = first.setdefault(uid, (row, label))
    if first_label != label:
        raise DataError(f"{path}: uid {uid!r} is labelled {first_label} on row {first_row} and {label} on row "
                        f"{row} (one answer per uid)")


def _parse_round(value: Any, where: str) -> int:
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        raise DataError(f"{where}: {value!r} is not a round number") from None
    if number < 0:
        raise DataError(f"{where}: round {number} is negative")
    return number


def _dedupe_batch(uids: list[str], labels: list[int]) -> dict[str, int]:
    if len(uids) != len(labels):
        raise DataError(f"{len(uids)} uids but {len(labels)} labels")
    batch: dict[str, int] = {}
    contradictory: list[str] = []
    for uid, label in zip(uids, labels, strict=True):
        if not uid.strip():
            raise DataError("labels: empty uid")
        if batch.get(uid, label) != label:
            contradictory.append(uid)
        batch[uid] = label
    if contradictory:
        raise DataError(
            f"labels: {len(contradictory)} uids have both labels in one submission: {_preview(contradictory)}"
        )
    return batch


def _reject_unknown(batch: dict[str, int], known_uids: set[str] | np.ndarray) -> None:
    candidates = np.array(list(batch), dtype=str)
    if isinstance(known_uids, (set, frozenset, dict)):
        known = np.fromiter((u in known_uids for u in batch), dtype=bool, count=len(batch))
    else:
        known = np.isin(candidates, np.asarray(known_uids, dtype=str))
    unknown = candidates[~known].tolist()
    if unknown:
        raise UnknownUidError(f"{len(unknown)} labelled uids are not in the dataset: {_preview(unknown)}", unknown)


def _preview(values: list[str], k: int = 5) -> str:
    shown = ", ".join(map(str, values[:k]))
    return shown + (f", … ({len(values) - k} more)" if len(values) > k else "")
