"""Write the audit report dict (from `audit_report`) as report.json, report.md and a self-contained report.html.

The JSON holds every number; the Markdown and HTML show the same numbers for people: the stage overview, flags
ranked by effect size, per attribute the shares before/after and removal rates with intervals, intersection heat
maps, concept-conditional shares, the keyword table and the weighting summary. Both are printed from one
`ReportModel` (report_model.py: its tables and charts; tables.py: its cells) by report_md.py and report_html.py.
The HTML has inline CSS and inline SVG only — it opens offline and can be attached to an issue as one file.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from sanitize.audit import report_html, report_md
from sanitize.audit.report_model import report_model
from sanitize.io.atomic import write_json, write_text

logger = logging.getLogger(__name__)


def render_markdown(report: dict) -> str:
    """The report as Markdown: the numbers of the HTML as text tables (no charts), every entry in full."""
    return report_md.render(report_model(report))


def render_html(report: dict, title: str = "Filter audit") -> str:
    """The report as one self-contained HTML page (inline CSS and SVG, no scripts, no external assets)."""
    return report_html.render(report_model(report), title)


def write_report(report: dict, out_dir: str | os.PathLike, title: str = "Filter audit") -> dict[str, Path]:
    """Write report.json, report.md and report.html into `out_dir` (atomically); returns their paths."""
    out = Path(out_dir)
    paths = {"json": out / "report.json", "md": out / "report.md", "html": out / "report.html"}
    model = report_model(report)
    write_json(paths["json"], report)
    write_text(paths["md"], report_md.render(model))
    write_text(paths["html"], report_html.render(model, title))
    logger.info("audit report written to %s", out)
    return paths
