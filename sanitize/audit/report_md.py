"""report.md: the `ReportModel` as Markdown (numbers as text, no charts; each entry's table in full)."""

from __future__ import annotations

from sanitize.audit.report_model import (
    AnswerSection,
    AttributeSection,
    Entry,
    FlagSection,
    ReportModel,
    WeightingSection,
)
from sanitize.audit.tables import LEFT, Row, Table


def render(model: ReportModel) -> str:
    """The whole report as one Markdown document (ends with a newline, no trailing blank lines)."""
    lines = ["# Filter audit", ""]
    if model.answer is not None:
        lines += _answer(model.answer)
    lines += _flags(model.flags)
    lines += ["## About this audit", "", *_overview(model), "## Stages", "", *_table(model.stages), ""]
    for section in model.attributes:
        lines += _attribute(section)
    if model.intersections:
        lines += ["## Intersections (all stages; per-stage tables in report.json)", ""]
        for intersection in model.intersections:
            lines += _entry(intersection.entry)
    if model.concepts:
        lines += ["## Concept-conditional shares (all stages)", ""]
        for entry in model.concepts:
            lines += _entry(entry)
    if model.keywords is not None:
        title = "## Keyword counts (captions mentioning the word, before and after all stages)"
        lines += [title, "", *_table(model.keywords), ""]
    if model.weighting is not None:
        lines += _weighting(model.weighting)
    return "\n".join(lines).rstrip() + "\n"


def _table(table: Table) -> list[str]:
    """Header, alignment line and one line per row; a cell spanning k columns is followed by k - 1 empty ones."""
    titles = [c.markdown_title or c.title for c in table.columns]
    align = ["---" if c.align == LEFT else "---:" for c in table.columns]
    return [_line(titles), "|" + "|".join(align) + "|", *(_row(r) for r in table.rows)]


def _row(row: Row) -> str:
    texts = []
    for cell in row.cells:
        texts += [cell.text, *[""] * (cell.span - 1)]
    return _line(texts)


def _line(texts: list[str]) -> str:
    """One table line; an empty cell prints as a single space."""
    return "|" + "|".join(f" {t} " if t else " " for t in texts) + "|"


def _overview(model: ReportModel) -> list[str]:
    o = model.overview
    attributes = "; ".join(f"**{a.name}** ({a.method}{', ' + a.source if a.source else ''})" for a in o.attributes)
    return [
        f"{o.rows.text} rows; stages in order: {' → '.join(o.stages)}.",
        "",
        f"Attributes: {attributes}.",
        "",
        f"Tests: {o.tests.text}, corrected together ({o.correction}). A group is flagged when its adjusted "
        f"p < {o.alpha.text} and its removal-rate ratio vs the reference is ≥ {o.min_ratio.text} or ≤ "
        f"{o.inverse_min_ratio.text}. Intervals: Wilson ({o.confidence.text}) for rates, Katz log for ratios "
        "(delta-method log vs the overall rate). "
        f"Groups marked † (unknown, not applicable) are counted but not in shares or tests; intersection and concept "
        f"cells with fewer than {o.min_cell.text} rows are suppressed.",
        "",
    ]


def _answer(a: AnswerSection) -> list[str]:
    """The opening: who the filters removed, per attribute group, as one table."""
    return [
        "## Answer: who the filters removed",
        "",
        f"{a.rows.text} rows; stages in order: {' → '.join(a.stages)}. Ratio = the group's removal rate / the "
        "reference's (a group, or the overall rate of the attribute's groups), 95% interval; ⚑ = flagged. Shares "
        "are among rows with a determined label.",
        "",
        *_table(a.table),
        "",
    ]


def _flags(flags: FlagSection) -> list[str]:
    body = _table(flags.table) if flags.count else ["No group flagged."]
    return ["## Flags (main effects first, then concepts, then intersections; each by effect size)", "", *body, ""]


def _attribute(section: AttributeSection) -> list[str]:
    a = section.facts
    lines = [f"## Attribute: {a.name} ({a.method})", ""]
    if a.description:
        lines += [a.description, ""]
    for entry in section.entries:
        lines += _entry(entry)
    return lines


def _entry(e: Entry) -> list[str]:
    """Heading, summary line, the group table (every group, empty ones too) and the notes."""
    summary = (
        f"Rows {e.rows_before.text} → {e.rows_kept.text} (removed {e.rows_removed.text}); reference group: "
        f"{e.reference or 'none'}; unknown {e.unknown_before.text} → {e.unknown_after.text}; χ² = {e.chi2.text} "
        f"(dof {e.dof.text}), p (adj) = {e.p_adj.text}, Cramér's V = {e.cramers_v.text}."
    )
    lines = [f"#### {e.where}", "", summary, "", *_table(e.groups), ""]
    lines += [f"- note: {n}" for n in e.notes]
    if e.notes:
        lines.append("")
    return lines


def _weighting(w: WeightingSection) -> list[str]:
    lines = [
        "## Weights",
        "",
        f"Method: {w.method} on {' × '.join(w.attributes)}; target: {w.target}; kept rows {w.kept_rows.text}; "
        f"Kish effective sample size {w.ess.text} ({w.ess_ratio.text} of kept rows); weights from "
        f"{w.weight_min.text} to {w.weight_max.text} (mean 1).",
        "",
    ]
    if w.unreachable:
        lines += [f"Unreachable (no kept rows): {', '.join(w.unreachable)}.", ""]
    lines += [*_table(w.shift), ""]
    for shares in w.shares:
        lines += [*_table(shares.table), ""]
    return lines
