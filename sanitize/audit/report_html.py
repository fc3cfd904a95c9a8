"""report.html: the `ReportModel` as one self-contained page (inline CSS and SVG, no scripts, no external assets).

The page skeleton and the CSS are package resources (sanitize/resources/audit/page.html and report.css); every
text taken from the model is HTML-escaped. Charts come from `sanitize.audit.charts`.
"""

from __future__ import annotations

from functools import cache
from html import escape
from importlib import resources
from string import Template

from sanitize.audit import charts
from sanitize.audit.report_model import (
    AnswerSection,
    AttributeSection,
    ConceptPivot,
    Entry,
    FlagSection,
    HeatmapChart,
    Intersection,
    RemovalChart,
    ReportModel,
    SharesChart,
    WeightingSection,
)
from sanitize.audit.tables import Cell, Row, Table

SERIES_COLOURS = (charts.BEFORE, charts.AFTER, *charts.EXTRA)


@cache
def _resource(name: str) -> str:
    return (resources.files("sanitize") / "resources" / "audit" / name).read_text(encoding="utf-8")


def render(model: ReportModel, title: str) -> str:
    """The whole report as an HTML page titled `title` (ends with a newline)."""
    body = [
        _answer(model.answer),
        _flags(model.flags),
        _summary(model),
        "<h2>Stages</h2>",
        _table(model.stages),
        *(_attribute(section) for section in model.attributes),
        _intersections(model.intersections),
        _concepts(model.concept_pivots),
        _keywords(model.keywords),
        _weighting(model.weighting),
    ]
    page = Template(_resource("page.html"))
    return page.substitute(title=escape(title), css=_resource("report.css"), body="".join(body))


# --- tables ----------------------------------------------------------------------------------------------


def _table(table: Table) -> str:
    """The table in a horizontally scrolling box; rows of declared groups without rows are left out."""
    head = "".join(f"<th>{escape(c.title)}</th>" for c in table.columns)
    rows = "".join(_row(r) for r in table.rows if not r.empty)
    return f'<div class="tw"><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>'


def _row(row: Row) -> str:
    opening = f'<tr class="{row.tone}">' if row.tone else "<tr>"
    return opening + "".join(_cell(c) for c in row.cells) + "</tr>"


def _cell(cell: Cell) -> str:
    span = f' colspan="{cell.span}"' if cell.span > 1 else ""
    wrap = ' class="l"' if cell.wrap else ""
    return f"<td{span}{wrap}>{escape(cell.text)}</td>"


# --- sections --------------------------------------------------------------------------------------------


def _summary(model: ReportModel) -> str:
    o = model.overview
    attributes = ", ".join(
        f'<a href="#attr-{escape(a.name)}">{escape(a.name)}</a> ({escape(a.method)})' for a in o.attributes
    )
    return (
        f'<div class="summary"><p><b>{escape(o.rows.text)}</b> rows; stages: {escape(" → ".join(o.stages))}; '
        f'attributes: {attributes}.</p><p class="small">{escape(o.tests.text)} tests corrected together '
        f"({escape(o.correction)}). Flag: adjusted p &lt; {escape(o.alpha.text)} and removal-rate ratio ≥ "
        f"{escape(o.min_ratio.text)} or ≤ {escape(o.inverse_min_ratio.text)} vs the reference; main effects "
        f"first, then by |log ratio|. Rates: Wilson {escape(o.confidence.text)} intervals; ratios: Katz log "
        "intervals (delta-method log vs the overall rate). † = unknown / not applicable (counted, not in shares or "
        "tests). Intersection and concept cells with fewer than "
        f"{escape(o.min_cell.text)} rows are suppressed.</p></div>"
    )


def _answer(a: AnswerSection | None) -> str:
    """The opening: one sentence, the chart of ratios after all stages, and the table of every attribute group."""
    if a is None:
        return ""
    chart = "" if a.chart is None else charts.ratio_forest(
        a.chart.labels, a.chart.ratios, a.chart.intervals, a.chart.title, width=760)
    return (
        '<h2 id="answer">Answer: who the filters removed</h2>'
        f'<p class="note"><b>{escape(a.rows.text)}</b> rows; stages: {escape(" → ".join(a.stages))}. Ratio = the '
        "group's removal rate / the reference's (a group, or the overall rate of the attribute's groups), 95% "
        "interval; ⚑ = flagged. Shares are among rows with a determined label.</p>" + chart + _table(a.table)
    )


def _flags(flags: FlagSection) -> str:
    heading = (
        f'<h2 id="flags">Flags ({flags.count})</h2><p class="note">Main effects first, then concept-conditional '
        "ones, then intersections (small cells give large, uncertain ratios); each by effect size.</p>"
    )
    if flags.chart is None:
        return heading + '<p class="note">No group flagged.</p>'
    c = flags.chart
    forest = charts.ratio_forest(c.labels, c.ratios, c.intervals, c.title, width=760)
    return heading + forest + _table(flags.table)


def _entry(e: Entry) -> str:
    """The entry's summary line (with its notes) and its group table."""
    notes = "".join(f"<br>note: {escape(n)}" for n in e.notes)
    summary = (
        f'<p class="small">Rows {escape(e.rows_before.text)} → {escape(e.rows_kept.text)}; unknown '
        f"{escape(e.unknown_before.text)} → {escape(e.unknown_after.text)}; χ² = {escape(e.chi2.text)} "
        f"(dof {escape(e.dof.text)}), p (adj) = {escape(e.p_adj.text)}, Cramér's V = "
        f"{escape(e.cramers_v.text)}.{notes}</p>"
    )
    return summary + _table(e.groups)


def _attribute(section: AttributeSection) -> str:
    a = section.facts
    parts = [
        f'<h2 id="attr-{escape(a.name)}">{escape(a.name)}<span class="badge">{escape(a.method)}</span></h2>',
        f'<p class="note">{escape(a.description)} Source: {escape(a.source or "—")}.</p>',
        "<h3>Shares before and after all stages</h3>",
        _shares(section.shares),
        "<h3>Removal rate per group with 95% Wilson intervals (dashed: overall rate)</h3>",
        '<div class="grid">' + "".join(_removal_panel(c) for c in section.removal) + "</div>",
        "<h3>Coverage: share of rows with unknown label</h3>",
        _table(section.coverage),
    ]
    parts += [f"<h3>{escape(e.where)}</h3>" + _entry(e) for e in section.entries]
    return "".join(parts)


def _intersections(intersections: tuple[Intersection, ...]) -> str:
    if not intersections:
        return ""
    parts = [
        '<h2 id="intersections">Intersections</h2><p class="note">Removal rate after all stages per cell; hatched '
        "cells are suppressed (too few rows). Per-stage numbers are in report.json.</p>"
    ]
    for i in intersections:
        heatmap = "" if i.heatmap is None else _heatmap(i.heatmap)
        parts.append(f"<h3>{escape(i.entry.dimension)}</h3>{heatmap}{_entry(i.entry)}")
    return "".join(parts)


def _concepts(pivots: tuple[ConceptPivot, ...]) -> str:
    if not pivots:
        return ""
    parts = [
        '<h2 id="concepts">Concept-conditional shares</h2><p class="note">Within rows whose caption names the '
        "concept, the share of each group before and after all stages (among determined groups).</p>"
    ]
    parts += [f"<h3>{escape(p.group_attribute)} within {escape(p.concept)}</h3>{_table(p.table)}" for p in pivots]
    return "".join(parts)


def _keywords(table: Table | None) -> str:
    if table is None or not table.rows:
        return ""
    return (
        '<h2 id="keywords">Keyword counts</h2><p class="note">Captions mentioning each word (case-insensitive, '
        "whole words) before and after all stages, per 1,000 captions (DALL·E 2's audit method). Words that occur "
        "in no caption are left out.</p>" + _table(table)
    )


def _weighting(w: WeightingSection | None) -> str:
    if w is None:
        return ""
    parts = [
        '<h2 id="weights">Weights</h2>',
        f"<p>Method <b>{escape(w.method)}</b> on {escape(' × '.join(w.attributes))}; target: {escape(w.target)}. "
        f"Kept rows {escape(w.kept_rows.text)}; Kish effective sample size <b>{escape(w.ess.text)}</b> "
        f"({escape(w.ess_ratio.text)} of kept rows); weights {escape(w.weight_min.text)} to "
        f"{escape(w.weight_max.text)}, mean 1.</p>",
    ]
    if w.unreachable:
        parts.append(f'<p class="note">Unreachable (no kept rows): {escape(", ".join(w.unreachable))}.</p>')
    parts.append(_table(w.shift))
    parts += [f"<h3>{escape(s.attribute)}</h3>{_shares(s.chart)}" for s in w.shares]
    return "".join(parts)


# --- charts ----------------------------------------------------------------------------------------------


def _shares(chart: SharesChart) -> str:
    series = [(name, colour, values) for (name, values), colour in zip(chart.series, SERIES_COLOURS, strict=False)]
    return charts.grouped_bars(chart.labels, series, chart.title)


def _removal_panel(c: RemovalChart) -> str:
    svg = charts.interval_dots(
        c.labels, c.rates, c.intervals, c.title, reference=c.overall, highlight=c.flagged, muted=c.muted, width=560
    )
    return f'<div class="panel"><h4>{escape(c.heading)}</h4>{svg}</div>'


def _heatmap(c: HeatmapChart) -> str:
    return charts.heatmap(c.rows, c.columns, c.rates, c.suppressed, c.title, c.min_cell)
