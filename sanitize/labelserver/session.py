"""The state of one browser labeling session: the current batch, its answers, skips, undo, retrain, next round.

A session labels one category of one project over one run, a batch (`batches/<cat>/round_<k>.parquet`) at a
time. Nothing lives only in memory: every answer goes straight into the label store (source ``active``, the
batch's round), a skip goes into a sidecar file beside the batch (`round_<k>.skips.json`), and the view of the
batch is rebuilt from those two on every call. So a reloaded page or a restarted server continues where the
last answer left off, and two tabs (or two sessions) see each other's answers.

Guarantees:
- one stored answer per uid and round: the same answer again is ``unchanged``; a different one is a
  ``conflict``, reported and not written (the store's lock makes this hold across threads and processes);
- undo takes back one action of this batch (the named uid's, else the batch's latest) and nothing else;
- an item is done when the uid has a label in the store (any source) or was skipped; skipped uids stay
  unlabelled, so a later round may propose them again;
- skips are read back from the sidecar on every view and changed under an exclusive lock on a file beside it
  (read-modify-write), so two servers on one project keep each other's skips.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from sanitize.errors import ConfigError, DataError
from sanitize.io.atomic import write_json
from sanitize.io.run_rows import metadata_rows, row_images
from sanitize.io.runfolder import RunFolder
from sanitize.safety.contact_sheet import thumbnail_jpeg
from sanitize.safety.labels import Conflict, parse_label
from sanitize.safety.names import COLD_START, STRATEGIES
from sanitize.safety.project import LabelProject
from sanitize.safety.workflow import category_status, current_classifier, propose_next_batch, run_pool

logger = logging.getLogger(__name__)

SOURCE = "active"
BATCH_RE = re.compile(r"round_(\d+)\.parquet")
BATCH_COLUMNS = ("uid", "caption", "score", "reason", "strategy", "round")
THUMB_PX = 384


class NotInBatchError(DataError):
    """The uid is not an item of the current batch (the HTTP layer answers 404)."""


class StaleRoundError(ConfigError):
    """The request names a round that is not the current batch's (another tab moved on)."""


class BatchNotDoneError(ConfigError):
    """Retraining or a next round was asked for while items of the batch are still open."""


@dataclass(frozen=True)
class BatchItem:
    """One row of a labeling batch, as the page shows it."""

    uid: str
    caption: str
    score: float
    reason: str


@dataclass(frozen=True)
class Outcome:
    """What one answer, skip or undo did.

    `action` is one of ``added``, ``unchanged``, ``conflict`` (answer); ``skipped``, ``already_done`` (skip);
    ``retracted``, ``unskipped``, ``nothing`` (undo). `conflict` is set for ``conflict`` only.
    """

    action: str
    uid: str | None
    label: int | None = None
    conflict: Conflict | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["conflict"] = None if self.conflict is None else asdict(self.conflict)
        return out


class LabelingSession:
    """Label `category` of `project` over `run`'s embeddings, one batch of `n` rows at a time.

    Build it, then call :meth:`load` (continues the latest unfinished batch, else proposes one). All methods
    are thread-safe. `encode_text` is the run's CLIP text tower, needed only for a cold start (fewer than 5
    positive labels); `strategy` chooses later batches (see `sanitize.safety.strategies`).
    """

    def __init__(
        self,
        project: LabelProject,
        run: RunFolder,
        category: str,
        *,
        n: int = 50,
        strategy: str = "uncertainty",
        seed: int = 0,
        annotator: str = "",
        encode_text: Callable[[list[str]], np.ndarray] | None = None,
    ) -> None:
        self.project = project
        self.run = run
        self.category = category
        self.n = n
        self.strategy = strategy
        self.seed = seed
        self.annotator = annotator
        self.encode_text = encode_text
        self._lock = threading.RLock()
        self._round: int | None = None
        self._batch_strategy = ""
        self._items: dict[str, BatchItem] = {}
        self._digest = ""
        self._skips: dict[str, str] = {}
        self._images: dict[str, bytes] = {}
        self._thumbs: dict[str, bytes | None] = {}
        self._metrics: dict[str, Any] | None = None

    # -- batch ---------------------------------------------------------------------------------------------
    def load(self) -> int:
        """Open the latest proposed batch when some item is still open, else propose a new one; return its round.

        ConfigError for an unknown category, a bad `n` or strategy; DataError when nothing is left to propose.
        """
        _check_strategy(self.strategy)
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise ConfigError(f"batch size n must be an integer >= 1, got {self.n!r}")
        spec = self.project.category(self.category)
        with self._lock:
            latest = self._latest_batch_file()
            if latest is not None:
                self._open_batch(latest)
                if not self._is_complete(self._done()):
                    logger.info("%s: continuing round %d (%s)", spec.name, self._round, latest)
                    return self._round
            return self._propose(self.strategy)

    @property
    def round(self) -> int:
        """The current batch's round (after `load`)."""
        if self._round is None:
            raise ConfigError("labeling session not loaded; call load() first")
        return self._round

    @property
    def uids(self) -> list[str]:
        """The current batch's uids, in batch order (best first, as the strategy ranked them)."""
        return list(self._items)

    def state(self) -> dict[str, Any]:
        """Everything the page shows: the category's guidelines, the batch, each item's status, the metrics.

        An item's `status` is ``positive`` / ``negative`` (labelled, in this round or elsewhere), ``skipped``,
        or None (open).
        """
        spec = self.project.category(self.category)
        with self._lock:
            done = self._done()
            items = [{**asdict(item), "status": done.get(uid), "has_image": uid in self._images}
                     for uid, item in self._items.items()]
            return {
                "category": spec.name,
                "description": spec.description,
                "guidelines": spec.guidelines,
                "round": self.round,
                "strategy": self._batch_strategy,
                "next_strategy": self.strategy,
                "strategies": list(STRATEGIES),
                "annotator": self.annotator,
                "size": len(items),
                "done": len(done),
                "complete": self._is_complete(done),
                "items": items,
                "metrics": self._metrics,
            }

    # -- actions -------------------------------------------------------------------------------------------
    def answer(self, uid: str, label: Any, *, round: int | None = None) -> Outcome:
        """Store `label` (1 = in the category, 0 = not) for batch item `uid` at once; see the module guarantees.

        Answering a skipped item takes the skip back. NotInBatchError for a uid outside the batch,
        StaleRoundError when `round` is given and is not the current one, ConfigError for a label not 0/1.
        """
        try:
            value = parse_label(label, where=f"answer for {uid}")
        except DataError as exc:
            raise ConfigError(str(exc)) from None
        with self._lock:
            self._check(uid, round)
            result = self.project.store(self.category).add(
                [uid], [value], source=SOURCE, round=self.round, annotator=self.annotator,
                known_uids=set(self._items), on_conflict="skip")
            if result.conflicts:
                return Outcome("conflict", uid, value, result.conflicts[0])
            if uid in self._refresh_skips():
                self._change_skips(lambda skips: {k: v for k, v in skips.items() if k != uid})
            self._metrics = None
            return Outcome("added" if result.added else "unchanged", uid, value)

    def skip(self, uid: str, *, round: int | None = None) -> Outcome:
        """Mark batch item `uid` as skipped (sidecar file, not the store); ``already_done`` when it has a label."""
        with self._lock:
            self._check(uid, round)
            status = self._done().get(uid)
            if status not in (None, "skipped"):
                return Outcome("already_done", uid, int(status == "positive"))
            if status is None:
                self._change_skips(lambda skips: {**skips, uid: skips.get(uid, _now())})
                self._metrics = None
            return Outcome("skipped", uid)

    def undo(self, uid: str | None = None, *, round: int | None = None) -> Outcome:
        """Take back the answer or skip of `uid` in this batch, or with `uid` None the batch's latest action.

        Only answers given in this batch's round with source ``active`` can be taken back (`LabelStore.retract`);
        ``nothing`` when there is none.
        """
        with self._lock:
            if uid is not None:
                self._check(uid, round)
            elif round is not None and round != self.round:
                raise StaleRoundError(f"round {round} is over; the current batch is round {self.round}")
            actions = self._actions()
            if uid is not None:
                actions = [a for a in actions if a[1] == uid]
            if not actions:
                return Outcome("nothing", uid)
            _, target, kind = actions[-1]
            self._metrics = None
            if kind == "skip":
                self._change_skips(lambda skips: {k: v for k, v in skips.items() if k != target})
                return Outcome("unskipped", target)
            self.project.store(self.category).retract(target, source=SOURCE, round=self.round)
            return Outcome("retracted", target)

    def finish(self) -> dict[str, Any]:
        """Retrain on the stored seed+active labels (as `sanitize label add` does) and return the new metrics.

        The metrics are `category_status`'s: label counts, cross-validated precision/recall, expected removal
        rate, and the certificate of the last `sanitize classify` when there is one. BatchNotDoneError while
        items are open.
        """
        with self._lock:
            if not self._is_complete(self._done()):
                raise BatchNotDoneError(f"round {self.round} still has open items; answer or skip them first")
            if self._metrics is None:
                # category_status only reads, so retrain (and save, when the labels changed) first, as `label add`.
                current_classifier(self.project, self.run, self.category, run_pool(self.run), seed=self.seed)
                status = category_status(self.project, self.category, self.run, seed=self.seed)
                keys = ("n_labelled", "n_positive", "n_negative", "cv_precision", "cv_recall", "cv_folds",
                        "threshold", "removal_rate", "pool_rows", "notes", "audit", "certificate", "classifier")
                self._metrics = {key: status.get(key) for key in keys}
            return self._metrics

    def next_batch(self, strategy: str | None = None, *, round: int | None = None) -> int:
        """Propose the next round with `strategy` (default: the session's) once this batch is done; its round.

        BatchNotDoneError while items are open; StaleRoundError when another tab already moved on.
        """
        with self._lock:
            if round is not None and round != self.round:
                raise StaleRoundError(f"round {round} is over; the current batch is round {self.round}")
            if not self._is_complete(self._done()):
                raise BatchNotDoneError(f"round {self.round} still has open items; answer or skip them first")
            chosen = strategy or self.strategy
            _check_strategy(chosen)
            return self._propose(chosen)

    def thumbnail(self, uid: str) -> bytes | None:
        """A JPEG thumbnail of batch item `uid` (None when its image is missing or unreadable).

        Only the batch's own uids are looked up, through the run's metadata; NotInBatchError for any other.
        """
        with self._lock:
            if uid not in self._items:
                raise NotInBatchError(f"uid {uid!r} is not in round {self._round}'s batch")
            if uid not in self._thumbs:
                self._thumbs[uid] = thumbnail_jpeg(self._images.get(uid), THUMB_PX, uid)
            return self._thumbs[uid]

    # -- internals -----------------------------------------------------------------------------------------
    def _propose(self, strategy: str) -> int:
        result = propose_next_batch(self.project, self.run, self.category, self.n, strategy=strategy,
                                    seed=self.seed, encode_text=self.encode_text)
        self._open_batch(result.paths["parquet"])
        # A proposal can reuse a round number (when the last batch was only skipped) and even its rows.
        self._change_skips(lambda _skips: {})
        logger.info("%s: proposed round %d, %d rows by %s", self.category, self._round, len(self._items),
                    result.strategy)
        return self._round

    def _latest_batch_file(self) -> Path | None:
        found = [(int(m.group(1)), path) for path in self.project.batch_dir(self.category).glob("round_*.parquet")
                 if (m := BATCH_RE.fullmatch(path.name))]
        return max(found)[1] if found else None

    def _open_batch(self, path: Path) -> None:
        try:
            table = pq.read_table(path)
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: not a readable batch file ({exc})") from None
        missing = [c for c in BATCH_COLUMNS if c not in table.column_names]
        if missing:
            raise DataError(f"{path}: batch file lacks column {missing[0]!r}")
        rows = table.select(list(BATCH_COLUMNS)).to_pylist()
        rounds = {row["round"] for row in rows}
        if len(rounds) != 1:
            raise DataError(f"{path}: batch file has {len(rounds)} rounds in column 'round', expected one")
        self._round = int(rounds.pop())
        self._batch_strategy = rows[0]["strategy"] or ""
        self._items = {row["uid"]: BatchItem(row["uid"], row["caption"] or "", float(row["score"] or 0.0),
                                             row["reason"] or "") for row in rows}
        self._digest = hashlib.sha256("\n".join(self._items).encode()).hexdigest()[:16]
        self._skips = self._read_skips()
        rows = metadata_rows(self.run, list(self._items), ("key", "image", "shard"))
        self._images = row_images(self.run, rows)
        self._thumbs = {}
        self._metrics = None

    def _skips_path(self) -> Path:
        return self.project.batch_dir(self.category) / f"round_{self.round}.skips.json"

    def _read_skips(self) -> dict[str, str]:
        path = self._skips_path()
        if not path.exists():
            return {}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: unreadable skip file ({exc})") from None
        if data.get("batch") != self._digest:
            logger.info("%s: skips belong to an earlier batch file, ignored", path)
            return {}
        return {uid: when for uid, when in data.get("skipped", {}).items() if uid in self._items}

    def _refresh_skips(self) -> dict[str, str]:
        """Re-read the skip file, which another session (tab, server or process) may have changed."""
        self._skips = self._read_skips()
        return self._skips

    def _change_skips(self, change: Callable[[dict[str, str]], dict[str, str]]) -> None:
        """Read-modify-write the skip file under an exclusive lock, so skips from other sessions are kept."""
        path = self._skips_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            skips = change(self._read_skips())
            write_json(path, {"round": self.round, "batch": self._digest, "skipped": skips})
            self._skips = skips
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _done(self) -> dict[str, str]:
        """uid → ``positive`` / ``negative`` / ``skipped`` for the batch items that are not open."""
        self._refresh_skips()
        uids, labels = self.project.store(self.category).current()
        labelled = dict(zip(uids.tolist(), labels.tolist(), strict=True))
        done = {uid: "skipped" for uid in self._skips}
        done.update({uid: "positive" if labelled[uid] else "negative" for uid in self._items if uid in labelled})
        return done

    def _is_complete(self, done: dict[str, str]) -> bool:
        return len(done) == len(self._items)

    def _actions(self) -> list[tuple[datetime, str, str]]:
        """(time, uid, "answer" | "skip") of this batch's takeable-back actions, oldest first."""
        history = self.project.store(self.category).read()
        self._refresh_skips()
        actions = [
            (stamp, uid, "answer")
            for uid, source, rnd, stamp in zip(*(history[c].to_pylist() for c in ("uid", "source", "round",
                                                                                    "timestamp")), strict=True)
            if source == SOURCE and rnd == self.round and uid in self._items
        ]
        actions += [(datetime.fromisoformat(when), uid, "skip") for uid, when in self._skips.items()]
        return sorted(actions)

    def _check(self, uid: str, round: int | None) -> None:
        if round is not None and round != self.round:
            raise StaleRoundError(f"round {round} is over; the current batch is round {self.round}")
        if uid not in self._items:
            raise NotInBatchError(f"uid {uid!r} is not in round {self.round}'s batch")


def _check_strategy(strategy: str) -> None:
    if strategy not in (*STRATEGIES, COLD_START):
        raise ConfigError(f"strategy {strategy!r} is not one of {', '.join((*STRATEGIES, COLD_START))}")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()
