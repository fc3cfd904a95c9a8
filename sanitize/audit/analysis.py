"""From a merged `CountTable` to every number of the audit report (a JSON-ready dict).

Entries: one per (attribute or intersection or concept value) × view × stage.
- view "stage": the rows a stage decided on, kept vs removed by that stage alone;
- view "cumulative": all input rows, kept by every stage so far vs removed by any of them.
Each entry lists groups with counts, shares before/after, removal rates with Wilson intervals and ratios vs a
reference (a group, Katz interval; or the overall removal rate, delta-method interval: the default for attributes
with three or more groups and for intersections), plus a χ² test with Cramér's V. All p-values of the report (χ² and
pairwise) of one family are corrected together (Holm by default); the families (main effects, concept-conditional
views, intersections) split `alpha` between them, so the main effects are not diluted by the many intersection tests
and the report's family-wise error stays at `alpha`. A group is flagged when its pairwise test survives the
correction AND its removal-rate ratio is at least `min_ratio` away from 1 (at 10⁸ rows every difference is
"significant"; the ratio says whether it matters). Flags are ranked main effects first, then concept-conditional,
then intersections, each by |log ratio|, not by p-value. `answer` sums up, per attribute and group, the shares
before and after all stages and each stage's removal-rate ratio: what the report opens with.

Groups "unknown" and not-applicable labels (e.g. "no_person", "mixed") are counted and shown, but kept out of
shares and tests; the share of unknown rows is the coverage. Intersection and concept cells with fewer than
`min_cell` rows before the stage are suppressed: their numbers are not reported and they enter no test.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import polars as pl

from sanitize.audit.counts import CountTable
from sanitize.audit.specs import UNKNOWN
from sanitize.audit.stats import OVERALL, GroupStatistics, adjust_pvalues, group_statistics
from sanitize.errors import ConfigError

logger = logging.getLogger(__name__)

CROSS = " × "
# Flag tiers, ranked in this order: main effects (one attribute), concept-conditional, intersections.
TIERS = {"attribute": 0, "concept": 1, "intersection": 2}
FAMILY_SHARES = {0: 0.5, 1: 0.25, 2: 0.25}  # of alpha, per tier, when all three families are in a report


@dataclass(frozen=True)
class AuditOptions:
    """Options of the audit statistics.

    intersections: attribute tuples to cross (None: every pair of attributes).
    concepts: (concept attribute, group attribute) pairs, e.g. ("occupation", "caption_gender"): the group
        shares within rows of each concept value, before and after (cumulative view).
    references: attribute -> reference for removal-rate ratios: one of its groups, or "overall" (each group's
        rate against the rate of all its groups together). Default, chosen for meaning (`default_reference`):
        "male" where the attribute has that group (gender-like attributes), "overall" for three or more groups
        (occupation, age, language: no group is a natural baseline), else the largest group.
    """

    intersections: Sequence[tuple[str, ...]] | None = None
    concepts: Sequence[tuple[str, str]] = ()
    references: Mapping[str, str] = field(default_factory=dict)
    min_cell: int = 10
    alpha: float = 0.05
    correction: str = "holm"
    min_ratio: float = 1.25
    confidence: float = 0.95

    def validate(self, counts: CountTable) -> None:
        """Raise ConfigError naming the first bad option."""
        if not isinstance(self.min_cell, int) or self.min_cell < 1:
            raise ConfigError(f"min_cell must be an integer >= 1, got {self.min_cell!r}")
        if not 0 < self.alpha < 1:
            raise ConfigError(f"alpha must be in (0, 1), got {self.alpha!r}")
        if not 0 < self.confidence < 1:
            raise ConfigError(f"confidence must be in (0, 1), got {self.confidence!r}")
        if self.min_ratio < 1:
            raise ConfigError(f"min_ratio must be >= 1, got {self.min_ratio!r}")
        if self.correction not in ("holm", "bh"):
            raise ConfigError(f"correction must be 'holm' or 'bh', got {self.correction!r}")
        names = set(counts.attribute_names)
        for dims in self.intersections or ():
            if len(dims) < 2 or len(set(dims)) != len(dims):
                raise ConfigError(f"intersection {list(dims)}: needs two or more different attributes")
            for d in dims:
                if d not in names:
                    raise ConfigError(f"intersection {list(dims)}: unknown attribute '{d}'")
        for pair in self.concepts:
            if len(pair) != 2 or pair[0] == pair[1] or any(p not in names for p in pair):
                raise ConfigError(f"concept {list(pair)}: needs two different known attributes")
        for attr in self.references:
            if attr not in names:
                raise ConfigError(f"references: unknown attribute '{attr}'")


def _num(x) -> float | int | None:
    """JSON-ready number: NaN and inf become None."""
    if x is None:
        return None
    if isinstance(x, int | np.integer):
        return int(x)
    x = float(x)
    return x if math.isfinite(x) else None


def _group_order(counts: CountTable, name: str, observed: Sequence[str]) -> list[str]:
    declared = list(counts.attribute(name).groups)
    rest = sorted(set(observed) - set(declared) - {UNKNOWN})
    return [*declared, *rest, UNKNOWN]


def _excluded_labels(counts: CountTable, name: str) -> set[str]:
    return {UNKNOWN, *counts.attribute(name).not_applicable}


def _before_kept(frame: pl.DataFrame, view: str, stage: str) -> tuple[np.ndarray, np.ndarray]:
    if view == "stage":
        return frame[f"evaluated:{stage}"].to_numpy(), frame[f"kept:{stage}"].to_numpy()
    return frame["n"].to_numpy(), frame[f"survived:{stage}"].to_numpy()


def _entry(
    *,
    entry_id: str,
    kind: str,
    dims: Sequence[str],
    view: str,
    stage: str,
    labels: list[str],
    before: np.ndarray,
    kept: np.ndarray,
    unknown: np.ndarray,
    excluded: np.ndarray,
    suppress_below: int | None,
    reference: str | None,
    options: AuditOptions,
    concept: dict | None = None,
) -> tuple[dict, GroupStatistics]:
    suppressed = (before < suppress_below) if suppress_below else np.zeros(len(labels), bool)
    included = ~excluded & ~suppressed
    if reference not in (None, OVERALL) and (reference not in labels or not included[labels.index(reference)]):
        reference = None
    g = group_statistics(labels, before, kept, included, reference, options.confidence)
    total_before, total_kept = int(before.sum()), int(kept.sum())
    unknown_before = int(before[unknown].sum())
    unknown_after = int(kept[unknown].sum())
    groups = []
    for i, label in enumerate(labels):
        if suppressed[i]:
            groups.append({"group": label, "suppressed": True})
            continue
        groups.append(
            {
                "group": label,
                "suppressed": False,
                "included": bool(included[i]),
                "before": int(g.before[i]),
                "kept": int(g.kept[i]),
                "removed": int(g.removed[i]),
                "share_before": _num(g.share_before[i]),
                "share_after": _num(g.share_after[i]),
                "share_change_pp": _num(g.share_change_pp[i]),
                "share_change_rel": _num(g.share_change_rel[i]),
                "removal_rate": _num(g.removal_rate[i]),
                "removal_ci": [_num(g.removal_ci[0][i]), _num(g.removal_ci[1][i])],
                "ratio": _num(g.ratio[i]),
                "ratio_ci": [_num(g.ratio_ci[0][i]), _num(g.ratio_ci[1][i])],
                "p": _num(g.p_value[i]),
                "p_adj": None,
                "flagged": False,
            }
        )
    notes = list(g.notes)
    if suppressed.any():
        notes.append(f"{int(suppressed.sum())} cell(s) with fewer than {suppress_below} rows suppressed")
    entry = {
        "id": entry_id,
        "kind": kind,
        "dimension": list(dims),
        "concept": concept,
        "view": view,
        "stage": stage,
        "rows_before": total_before,
        "rows_kept": total_kept,
        "rows_removed": total_before - total_kept,
        "coverage": {
            "unknown_before": unknown_before,
            "unknown_after": unknown_after,
            "unknown_share_before": _num(unknown_before / total_before) if total_before else None,
            "unknown_share_after": _num(unknown_after / total_kept) if total_kept else None,
        },
        "reference": g.reference,
        "reference_removal_rate": _num(g.reference_rate),
        "groups": groups,
        "test": {
            "chi2": _num(g.chi2),
            "dof": g.dof,
            "p": _num(g.chi2_p),
            "p_adj": None,
            "cramers_v": _num(g.cramers_v),
        },
        "notes": notes,
    }
    return entry, g


def default_reference(labels: Sequence[str], excluded: Sequence[bool]) -> str | None:
    """The reference chosen for meaning among the included labels: "male" when present, OVERALL for three or more
    groups, else None (the caller takes the largest group)."""
    included = [lab for lab, ex in zip(labels, excluded, strict=True) if not ex]
    if "male" in included:
        return "male"
    return OVERALL if len(included) >= 3 else None


def resolve_reference(options: AuditOptions, name: str, labels: Sequence[str], excluded: np.ndarray,
                      before: np.ndarray) -> str | None:
    """The reference of attribute `name`: the one set in `options.references`, else `default_reference`, else the
    included group with most rows (None when no group is included)."""
    reference = options.references.get(name) or default_reference(labels, excluded)
    if reference is None and (~excluded).any():
        reference = labels[int(np.argmax(np.where(excluded, -1, before)))]
    return reference


def _views(counts: CountTable) -> list[tuple[str, str]]:
    """(view, stage) pairs. The cumulative view of the first stage is left out when it equals the stage view."""
    out = []
    cells = counts.cells
    for i, s in enumerate(counts.stages):
        out.append(("stage", s))
        same = i == 0 and bool((cells[f"evaluated:{s}"] == cells["n"]).all())
        if not same:
            out.append(("cumulative", s))
    return out


def _attribute_entries(counts: CountTable, options: AuditOptions) -> list[dict]:
    entries = []
    for name in counts.attribute_names:
        frame = counts.marginal([name])
        labels = _group_order(counts, name, frame[name].to_list())
        frame = pl.DataFrame({name: labels}).join(frame, on=name, how="left").fill_null(0)
        excluded_labels = _excluded_labels(counts, name)
        excluded = np.array([lab in excluded_labels for lab in labels])
        unknown = np.array([lab == UNKNOWN for lab in labels])
        # One reference per attribute, so ratios compare alike across stages.
        reference = resolve_reference(options, name, labels, excluded, frame["n"].to_numpy())
        for view, stage in _views(counts):
            before, kept = _before_kept(frame, view, stage)
            entry, _ = _entry(
                entry_id=f"attribute:{name}:{view}:{stage}",
                kind="attribute",
                dims=[name],
                view=view,
                stage=stage,
                labels=labels,
                before=before,
                kept=kept,
                unknown=unknown,
                excluded=excluded,
                suppress_below=None,
                reference=reference,
                options=options,
            )
            entries.append(entry)
    return entries


def _intersection_entries(counts: CountTable, options: AuditOptions) -> list[dict]:
    dims_list = options.intersections
    if dims_list is None:
        dims_list = list(itertools.combinations(counts.attribute_names, 2))
    entries = []
    for dims in dims_list:
        frame = counts.marginal(list(dims))
        labels = [CROSS.join(row) for row in frame.select(list(dims)).iter_rows()]
        unknown = np.zeros(frame.height, bool)
        excluded = np.zeros(frame.height, bool)
        for d in dims:
            col = frame[d]
            unknown |= (col == UNKNOWN).to_numpy()
            excluded |= col.is_in(list(_excluded_labels(counts, d))).to_numpy()
        for view, stage in _views(counts):
            before, kept = _before_kept(frame, view, stage)
            entry, _ = _entry(
                entry_id=f"intersection:{CROSS.join(dims)}:{view}:{stage}",
                kind="intersection",
                dims=list(dims),
                view=view,
                stage=stage,
                labels=labels,
                before=before,
                kept=kept,
                unknown=unknown,
                excluded=excluded,
                suppress_below=options.min_cell,
                reference=OVERALL,  # no cell of a cross is a natural baseline
                options=options,
            )
            entries.append(entry)
    return entries


def _concept_entries(counts: CountTable, options: AuditOptions) -> list[dict]:
    entries = []
    for concept_attr, group_attr in options.concepts:
        frame = counts.marginal([concept_attr, group_attr])
        skip = _excluded_labels(counts, concept_attr)
        values = [v for v in _group_order(counts, concept_attr, frame[concept_attr].to_list()) if v not in skip]
        excluded_labels = _excluded_labels(counts, group_attr)
        group_labels = _group_order(counts, group_attr, frame[group_attr].to_list())
        group_before = np.array([int(frame.filter(pl.col(group_attr) == lab)["n"].sum()) for lab in group_labels])
        reference = resolve_reference(options, group_attr, group_labels,
                                      np.array([lab in excluded_labels for lab in group_labels]), group_before)
        for value in values:
            sub = frame.filter(pl.col(concept_attr) == value)
            if sub.height == 0:
                continue
            labels = _group_order(counts, group_attr, sub[group_attr].to_list())
            sub = pl.DataFrame({group_attr: labels}).join(sub, on=group_attr, how="left").fill_null(0)
            excluded = np.array([lab in excluded_labels for lab in labels])
            unknown = np.array([lab == UNKNOWN for lab in labels])
            for stage in counts.stages:
                before, kept = _before_kept(sub, "cumulative", stage)
                entry, _ = _entry(
                    entry_id=f"concept:{concept_attr}={value}:{group_attr}:cumulative:{stage}",
                    kind="concept",
                    dims=[group_attr],
                    view="cumulative",
                    stage=stage,
                    labels=labels,
                    before=before,
                    kept=kept,
                    unknown=unknown,
                    excluded=excluded,
                    suppress_below=options.min_cell,
                    reference=reference,
                    options=options,
                    concept={"attribute": concept_attr, "value": value},
                )
                entries.append(entry)
    return entries


def _correct_and_flag(entries: list[dict], options: AuditOptions) -> list[dict]:
    """Adjust the p-values of each family (main effects, concept-conditional, intersections: see `TIERS`), mark
    flagged groups, return flags ranked by effect size.

    The main effects answer the question a reviewer brings, and the many small-cell tests of intersections must
    not dilute them (with every test in one family, a 2.8x over-removal of women at p = 0.0002 went unflagged in
    the demo's audit). So each family is corrected on its own and gets a share of `alpha` (`FAMILY_SHARES`,
    renormalised over the families present): Bonferroni across families, the chosen correction within one, so
    the chance of any false flag in the report stays at most `alpha`. A reported p_adj is already divided by its
    family's share: it is compared with `alpha` itself.
    """
    families: dict[int, list[tuple[dict, str]]] = {}
    for e in entries:
        slots = families.setdefault(TIERS[e["kind"]], [])
        slots.append((e["test"], "p"))
        slots += [(grp, "p") for grp in e["groups"] if not grp["suppressed"]]
    total = sum(FAMILY_SHARES[tier] for tier in families)
    for tier, slots in families.items():
        pvalues = [math.nan if s[k] is None else s[k] for s, k in slots]
        adjusted = np.minimum(adjust_pvalues(pvalues, options.correction) * total / FAMILY_SHARES[tier], 1.0)
        for (slot, _), p_adj in zip(slots, adjusted, strict=True):
            slot["p_adj"] = _num(p_adj)

    flags = []
    threshold = math.log(options.min_ratio)
    for e in entries:
        for grp in e["groups"]:
            if grp["suppressed"] or grp["p_adj"] is None or grp["p_adj"] >= options.alpha:
                continue
            ratio = grp["ratio"]
            # A ratio of 0 or an undefined one (the reference lost nothing) is an unbounded effect.
            effect = math.inf if ratio is None or ratio == 0 else abs(math.log(ratio))
            if effect < threshold:
                continue
            grp["flagged"] = True
            flags.append(
                {
                    "entry": e["id"],
                    "kind": e["kind"],
                    "dimension": e["dimension"],
                    "concept": e["concept"],
                    "view": e["view"],
                    "stage": e["stage"],
                    "group": grp["group"],
                    "reference": e["reference"],
                    "removal_rate": grp["removal_rate"],
                    "removal_ci": grp["removal_ci"],
                    "reference_removal_rate": e["reference_removal_rate"],
                    "tier": TIERS[e["kind"]],
                    "ratio": ratio,
                    "ratio_ci": grp["ratio_ci"],
                    "share_change_pp": grp["share_change_pp"],
                    "p_adj": grp["p_adj"],
                    "effect": None if math.isinf(effect) else effect,
                }
            )
    # Main effects first, then concept-conditional ones, then intersections (whose small cells give large but
    # uncertain ratios); within a tier by effect size.
    flags.sort(key=lambda f: (f["tier"], -(math.inf if f["effect"] is None else f["effect"]),
                              -abs(f["share_change_pp"] or 0)))
    for rank, f in enumerate(flags, start=1):
        f["rank"] = rank
    return flags


def _ratio_of(entry: dict, group: str) -> dict:
    """A group's removal rate and removal-rate ratio (with intervals and flag) in `entry`; all None when absent."""
    g = next((x for x in entry["groups"] if x["group"] == group and not x["suppressed"]), None)
    if g is None:
        return {"removal_rate": None, "removal_ci": [None, None], "ratio": None, "ratio_ci": [None, None],
                "flagged": False}
    keys = ("removal_rate", "removal_ci", "ratio", "ratio_ci", "flagged")
    return {k: g[k] for k in keys}


def _answer(counts: CountTable, entries: list[dict]) -> list[dict]:
    """What the report opens with, per attribute (in declared order): its reference and, per included group with
    rows, the shares before and after all stages, each stage's removal-rate ratio (view "stage": the rows that
    stage decided on) and the ratio of all stages together (view "cumulative" after the last stage). Reads
    flagged entries, so it runs after `_correct_and_flag`."""
    last = counts.stages[-1]
    out = []
    for name in counts.attribute_names:
        by_view = {(e["view"], e["stage"]): e for e in entries if e["kind"] == "attribute" and e["dimension"] == [name]}
        final = by_view.get(("cumulative", last)) or by_view[("stage", last)]
        groups = [
            {
                "group": g["group"],
                "share_before": g["share_before"],
                "share_after": g["share_after"],
                "share_change_pp": g["share_change_pp"],
                "stages": {s: _ratio_of(by_view[("stage", s)], g["group"]) for s in counts.stages},
                "all_stages": _ratio_of(final, g["group"]),
            }
            for g in final["groups"]
            if not g["suppressed"] and g["included"] and g["before"] > 0
        ]
        out.append({"attribute": name, "reference": final["reference"],
                    "reference_removal_rate": final["reference_removal_rate"], "groups": groups})
    return out


def _stage_overview(counts: CountTable) -> list[dict]:
    cells = counts.cells
    out = []
    n = int(cells["n"].sum())
    for s in counts.stages:
        evaluated = int(cells[f"evaluated:{s}"].sum())
        kept = int(cells[f"kept:{s}"].sum())
        survived = int(cells[f"survived:{s}"].sum())
        out.append(
            {
                "stage": s,
                "evaluated": evaluated,
                "kept": kept,
                "removed": evaluated - kept,
                "removal_rate": _num(1 - kept / evaluated) if evaluated else None,
                "cumulative_kept": survived,
                "cumulative_removed": n - survived,
                "cumulative_removal_rate": _num(1 - survived / n) if n else None,
            }
        )
    return out


def _keyword_table(counts: CountTable) -> list[dict]:
    if counts.keywords is None:
        return []
    n = counts.rows
    frame = pl.DataFrame({"term": list(counts.keyword_terms)}).join(counts.keywords, on="term", how="left")
    frame = frame.fill_null(0)
    survived_total = {s: int(counts.cells[f"survived:{s}"].sum()) for s in counts.stages}
    rows = []
    for rec in frame.iter_rows(named=True):
        before = int(rec["n"])
        row = {
            "term": rec["term"],
            "before": before,
            "per_1k_before": _num(1000 * before / n) if n else None,
            "after": {},
        }
        for s in counts.stages:
            after = int(rec[f"survived:{s}"])
            total = survived_total[s]
            per_1k = 1000 * after / total if total else math.nan
            row["after"][s] = {
                "count": after,
                "per_1k": _num(per_1k),
                "change_rel": _num((after / total) / (before / n) - 1) if before and total else None,
            }
        rows.append(row)
    return rows


def audit_report(counts: CountTable, options: AuditOptions | None = None, weighting: dict | None = None) -> dict:
    """Every number of the audit as a JSON-ready dict (NaN written as None, with notes saying why).

    `weighting` (from `sanitize.audit.reweight.WeightingPlan.summary()`) is included as is.
    Raises ConfigError for bad options.
    """
    options = options or AuditOptions()
    options.validate(counts)
    entries = _attribute_entries(counts, options)
    entries += _intersection_entries(counts, options)
    entries += _concept_entries(counts, options)
    flags = _correct_and_flag(entries, options)
    n_tests = sum(1 for e in entries for s in [e["test"], *e["groups"]] if s.get("p") is not None)
    opts = asdict(options)
    opts["intersections"] = None if options.intersections is None else [list(d) for d in options.intersections]
    opts["concepts"] = [list(c) for c in options.concepts]
    opts["references"] = dict(options.references)
    logger.info("audit: %d rows, %d entries, %d tests, %d flags", counts.rows, len(entries), n_tests, len(flags))
    return {
        "meta": {
            "rows": counts.rows,
            "stages": list(counts.stages),
            "attributes": [a.to_json() for a in counts.attributes],
            "options": opts,
            "tests": n_tests,
        },
        "answer": _answer(counts, entries),
        "stages": _stage_overview(counts),
        "entries": entries,
        "flags": flags,
        "keywords": _keyword_table(counts),
        "weighting": weighting,
    }
