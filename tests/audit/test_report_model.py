from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from html import unescape

import pytest

from sanitize.audit import (
    AuditOptions,
    audit_report,
    count_shard,
    lexicon_info,
    load_attribute_spec,
    load_lexicon,
    merge_counts,
    report_html,
    report_md,
    spec_info,
    weighting_plan,
)
from sanitize.audit.report_model import ReportModel, report_model
from sanitize.audit.tables import HTML, MARKDOWN, Cell, Column, Row, Table, p_value_cell, rate_interval_cell
from tests.audit.test_report import demo_shards


@pytest.fixture(scope="module")
def model() -> ReportModel:
    """A report with every kind of section: intersections (heat map), concepts, keywords, weights, flags."""
    attributes = [
        spec_info(load_attribute_spec("perceived_gender"), "gender"),
        spec_info(load_attribute_spec("age")),
        lexicon_info(load_lexicon("occupations")),
        lexicon_info(load_lexicon("caption_gender")),
    ]
    keywords = load_lexicon("caption_gender")
    counts = merge_counts([count_shard(s, attributes, keywords=keywords) for s in demo_shards()])
    plan = weighting_plan(counts, ["gender"])
    options = AuditOptions(intersections=[("gender", "age")], concepts=[("occupation", "caption_gender")])
    return report_model(audit_report(counts, options, weighting=plan.summary()))


def tables_in(node: object) -> Iterator[Table]:
    """Every Table reachable from a model node (dataclass fields, tuples)."""
    if isinstance(node, Table):
        yield node
    elif dataclasses.is_dataclass(node):
        for f in dataclasses.fields(node):
            yield from tables_in(getattr(node, f.name))
    elif isinstance(node, tuple):
        for item in node:
            yield from tables_in(item)


def markdown_rows(md: str) -> list[list[str]]:
    """The cells of every Markdown table line, stripped."""
    return [[c.strip() for c in line.split("|")[1:-1]] for line in md.splitlines() if line.startswith("|")]


def html_rows(html: str) -> list[list[str]]:
    """The cell texts of every HTML table row (header rows included), unescaped."""
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", html)
    return [[unescape(c) for c in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row)] for row in rows]


def markdown_texts(row: Row) -> list[str]:
    return [t for c in row.cells for t in [c.text.strip(), *[""] * (c.span - 1)]]


def test_markdown_and_html_show_every_table_row_of_the_same_model(model):
    md, html = report_md.render(model), report_html.render(model, "Filter audit")
    md_rows, html_row_list = markdown_rows(md), html_rows(html)
    tables = list(tables_in(model))
    both = [t for t in tables if set(t.shown_in) == {MARKDOWN, HTML}]
    assert len(both) >= 10 and any(set(t.shown_in) == {HTML} for t in tables)
    assert any(set(t.shown_in) == {MARKDOWN} for t in tables)
    for table in tables:
        for row in table.rows:
            if MARKDOWN in table.shown_in:
                assert markdown_texts(row) in md_rows, row
            if HTML in table.shown_in and not row.empty:
                assert [c.text for c in row.cells] in html_row_list, row
        if MARKDOWN in table.shown_in:
            assert [c.markdown_title or c.title for c in table.columns] in md_rows
        if HTML in table.shown_in:
            assert [c.title for c in table.columns] in html_row_list


def test_declared_groups_without_rows_are_listed_in_markdown_only(model):
    age = next(s for s in model.attributes if s.facts.name == "age")
    empty = [r for e in age.entries for r in e.groups.rows if r.empty]
    assert empty and all(r.cells[0].value == "no_person" for r in empty)
    md = report_md.render(model)
    html = report_html.render(model, "Filter audit")
    age_html = html.split('<h2 id="attr-age">')[1].split("<h2")[0]
    assert "| no_person † | 0 |" in md
    assert "<td>no_person †</td>" not in age_html and "<td>child</td>" in age_html


def test_flagged_and_suppressed_rows_keep_their_marks_in_both_files(model):
    gender = next(s for s in model.attributes if s.facts.name == "gender")
    flagged = [r for e in gender.entries for r in e.groups.rows if r.tone == "flag"]
    assert flagged and all(r.cells[0].text.endswith(" ⚑") for r in flagged)
    md, html = report_md.render(model), report_html.render(model, "Filter audit")
    assert f"| {flagged[0].cells[0].text} |" in md
    assert f'<tr class="flag"><td>{flagged[0].cells[0].text}</td>' in html


def test_html_page_uses_the_packaged_skeleton_and_css_and_escapes_text(model):
    html = report_html.render(model, 'Audit <b> & "x"')
    assert html.startswith('<!DOCTYPE html><html lang="en">') and html.endswith("</body></html>\n")
    assert html.count("<title>Audit &lt;b&gt; &amp; &quot;x&quot;</title>") == 1
    assert "<h1>Audit &lt;b&gt; &amp; &quot;x&quot;</h1>" in html
    assert "tr.flag td{background:#fff1e6}" in html
    assert "$" not in html.split("<body>")[0]


def test_cells_carry_their_value_and_text():
    assert rate_interval_cell(0.12, [0.1, 0.14]) == Cell((0.12, 0.1, 0.14), "12.00% [10.0%, 14.0%]")
    assert rate_interval_cell(None, [None, None]).text == "n/a "
    assert [p_value_cell(p).text for p in (None, 0.0, 1e-5, 0.04321)] == ["n/a", "<1e-300", "1e-05", "0.043"]


def test_a_row_must_cover_the_columns():
    columns = (Column("a"), Column("b"))
    Table(columns, (Row((Cell(None, "x", span=2),)),))
    with pytest.raises(ValueError, match="covers 1 columns"):
        Table(columns, (Row((Cell(None, "x"),)),))
