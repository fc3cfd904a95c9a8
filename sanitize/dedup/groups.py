"""From duplicate pairs to decisions: connected groups, one kept row per group, no over-pruning.

Every removed row names the kept row it duplicates (`duplicate_of`) and its exact cosine to it, so a
removal can always be traced to a row that stays. With `refuse_chains`, a row is removed only when it is
itself within the threshold of its kept row; the rest of the group is split into new groups and decided
again, until every group is a star around its kept row.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from sanitize.dedup.components import component_roots
from sanitize.dedup.defaults import DEFAULT_KEEP, KEEP_POLICIES
from sanitize.dedup.vectors import UnitRows, pair_cosines
from sanitize.errors import ConfigError, DataError

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class GroupDecisions:
    """Row-aligned decisions for n rows.

    group_id: (n,) int64, dense group number 0..groups-1 in order of the kept row, -1 for rows with no
        duplicate. keep: (n,) bool. duplicate_of: (n,) int64 kept row a removed row duplicates, -1 for kept
        rows. cosine_to_kept: (n,) float64 exact cosine to that row, NaN for kept rows.
    """

    group_id: np.ndarray
    keep: np.ndarray
    duplicate_of: np.ndarray
    cosine_to_kept: np.ndarray

    @property
    def n_groups(self) -> int:
        return int(self.group_id.max()) + 1 if len(self.group_id) else 0


def keep_priority(n_rows: int, keep_values: np.ndarray | None = None, keep: str = DEFAULT_KEEP) -> np.ndarray:
    """Rank of each row as the one to keep (0 = most preferred), (n_rows,) int64, all ranks distinct.

    Without `keep_values` the smallest row index is preferred. With them, the largest (keep="max") or
    smallest (keep="min") value; NaN values come last; ties go to the smallest row index.
    Raises ConfigError for an unknown `keep`, DataError when keep_values is not one number per row.
    """
    if keep not in KEEP_POLICIES:
        raise ConfigError(f"keep must be one of {KEEP_POLICIES}, got {keep!r}")
    index = np.arange(n_rows, dtype=np.int64)
    if keep_values is None:
        return index
    values = np.asarray(keep_values)
    if values.shape != (n_rows,):
        raise DataError(f"keep_values: expected {n_rows} values (one per row), got shape {values.shape}")
    if not np.issubdtype(values.dtype, np.number) and values.dtype != bool:
        raise DataError(f"keep_values: expected numbers, got dtype {values.dtype}")
    score = values.astype(np.float64)
    primary = -score if keep == "max" else score
    primary = np.where(np.isnan(primary), np.inf, primary)
    order = np.lexsort((index, primary))
    rank = np.empty(n_rows, dtype=np.int64)
    rank[order] = index
    return rank


def decide_groups(
    x: UnitRows | np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    threshold: float,
    *,
    priority: np.ndarray | None = None,
    refuse_chains: bool = False,
    exact_rep: np.ndarray | None = None,
) -> GroupDecisions:
    """Group the rows of `x` connected by duplicate pairs (a[i], b[i]) and keep one row per group.

    `priority`: from `keep_priority` (default: smallest row index kept). Without `refuse_chains` every
    connected component is one group: its top-priority row is kept, all others are removed as duplicates
    of it (cosine_to_kept may then be below `threshold` for rows reached through a chain). With
    `refuse_chains`, only rows with cosine >= threshold to the kept row are removed; the others are grouped
    again by the pairs among them, and so on until stable; rows exactly equal to the kept row (same
    `exact_rep`, from `exact_representatives`) always count as within the threshold. Guarantees: exactly
    one kept row per group, every removed row's duplicate_of is a kept row, and the result does not depend
    on the order of the pairs.
    """
    n = len(x)
    priority = np.arange(n, dtype=np.int64) if priority is None else priority
    keep = np.ones(n, dtype=bool)
    duplicate_of = np.full(n, -1, dtype=np.int64)
    cosine_to_kept = np.full(n, np.nan, dtype=np.float64)
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    undecided = np.zeros(n, dtype=bool)
    undecided[a] = True
    undecided[b] = True
    while undecided.any():
        live = undecided[a] & undecided[b]
        members, keeper = _component_keepers(n, a[live], b[live], undecided, priority)
        undecided[keeper] = False  # singletons and keepers are kept
        dup = members[members != keeper]
        dup_keeper = keeper[members != keeper]
        cos = pair_cosines(x, dup, dup_keeper)
        if refuse_chains:
            close = cos >= threshold
            if exact_rep is not None:
                close |= exact_rep[dup] == exact_rep[dup_keeper]
        else:
            close = np.ones(len(dup), dtype=bool)
        keep[dup[close]] = False
        duplicate_of[dup[close]] = dup_keeper[close]
        cosine_to_kept[dup[close]] = cos[close]
        undecided[dup[close]] = False
    kept_with_dups = np.unique(duplicate_of[~keep])
    group_id = np.full(n, -1, dtype=np.int64)
    group_id[kept_with_dups] = np.arange(len(kept_with_dups))
    group_id[~keep] = group_id[duplicate_of[~keep]]
    return GroupDecisions(group_id, keep, duplicate_of, cosine_to_kept)


def _component_keepers(
    n: int, a: np.ndarray, b: np.ndarray, undecided: np.ndarray, priority: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """For each undecided row, the top-priority row of its connected component (over pairs a–b)."""
    members = np.flatnonzero(undecided)
    label = component_roots(n, a, b)[members]
    best = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(best, label, priority[members])
    by_rank = np.empty(n, dtype=np.int64)
    by_rank[priority] = np.arange(n)
    return members, by_rank[best[label]]
