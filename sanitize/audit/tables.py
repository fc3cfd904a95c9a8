"""Tables of the audit report: columns, rows and typed cells that carry their plain value and their printed text.

Every number of report.md and report.html is formatted here, once, into a `Cell`; the renderers only place
`Cell.text` (Markdown as is, HTML escaped). Undefined values (None in report.json) print as "n/a".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

MARKDOWN = "markdown"
HTML = "html"
BOTH = (MARKDOWN, HTML)
LEFT = "left"
RIGHT = "right"
MISSING = "n/a"

# A cell's plain value: a number, a label, None when undefined, or (estimate, low, high) for an interval.
CellValue = int | float | str | None | tuple[float | None, ...]


@dataclass(frozen=True)
class Cell:
    """One table cell. `wrap`: free text the HTML left-aligns and lets wrap; `span`: columns the cell covers."""

    value: CellValue
    text: str
    wrap: bool = False
    span: int = 1


@dataclass(frozen=True)
class Column:
    """A column title and its Markdown alignment. `markdown_title` replaces `title` in Markdown when given."""

    title: str
    align: str = RIGHT
    markdown_title: str | None = None


@dataclass(frozen=True)
class Row:
    """One table row.

    `tone`: "flag" (a flagged group), "muted" (counted but not tested, or suppressed) or "" (plain).
    `empty`: a declared group without rows; Markdown lists it, HTML leaves it out (the entry's notes name it).
    """

    cells: tuple[Cell, ...]
    tone: str = ""
    empty: bool = False


@dataclass(frozen=True)
class Table:
    """Columns and rows; `shown_in` names the renderers that print it (MARKDOWN, HTML or both).

    Guaranteed: every row's cells (with their spans) cover exactly the columns.
    """

    columns: tuple[Column, ...]
    rows: tuple[Row, ...]
    shown_in: tuple[str, ...] = BOTH

    def __post_init__(self) -> None:
        for row in self.rows:
            width = sum(c.span for c in row.cells)
            if width != len(self.columns):
                raise ValueError(f"a row covers {width} columns, the table has {len(self.columns)}")


# --- number formats --------------------------------------------------------------------------------------


def _percent(x: float | None, digits: int = 1) -> str:
    return MISSING if x is None else f"{100 * x:.{digits}f}%"


def _decimal(x: float | None) -> str:
    return MISSING if x is None else f"{x:.2f}"


def _interval(low: float | None, high: float | None, fmt: Callable[[float | None], str]) -> str:
    return "" if low is None or high is None else f"[{fmt(low)}, {fmt(high)}]"


def _points(x: float | None) -> str:
    return MISSING if x is None else f"{x:+.2f}"


# --- cells -----------------------------------------------------------------------------------------------


def text_cell(text: str, wrap: bool = False) -> Cell:
    """A label printed as is."""
    return Cell(text, text, wrap=wrap)


def plain_cell(x: int | float | str | None) -> Cell:
    """A value printed with Python's default format (`str(x)`), e.g. a test count or an option."""
    return Cell(x, f"{x}")


def count_cell(n: int | None) -> Cell:
    """A count with thousands separators: 12,345."""
    return Cell(n, MISSING if n is None else f"{n:,}")


def percent_cell(x: float | None, digits: int = 1) -> Cell:
    """A share or rate as a percentage: 0.1234 -> 12.3% (`digits` decimals)."""
    return Cell(x, _percent(x, digits))


def points_cell(x: float | None) -> Cell:
    """A change in percentage points with its sign: +1.23."""
    return Cell(x, _points(x))


def relative_cell(x: float | None) -> Cell:
    """A relative change as a signed percentage: 0.1234 -> +12.3%."""
    return Cell(x, MISSING if x is None else f"{100 * x:+.1f}%")


def decimal_cell(x: float | None) -> Cell:
    """A ratio or statistic with two decimals: 1.23."""
    return Cell(x, _decimal(x))


def fixed_cell(x: float, spec: str) -> Cell:
    """A number in the format `spec` (e.g. ".3f", ",.0f", ".0%")."""
    return Cell(x, f"{x:{spec}}")


def p_value_cell(p: float | None) -> Cell:
    """A p-value: three decimals, two significant digits below 0.001, "<1e-300" for an underflow to 0."""
    if p is None:
        return Cell(p, MISSING)
    return Cell(p, "<1e-300" if p == 0 else (f"{p:.2g}" if p < 0.001 else f"{p:.3f}"))


def rate_interval_cell(rate: float | None, interval: Sequence[float | None]) -> Cell:
    """A rate (two decimals) and its interval (one decimal): 12.00% [10.1%, 14.2%]; no interval when undefined."""
    low, high = interval
    return Cell((rate, low, high), f"{_percent(rate, 2)} {_interval(low, high, _percent)}")


def ratio_interval_cell(ratio: float | None, interval: Sequence[float | None]) -> Cell:
    """A ratio and its interval: 1.50 [1.20, 1.90]; no interval when undefined."""
    low, high = interval
    return Cell((ratio, low, high), f"{_decimal(ratio)} {_interval(low, high, _decimal)}")


def share_change_cell(before: float | None, after: float | None, change_pp: float | None) -> Cell:
    """A share before and after with the change in points: 40.0% → 35.0% (-5.00)."""
    return Cell((before, after, change_pp), f"{_percent(before)} → {_percent(after)} ({_points(change_pp)})")
