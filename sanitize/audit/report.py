"""Render the audit report dict (from `audit_report`) as report.json, report.md and a self-contained report.html.

The JSON holds every number; the Markdown and HTML show the same numbers for people: the stage overview, flags
ranked by effect size, per attribute the shares before/after and removal rates with intervals, intersection heat
maps, concept-conditional shares, the keyword table and the weighting summary. The HTML has inline CSS and inline
SVG only — it opens offline and can be attached to an issue as one file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from html import escape
from pathlib import Path

from sanitize.audit import charts
from sanitize.io.atomic import write_json, write_text

logger = logging.getLogger(__name__)

VIEW_NAMES = {"stage": "this stage", "cumulative": "all stages so far"}


# --- formatting ------------------------------------------------------------------------------------------


def _pct(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{100 * x:.{digits}f}%"


def _pp(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.2f}"


def _rel(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:+.1f}%"


def _ratio(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def _ci(pair: Sequence[float | None], fmt=_pct) -> str:
    lo, hi = pair
    return "" if lo is None or hi is None else f"[{fmt(lo)}, {fmt(hi)}]"


def _p(x: float | None) -> str:
    if x is None:
        return "n/a"
    return "<1e-300" if x == 0 else (f"{x:.2g}" if x < 0.001 else f"{x:.3f}")


def _int(x: int | None) -> str:
    return "n/a" if x is None else f"{x:,}"


def _where(entry: dict) -> str:
    dims = " × ".join(entry["dimension"])
    concept = entry.get("concept")
    prefix = f"{concept['attribute']}={concept['value']}: " if concept else ""
    return f"{prefix}{dims} · {entry['stage']} ({VIEW_NAMES[entry['view']]})"


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


def _group_row_md(g: dict) -> str:
    if g["suppressed"]:
        return f"| {g['group']} | suppressed | | | | | | | | | |"
    return (
        f"| {g['group']}{'' if g['included'] else ' †'}{' ⚑' if g['flagged'] else ''} | {_int(g['before'])} | "
        f"{_int(g['kept'])} | {_int(g['removed'])} | {_pct(g['removal_rate'], 2)} {_ci(g['removal_ci'])} | "
        f"{_ratio(g['ratio'])} {_ci(g['ratio_ci'], _ratio)} | {_pct(g['share_before'])} | {_pct(g['share_after'])} | "
        f"{_pp(g['share_change_pp'])} | {_rel(g['share_change_rel'])} | {_p(g['p_adj'])} |"
    )


GROUP_HEADER_MD = (
    "| group | before | kept | removed | removal rate [95% CI] | ratio vs ref [95% CI] | share before | "
    "share after | Δ share (pp) | Δ share (rel) | p (adj) |\n|---|---:|---:|---:|---|---|---:|---:|---:|---:|---:|"
)


def _entry_md(e: dict) -> list[str]:
    t = e["test"]
    cov = e["coverage"]
    lines = [
        f"#### {_where(e)}",
        "",
        f"Rows {_int(e['rows_before'])} → {_int(e['rows_kept'])} (removed {_int(e['rows_removed'])}); "
        f"reference group: {e['reference'] or 'none'}; unknown {_pct(cov['unknown_share_before'])} → "
        f"{_pct(cov['unknown_share_after'])}; χ² = {_ratio(t['chi2'])} (dof {t['dof']}), p (adj) = {_p(t['p_adj'])}, "
        f"Cramér's V = {_ratio(t['cramers_v'])}.",
        "",
        GROUP_HEADER_MD,
        *(_group_row_md(g) for g in e["groups"]),
        "",
    ]
    lines += [f"- note: {n}" for n in e["notes"]]
    if e["notes"]:
        lines.append("")
    return lines


# --- markdown --------------------------------------------------------------------------------------------


def render_markdown(report: dict) -> str:
    """The report as Markdown: every table of the HTML, numbers as text."""
    meta = report["meta"]
    opts = meta["options"]
    lines = [
        "# Filter audit",
        "",
        f"{_int(meta['rows'])} rows; stages in order: {' → '.join(meta['stages'])}.",
        "",
        "Attributes: "
        + "; ".join(
            f"**{a['name']}** ({a['method']}{', ' + a['source'] if a['source'] else ''})" for a in meta["attributes"]
        )
        + ".",
        "",
        f"Tests: {meta['tests']}, corrected together ({opts['correction']}). A group is flagged when its adjusted "
        f"p < {opts['alpha']} and its removal-rate ratio vs the reference is ≥ {opts['min_ratio']} or ≤ "
        f"{1 / opts['min_ratio']:.2f}. Intervals: Wilson ({opts['confidence']:.0%}) for rates, Katz log for ratios. "
        f"Groups marked † (unknown, not applicable) are counted but not in shares or tests; intersection and concept "
        f"cells with fewer than {opts['min_cell']} rows are suppressed.",
        "",
        "## Stages",
        "",
        "| stage | decided on | kept | removed | removal rate | kept so far | removed so far | removal rate so far |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in report["stages"]:
        lines.append(
            f"| {s['stage']} | {_int(s['evaluated'])} | {_int(s['kept'])} | {_int(s['removed'])} | "
            f"{_pct(s['removal_rate'], 2)} | {_int(s['cumulative_kept'])} | {_int(s['cumulative_removed'])} | "
            f"{_pct(s['cumulative_removal_rate'], 2)} |"
        )
    lines += ["", "## Flags (ranked by effect size)", ""]
    if report["flags"]:
        lines += [
            "| # | where | group | reference | removal rate [95% CI] | reference rate | ratio [95% CI] | "
            "Δ share (pp) | p (adj) |",
            "|---:|---|---|---|---|---:|---|---:|---:|",
        ]
        for f in report["flags"]:
            lines.append(
                f"| {f['rank']} | {_where(f)} | {f['group']} | {f['reference']} | {_pct(f['removal_rate'], 2)} "
                f"{_ci(f['removal_ci'])} | {_pct(f['reference_removal_rate'], 2)} | {_ratio(f['ratio'])} "
                f"{_ci(f['ratio_ci'], _ratio)} | {_pp(f['share_change_pp'])} | {_p(f['p_adj'])} |"
            )
    else:
        lines.append("No group flagged.")
    lines.append("")

    for a in meta["attributes"]:
        lines += [f"## Attribute: {a['name']} ({a['method']})", ""]
        if a["description"]:
            lines += [a["description"], ""]
        for e in report["entries"]:
            if e["kind"] == "attribute" and e["dimension"] == [a["name"]]:
                lines += _entry_md(e)

    inter = _final_entries(report, "intersection")
    if inter:
        lines += ["## Intersections (all stages; per-stage tables in report.json)", ""]
        for e in inter:
            lines += _entry_md(e)

    concepts = [e for e in report["entries"] if e["kind"] == "concept" and e["stage"] == meta["stages"][-1]]
    if concepts:
        lines += ["## Concept-conditional shares (all stages)", ""]
        for e in concepts:
            lines += _entry_md(e)

    if report["keywords"]:
        last = meta["stages"][-1]
        lines += [
            "## Keyword counts (captions mentioning the word, before and after all stages)",
            "",
            "| term | before | per 1k before | after | per 1k after | relative change |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for k in _keyword_rows(report):
            after = k["after"][last]
            lines.append(
                f"| {k['term']} | {_int(k['before'])} | {_num(k['per_1k_before'])} | {_int(after['count'])} | "
                f"{_num(after['per_1k'])} | {_rel(after['change_rel'])} |"
            )
        lines.append("")

    w = report.get("weighting")
    if w:
        lines += _weighting_md(w)
    return "\n".join(lines).rstrip() + "\n"


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def _keyword_rows(report: dict) -> list[dict]:
    return sorted((k for k in report["keywords"] if k["before"] > 0), key=lambda k: (-k["before"], k["term"]))


def _weighting_md(w: dict) -> list[str]:
    lines = [
        "## Weights",
        "",
        f"Method: {w['method']} on {' × '.join(w['attributes'])}; target: {w['target']}; kept rows "
        f"{_int(w['kept_rows'])}; Kish effective sample size {w['ess']:,.0f} ({_pct(w['ess_ratio'])} of kept rows); "
        f"weights from {_num(w['weight_min'])} to {_num(w['weight_max'])} (mean 1).",
        "",
    ]
    if w["unreachable"]:
        lines += [f"Unreachable (no kept rows): {', '.join(w['unreachable'])}.", ""]
    lines += [
        "| attribute | largest gap before weighting (pp) | after weighting (pp) | TVD before | TVD after |",
        "|---|---:|---:|---:|---:|",
    ]
    for a in w["attributes"]:
        b, c = w["shift_unweighted"][a], w["shift_weighted"][a]
        lines.append(f"| {a} | {b['max_abs_pp']:.3f} | {c['max_abs_pp']:.3g} | {b['tvd']:.4f} | {c['tvd']:.3g} |")
    lines.append("")
    for a, rows in w["marginals"].items():
        lines += [
            f"| {a} | share before | share kept | share kept, weighted | target |",
            "|---|---:|---:|---:|---:|",
        ]
        for r in rows:
            lines.append(
                f"| {r['group']} | {_pct(r['share_before'], 2)} | {_pct(r['share_kept'], 2)} | "
                f"{_pct(r['share_weighted'], 2)} | {_pct(r['target'], 2)} |"
            )
        lines.append("")
    return lines


# --- html ------------------------------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px auto;max-width:1200px;color:#1f2328;
line-height:1.4;padding:0 16px}
h1{margin-bottom:4px}h2{border-bottom:1px solid #d0d7de;padding-bottom:4px;margin-top:36px}
h3{margin:20px 0 6px}
table{border-collapse:collapse;margin:8px 0 16px;font-size:12px}
th,td{border:1px solid #d0d7de;padding:2px 6px;text-align:right;white-space:nowrap}
th{background:#f6f8fa;text-align:left}td:first-child,th:first-child{text-align:left}
td.l,th.l{text-align:left;white-space:normal;min-width:160px}
.tw{overflow-x:auto}
tr.flag td{background:#fff1e6}tr.muted td{color:#6e7781}
.badge{display:inline-block;border-radius:10px;padding:0 8px;font-size:12px;background:#ddf4ff;color:#0969da;
margin-left:6px;vertical-align:middle}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:8px 24px}
.panel h4{margin:8px 0 0;font-size:13px;font-weight:600}
.note{color:#6e7781;font-size:13px}.small{font-size:12px;color:#6e7781}
.summary{background:#f6f8fa;border:1px solid #d0d7de;border-radius:6px;padding:8px 14px}
"""


def _td(text: str, cls: str = "") -> str:
    return f'<td class="{cls}">{escape(text)}</td>' if cls else f"<td>{escape(text)}</td>"


def _table(header: Sequence[str], rows: Sequence[str]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    return f'<div class="tw"><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


def _group_rows_html(e: dict) -> str:
    rows = []
    for g in e["groups"]:
        if not g["suppressed"] and g["before"] == 0:
            continue  # declared groups without rows are named in the entry's notes
        if g["suppressed"]:
            rows.append(f'<tr class="muted">{_td(g["group"])}<td colspan="10" class="l">suppressed</td></tr>')
            continue
        cls = "flag" if g["flagged"] else ("muted" if not g["included"] else "")
        name = g["group"] + (" ⚑" if g["flagged"] else "") + ("" if g["included"] else " †")
        rows.append(
            f'<tr class="{cls}">'
            + _td(name)
            + _td(_int(g["before"]))
            + _td(_int(g["kept"]))
            + _td(_int(g["removed"]))
            + _td(f"{_pct(g['removal_rate'], 2)} {_ci(g['removal_ci'])}")
            + _td(f"{_ratio(g['ratio'])} {_ci(g['ratio_ci'], _ratio)}")
            + _td(_pct(g["share_before"]))
            + _td(_pct(g["share_after"]))
            + _td(_pp(g["share_change_pp"]))
            + _td(_rel(g["share_change_rel"]))
            + _td(_p(g["p_adj"]))
            + "</tr>"
        )
    return _table(
        [
            "group",
            "before",
            "kept",
            "removed",
            "removal rate [95% CI]",
            f"ratio vs {e['reference'] or '—'} [95% CI]",
            "share before",
            "share after",
            "Δ share (pp)",
            "Δ share (rel)",
            "p (adj)",
        ],
        rows,
    )


def _entry_caption(e: dict) -> str:
    t = e["test"]
    cov = e["coverage"]
    notes = "".join(f"<br>note: {escape(n)}" for n in e["notes"])
    return (
        f'<p class="small">Rows {_int(e["rows_before"])} → {_int(e["rows_kept"])}; unknown '
        f"{_pct(cov['unknown_share_before'])} → {_pct(cov['unknown_share_after'])}; χ² = {_ratio(t['chi2'])} "
        f"(dof {t['dof']}), p (adj) = {_p(t['p_adj'])}, Cramér's V = {_ratio(t['cramers_v'])}.{notes}</p>"
    )


def _removal_panel(e: dict) -> str:
    shown = [g for g in e["groups"] if not g["suppressed"]]
    overall = e["rows_removed"] / e["rows_before"] if e["rows_before"] else None
    svg = charts.interval_dots(
        [g["group"] for g in shown],
        [g["removal_rate"] for g in shown],
        [tuple(g["removal_ci"]) for g in shown],
        f"removal rate, {_where(e)}",
        reference=overall,
        highlight=[g["flagged"] for g in shown],
        muted=[not g["included"] for g in shown],
        width=560,
    )
    return f'<div class="panel"><h4>{escape(e["stage"])} — {VIEW_NAMES[e["view"]]}</h4>{svg}</div>'


def _attribute_html(report: dict, a: dict) -> str:
    name = a["name"]
    entries = [e for e in report["entries"] if e["kind"] == "attribute" and e["dimension"] == [name]]
    final = next(e for e in _final_entries(report, "attribute") if e["dimension"] == [name])
    included = [g for g in final["groups"] if g.get("included")]
    parts = [
        f'<h2 id="attr-{escape(name)}">{escape(name)}<span class="badge">{escape(a["method"])}</span></h2>',
        f'<p class="note">{escape(a["description"])} Source: {escape(a["source"] or "—")}.</p>' if a else "",
        "<h3>Shares before and after all stages</h3>",
        charts.grouped_bars(
            [g["group"] for g in included],
            [
                ("before", charts.BEFORE, [g["share_before"] for g in included]),
                ("after all stages", charts.AFTER, [g["share_after"] for g in included]),
            ],
            f"{name}: shares before and after",
        ),
        "<h3>Removal rate per group with 95% Wilson intervals (dashed: overall rate)</h3>",
        '<div class="grid">' + "".join(_removal_panel(e) for e in entries) + "</div>",
        "<h3>Coverage: share of rows with unknown label</h3>",
        _table(
            ["stage", "view", "unknown before", "unknown after"],
            [
                "<tr>"
                + _td(e["stage"])
                + _td(VIEW_NAMES[e["view"]])
                + _td(_pct(e["coverage"]["unknown_share_before"]))
                + _td(_pct(e["coverage"]["unknown_share_after"]))
                + "</tr>"
                for e in entries
            ],
        ),
    ]
    for e in entries:
        parts += [f"<h3>{escape(_where(e))}</h3>", _entry_caption(e), _group_rows_html(e)]
    return "".join(parts)


def _heatmap_html(report: dict, e: dict) -> str:
    if len(e["dimension"]) != 2:
        return ""
    order = {a["name"]: a["groups"] for a in report["meta"]["attributes"]}
    values, suppressed, seen_r, seen_c = {}, set(), [], []
    for g in e["groups"]:
        r, c = g["group"].split(" × ", 1)
        seen_r.append(r)
        seen_c.append(c)
        if g["suppressed"]:
            suppressed.add((r, c))
        else:
            values[(r, c)] = g["removal_rate"]

    def ordered(dim: str, seen: list[str]) -> list[str]:
        declared = [x for x in order.get(dim, []) if x in seen]
        return declared + sorted(set(seen) - set(declared) - {"unknown"}) + (["unknown"] if "unknown" in seen else [])

    rows, cols = ordered(e["dimension"][0], seen_r), ordered(e["dimension"][1], seen_c)
    return charts.heatmap(
        rows, cols, values, suppressed, f"removal rate, {_where(e)}", report["meta"]["options"]["min_cell"]
    )


def _concept_html(report: dict) -> str:
    last = report["meta"]["stages"][-1]
    concepts = [e for e in report["entries"] if e["kind"] == "concept" and e["stage"] == last]
    if not concepts:
        return ""
    parts = [
        '<h2 id="concepts">Concept-conditional shares</h2>',
        '<p class="note">Within rows whose caption names the concept, the share of each group before and '
        "after all stages (among determined groups).</p>",
    ]
    by_pair: dict[tuple[str, str], list[dict]] = {}
    for e in concepts:
        by_pair.setdefault((e["concept"]["attribute"], e["dimension"][0]), []).append(e)
    for (concept, group_attr), es in by_pair.items():
        groups = []
        for e in es:
            groups += [g["group"] for g in e["groups"] if g.get("included") and g["group"] not in groups]
        rows = []
        for e in es:
            by = {g["group"]: g for g in e["groups"]}
            cells = [_td(e["concept"]["value"], "l"), _td(_int(e["rows_before"])), _td(_int(e["rows_kept"]))]
            flagged = False
            for grp in groups:
                g = by.get(grp)
                if g is None or g["suppressed"] or not g.get("included"):
                    cells.append(_td("suppressed" if g is not None and g["suppressed"] else "—"))
                    continue
                flagged |= g["flagged"]
                cells.append(_td(f"{_pct(g['share_before'])} → {_pct(g['share_after'])} ({_pp(g['share_change_pp'])})"))
            cells.append(_td(_p(e["test"]["p_adj"])))
            rows.append(f'<tr class="{"flag" if flagged else ""}">{"".join(cells)}</tr>')
        parts += [
            f"<h3>{escape(group_attr)} within {escape(concept)}</h3>",
            _table(
                [concept, "rows before", "rows after", *(f"{g}: before → after (pp)" for g in groups), "χ² p (adj)"],
                rows,
            ),
        ]
    return "".join(parts)


def _keywords_html(report: dict) -> str:
    rows_data = _keyword_rows(report)
    if not rows_data:
        return ""
    last = report["meta"]["stages"][-1]
    rows = [
        "<tr>"
        + _td(k["term"])
        + _td(_int(k["before"]))
        + _td(_num(k["per_1k_before"]))
        + _td(_int(k["after"][last]["count"]))
        + _td(_num(k["after"][last]["per_1k"]))
        + _td(_rel(k["after"][last]["change_rel"]))
        + "</tr>"
        for k in rows_data
    ]
    return (
        '<h2 id="keywords">Keyword counts</h2><p class="note">Captions mentioning each word (case-insensitive, '
        "whole words) before and after all stages, per 1,000 captions (DALL·E 2's audit method). Words that occur "
        "in no caption are left out.</p>"
        + _table(["term", "before", "per 1k before", "after", "per 1k after", "relative change"], rows)
    )


def _weighting_html(w: dict | None) -> str:
    if not w:
        return ""
    parts = [
        '<h2 id="weights">Weights</h2>',
        f"<p>Method <b>{escape(w['method'])}</b> on {escape(' × '.join(w['attributes']))}; target: "
        f"{escape(w['target'])}. Kept rows {_int(w['kept_rows'])}; Kish effective sample size "
        f"<b>{w['ess']:,.0f}</b> ({_pct(w['ess_ratio'])} of kept rows); weights {_num(w['weight_min'])} to "
        f"{_num(w['weight_max'])}, mean 1.</p>",
    ]
    if w["unreachable"]:
        parts.append(f'<p class="note">Unreachable (no kept rows): {escape(", ".join(w["unreachable"]))}.</p>')
    parts.append(
        _table(
            ["attribute", "largest gap before weighting (pp)", "after weighting (pp)", "TVD before", "TVD after"],
            [
                "<tr>"
                + _td(a)
                + _td(f"{w['shift_unweighted'][a]['max_abs_pp']:.3f}")
                + _td(f"{w['shift_weighted'][a]['max_abs_pp']:.3g}")
                + _td(f"{w['shift_unweighted'][a]['tvd']:.4f}")
                + _td(f"{w['shift_weighted'][a]['tvd']:.3g}")
                + "</tr>"
                for a in w["attributes"]
            ],
        )
    )
    for a, rows in w["marginals"].items():
        parts.append(f"<h3>{escape(a)}</h3>")
        parts.append(
            charts.grouped_bars(
                [r["group"] for r in rows],
                [
                    ("before", charts.BEFORE, [r["share_before"] for r in rows]),
                    ("kept", charts.AFTER, [r["share_kept"] for r in rows]),
                    ("kept, weighted", charts.EXTRA[0], [r["share_weighted"] for r in rows]),
                    ("target", charts.EXTRA[1], [r["target"] for r in rows]),
                ],
                f"{a}: shares before, kept, weighted, target",
            )
        )
    return "".join(parts)


def render_html(report: dict, title: str = "Filter audit") -> str:
    """The report as one self-contained HTML page (inline CSS and SVG, no scripts, no external assets)."""
    meta = report["meta"]
    opts = meta["options"]
    stage_rows = [
        "<tr>"
        + _td(s["stage"])
        + _td(_int(s["evaluated"]))
        + _td(_int(s["kept"]))
        + _td(_int(s["removed"]))
        + _td(_pct(s["removal_rate"], 2))
        + _td(_int(s["cumulative_kept"]))
        + _td(_int(s["cumulative_removed"]))
        + _td(_pct(s["cumulative_removal_rate"], 2))
        + "</tr>"
        for s in report["stages"]
    ]
    flags = report["flags"]
    flag_rows = [
        "<tr>"
        + _td(str(f["rank"]))
        + _td(_where(f), "l")
        + _td(f["group"], "l")
        + _td(f["reference"] or "—", "l")
        + _td(f"{_pct(f['removal_rate'], 2)} {_ci(f['removal_ci'])}")
        + _td(_pct(f["reference_removal_rate"], 2))
        + _td(f"{_ratio(f['ratio'])} {_ci(f['ratio_ci'], _ratio)}")
        + _td(_pp(f["share_change_pp"]))
        + _td(_p(f["p_adj"]))
        + "</tr>"
        for f in flags
    ]
    top = flags[:20]
    attrs = ", ".join(
        f'<a href="#attr-{escape(a["name"])}">{escape(a["name"])}</a> ({escape(a["method"])})'
        for a in meta["attributes"]
    )
    parts = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f'<div class="summary"><p><b>{_int(meta["rows"])}</b> rows; stages: {escape(" → ".join(meta["stages"]))}; '
        f'attributes: {attrs}.</p><p class="small">{meta["tests"]} tests corrected together '
        f"({escape(opts['correction'])}). "
        f"Flag: adjusted p &lt; {opts['alpha']} and removal-rate ratio ≥ {opts['min_ratio']} or ≤ "
        f"{1 / opts['min_ratio']:.2f} vs the reference group; ranked by |log ratio|. Rates: Wilson "
        f"{opts['confidence']:.0%} intervals; ratios: Katz log intervals. † = unknown / not applicable (counted, not "
        f"in shares or tests). Intersection and concept cells with fewer than {opts['min_cell']} rows are "
        "suppressed.</p></div>",
        "<h2>Stages</h2>",
        _table(
            [
                "stage",
                "decided on",
                "kept",
                "removed",
                "removal rate",
                "kept so far",
                "removed so far",
                "removal rate so far",
            ],
            stage_rows,
        ),
        f"<h2>Flags ({len(flags)})</h2>",
    ]
    if flags:
        parts += [
            charts.ratio_forest(
                [f"#{f['rank']} {f['group']} vs {f['reference']}" for f in top],
                [f["ratio"] for f in top],
                [tuple(f["ratio_ci"]) for f in top],
                "removal-rate ratio vs reference, top flags",
                width=760,
            ),
            _table(
                [
                    "#",
                    "where",
                    "group",
                    "reference",
                    "removal rate [95% CI]",
                    "reference rate",
                    "ratio [95% CI]",
                    "Δ share (pp)",
                    "p (adj)",
                ],
                flag_rows,
            ),
        ]
    else:
        parts.append('<p class="note">No group flagged.</p>')
    for a in meta["attributes"]:
        parts.append(_attribute_html(report, a))
    inter = _final_entries(report, "intersection")
    if inter:
        parts.append(
            '<h2 id="intersections">Intersections</h2><p class="note">Removal rate after all stages per '
            "cell; hatched cells are suppressed (too few rows). Per-stage numbers are in report.json.</p>"
        )
        for e in inter:
            parts += [
                f"<h3>{escape(' × '.join(e['dimension']))}</h3>",
                _heatmap_html(report, e),
                _entry_caption(e),
                _group_rows_html(e),
            ]
    parts += [_concept_html(report), _keywords_html(report), _weighting_html(report.get("weighting"))]
    parts.append("</body></html>\n")
    return "".join(parts)


def write_report(report: dict, out_dir: str | os.PathLike, title: str = "Filter audit") -> dict[str, Path]:
    """Write report.json, report.md and report.html into `out_dir` (atomically); returns their paths."""
    out = Path(out_dir)
    paths = {"json": out / "report.json", "md": out / "report.md", "html": out / "report.html"}
    write_json(paths["json"], report)
    write_text(paths["md"], render_markdown(report))
    write_text(paths["html"], render_html(report, title))
    logger.info("audit report written to %s", out)
    return paths
