"""Labeling batch files: what annotators see (an HTML contact sheet) and fill in (a CSV, or parquet).

`write_labeling_batch` writes, for one round of one category:
- ``<stem>.csv`` and ``<stem>.parquet``: uid, caption, score, strategy, reason, round, category and an empty
  ``label`` column for the answers (1 = in the category, 0 = not; empty = not answered yet);
- ``<stem>.html``: one self-contained page (no network requests) with the category's description and
  guidelines, then a card per row: thumbnail (inline base64 JPEG when an image path or bytes is given),
  caption, score, uid and the reason it was picked. Thumbnails are blurred by default — these images are
  picked because they may be disturbing — and revealed one at a time by clicking.

Captions and reasons are HTML-escaped: they come from the web and must not run as markup.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import logging
from collections.abc import Mapping
from pathlib import Path

import pyarrow as pa

from sanitize.errors import ConfigError
from sanitize.io.atomic import atomic_path, write_parquet, write_text
from sanitize.safety.spec import CategorySpec
from sanitize.safety.strategies import Selection

logger = logging.getLogger(__name__)

BATCH_COLUMNS = ("uid", "caption", "score", "strategy", "reason", "round", "category", "label")


def batch_table(
    selection: Selection, *, category: str, round: int, captions: Mapping[str, str] | None = None
) -> pa.Table:
    """The batch as a table with `BATCH_COLUMNS`; `label` is all null, waiting for answers."""
    captions = captions or {}
    n = len(selection)
    return pa.table(
        {
            "uid": pa.array(selection.uids.tolist(), pa.string()),
            "caption": pa.array([captions.get(u, "") for u in selection.uids.tolist()], pa.string()),
            "score": pa.array(selection.scores, pa.float32()),
            "strategy": pa.array([selection.strategy] * n, pa.string()),
            "reason": pa.array(selection.reasons, pa.string()),
            "round": pa.array([round] * n, pa.int32()),
            "category": pa.array([category] * n, pa.string()),
            "label": pa.nulls(n, pa.int8()),
        }
    )


def write_labeling_batch(
    out_dir: str | Path,
    selection: Selection,
    *,
    category: CategorySpec | str,
    round: int,
    captions: Mapping[str, str] | None = None,
    images: Mapping[str, str | Path | bytes] | None = None,
    blur: bool = True,
    thumb_px: int = 192,
    stem: str | None = None,
) -> dict[str, Path]:
    """Write the CSV, parquet and HTML files of one labeling batch into `out_dir`; return their paths.

    `captions` and `images` map uid → caption / image (file path or encoded bytes); both optional.
    The default stem is ``<category>-round<NNN>``. Files are written atomically.
    """
    if thumb_px < 16:
        raise ConfigError(f"thumb_px must be >= 16, got {thumb_px}")
    name = category.name if isinstance(category, CategorySpec) else category
    stem = stem or f"{name}-round{round:03d}"
    out = Path(out_dir)
    table = batch_table(selection, category=name, round=round, captions=captions)
    paths = {"parquet": out / f"{stem}.parquet", "csv": out / f"{stem}.csv", "html": out / f"{stem}.html"}
    write_parquet(paths["parquet"], table)
    _write_csv(paths["csv"], table)
    spec = category if isinstance(category, CategorySpec) else None
    write_text(paths["html"], contact_sheet_html(table, spec=spec, images=images, blur=blur, thumb_px=thumb_px,
                                                 answers_file=paths["csv"].name))
    logger.info("wrote labeling batch of %d rows to %s", len(selection), paths["html"])
    return paths


def contact_sheet_html(
    table: pa.Table,
    *,
    spec: CategorySpec | None = None,
    images: Mapping[str, str | Path | bytes] | None = None,
    blur: bool = True,
    thumb_px: int = 192,
    answers_file: str = "the CSV file",
) -> str:
    """A self-contained HTML page for a batch table (see `batch_table`)."""
    images = images or {}
    rows = table.to_pylist()
    title = rows[0]["category"] if rows else (spec.name if spec else "batch")
    rnd = rows[0]["round"] if rows else ""
    esc = html.escape
    header = [f"<h1>{esc(str(title))} — round {esc(str(rnd))} — {len(rows)} images</h1>"]
    if spec is not None:
        header.append(f"<p class='desc'>{esc(spec.description)}</p>")
        if spec.guidelines:
            header.append(f"<pre class='guide'>{esc(spec.guidelines)}</pre>")
    header.append(
        f"<p>Write your answers in <code>{esc(answers_file)}</code>, column <code>label</code>: 1 = {esc(str(title))},"
        " 0 = not. " + ("Images are blurred: click one to reveal it, click again to blur." if blur else "") + "</p>"
    )
    cards = []
    for i, row in enumerate(rows):
        uri = _thumbnail_uri(images.get(row["uid"]), thumb_px, row["uid"])
        toggle = " blur' onclick=\"this.classList.toggle('blur')\"" if blur else "'"
        picture = f"<img class='thumb{toggle} src='{uri}' alt=''>" if uri else "<div class='thumb none'>no image</div>"
        cards.append(
            "<div class='card'>"
            f"{picture}<div class='meta'><b>#{i + 1}</b> score {row['score']:.3f}<br>"
            f"<span class='cap'>{esc(row['caption'] or '')}</span><br>"
            f"<code>{esc(row['uid'])}</code><br><small>{esc(row['reason'] or '')}</small></div></div>"
        )
    style = (
        "body{font-family:sans-serif;margin:1em}"
        ".grid{display:flex;flex-wrap:wrap;gap:10px}"
        f".card{{width:{thumb_px + 16}px;border:1px solid #ccc;padding:8px;font-size:12px}}"
        f".thumb{{width:{thumb_px}px;height:{thumb_px}px;object-fit:contain;background:#eee;cursor:pointer}}"
        ".thumb.blur{filter:blur(18px)}"
        ".none{display:flex;align-items:center;justify-content:center;color:#888}"
        ".cap{word-break:break-word}.guide{white-space:pre-wrap;background:#f6f6f6;padding:8px}"
    )
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{esc(str(title))} round {esc(str(rnd))}</title><style>{style}</style></head><body>"
        + "".join(header)
        + "<div class='grid'>"
        + "".join(cards)
        + "</div></body></html>\n"
    )


def thumbnail_jpeg(source: str | Path | bytes | None, thumb_px: int, uid: str) -> bytes | None:
    """A JPEG (bytes) of the image at `source` (path or encoded bytes) fitted into thumb_px × thumb_px.

    None when there is no image or it cannot be decoded (logged with its uid): one unreadable image must not
    cost the annotator the whole batch.
    """
    if source is None:
        return None
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
            img = img.convert("RGB")
            img.thumbnail((thumb_px, thumb_px))
            buffer = io.BytesIO()
            img.save(buffer, format="JPEG", quality=80)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        logger.warning("uid %s: no thumbnail (%s)", uid, exc)
        return None
    return buffer.getvalue()


def _thumbnail_uri(source: str | Path | bytes | None, thumb_px: int, uid: str) -> str | None:
    jpeg = thumbnail_jpeg(source, thumb_px, uid)
    return None if jpeg is None else "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def _write_csv(path: Path, table: pa.Table) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(table.column_names)
        for row in table.to_pylist():
            writer.writerow(["" if row[c] is None else (f"{row[c]:.6f}" if c == "score" else row[c])
                             for c in table.column_names])
