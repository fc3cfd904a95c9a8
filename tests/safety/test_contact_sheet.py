from __future__ import annotations

import base64
import io
import re

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from sanitize.errors import ConfigError
from sanitize.safety.contact_sheet import BATCH_COLUMNS, write_labeling_batch
from sanitize.safety.labels import read_label_file
from sanitize.safety.spec import load_spec
from sanitize.safety.strategies import Selection


def selection(n=3):
    return Selection(
        strategy="uncertainty",
        uids=np.array([f"u{i}" for i in range(n)]),
        rows=np.arange(n),
        scores=np.linspace(0.4, 0.6, n).astype(np.float32),
        reasons=[f"uncertainty {i}" for i in range(n)],
    )


def jpeg_bytes(color=(200, 30, 30), size=(320, 240)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_batch_files_and_round_trip_of_answers(tmp_path):
    spec = load_spec().category("violence")
    png = tmp_path / "a.png"
    Image.new("RGBA", (50, 80), (0, 0, 255, 128)).save(png)
    paths = write_labeling_batch(
        tmp_path / "batches",
        selection(),
        category=spec,
        round=2,
        captions={"u0": "a <script>alert(1)</script> caption", "u1": "plain"},
        images={"u0": jpeg_bytes(), "u1": png, "u2": b"not an image"},
    )
    assert {p.name for p in paths.values()} == {"violence-round002.csv", "violence-round002.parquet",
                                                "violence-round002.html"}
    table = pq.read_table(paths["parquet"])
    assert tuple(table.column_names) == BATCH_COLUMNS
    assert table["label"].null_count == 3 and table["round"].to_pylist() == [2, 2, 2]
    assert table["caption"].to_pylist()[2] == ""

    page = paths["html"].read_text(encoding="utf-8")
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "http://" not in page and "https://" not in page  # self-contained
    thumbs = re.findall(r"src='data:image/jpeg;base64,([^']+)'", page)
    assert len(thumbs) == 2  # the third image is unreadable: a placeholder, not a crash
    with Image.open(io.BytesIO(base64.b64decode(thumbs[0]))) as thumb:
        assert max(thumb.size) <= 192
    assert page.count("class='thumb blur'") == 2 and "no image" in page
    assert spec.description in page and "u2" in page and "0.500" in page

    # An annotator fills in two of three answers in the CSV; the file reads back as labels.
    csv_text = paths["csv"].read_text(encoding="utf-8").splitlines()
    assert csv_text[0] == ",".join(BATCH_COLUMNS)
    answered = [csv_text[0], csv_text[1] + "1", csv_text[2] + "0", csv_text[3]]
    paths["csv"].write_text("\n".join(answered) + "\n", encoding="utf-8")
    answers = read_label_file(paths["csv"])
    assert (answers.uids, answers.labels, answers.rounds, answers.unanswered) == (["u0", "u1"], [1, 0], [2, 2], 1)


def test_unblurred_sheet_and_category_name_only(tmp_path):
    paths = write_labeling_batch(tmp_path, selection(1), category="sexual", round=0, images={"u0": jpeg_bytes()},
                                 blur=False, stem="b")
    page = paths["html"].read_text(encoding="utf-8")
    assert "class='thumb'" in page and "blur'" not in page.split("</style>")[1]
    with pytest.raises(ConfigError, match="thumb_px"):
        write_labeling_batch(tmp_path, selection(1), category="sexual", round=0, thumb_px=4)


def test_empty_selection_writes_empty_batch(tmp_path):
    empty = Selection("random", np.array([], dtype=str), np.array([], np.int64), np.array([], np.float32), [])
    paths = write_labeling_batch(tmp_path, empty, category="sexual", round=1)
    assert pq.read_table(paths["parquet"]).num_rows == 0
    assert "0 images" in paths["html"].read_text(encoding="utf-8")
