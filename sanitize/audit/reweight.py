"""Weights on the kept rows that undo a filter's shift in who is represented.

A weight depends only on a row's attribute cell, so the plan is computed from the merged `CountTable` and
applied shard by shard (`apply_weights`), at any scale. Two methods:
- "poststratify": weight(cell) = target share / kept share, on one attribute or on the joint cell of several
  (restores the joint pre-filter distribution exactly when every cell kept some rows);
- "rake": iterative proportional fitting over the joint kept cells until every attribute's weighted marginal
  matches its target (for several marginal targets, or when joint cells are too sparse).
The target is the pre-filter distribution (default) or a user target per attribute, e.g.
{"age": {"young": 0.75, "old": 0.25}}; each must sum to 1. Groups a user target does not list (e.g. "unknown")
keep their kept share; the listed groups split the rest in the target's proportions.
Weights have mean 1 over the kept rows. A target group with no kept rows cannot be restored: it is reported as
unreachable and shows in the residual shift.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa

from sanitize.audit.counts import KEEP_PREFIX, CountTable
from sanitize.audit.specs import UNKNOWN
from sanitize.audit.stats import kish_ess
from sanitize.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

METHODS = ("poststratify", "rake")
SUM_TOLERANCE = 1e-6


@dataclass(frozen=True)
class WeightingPlan:
    """Weight per joint cell of `attributes` over the rows kept by every stage up to `stage`.

    `cells` has the attribute columns, `before` (rows in the input), `kept` and `weight`.
    `targets[attribute][group]` is the marginal share aimed at; `shift_unweighted` / `shift_weighted` give, per
    attribute, the largest absolute gap in percentage points and the total variation distance to the target.
    """

    attributes: tuple[str, ...]
    method: str
    stage: str
    stages: tuple[str, ...]
    cells: pl.DataFrame
    targets: dict[str, dict[str, float]]
    user_target: bool
    ess: float
    kept_rows: int
    shift_unweighted: dict[str, dict[str, float]]
    shift_weighted: dict[str, dict[str, float]]
    unreachable: list[str]
    iterations: int

    def summary(self) -> dict:
        """JSON-ready summary for the report: method, ESS, weight range, per-group shares, residual shift."""
        kept = self.cells["kept"].to_numpy()
        w = self.cells["weight"].to_numpy()
        live = kept > 0
        marginals = {}
        for a in self.attributes:
            unweighted = _shares(self.cells, a, kept)
            weighted = _shares(self.cells, a, kept * w)
            before = _shares(self.cells, a, self.cells["before"].to_numpy())
            marginals[a] = [
                {
                    "group": g,
                    "share_before": before.get(g, 0.0),
                    "share_kept": unweighted.get(g, 0.0),
                    "share_weighted": weighted.get(g, 0.0),
                    "target": self.targets[a].get(g, 0.0),
                }
                for g in sorted(set(self.targets[a]) | set(before))
            ]
        return {
            "attributes": list(self.attributes),
            "method": self.method,
            "stage": self.stage,
            "target": "user" if self.user_target else "pre-filter distribution",
            "kept_rows": self.kept_rows,
            "ess": self.ess,
            "ess_ratio": self.ess / self.kept_rows if self.kept_rows else None,
            "weight_min": float(w[live].min()) if live.any() else None,
            "weight_max": float(w[live].max()) if live.any() else None,
            "iterations": self.iterations,
            "unreachable": list(self.unreachable),
            "shift_unweighted": self.shift_unweighted,
            "shift_weighted": self.shift_weighted,
            "marginals": marginals,
        }


def _shares(cells: pl.DataFrame, attribute: str, mass: np.ndarray) -> dict[str, float]:
    """Share of `mass` (one number per cell) in each group of `attribute`."""
    # Sorted groups: float sums in a fixed order, so reruns (and other engines) give the same bits.
    agg = (pl.DataFrame({"g": cells[attribute], "m": mass.astype(np.float64)})
           .group_by("g").agg(pl.col("m").sum()).sort("g"))
    total = float(agg["m"].sum())
    return {g: (m / total if total else 0.0) for g, m in zip(agg["g"], agg["m"], strict=True)}


def _shift(actual: Mapping[str, float], target: Mapping[str, float]) -> dict[str, float]:
    groups = sorted(set(actual) | set(target))
    gaps = [abs(actual.get(g, 0.0) - target.get(g, 0.0)) for g in groups]
    return {"max_abs_pp": 100 * max(gaps, default=0.0), "tvd": 0.5 * sum(gaps)}


def _normalise_target(target: Mapping, attributes: Sequence[str]) -> dict[str, dict[str, float]]:
    if target and all(isinstance(v, int | float) for v in target.values()):
        if len(attributes) != 1:
            raise ConfigError("target: give one {group: share} table per attribute when weighting several attributes")
        target = {attributes[0]: target}
    out = {}
    for attr, shares in target.items():
        if attr not in attributes:
            raise ConfigError(f"target: attribute '{attr}' is not among the weighted attributes {list(attributes)}")
        if not isinstance(shares, Mapping) or not shares:
            raise ConfigError(f"target for '{attr}': must be a non-empty {{group: share}} table")
        for g, v in shares.items():
            if not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
                raise ConfigError(f"target for '{attr}': share of '{g}' must be a number >= 0, got {v!r}")
        total = float(sum(shares.values()))
        if abs(total - 1.0) > SUM_TOLERANCE:
            raise ConfigError(f"target for '{attr}': shares sum to {total:.6g}, must sum to 1")
        out[attr] = {str(g): float(v) for g, v in shares.items()}
    return out


def weighting_plan(
    counts: CountTable,
    attributes: Sequence[str],
    target: Mapping | None = None,
    method: str | None = None,
    stage: str | None = None,
    max_iter: int = 200,
    tol: float = 1e-10,
) -> WeightingPlan:
    """Plan weights for the rows kept through `stage` (default: the last stage).

    `target` None restores the pre-filter distribution of `attributes` (joint when poststratifying, marginals
    when raking); otherwise {attribute: {group: share}} (or {group: share} for one attribute) with shares
    summing to 1. `method` defaults to "poststratify" for the pre-filter target or one attribute, "rake" for
    user targets on several attributes. Raises ConfigError on bad attributes, targets or methods, DataError
    when no row is kept through `stage` or none of the kept rows is in a group the target asks for.
    """
    attributes = tuple(attributes)
    stage, user, method = _checked_request(counts, attributes, target, method, stage, max_iter, tol)
    cells = _kept_cells(counts, attributes, stage)
    kept = cells["kept"].to_numpy().astype(np.float64)
    targets = {a: _target_shares(cells, a, None if user is None else user.get(a)) for a in attributes}
    weight, iterations, unreachable = _cell_weights(cells, attributes, targets, method, max_iter, tol)
    reached = float((kept * weight).sum())
    if not reached > 0:  # every group the target asks for lost all its rows: weights would be 0/0
        raise DataError(f"weighting: no row kept through '{stage}' is in a group the target asks for "
                        f"(no kept rows: {', '.join(unreachable[:5])}); no weights can reach that target")
    weight = weight * kept.sum() / reached  # mean 1 over the kept rows
    cells = cells.with_columns(pl.Series("weight", weight))
    if unreachable:
        logger.warning("weighting: %d target group(s) have no kept rows: %s", len(unreachable), unreachable[:5])
    return WeightingPlan(
        attributes=attributes,
        method=method,
        stage=stage,
        stages=counts.stages[: counts.stages.index(stage) + 1],
        cells=cells,
        targets=targets,
        user_target=user is not None,
        ess=kish_ess(weight, kept),
        kept_rows=int(kept.sum()),
        shift_unweighted={a: _shift(_shares(cells, a, kept), targets[a]) for a in attributes},
        shift_weighted={a: _shift(_shares(cells, a, kept * weight), targets[a]) for a in attributes},
        unreachable=unreachable,
        iterations=iterations,
    )


def _checked_request(
    counts: CountTable,
    attributes: tuple[str, ...],
    target: Mapping | None,
    method: str | None,
    stage: str | None,
    max_iter: int,
    tol: float,
) -> tuple[str, dict[str, dict[str, float]] | None, str]:
    """(stage, user target or None, method) with the defaults filled in; ConfigError naming the first bad one."""
    if not attributes:
        raise ConfigError("weighting: no attributes given")
    for a in attributes:
        counts.attribute(a)
    stage = stage or counts.stages[-1]
    if stage not in counts.stages:
        raise ConfigError(f"weighting: unknown stage '{stage}' (stages: {', '.join(counts.stages)})")
    user = _normalise_target(target, attributes) if target is not None else None
    if method is None:
        method = "rake" if user is not None and len(attributes) > 1 else "poststratify"
    if method not in METHODS:
        raise ConfigError(f"weighting: method must be one of {METHODS}, got {method!r}")
    if method == "poststratify" and user is not None and len(attributes) > 1:
        raise ConfigError("weighting: a user target on several attributes needs method 'rake'")
    if max_iter < 1 or tol <= 0:
        raise ConfigError("weighting: max_iter must be >= 1 and tol > 0")
    return stage, user, method


def _kept_cells(counts: CountTable, attributes: tuple[str, ...], stage: str) -> pl.DataFrame:
    """Joint cells of `attributes` with `before` (input rows) and `kept` (rows kept through `stage`)."""
    cells = counts.marginal(list(attributes)).select(
        *attributes, pl.col("n").alias("before"), pl.col(f"survived:{stage}").alias("kept")
    )
    if cells["kept"].sum() == 0:
        raise DataError(f"weighting: no rows kept through stage '{stage}'")
    return cells


def _target_shares(cells: pl.DataFrame, attribute: str, user: Mapping[str, float] | None) -> dict[str, float]:
    """The share to aim at per group: the pre-filter share, or the `user` shares for the groups they list
    (the other groups keep their kept share; the listed ones split the rest in the user's proportions)."""
    if user is None:
        return _shares(cells, attribute, cells["before"].to_numpy().astype(np.float64))
    unknown_groups = sorted(set(user) - set(cells[attribute].to_list()))
    if unknown_groups:
        raise ConfigError(f"target for '{attribute}': group(s) {unknown_groups} do not occur in the data")
    kept_share = _shares(cells, attribute, cells["kept"].to_numpy().astype(np.float64))
    target = {g: v for g, v in kept_share.items() if g not in user}
    rest = sum(target.values())
    target.update({g: (1 - rest) * v for g, v in user.items()})
    return target


def _cell_weights(
    cells: pl.DataFrame,
    attributes: tuple[str, ...],
    targets: Mapping[str, Mapping[str, float]],
    method: str,
    max_iter: int,
    tol: float,
) -> tuple[np.ndarray, int, list[str]]:
    """(weight per cell before scaling to mean 1, iterations, unreachable target groups) for `method`."""
    kept = cells["kept"].to_numpy().astype(np.float64)
    if method == "rake":
        return _rake(cells, attributes, kept, targets, max_iter, tol)
    if len(attributes) == 1:
        weight, unreachable = _poststratify_one(cells, attributes[0], kept, targets[attributes[0]])
    else:
        before = cells["before"].to_numpy().astype(np.float64)
        weight, unreachable = _poststratify_joint(cells, attributes, before, kept)
    return weight, 1, unreachable


def _poststratify_one(
    cells: pl.DataFrame, attribute: str, kept: np.ndarray, target: Mapping[str, float]
) -> tuple[np.ndarray, list[str]]:
    """Weight per cell = target share / kept share of its group; groups with a target but no kept rows."""
    kept_share = _shares(cells, attribute, kept)
    groups = cells[attribute].to_list()
    weight = np.array([target.get(g, 0.0) / kept_share[g] if kept_share.get(g) else 0.0 for g in groups])
    unreachable = [f"{attribute}={g}" for g, t in target.items() if t > 0 and not kept_share.get(g)]
    return weight, unreachable


def _poststratify_joint(
    cells: pl.DataFrame, attributes: tuple[str, ...], before: np.ndarray, kept: np.ndarray
) -> tuple[np.ndarray, list[str]]:
    """Weight per joint cell = input share / kept share; the cells with input rows but no kept rows."""
    target_cell = before / before.sum()
    kept_cell = kept / kept.sum()
    weight = np.divide(target_cell, kept_cell, out=np.zeros_like(kept), where=kept > 0)
    lost = (kept == 0) & (before > 0)
    unreachable = [
        " × ".join(f"{a}={v}" for a, v in zip(attributes, row, strict=True))
        for row, is_lost in zip(cells.select(attributes).iter_rows(), lost, strict=True)
        if is_lost
    ]
    return weight, unreachable


def _rake(
    cells: pl.DataFrame,
    attributes: Sequence[str],
    kept: np.ndarray,
    targets: Mapping[str, Mapping[str, float]],
    max_iter: int,
    tol: float,
) -> tuple[np.ndarray, int, list[str]]:
    """Iterative proportional fitting of cell weights to marginal targets (unreachable groups renormalised out)."""
    codes, fit_targets, unreachable = [], [], []
    for a in attributes:
        labels = cells[a].to_list()
        groups = sorted(set(labels) | set(targets[a]))
        index = {g: i for i, g in enumerate(groups)}
        code = np.array([index[g] for g in labels], dtype=np.int64)
        has_kept = np.bincount(code, weights=kept, minlength=len(groups)) > 0
        t = np.array([targets[a].get(g, 0.0) for g in groups])
        unreachable += [f"{a}={g}" for g, ok, share in zip(groups, has_kept, t, strict=True) if share > 0 and not ok]
        t = np.where(has_kept, t, 0.0)
        codes.append(code)
        fit_targets.append(t / t.sum() if t.sum() > 0 else t)
    if any(t.sum() == 0 for t in fit_targets):  # an attribute's target falls wholly on groups without kept rows
        return np.zeros_like(kept), 0, unreachable
    weight = np.where(kept > 0, 1.0, 0.0)
    for iteration in range(1, max_iter + 1):
        for code, t in zip(codes, fit_targets, strict=True):
            mass = np.bincount(code, weights=kept * weight, minlength=len(t))
            share = mass / mass.sum()
            factor = np.divide(t, share, out=np.zeros_like(t), where=share > 0)
            weight = weight * factor[code]
        gap = max(
            float(np.abs(np.bincount(code, weights=kept * weight, minlength=len(t)) / (kept * weight).sum() - t).max())
            for code, t in zip(codes, fit_targets, strict=True)
        )
        if gap < tol:
            return weight, iteration, unreachable
    logger.warning("raking stopped after %d iterations with a marginal gap of %.3g", max_iter, gap)
    return weight, max_iter, unreachable


def apply_weights(table: pa.Table | pl.DataFrame, plan: WeightingPlan, source: str = "shard") -> pa.Table:
    """Weights for the rows of one shard kept by every stage of the plan: a pyarrow Table (uid, weight).

    `table` needs `uid`, the plan's attribute columns and its `keep:<stage>` columns. Raises DataError when a
    column is missing or a kept row falls in a cell the plan has never seen (counts from other data).
    """
    df = table if isinstance(table, pl.DataFrame) else pl.from_arrow(table)
    needed = ["uid", *plan.attributes, *(f"{KEEP_PREFIX}{s}" for s in plan.stages)]
    for col in needed:
        if col not in df.columns:
            raise DataError(f"{source}: column '{col}' is missing (needed for weights)")
    removed = pl.lit(False)
    for s in plan.stages:
        removed = removed | pl.col(f"{KEEP_PREFIX}{s}").cast(pl.Boolean).not_().fill_null(False)
    kept = df.filter(removed.not_()).select(
        pl.col("uid").cast(pl.String), *(pl.col(a).cast(pl.String).fill_null(UNKNOWN) for a in plan.attributes)
    )
    lookup = plan.cells.filter(pl.col("kept") > 0).select(*plan.attributes, "weight")
    out = kept.join(lookup, on=list(plan.attributes), how="left", maintain_order="left")
    missing = out["weight"].is_null()
    if missing.any():
        row = out.filter(missing).row(0, named=True)
        raise DataError(f"{source}: uid {row['uid']} falls in a cell the weighting plan has no kept rows for")
    return out.select("uid", pl.col("weight").cast(pl.Float64)).to_arrow()
