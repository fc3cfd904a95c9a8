"""Inline SVG charts for the HTML report: plain strings, no JavaScript, no external assets."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence, Set
from html import escape

BEFORE = "#9aa5b1"
AFTER = "#1f6feb"
EXTRA = ["#d97706", "#15803d"]
FLAG = "#c2410c"
FONT = 'font-family="system-ui, sans-serif" font-size="12"'
ROW_H = 22
RATIO_TICKS = (0.01, 0.1, 0.25, 0.5, 0.8, 1, 1.25, 2, 3, 5, 10, 20, 50, 100)


def _fmt_pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _svg(width: int, height: int, body: list[str], title: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}" {FONT}>'
        f"<title>{escape(title)}</title>{''.join(body)}</svg>"
    )


def _legend(items: Sequence[tuple[str, str]], x: int, y: int) -> list[str]:
    out = []
    for name, colour in items:
        out.append(f'<rect x="{x}" y="{y - 9}" width="10" height="10" fill="{colour}"/>')
        out.append(f'<text x="{x + 14}" y="{y}">{escape(name)}</text>')
        x += 24 + 7 * len(name)
    return out


def _axis(x0: float, width: float, y0: float, y1: float, vmax: float) -> list[str]:
    """Vertical grid lines with percentage labels at round steps from 0 to `vmax` (a `_nice_max` value)."""
    mantissa = vmax / 10 ** math.floor(math.log10(vmax))
    ticks = 4 if round(mantissa, 6) == 2 else 5
    step_pct = 100 * vmax / ticks
    digits = 0 if step_pct >= 1 and float(step_pct).is_integer() else (1 if step_pct >= 0.1 else 2)
    out = []
    for i in range(ticks + 1):
        x = x0 + width * i / ticks
        out.append(f'<line x1="{x:.1f}" y1="{y0}" x2="{x:.1f}" y2="{y1}" stroke="#e5e7eb"/>')
        out.append(
            f'<text x="{x:.1f}" y="{y1 + 14}" text-anchor="middle" fill="#555">{step_pct * i:.{digits}f}%</text>'
        )
    return out


def label_width(labels: Sequence[str], minimum: int = 60, maximum: int = 460) -> int:
    """Room for the longest label at ~7 px per character (system-ui 12 px)."""
    return int(min(max(minimum, 7 * max((len(t) for t in labels), default=0) + 14), maximum))


def _nice_max(v: float) -> float:
    if not v or not math.isfinite(v):
        return 1.0
    exp = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if m * exp >= v:
            return m * exp
    return 10 * exp


def grouped_bars(
    labels: Sequence[str], series: Sequence[tuple[str, str, Sequence[float | None]]], title: str, width: int = 620
) -> str:
    """Horizontal grouped bars of shares: one row per label, one bar per (name, colour, values) series."""
    label_w = label_width(labels, minimum=120)
    k = len(series)
    bar_h = 8 if k > 2 else 9
    row_h = max(ROW_H, k * (bar_h + 2) + 6)
    plot_w = width - label_w - 70
    vmax = _nice_max(max((v for _, _, vals in series for v in vals if v is not None), default=0.0))
    top = 26
    height = top + row_h * len(labels) + 24
    body = _legend([(n, c) for n, c, _ in series], label_w, 14)
    body += _axis(label_w, plot_w, top, top + row_h * len(labels), vmax)
    for i, label in enumerate(labels):
        y = top + i * row_h
        body.append(f'<text x="{label_w - 8}" y="{y + row_h / 2 + 4:.1f}" text-anchor="end">{escape(label)}</text>')
        for j, (_, colour, vals) in enumerate(series):
            v = vals[i]
            by = y + 3 + j * (bar_h + 2)
            if v is None:
                body.append(f'<text x="{label_w + 4}" y="{by + bar_h}" fill="#888">n/a</text>')
                continue
            w = plot_w * v / vmax
            body.append(f'<rect x="{label_w}" y="{by}" width="{w:.1f}" height="{bar_h}" fill="{colour}"/>')
            body.append(f'<text x="{label_w + w + 4:.1f}" y="{by + bar_h - 1}" fill="#333">{_fmt_pct(v)}</text>')
    return _svg(width, height, body, title)


def interval_dots(
    labels: Sequence[str],
    values: Sequence[float | None],
    intervals: Sequence[tuple[float | None, float | None]],
    title: str,
    reference: float | None = None,
    highlight: Sequence[bool] | None = None,
    muted: Sequence[bool] | None = None,
    width: int = 620,
) -> str:
    """A dot with a whisker per label (e.g. removal rate with its Wilson interval); a dashed line at
    `reference` (the overall rate). Highlighted rows (flagged groups) use the flag colour, muted rows grey.
    The axis follows the point estimates; a whisker of a tiny group that runs past it ends in an arrow."""
    label_w = label_width(labels, minimum=120)
    plot_w = width - label_w - 30
    top = 10
    points = [v for v in values if v is not None] + ([reference] if reference is not None else [])
    highs = [hi for _, hi in intervals if hi is not None]
    vmax = _nice_max(min(max(highs, default=0.0), 2 * max(points, default=0.5)) or max(points, default=0.0))
    height = top + ROW_H * len(labels) + 24
    body = _axis(label_w, plot_w, top, top + ROW_H * len(labels), vmax)

    def x_of(v: float) -> float:
        return label_w + plot_w * min(v, vmax) / vmax

    if reference is not None:
        x = x_of(reference)
        body.append(
            f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + ROW_H * len(labels)}" '
            f'stroke="#444" stroke-dasharray="4 3"/>'
        )
    for i, label in enumerate(labels):
        y = top + i * ROW_H + ROW_H / 2
        colour = AFTER
        if highlight is not None and highlight[i]:
            colour = FLAG
        elif muted is not None and muted[i]:
            colour = BEFORE
        body.append(f'<text x="{label_w - 8}" y="{y + 4:.1f}" text-anchor="end">{escape(label)}</text>')
        lo, hi = intervals[i]
        if lo is not None and hi is not None:
            x0, x1 = x_of(lo), x_of(hi)
            body.append(
                f'<line x1="{x0:.1f}" y1="{y:.1f}" x2="{x1:.1f}" y2="{y:.1f}" stroke="{colour}" stroke-width="2"/>'
            )
            body.append(f'<line x1="{x0:.1f}" y1="{y - 5:.1f}" x2="{x0:.1f}" y2="{y + 5:.1f}" stroke="{colour}"/>')
            if hi > vmax:
                body.append(
                    f'<path d="M{x1 - 6:.1f},{y - 5:.1f} L{x1:.1f},{y:.1f} L{x1 - 6:.1f},{y + 5:.1f}" '
                    f'fill="none" stroke="{colour}" stroke-width="2"/>'
                )
            else:
                body.append(f'<line x1="{x1:.1f}" y1="{y - 5:.1f}" x2="{x1:.1f}" y2="{y + 5:.1f}" stroke="{colour}"/>')
        v = values[i]
        if v is None:
            body.append(f'<text x="{label_w + 4}" y="{y + 4:.1f}" fill="#888">n/a (no rows)</text>')
        else:
            body.append(f'<circle cx="{x_of(v):.1f}" cy="{y:.1f}" r="4" fill="{colour}"/>')
    return _svg(width, height, body, title)


def _heat_colour(v: float, vmax: float) -> str:
    t = 0.0 if vmax <= 0 else min(max(v / vmax, 0.0), 1.0)
    # White to deep orange: light cells read as "little removed".
    r, g, b = (int(255 + (e - 255) * t) for e in (194, 65, 12))
    return f"rgb({r},{g},{b})"


def heatmap(
    rows: Sequence[str],
    cols: Sequence[str],
    values: Mapping[tuple[str, str], float | None],
    suppressed: Set[tuple[str, str]],
    title: str,
    min_cell: int,
    cell_w: int = 86,
) -> str:
    """Removal rate per (row group, column group) cell; suppressed cells hatched grey, absent cells blank."""
    label_w = label_width(rows, minimum=120)
    top, left, cell_h = 90, label_w, 30
    width = left + cell_w * len(cols) + 20
    height = top + cell_h * len(rows) + 30
    vmax = max((v for v in values.values() if v is not None), default=0.0)
    body = [
        '<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)"><rect width="6" height="6" fill="#eee"/>'
        '<line x1="0" y1="0" x2="0" y2="6" stroke="#bbb" stroke-width="2"/></pattern></defs>'
    ]
    for j, c in enumerate(cols):
        x = left + j * cell_w + cell_w / 2
        body.append(
            f'<text x="{x:.1f}" y="{top - 8}" text-anchor="start" transform="rotate(-30 {x:.1f} {top - 8})">'
            f"{escape(c)}</text>"
        )
    for i, r in enumerate(rows):
        y = top + i * cell_h
        body.append(f'<text x="{left - 8}" y="{y + cell_h / 2 + 4}" text-anchor="end">{escape(r)}</text>')
        for j, c in enumerate(cols):
            x = left + j * cell_w
            key = (r, c)
            if key in suppressed:
                body.append(f'<rect x="{x}" y="{y}" width="{cell_w - 2}" height="{cell_h - 2}" fill="url(#hatch)"/>')
                body.append(
                    f'<text x="{x + cell_w / 2 - 1}" y="{y + cell_h / 2 + 3}" text-anchor="middle" '
                    f'fill="#666">&lt;{min_cell}</text>'
                )
            elif key in values and values[key] is not None:
                v = values[key]
                fill = _heat_colour(v, vmax)
                text = "#fff" if vmax and v / vmax > 0.6 else "#111"
                body.append(f'<rect x="{x}" y="{y}" width="{cell_w - 2}" height="{cell_h - 2}" fill="{fill}"/>')
                body.append(
                    f'<text x="{x + cell_w / 2 - 1}" y="{y + cell_h / 2 + 3}" text-anchor="middle" '
                    f'fill="{text}">{_fmt_pct(v)}</text>'
                )
            else:
                body.append(
                    f'<rect x="{x}" y="{y}" width="{cell_w - 2}" height="{cell_h - 2}" fill="#fafafa" stroke="#eee"/>'
                )
    return _svg(width, height, body, title)


def ratio_forest(
    labels: Sequence[str],
    ratios: Sequence[float | None],
    intervals: Sequence[tuple[float | None, float | None]],
    title: str,
    width: int = 620,
) -> str:
    """Removal-rate ratios with intervals on a log axis, a line at 1 (no disparity)."""
    label_w = label_width(labels, minimum=120)
    finite = [v for pair in intervals for v in pair if v] + [r for r in ratios if r]
    lo_v = max([t for t in RATIO_TICKS if t <= min(finite, default=0.5)] + [RATIO_TICKS[0]])
    lo_v = min(lo_v, 0.5)
    hi_v = min([t for t in RATIO_TICKS if t >= max(finite, default=2.0)] + [RATIO_TICKS[-1]])
    hi_v = max(hi_v, 2.0)
    lmin, lmax = math.log(lo_v), math.log(hi_v)
    plot_w = width - label_w - 30
    top = 10
    height = top + ROW_H * len(labels) + 24

    def x_of(v: float) -> float:
        return label_w + plot_w * (math.log(min(max(v, lo_v), hi_v)) - lmin) / (lmax - lmin)

    body = []
    for tick in RATIO_TICKS:
        if lo_v <= tick <= hi_v:
            x = x_of(tick)
            colour = "#444" if tick == 1 else "#e5e7eb"
            body.append(
                f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + ROW_H * len(labels)}" stroke="{colour}"/>'
            )
            body.append(
                f'<text x="{x:.1f}" y="{top + ROW_H * len(labels) + 14}" text-anchor="middle" fill="#555">'
                f"{tick:g}×</text>"
            )
    for i, label in enumerate(labels):
        y = top + i * ROW_H + ROW_H / 2
        body.append(f'<text x="{label_w - 8}" y="{y + 4:.1f}" text-anchor="end">{escape(label)}</text>')
        lo, hi = intervals[i]
        if lo and hi:
            body.append(
                f'<line x1="{x_of(lo):.1f}" y1="{y:.1f}" x2="{x_of(hi):.1f}" y2="{y:.1f}" stroke="{FLAG}" '
                f'stroke-width="2"/>'
            )
        r = ratios[i]
        if r:
            body.append(f'<circle cx="{x_of(r):.1f}" cy="{y:.1f}" r="4" fill="{FLAG}"/>')
        else:
            why = "0× (the group lost no rows)" if r == 0 else "undefined (the reference lost no rows)"
            body.append(f'<text x="{label_w + 4}" y="{y + 4:.1f}" fill="#888">{why}</text>')
    return _svg(width, height, body, title)
