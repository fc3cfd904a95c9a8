"""Random audit samples: draw them with known inclusion probabilities, and read back only their labels.

A certified threshold is only as honest as its sample. Two rules keep it honest:

1. Draw from the *whole* scored pool, including rows already labelled by active learning. Leaving those out
   makes the sample non-random (they are the informative rows). A drawn row that already has a label is
   labelled again, or its label copied, with source ``random-audit``.
2. Count only ``random-audit`` labels. `audit_labels` is the one place that turns a label table into audit
   labels; it refuses to run when there are none, instead of quietly falling back to active-learning labels.

Two designs are available:

``random``
    A simple random sample of ``n`` rows without replacement; every row has inclusion probability n / N.
    This is the design that certifies recall most cheaply.
``stratified``
    Rows are ranked by score and cut into ``n_strata`` strata that halve in size towards the top: the
    bottom half, the next quarter, ..., and the top 1 / 2^(n_strata-1) of rows. Each stratum gets an equal
    share of ``n`` (capped at its size, the rest passed on), drawn at random inside it. High scores, where
    rare positives live, are sampled far more densely, which sharpens precision estimates near a threshold.
    Inclusion probabilities are exact: n_h / N_h in stratum h. Recall certificates from such a sample are
    valid (see `certified_threshold`) but cost more labels, because the huge low-score strata are sampled
    thinly and any positive hiding there must be bounded.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import ArrayLike

from sanitize.errors import ConfigError, DataError
from sanitize.safety.estimates import check_scores
from sanitize.safety.names import AUDIT_STRATEGIES

logger = logging.getLogger(__name__)

RANDOM_AUDIT = "random-audit"
AUDIT_SAMPLE_SCHEMA = pa.schema(
    [
        ("uid", pa.string()),
        ("score", pa.float64()),
        ("stratum", pa.int32()),
        ("inclusion_probability", pa.float64()),
    ]
)


def draw_audit_sample(
    uids: ArrayLike,
    scores: ArrayLike,
    n: int,
    *,
    strategy: str = "random",
    n_strata: int = 10,
    seed: int = 0,
) -> pa.Table:
    """Draw an audit sample of `n` rows from a scored pool for labelling.

    In: `uids` (N unique strings) and `scores` (N finite floats) of the whole pool, the sample size, the
    design (``"random"`` or ``"stratified"``, see the module docstring) and a seed.
    Out: a table (uid, score, stratum, inclusion_probability) of exactly `n` rows in a random order, so that
    labellers do not see rows sorted by score. ``1 / inclusion_probability`` is the row's weight.
    Guaranteed: the same inputs and seed give the same table; inclusion probabilities are exact.
    """
    if strategy not in AUDIT_STRATEGIES:
        raise ConfigError(f"strategy must be one of {', '.join(AUDIT_STRATEGIES)}, got {strategy!r}")
    s = check_scores(scores)
    u = np.asarray(uids)
    if u.shape != s.shape:
        raise DataError(f"uids has {u.shape[0] if u.ndim else 0} rows but scores has {s.shape[0]}")
    n_rows = int(s.shape[0])
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 0 < n <= n_rows:
        raise ConfigError(f"n must be an integer in [1, {n_rows}] (the pool size), got {n!r}")
    uid_array = pa.array(u, type=pa.string())
    if uid_array.null_count:
        raise DataError(f"uids: {uid_array.null_count} missing values")
    if len(pc.unique(uid_array)) != n_rows:
        raise DataError("uids are not unique; each pool row needs its own uid")
    rng = np.random.default_rng(seed)

    if strategy == "random":
        rows = rng.choice(n_rows, size=n, replace=False)
        strata = np.zeros(n, dtype=np.int32)
        probability = np.full(n, n / n_rows)
    else:
        if isinstance(n_strata, bool) or not isinstance(n_strata, (int, np.integer)) or n_strata < 2:
            raise ConfigError(f"n_strata must be an integer >= 2 for a stratified sample, got {n_strata!r}")
        rows, strata, probability = _stratified_rows(s, int(n), int(n_strata), rng)

    order = rng.permutation(n)
    rows, strata, probability = rows[order], strata[order], probability[order]
    logger.info("drew a %s audit sample of %d rows from %d", strategy, n, n_rows)
    return pa.table(
        {
            "uid": uid_array.take(pa.array(rows)),
            "score": pa.array(s[rows]),
            "stratum": pa.array(strata, type=pa.int32()),
            "inclusion_probability": pa.array(probability, type=pa.float64()),
        },
        schema=AUDIT_SAMPLE_SCHEMA,
    )


def stratum_edges(n_rows: int, n_strata: int) -> np.ndarray:
    """Rank boundaries of the halving strata: stratum h holds score ranks [edges[h], edges[h+1])."""
    fractions = 1.0 - 0.5 ** np.arange(n_strata)
    edges = np.round(fractions * n_rows).astype(np.int64)
    return np.append(edges, n_rows)


def _stratified_rows(
    scores: np.ndarray, n: int, n_strata: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # A stable sort makes the strata a function of the scores and row order alone, so ties are reproducible.
    ranked = np.argsort(scores, kind="stable")
    edges = stratum_edges(scores.shape[0], n_strata)
    sizes = np.diff(edges)
    alloc = _equal_allocation(sizes, n)
    rows, strata, probability = [], [], []
    for h in range(n_strata):
        if alloc[h] == 0:
            continue
        members = ranked[edges[h] : edges[h + 1]]
        rows.append(rng.choice(members, size=alloc[h], replace=False))
        strata.append(np.full(alloc[h], h, dtype=np.int32))
        probability.append(np.full(alloc[h], alloc[h] / sizes[h]))
    return np.concatenate(rows), np.concatenate(strata), np.concatenate(probability)


def _equal_allocation(sizes: np.ndarray, n: int) -> np.ndarray:
    """Split n equally over strata, never more than a stratum holds; leftovers go to the top strata first."""
    alloc = np.zeros(sizes.shape[0], dtype=np.int64)
    remaining = n
    while remaining > 0:
        open_ = np.flatnonzero(alloc < sizes)[::-1]  # top strata first
        share, extra = divmod(remaining, open_.shape[0])
        for i, h in enumerate(open_):
            take = min(sizes[h] - alloc[h], share + (1 if i < extra else 0))
            alloc[h] += take
            remaining -= take
    return alloc


def audit_labels(
    label_table: Any,
    sample: pa.Table | None,
    *,
    uid_column: str = "uid",
    label_column: str = "label",
    source_column: str = "source",
) -> pa.Table:
    """Keep only the random-audit labels of a label table, ready for `certified_threshold`.

    In: the category's label table (pyarrow or polars; columns uid, label 0/1, source) and the audit sample
    it was drawn with (`draw_audit_sample`'s table). `sample` is required on purpose: pass ``None`` only to
    state that the labels come from a simple random sample of the whole pool drawn elsewhere.

    Out: a table (uid, label int8, stratum int32, inclusion_probability, weight) with one row per labelled
    audit uid. When some drawn rows of a stratum are still unlabelled, that stratum's inclusion probability
    is scaled down to (labelled rows) / (stratum size): this treats the unlabelled rows as missing at random
    within their stratum, so label every drawn row, or skip rows only for reasons unrelated to content.

    Raises DataError when there are no random-audit labels (saying which sources there are), when one uid
    has conflicting audit labels, or when an audit label is for a uid that is not in `sample`.
    """
    table = label_table.to_arrow() if hasattr(label_table, "to_arrow") else label_table
    if not isinstance(table, pa.Table):
        raise DataError(f"label table must be a pyarrow or polars table, got {type(label_table).__name__}")
    for column in (uid_column, label_column, source_column):
        if column not in table.column_names:
            raise DataError(f"label table has no column {column!r} (columns: {', '.join(table.column_names)})")

    sources = table.column(source_column).to_pylist()
    keep = np.array([src == RANDOM_AUDIT for src in sources], dtype=bool)
    if not keep.any():
        seen = ", ".join(f"{k}={v}" for k, v in sorted(Counter(map(str, sources)).items())) or "none"
        raise DataError(
            f"no {RANDOM_AUDIT} labels among {table.num_rows} labels (sources: {seen}); labels chosen by active "
            f"learning cannot certify a threshold: draw an audit sample, label it with source {RANDOM_AUDIT}"
        )
    uid = np.asarray(table.column(uid_column).filter(pa.array(keep)).to_pylist(), dtype=object)
    label = _labels_01(table.column(label_column).filter(pa.array(keep)).to_pylist(), label_column)
    uid, label = _dedupe(uid, label)

    if sample is None:
        stratum = np.zeros(uid.shape[0], dtype=np.int32)
        probability = np.ones(uid.shape[0])
        weight = np.ones(uid.shape[0])
    else:
        stratum, probability = _join_sample(uid, sample)
        weight = 1.0 / probability
    logger.info("%d random-audit labels (%d positive)", uid.shape[0], int(label.sum()))
    return pa.table(
        {
            "uid": pa.array(uid.tolist(), type=pa.string()),
            "label": pa.array(label, type=pa.int8()),
            "stratum": pa.array(stratum, type=pa.int32()),
            "inclusion_probability": pa.array(probability, type=pa.float64()),
            "weight": pa.array(weight, type=pa.float64()),
        }
    )


def _labels_01(values: list, column: str) -> np.ndarray:
    out = np.empty(len(values), dtype=np.int8)
    for i, v in enumerate(values):
        if v is True or v is False or v in (0, 1):
            out[i] = int(v)
        else:
            raise DataError(f"label table column {column!r}: labels must be 0 or 1, got {v!r} in audit row {i}")
    return out


def _dedupe(uid: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # The same uid labelled twice with the same answer is one label; different answers cannot both be kept.
    first: dict[str, int] = {}
    conflicts: list[str] = []
    keep = np.ones(uid.shape[0], dtype=bool)
    for i, u in enumerate(uid):
        if u in first:
            keep[i] = False
            if label[first[u]] != label[i]:
                conflicts.append(str(u))
        else:
            first[u] = i
    if conflicts:
        shown = ", ".join(conflicts[:5])
        raise DataError(f"{len(conflicts)} uids have conflicting {RANDOM_AUDIT} labels (e.g. {shown}); resolve them")
    return uid[keep], label[keep]


def _join_sample(uid: np.ndarray, sample: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    for column in ("uid", "stratum", "inclusion_probability"):
        if column not in sample.column_names:
            raise DataError(f"audit sample table has no column {column!r}")
    position = {u: i for i, u in enumerate(sample.column("uid").to_pylist())}
    missing = [str(u) for u in uid if u not in position]
    if missing:
        raise DataError(
            f"{len(missing)} {RANDOM_AUDIT} labels are for uids not in the audit sample (e.g. "
            f"{', '.join(missing[:5])}); certify with the sample they were drawn in"
        )
    rows = np.array([position[u] for u in uid], dtype=np.int64)
    drawn_stratum = sample.column("stratum").to_numpy()
    drawn_probability = sample.column("inclusion_probability").to_numpy().astype(np.float64)
    stratum = drawn_stratum[rows].astype(np.int32)
    probability = drawn_probability[rows].copy()
    for h in np.unique(stratum):
        drawn = int(np.count_nonzero(drawn_stratum == h))
        labelled = int(np.count_nonzero(stratum == h))
        if labelled < drawn:
            logger.warning("stratum %d: %d of %d drawn rows labelled; treating the rest as missing at random",
                           h, labelled, drawn)
            probability[stratum == h] *= labelled / drawn
    return stratum, probability
