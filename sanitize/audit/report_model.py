"""The audit report as sections of tables and charts, built once from the report dict (`report_model`).

`report_md.render` and `report_html.render` print the same `ReportModel`; neither formats a number or assembles
a table. Sections, in report order: the answer (shares and removal-rate ratios per attribute group), flags,
overview, stages, one section per attribute, intersections,
concept-conditional shares, keyword counts, weights. Most tables appear in both files; a table's `shown_in`
names the exceptions (HTML: coverage and concept pivot tables; Markdown: concept entries and weighted shares,
which the HTML draws as charts). Charts are drawn in the HTML only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sanitize.audit.stats import OVERALL
from sanitize.audit.tables import (
    BOTH,
    HTML,
    LEFT,
    MARKDOWN,
    RIGHT,
    Cell,
    Column,
    Row,
    Table,
    count_cell,
    decimal_cell,
    fixed_cell,
    p_value_cell,
    percent_cell,
    plain_cell,
    points_cell,
    rate_interval_cell,
    ratio_interval_cell,
    relative_cell,
    share_change_cell,
    text_cell,
)

VIEW_NAMES = {"stage": "this stage", "cumulative": "all stages so far"}
TOP_FLAGS_CHARTED = 20
SUPPRESSED = "suppressed"


# --- charts (drawn by sanitize.audit.charts in the HTML) -------------------------------------------------


@dataclass(frozen=True)
class SharesChart:
    """Grouped bars: per label, one bar per series (name, share per label; None when undefined)."""

    title: str
    labels: tuple[str, ...]
    series: tuple[tuple[str, tuple[float | None, ...]], ...]


@dataclass(frozen=True)
class RemovalChart:
    """Removal rate per group with its interval, a dashed line at the overall rate; `heading` names the panel."""

    heading: str
    title: str
    labels: tuple[str, ...]
    rates: tuple[float | None, ...]
    intervals: tuple[tuple[float | None, float | None], ...]
    overall: float | None
    flagged: tuple[bool, ...]
    muted: tuple[bool, ...]


@dataclass(frozen=True)
class RatioChart:
    """Removal-rate ratios with intervals (the top flags)."""

    title: str
    labels: tuple[str, ...]
    ratios: tuple[float | None, ...]
    intervals: tuple[tuple[float | None, float | None], ...]


@dataclass(frozen=True)
class HeatmapChart:
    """Removal rate per (row group, column group) cell of a two-attribute intersection."""

    title: str
    rows: tuple[str, ...]
    columns: tuple[str, ...]
    rates: Mapping[tuple[str, str], float | None]
    suppressed: frozenset[tuple[str, str]]
    min_cell: int


# --- sections --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttributeFacts:
    """An audited attribute: name, labelling method, source and description."""

    name: str
    method: str
    source: str
    description: str


@dataclass(frozen=True)
class Overview:
    """What the report covers and how it tests (the text above the first table)."""

    rows: Cell
    stages: tuple[str, ...]
    attributes: tuple[AttributeFacts, ...]
    tests: Cell
    correction: str
    alpha: Cell
    min_ratio: Cell
    inverse_min_ratio: Cell
    confidence: Cell
    min_cell: Cell


@dataclass(frozen=True)
class Entry:
    """One audited distribution (attribute, intersection or concept value; one stage and view).

    `where` says which ("gender · sexual (this stage)"); the summary cells give rows, coverage and the χ² test;
    `groups` is the table of groups with counts, rates, ratios and share changes.
    """

    where: str
    dimension: str
    rows_before: Cell
    rows_kept: Cell
    rows_removed: Cell
    reference: str | None
    unknown_before: Cell
    unknown_after: Cell
    chi2: Cell
    dof: Cell
    p_adj: Cell
    cramers_v: Cell
    notes: tuple[str, ...]
    groups: Table


@dataclass(frozen=True)
class AttributeSection:
    """One attribute: shares before/after all stages, removal rates per entry, coverage and the entries."""

    facts: AttributeFacts
    shares: SharesChart
    removal: tuple[RemovalChart, ...]
    coverage: Table
    entries: tuple[Entry, ...]


@dataclass(frozen=True)
class FlagSection:
    """Every flag as a table (ranked by effect size) and a chart of the top ones (None without flags)."""

    count: int
    table: Table
    chart: RatioChart | None


@dataclass(frozen=True)
class Intersection:
    """An intersection after all stages; a heat map when it crosses two attributes."""

    entry: Entry
    heatmap: HeatmapChart | None


@dataclass(frozen=True)
class ConceptPivot:
    """Shares of each group of `group_attribute` within each value of the `concept` attribute, as one table."""

    concept: str
    group_attribute: str
    table: Table


@dataclass(frozen=True)
class WeightedShares:
    """Shares of one weighted attribute: before, kept, kept weighted and target (table and chart)."""

    attribute: str
    table: Table
    chart: SharesChart


@dataclass(frozen=True)
class WeightingSection:
    """The weighting summary: method, effective sample size, weight range, residual shift, shares."""

    method: str
    attributes: tuple[str, ...]
    target: str
    kept_rows: Cell
    ess: Cell
    ess_ratio: Cell
    weight_min: Cell
    weight_max: Cell
    unreachable: tuple[str, ...]
    shift: Table
    shares: tuple[WeightedShares, ...]


@dataclass(frozen=True)
class AnswerSection:
    """The report's opening, the answer a reviewer brings: per attribute and group, the share before and after all
    stages and each stage's removal-rate ratio vs the attribute's reference with its interval (⚑ flagged), as one
    table; and one chart of the all-stages ratios (None when no ratio is defined)."""

    rows: Cell
    stages: tuple[str, ...]
    table: Table
    chart: RatioChart | None


@dataclass(frozen=True)
class ReportModel:
    """Everything report.md and report.html show, in order (`answer` first; None for a report dict without one).
    `keywords` is None when no terms were counted."""

    answer: AnswerSection | None
    overview: Overview
    stages: Table
    flags: FlagSection
    attributes: tuple[AttributeSection, ...]
    intersections: tuple[Intersection, ...]
    concepts: tuple[Entry, ...]
    concept_pivots: tuple[ConceptPivot, ...]
    keywords: Table | None
    weighting: WeightingSection | None


def report_model(report: dict) -> ReportModel:
    """The model of `report` (the dict of `audit_report`); reads the dict, never changes it."""
    meta = report["meta"]
    last = meta["stages"][-1]
    concepts = [e for e in report["entries"] if e["kind"] == "concept" and e["stage"] == last]
    weighting = report.get("weighting")
    return ReportModel(
        answer=_answer_section(report) if report.get("answer") else None,
        overview=_overview(meta),
        stages=_stage_table(report["stages"]),
        flags=_flag_section(report["flags"]),
        attributes=tuple(_attribute_section(report, a) for a in meta["attributes"]),
        intersections=tuple(_intersection(meta, e) for e in _final_entries(report, "intersection")),
        concepts=tuple(_entry(e, shown_in=(MARKDOWN,)) for e in concepts),
        concept_pivots=_concept_pivots(concepts),
        keywords=_keyword_table(report) if report["keywords"] else None,
        weighting=_weighting_section(weighting) if weighting else None,
    )


# --- the answer ------------------------------------------------------------------------------------------


def _reference_text(a: dict) -> str:
    """How an attribute's ratios read: "vs male", "vs overall 12.3%" (the overall removal rate after all stages)."""
    if a["reference"] == OVERALL:
        return f"vs overall {percent_cell(a['reference_removal_rate']).text}"
    return f"vs {a['reference'] or '—'}"


def _answer_ratio_cell(r: dict, is_reference: bool) -> Cell:
    """A group's ratio with its interval, "⚑" when flagged; the reference group itself reads "reference"."""
    if is_reference:
        return Cell(None, "reference")
    cell = ratio_interval_cell(r["ratio"], r["ratio_ci"])
    return Cell(cell.value, cell.text + (" ⚑" if r["flagged"] else ""))


def _answer_row(a: dict, g: dict, first: bool, stages: list[str]) -> Row:
    is_reference = g["group"] == a["reference"]
    ratios = [g["stages"][s] for s in stages] + ([g["all_stages"]] if len(stages) > 1 else [])
    label = f"{a['attribute']} ({_reference_text(a)})" if first else ""
    cells = (
        text_cell(label, wrap=True),
        text_cell(g["group"], wrap=True),
        percent_cell(g["share_before"]),
        percent_cell(g["share_after"]),
        points_cell(g["share_change_pp"]),
        *(_answer_ratio_cell(r, is_reference) for r in ratios),
    )
    return Row(cells, tone="flag" if any(r["flagged"] for r in ratios) else "")


def _answer_section(report: dict) -> AnswerSection:
    """The opening table (one row per attribute group) and the chart of ratios after all stages."""
    stages = list(report["meta"]["stages"])
    ratio_titles = [f"{s}: ratio [95% CI]" for s in stages]
    if len(stages) > 1:
        ratio_titles.append("all stages: ratio [95% CI]")
    columns = (
        Column("attribute (reference)", LEFT),
        Column("group", LEFT),
        Column("share before"),
        Column("share after all stages"),
        Column("Δ share (pp)"),
        *(Column(t, LEFT) for t in ratio_titles),
    )
    rows, labels, ratios, intervals = [], [], [], []
    for a in report["answer"]:
        for i, g in enumerate(a["groups"]):
            rows.append(_answer_row(a, g, i == 0, stages))
            r = g["all_stages"]
            if g["group"] != a["reference"] and r["ratio"] is not None:
                labels.append(f"{a['attribute']}: {g['group']} {_reference_text(a)}")
                ratios.append(r["ratio"])
                intervals.append(tuple(r["ratio_ci"]))
    chart = RatioChart(
        title="removal-rate ratio after all stages vs reference",
        labels=tuple(labels),
        ratios=tuple(ratios),
        intervals=tuple(intervals),
    )
    return AnswerSection(
        rows=count_cell(report["meta"]["rows"]),
        stages=tuple(stages),
        table=Table(columns, tuple(rows)),
        chart=chart if labels else None,
    )


# --- overview, stages, flags -----------------------------------------------------------------------------


def _attribute_facts(a: dict) -> AttributeFacts:
    return AttributeFacts(name=a["name"], method=a["method"], source=a["source"], description=a["description"])


def _overview(meta: dict) -> Overview:
    opts = meta["options"]
    return Overview(
        rows=count_cell(meta["rows"]),
        stages=tuple(meta["stages"]),
        attributes=tuple(_attribute_facts(a) for a in meta["attributes"]),
        tests=plain_cell(meta["tests"]),
        correction=opts["correction"],
        alpha=plain_cell(opts["alpha"]),
        min_ratio=plain_cell(opts["min_ratio"]),
        inverse_min_ratio=decimal_cell(1 / opts["min_ratio"]),
        confidence=fixed_cell(opts["confidence"], ".0%"),
        min_cell=plain_cell(opts["min_cell"]),
    )


def _columns(first: str, *rest: str) -> tuple[Column, ...]:
    """A label column (left-aligned in Markdown), then columns of numbers (right-aligned)."""
    return (Column(first, LEFT), *(Column(t, RIGHT) for t in rest))


def _stage_table(stages: list[dict]) -> Table:
    columns = _columns(
        "stage", "decided on", "kept", "removed", "removal rate", "kept so far", "removed so far", "removal rate so far"
    )
    rows = tuple(
        Row(
            (
                text_cell(s["stage"]),
                count_cell(s["evaluated"]),
                count_cell(s["kept"]),
                count_cell(s["removed"]),
                percent_cell(s["removal_rate"], 2),
                count_cell(s["cumulative_kept"]),
                count_cell(s["cumulative_removed"]),
                percent_cell(s["cumulative_removal_rate"], 2),
            )
        )
        for s in stages
    )
    return Table(columns, rows)


def _where(entry: dict) -> str:
    """Which distribution an entry or flag is about: "[concept=value: ]dims · stage (view)"."""
    dims = " × ".join(entry["dimension"])
    concept = entry.get("concept")
    prefix = f"{concept['attribute']}={concept['value']}: " if concept else ""
    return f"{prefix}{dims} · {entry['stage']} ({VIEW_NAMES[entry['view']]})"


def _flag_section(flags: list[dict]) -> FlagSection:
    columns = (
        Column("#"),
        Column("where", LEFT),
        Column("group", LEFT),
        Column("reference", LEFT),
        Column("removal rate [95% CI]", LEFT),
        Column("reference rate"),
        Column("ratio [95% CI]", LEFT),
        Column("Δ share (pp)"),
        Column("p (adj)"),
    )
    rows = tuple(
        Row(
            (
                plain_cell(f["rank"]),
                text_cell(_where(f), wrap=True),
                text_cell(f["group"], wrap=True),
                text_cell(f["reference"] or "—", wrap=True),
                rate_interval_cell(f["removal_rate"], f["removal_ci"]),
                percent_cell(f["reference_removal_rate"], 2),
                ratio_interval_cell(f["ratio"], f["ratio_ci"]),
                points_cell(f["share_change_pp"]),
                p_value_cell(f["p_adj"]),
            )
        )
        for f in flags
    )
    top = flags[:TOP_FLAGS_CHARTED]
    chart = RatioChart(
        title="removal-rate ratio vs reference, top flags",
        labels=tuple(f"#{f['rank']} {f['group']} vs {f['reference']}" for f in top),
        ratios=tuple(f["ratio"] for f in top),
        intervals=tuple(tuple(f["ratio_ci"]) for f in top),
    )
    return FlagSection(count=len(flags), table=Table(columns, rows), chart=chart if flags else None)


# --- entries ---------------------------------------------------------------------------------------------


def _group_columns(reference: str | None) -> tuple[Column, ...]:
    return (
        Column("group", LEFT),
        Column("before"),
        Column("kept"),
        Column("removed"),
        Column("removal rate [95% CI]", LEFT),
        Column(f"ratio vs {reference or '—'} [95% CI]", LEFT, markdown_title="ratio vs ref [95% CI]"),
        Column("share before"),
        Column("share after"),
        Column("Δ share (pp)"),
        Column("Δ share (rel)"),
        Column("p (adj)"),
    )


def _group_row(g: dict, width: int) -> Row:
    """A group of an entry; a suppressed group shows only its name (`width`: columns of the table)."""
    if g["suppressed"]:
        return Row((text_cell(g["group"]), Cell(None, SUPPRESSED, wrap=True, span=width - 1)), tone="muted")
    label = g["group"] + (" ⚑" if g["flagged"] else "") + ("" if g["included"] else " †")
    cells = (
        Cell(g["group"], label),
        count_cell(g["before"]),
        count_cell(g["kept"]),
        count_cell(g["removed"]),
        rate_interval_cell(g["removal_rate"], g["removal_ci"]),
        ratio_interval_cell(g["ratio"], g["ratio_ci"]),
        percent_cell(g["share_before"]),
        percent_cell(g["share_after"]),
        points_cell(g["share_change_pp"]),
        relative_cell(g["share_change_rel"]),
        p_value_cell(g["p_adj"]),
    )
    tone = "flag" if g["flagged"] else ("" if g["included"] else "muted")
    return Row(cells, tone=tone, empty=g["before"] == 0)


def _entry(e: dict, shown_in: tuple[str, ...] = BOTH) -> Entry:
    test = e["test"]
    coverage = e["coverage"]
    columns = _group_columns(e["reference"])
    return Entry(
        where=_where(e),
        dimension=" × ".join(e["dimension"]),
        rows_before=count_cell(e["rows_before"]),
        rows_kept=count_cell(e["rows_kept"]),
        rows_removed=count_cell(e["rows_removed"]),
        reference=e["reference"],
        unknown_before=percent_cell(coverage["unknown_share_before"]),
        unknown_after=percent_cell(coverage["unknown_share_after"]),
        chi2=decimal_cell(test["chi2"]),
        dof=plain_cell(test["dof"]),
        p_adj=p_value_cell(test["p_adj"]),
        cramers_v=decimal_cell(test["cramers_v"]),
        notes=tuple(e["notes"]),
        groups=Table(columns, tuple(_group_row(g, len(columns)) for g in e["groups"]), shown_in),
    )


def _final_entries(report: dict, kind: str) -> list[dict]:
    """The entry per dimension (and concept value) for the cumulative view after the last stage."""
    last = report["meta"]["stages"][-1]
    by_key: dict[tuple, dict] = {}
    for e in report["entries"]:
        if e["kind"] != kind or e["stage"] != last:
            continue
        key = (tuple(e["dimension"]), None if e["concept"] is None else e["concept"]["value"])
        # With one stage the cumulative view equals the stage view and is not repeated.
        if key not in by_key or e["view"] == "cumulative":
            by_key[key] = e
    return list(by_key.values())


# --- attributes ------------------------------------------------------------------------------------------


def _attribute_section(report: dict, a: dict) -> AttributeSection:
    name = a["name"]
    entries = [e for e in report["entries"] if e["kind"] == "attribute" and e["dimension"] == [name]]
    final = next(e for e in _final_entries(report, "attribute") if e["dimension"] == [name])
    included = [g for g in final["groups"] if g.get("included")]
    shares = SharesChart(
        title=f"{name}: shares before and after",
        labels=tuple(g["group"] for g in included),
        series=(
            ("before", tuple(g["share_before"] for g in included)),
            ("after all stages", tuple(g["share_after"] for g in included)),
        ),
    )
    return AttributeSection(
        facts=_attribute_facts(a),
        shares=shares,
        removal=tuple(_removal_chart(e) for e in entries),
        coverage=_coverage_table(entries),
        entries=tuple(_entry(e) for e in entries),
    )


def _removal_chart(e: dict) -> RemovalChart:
    shown = [g for g in e["groups"] if not g["suppressed"]]
    return RemovalChart(
        heading=f"{e['stage']} — {VIEW_NAMES[e['view']]}",
        title=f"removal rate, {_where(e)}",
        labels=tuple(g["group"] for g in shown),
        rates=tuple(g["removal_rate"] for g in shown),
        intervals=tuple(tuple(g["removal_ci"]) for g in shown),
        overall=e["rows_removed"] / e["rows_before"] if e["rows_before"] else None,
        flagged=tuple(g["flagged"] for g in shown),
        muted=tuple(not g["included"] for g in shown),
    )


def _coverage_table(entries: list[dict]) -> Table:
    rows = tuple(
        Row(
            (
                text_cell(e["stage"]),
                text_cell(VIEW_NAMES[e["view"]]),
                percent_cell(e["coverage"]["unknown_share_before"]),
                percent_cell(e["coverage"]["unknown_share_after"]),
            )
        )
        for e in entries
    )
    return Table(_columns("stage", "view", "unknown before", "unknown after"), rows, shown_in=(HTML,))


# --- intersections and concepts --------------------------------------------------------------------------


def _intersection(meta: dict, e: dict) -> Intersection:
    return Intersection(entry=_entry(e), heatmap=_heatmap(meta, e) if len(e["dimension"]) == 2 else None)


def _heatmap(meta: dict, e: dict) -> HeatmapChart:
    """Cells of a two-attribute intersection, rows and columns in declared order, then the rest, unknown last."""
    order = {a["name"]: a["groups"] for a in meta["attributes"]}
    rates, suppressed, seen_rows, seen_cols = {}, set(), [], []
    for g in e["groups"]:
        r, c = g["group"].split(" × ", 1)
        seen_rows.append(r)
        seen_cols.append(c)
        if g["suppressed"]:
            suppressed.add((r, c))
        else:
            rates[(r, c)] = g["removal_rate"]

    def ordered(dim: str, seen: list[str]) -> tuple[str, ...]:
        declared = [x for x in order.get(dim, []) if x in seen]
        rest = sorted(set(seen) - set(declared) - {"unknown"})
        return (*declared, *rest, *(["unknown"] if "unknown" in seen else []))

    return HeatmapChart(
        title=f"removal rate, {_where(e)}",
        rows=ordered(e["dimension"][0], seen_rows),
        columns=ordered(e["dimension"][1], seen_cols),
        rates=rates,
        suppressed=frozenset(suppressed),
        min_cell=meta["options"]["min_cell"],
    )


def _concept_pivots(concepts: list[dict]) -> tuple[ConceptPivot, ...]:
    """One table per (concept attribute, group attribute): a row per concept value, a column per group."""
    by_pair: dict[tuple[str, str], list[dict]] = {}
    for e in concepts:
        by_pair.setdefault((e["concept"]["attribute"], e["dimension"][0]), []).append(e)
    return tuple(
        ConceptPivot(concept, group_attribute, _concept_table(concept, entries))
        for (concept, group_attribute), entries in by_pair.items()
    )


def _concept_table(concept: str, entries: list[dict]) -> Table:
    groups: list[str] = []
    for e in entries:
        groups += [g["group"] for g in e["groups"] if g.get("included") and g["group"] not in groups]
    titles = (concept, "rows before", "rows after", *(f"{g}: before → after (pp)" for g in groups), "χ² p (adj)")
    return Table(_columns(*titles), tuple(_concept_row(e, groups) for e in entries), shown_in=(HTML,))


def _concept_row(e: dict, groups: list[str]) -> Row:
    """A concept value: rows before/after, each group's share change ("—" when absent), the test's p."""
    by_name = {g["group"]: g for g in e["groups"]}
    cells = [text_cell(e["concept"]["value"], wrap=True), count_cell(e["rows_before"]), count_cell(e["rows_kept"])]
    flagged = False
    for name in groups:
        g = by_name.get(name)
        if g is None or g["suppressed"] or not g.get("included"):
            cells.append(Cell(None, SUPPRESSED if g is not None and g["suppressed"] else "—"))
            continue
        flagged |= g["flagged"]
        cells.append(share_change_cell(g["share_before"], g["share_after"], g["share_change_pp"]))
    cells.append(p_value_cell(e["test"]["p_adj"]))
    return Row(tuple(cells), tone="flag" if flagged else "")


# --- keywords and weights --------------------------------------------------------------------------------


def _keyword_table(report: dict) -> Table:
    """Terms found in some caption, most frequent first: counts and rates per 1k before and after all stages."""
    last = report["meta"]["stages"][-1]
    found = sorted((k for k in report["keywords"] if k["before"] > 0), key=lambda k: (-k["before"], k["term"]))
    rows = tuple(
        Row(
            (
                text_cell(k["term"]),
                count_cell(k["before"]),
                decimal_cell(k["per_1k_before"]),
                count_cell(k["after"][last]["count"]),
                decimal_cell(k["after"][last]["per_1k"]),
                relative_cell(k["after"][last]["change_rel"]),
            )
        )
        for k in found
    )
    columns = _columns("term", "before", "per 1k before", "after", "per 1k after", "relative change")
    return Table(columns, rows)


def _weighting_section(w: dict) -> WeightingSection:
    return WeightingSection(
        method=w["method"],
        attributes=tuple(w["attributes"]),
        target=w["target"],
        kept_rows=count_cell(w["kept_rows"]),
        ess=fixed_cell(w["ess"], ",.0f"),
        ess_ratio=percent_cell(w["ess_ratio"]),
        weight_min=decimal_cell(w["weight_min"]),
        weight_max=decimal_cell(w["weight_max"]),
        unreachable=tuple(w["unreachable"]),
        shift=_shift_table(w),
        shares=tuple(_weighted_shares(a, rows) for a, rows in w["marginals"].items()),
    )


def _shift_table(w: dict) -> Table:
    """Per attribute, the largest gap to the target and the total variation distance, unweighted and weighted."""
    rows = []
    for a in w["attributes"]:
        before, after = w["shift_unweighted"][a], w["shift_weighted"][a]
        cells = (
            text_cell(a),
            fixed_cell(before["max_abs_pp"], ".3f"),
            fixed_cell(after["max_abs_pp"], ".3g"),
            fixed_cell(before["tvd"], ".4f"),
            fixed_cell(after["tvd"], ".3g"),
        )
        rows.append(Row(cells))
    columns = _columns(
        "attribute", "largest gap before weighting (pp)", "after weighting (pp)", "TVD before", "TVD after"
    )
    return Table(columns, tuple(rows))


def _weighted_shares(attribute: str, rows: list[dict]) -> WeightedShares:
    keys = ("share_before", "share_kept", "share_weighted", "target")
    table = Table(
        _columns(attribute, "share before", "share kept", "share kept, weighted", "target"),
        tuple(Row((text_cell(r["group"]), *(percent_cell(r[k], 2) for k in keys))) for r in rows),
        shown_in=(MARKDOWN,),
    )
    chart = SharesChart(
        title=f"{attribute}: shares before, kept, weighted, target",
        labels=tuple(r["group"] for r in rows),
        series=tuple(
            (name, tuple(r[k] for r in rows))
            for name, k in zip(("before", "kept", "kept, weighted", "target"), keys, strict=True)
        ),
    )
    return WeightedShares(attribute=attribute, table=table, chart=chart)
