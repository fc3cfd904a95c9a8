"""Every bad input is answered in one line (issue 16), generated: for the commands that read run folders and
labeling projects (`sanitize embed`, `classify`, `export`, `label next`, `label status`, `label audit-sample`,
`label serve`), hypothesis corrupts one file of a valid input (cuts it, changes a byte, replaces it with random
bytes, empties it, or gives a JSON value, a parquet column or an array another type) and runs the real CLI.

Exit 0 means the command's outputs are complete (whether a corrupted file is still valid is not decided here: a
changed byte in a caption is); otherwise exit 1 or 2, exactly one `error:` line, the last, naming the corrupted
file, no traceback and no "unexpected" error, and nothing finished left behind that a rerun would trust (no new
completion marker, certificate, batch or export). The tables of `test_bad_inputs_runs.py` are the hand-written
cases of the same commands.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from sanitize.io.embeddings import write_embedding_shard
from sanitize.io.manifest import open_manifest
from sanitize.io.runfolder import RunFolder
from sanitize_cli.main import cli
from tests.io.test_bad_inputs import random_arrays

CATEGORY = "sexual"
UIDS = [f"u{i:02d}" for i in range(60)]
SPEC = f'[categories.{CATEGORY}]\ndescription = "x"\nprompts = ["p"]\ntarget_recall = 0.6\nconfidence = 0.6\n'
SLOW = settings(max_examples=30, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def ok(*args: str | Path) -> Result:
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    return result


# -- the valid inputs, built once ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    """`world/` with `run/` (60 embedded rows, random 8-d unit vectors, written without a model) and `p/` (a project
    whose category has seed labels, a classifier and a labelled random audit sample): what classify, the label
    commands and label serve read. The answers follow the first coordinate, so the classifier has something to
    learn."""
    root = tmp_path_factory.mktemp("generated") / "world"
    root.mkdir()
    pq.write_table(pa.table({"uid": UIDS, "caption": [f"caption {u}" for u in UIDS]}), root / "in.parquet")
    run = RunFolder.create(root / "run", open_manifest(root / "in.parquet"))
    x = np.random.default_rng(0).normal(size=(len(UIDS), 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    write_embedding_shard(run.embeddings_dir, 0, x, None, pa.table({"uid": UIDS}))
    truth = {uid: int(value > 0.3) for uid, value in zip(UIDS, x[:, 0], strict=True)}
    (root / "spec.toml").write_text(SPEC)
    ok("label", "init", root / "p", "--spec", root / "spec.toml")
    (root / "seed.csv").write_text("uid,label\n" + "".join(f"{u},{truth[u]}\n" for u in UIDS[:24]))
    common = ("--project", root / "p", "--run", root / "run")
    ok("label", "import", CATEGORY, root / "seed.csv", *common)
    batch = Path(json.loads(ok("label", "audit-sample", CATEGORY, *common, "--n", 30, "--json").stdout)["paths"]["csv"])
    with open(batch, newline="", encoding="utf-8") as f:
        rows = [{**row, "label": truth[row["uid"]]} for row in csv.DictReader(f)]
    with open(batch, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    ok("label", "add", CATEGORY, batch, *common)
    return root


@pytest.fixture(scope="module")
def classified(labelled, tmp_path_factory) -> Path:
    """A copy of `labelled` whose run has been classified (what export reads)."""
    root = copy_world(labelled, tmp_path_factory.mktemp("classified") / "world")
    ok("classify", root / "run", "--project", root / "p")
    return root


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """`images/u0.jpg` … `u3.jpg` (small solid JPEGs) and `m.parquet` naming them: a manifest `embed` takes."""
    root = tmp_path_factory.mktemp("embed")
    (root / "images").mkdir()
    for i in range(4):
        Image.new("RGB", (32, 32), (60 * i, 100, 200)).save(root / "images" / f"u{i}.jpg")
    pq.write_table(manifest_table(), root / "m.parquet")
    return root


def manifest_table(**columns: pa.Array) -> pa.Table:
    """The valid four-row manifest of `images`, with `columns` replaced."""
    valid = {"uid": pa.array([f"u{i}" for i in range(4)]), "caption": pa.array(["red", "green", "blue", "grey"]),
             "image": pa.array([f"images/u{i}.jpg" for i in range(4)])}
    return pa.table({**valid, **columns})


# -- corrupting one file -------------------------------------------------------------------------------------------

def mutated(data: bytes, draw: st.DrawFn) -> bytes:
    """`data` cut short, with one byte changed, emptied, or replaced by random bytes."""
    how = draw(st.sampled_from(["cut", "byte", "byte", "empty", "random"]))
    if how == "empty":
        return b""
    if how == "random" or not data:
        return draw(st.binary(max_size=200))
    if how == "cut":
        return data[:draw(st.integers(0, len(data) - 1))]
    at = draw(st.integers(0, len(data) - 1))
    return data[:at] + bytes([(data[at] + draw(st.integers(1, 255))) % 256]) + data[at + 1:]


WRONG_JSON = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=True), st.text(max_size=3),
                       st.lists(st.integers(0, 2), max_size=2), st.just({}))


def json_with_a_wrong_type(data: bytes, draw: st.DrawFn) -> bytes:
    """The JSON document `data` with one value (or the whole document) replaced by one of another kind."""
    doc = json.loads(data)
    nodes = [(None, None)]  # (container, key) of every value; (None, None) is the document itself
    stack = [doc]
    while stack:
        node = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
        for key, value in items:
            nodes.append((node, key))
            stack.append(value)
    container, key = draw(st.sampled_from(nodes))
    value = draw(WRONG_JSON)
    if container is None:
        doc = value
    else:
        container[key] = value
    return json.dumps(doc).encode()


def parquet_with_a_wrong_column(data: bytes, draw: st.DrawFn) -> bytes:
    """The parquet table `data` with one column dropped, or replaced by one of another type (same length)."""
    table = pq.read_table(io.BytesIO(data))
    name = draw(st.sampled_from(table.column_names))
    n = table.num_rows
    kind = draw(st.sampled_from(["drop", "int", "float", "text", "list", "null", "bool"]))
    if kind == "drop":
        table = table.drop_columns([name])
    else:
        values = {"int": st.integers(-2, 2), "float": st.floats(allow_nan=True), "text": st.text(max_size=3),
                  "list": st.lists(st.integers(0, 2), max_size=2), "null": st.none(), "bool": st.booleans()}[kind]
        column = pa.array(draw(st.lists(values, min_size=n, max_size=n)), pa.null() if kind == "null" else None)
        table = table.set_column(table.column_names.index(name), name, column)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def npy_replaced(draw: st.DrawFn) -> bytes:
    buf = io.BytesIO()
    np.save(buf, draw(random_arrays), allow_pickle=True)
    return buf.getvalue()


@st.composite
def broken_bytes(draw: st.DrawFn, data: bytes, suffix: str) -> bytes:
    """`data`, the bytes of a file with `suffix`, broken: `mutated`, or (a third of the time) a JSON value, a parquet
    column or the whole .npy array of another type."""
    retyped = {".json": json_with_a_wrong_type, ".parquet": parquet_with_a_wrong_column}
    if draw(st.integers(0, 2)) == 0:
        if suffix in retyped:
            return retyped[suffix](data, draw)
        if suffix == ".npy":
            return npy_replaced(draw)
    return mutated(data, draw)


def copy_world(world: Path, to: Path) -> Path:
    """A copy of `world` at `to` whose run reads the copy's input."""
    shutil.copytree(world, to)
    run_json = to / "run" / "run.json"
    run_json.write_text(run_json.read_text().replace(str(world), str(to)))
    return to


def corrupt_copy(world: Path, tmp: str, files: list[str], data: st.DataObject) -> tuple[Path, Path]:
    """A copy of `world` in `tmp` with one of `files` broken (both drawn from `data`); (the copy, the broken file)."""
    relative = data.draw(st.sampled_from(files), label="file")
    copy = copy_world(world, Path(tmp) / "world")
    path = copy / relative
    intact = path.read_bytes()
    suffix = path.suffix or ".json"  # completion markers are JSON without a suffix
    broken = data.draw(broken_bytes(intact, suffix), label="bytes")
    path.write_bytes(broken)
    event(f"{relative}: {'intact' if broken == intact else 'changed'}")
    return copy, path


def assert_failed_in_one_line(result: Result, codes: tuple[int, ...], broken: Path, world: Path,
                              also: Path | None = None) -> None:
    """Exit one of `codes`; the last stderr line, and the only `error:` one, names the `broken` file or, when the
    file still reads but says something else (a category renamed by a changed byte), its project or run folder, or
    `also` (the run, when the file still reads but no longer fits the run: labels whose uids changed are reported
    against the run's pool); no traceback, no unexpected error."""
    assert result.exit_code in codes and isinstance(result.exception, SystemExit), (result.output, result.exception)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and result.stderr.rstrip("\n").endswith(errors[0]), result.stderr
    assert not errors[0].startswith("error: unexpected ") and "Traceback" not in result.output + result.stderr
    folder = world / broken.relative_to(world).parts[0]
    assert str(broken) in errors[0] or any(f"{f}:" in errors[0] for f in (folder, also) if f), errors[0]


def files_under(folder: Path) -> set[Path]:
    return {p.relative_to(folder) for p in folder.rglob("*") if p.is_file()}


def assert_nothing_finished_added(before: set[Path], folder: Path, finished: Callable[[Path], bool]) -> None:
    """No file that a finished command writes (`finished(relative path)`) appeared in `folder` during the call."""
    added = files_under(folder) - before
    assert not [p for p in added if finished(p)], sorted(added)


# -- the commands --------------------------------------------------------------------------------------------------

PROJECT_FILES = ["p/categories.toml", f"p/labels/{CATEGORY}.parquet", f"p/models/{CATEGORY}.safetensors",
                 f"p/audit/{CATEGORY}_sample.parquet"]
POOL_FILES = ["run/run.json", "run/embeddings/img_emb/img_emb_00000.npy",
              "run/embeddings/metadata/metadata_00000.parquet"]


@SLOW
@given(st.data())
def test_classify_with_a_corrupted_classifier_labels_or_embeddings(labelled, data):
    """Exit 0 only with a certificate and the decisions of every shard; else one line naming the file and no
    classify marker or decisions."""
    with tempfile.TemporaryDirectory() as tmp:
        world, broken = corrupt_copy(labelled, tmp, [*PROJECT_FILES, *POOL_FILES], data)
        before = files_under(world)
        result = invoke("classify", world / "run", "--project", world / "p")
        event(f"exit {result.exit_code}")
        stage = world / "run" / "stages" / "classify"
        if result.exit_code == 0:
            assert (stage / CATEGORY / "certificate.json").is_file() and (stage / "_done" / "00000").is_file()
            assert pq.read_table(stage / CATEGORY / "00000.parquet").num_rows > 0
            return
        assert_failed_in_one_line(result, (1, 2), broken, world)
        # the certificate may be there: written whole (atomically) before the shards, from the audit labels alone
        assert_nothing_finished_added(before, world, lambda p: p.is_relative_to("run/stages/classify")
                                      and p.name != "certificate.json")


DECISION_FILES = ["run/run.json", "run/stats.json", "run/stages/classify/_done/00000",
                  f"run/stages/classify/{CATEGORY}/00000.parquet", f"run/stages/classify/{CATEGORY}/certificate.json",
                  "in.parquet"]


@SLOW
@given(st.data())
def test_export_of_a_run_with_corrupted_decisions(classified, data):
    """Exit 0 only with every kept row or removed uid written (their counts add up to the input's) and the
    export's marker; else one line naming the file and no export marker or removed.parquet."""
    with tempfile.TemporaryDirectory() as tmp:
        world, broken = corrupt_copy(classified, tmp, DECISION_FILES, data)
        result = invoke("export", world / "run")
        event(f"exit {result.exit_code}")
        out = world / "run" / "export"
        if result.exit_code == 0:
            kept = sum(pq.read_metadata(p).num_rows for p in (out / "kept").glob("*.parquet"))
            removed = pq.read_table(out / "removed.parquet").num_rows
            assert (out / "_done" / "00000").is_file() and kept + removed == pq.read_metadata(world / "in.parquet")\
                .num_rows
            return
        # an input changed since the run began may be named as the run whose decisions no longer fit it
        assert_failed_in_one_line(result, (1, 2), broken, world, also=world / "run")
        assert not (out / "removed.parquet").exists() and not (out / "_done").exists()


LABEL_FILES = [*PROJECT_FILES, *POOL_FILES, f"p/batches/{CATEGORY}/audit_1.parquet"]


def batch_files(project: Path) -> set[Path]:
    return set((project / "batches" / CATEGORY).glob("*"))


def one_batch(names: set[str]) -> str:
    """The name of the one batch whose CSV, parquet and contact sheet are `names`."""
    stems = {Path(name).stem for name in names}
    assert len(stems) == 1 and {Path(name).suffix for name in names} == {".csv", ".parquet", ".html"}, names
    return stems.pop()


@SLOW
@given(st.data())
def test_label_next_with_a_corrupted_project_or_pool(labelled, data):
    """Exit 0 only with the new batch's CSV, parquet and contact sheet; else one line naming the file and no new
    batch file."""
    with tempfile.TemporaryDirectory() as tmp:
        world, broken = corrupt_copy(labelled, tmp, LABEL_FILES, data)
        before = batch_files(world / "p")
        result = invoke("label", "next", CATEGORY, "--project", world / "p", "--run", world / "run", "--n", 5,
                        "--strategy", "random")
        event(f"exit {result.exit_code}")
        added = {p.name for p in batch_files(world / "p") - before}
        if result.exit_code == 0:
            assert one_batch(added).startswith("round_"), added
            assert pq.read_table(world / "p" / "batches" / CATEGORY / f"{one_batch(added)}.parquet").num_rows == 5
            return
        assert_failed_in_one_line(result, (1, 2), broken, world, also=world / "run")
        assert not added


@SLOW
@given(st.data())
def test_label_audit_sample_with_a_corrupted_project_or_pool(labelled, data):
    """Exit 0 only with the next audit batch written; else one line naming the file and no new batch file."""
    with tempfile.TemporaryDirectory() as tmp:
        world, broken = corrupt_copy(labelled, tmp, LABEL_FILES, data)
        before = batch_files(world / "p")
        result = invoke("label", "audit-sample", CATEGORY, "--project", world / "p", "--run", world / "run",
                        "--n", 5)
        event(f"exit {result.exit_code}")
        added = {p.name for p in batch_files(world / "p") - before}
        if result.exit_code == 0:
            assert one_batch(added).startswith("audit_"), added
            return
        assert_failed_in_one_line(result, (1, 2), broken, world, also=world / "run")
        assert not added


@SLOW
@given(st.data())
def test_label_status_with_a_corrupted_project_or_pool(labelled, data):
    """Exit 0 only with the category's JSON status; else one line naming the file. It only reads: the project and
    the run are left as they were either way."""
    with tempfile.TemporaryDirectory() as tmp:
        world, broken = corrupt_copy(labelled, tmp, LABEL_FILES, data)
        before = {p: p.read_bytes() for p in world.rglob("*") if p.is_file() and not p.name.startswith(".")}
        result = invoke("label", "status", CATEGORY, "--project", world / "p", "--run", world / "run", "--json")
        event(f"exit {result.exit_code}")
        after = {p: p.read_bytes() for p in world.rglob("*") if p.is_file() and not p.name.startswith(".")}
        assert after == before
        if result.exit_code == 0:
            assert CATEGORY in result.stdout and json.loads(result.stdout)
            return
        assert_failed_in_one_line(result, (1, 2), broken, world, also=world / "run")


@SLOW
@given(st.data())
def test_label_serve_starts_only_with_a_readable_project_and_pool(labelled, data):
    """The start-up path of `label serve` (serving itself is replaced by returning at once): exit 0 only after
    printing the page's address; else one line naming the file, before any server exists."""
    from sanitize.labelserver.app import LabelServer

    served = []
    with tempfile.TemporaryDirectory() as tmp, \
            mock.patch.object(LabelServer, "serve_forever", lambda server, *a, **k: served.append(server.url)):
        world, broken = corrupt_copy(labelled, tmp, LABEL_FILES, data)
        before = batch_files(world / "p")
        result = invoke("label", "serve", CATEGORY, "--project", world / "p", "--run", world / "run", "--port", 0,
                        "--n", 5, "--strategy", "random", "--annotator", "a")
        event(f"exit {result.exit_code}")
        if result.exit_code == 0:
            assert len(served) == 1 and served[0] in result.stdout
            return
        # labels that no longer train a classifier start the page cold, from the prompts, which needs the run's
        # CLIP model: this run, embedded without one, says so
        assert_failed_in_one_line(result, (1, 2), broken, world, also=world / "run")
        assert not served and batch_files(world / "p") == before


# -- embed: a corrupted manifest -----------------------------------------------------------------------------------

COLUMN_TYPES = {
    "int": st.integers(-2, 2), "float": st.floats(allow_nan=True), "text": st.text(max_size=4),
    "path": st.sampled_from(["images/u0.jpg", "images/none.jpg", "", "images", "/"]),
    "list": st.lists(st.integers(0, 2), max_size=2), "struct": st.fixed_dictionaries({"a": st.integers(0, 2)}),
    "bytes": st.binary(max_size=3), "null": st.none(), "bool": st.booleans(),
}


@st.composite
def manifests(draw: st.DrawFn, valid: bytes) -> tuple[str, bytes]:
    """(file name, bytes): random bytes behind a .parquet, .csv or .jsonl name; the valid manifest cut or with a
    byte changed; or a four-row manifest whose uid, caption or image column has a random type (some values null)."""
    kind = draw(st.sampled_from(["bytes", "broken", "columns", "columns"]))
    if kind == "bytes":
        return draw(st.sampled_from(["m.parquet", "m.csv", "m.jsonl"])), draw(st.binary(max_size=200))
    if kind == "broken":
        return "m.parquet", mutated(valid, draw)
    columns = {}
    for name in draw(st.lists(st.sampled_from(["uid", "caption", "image"]), min_size=1, max_size=2, unique=True)):
        kind = draw(st.sampled_from(list(COLUMN_TYPES)))
        values = draw(st.lists(st.one_of(st.none(), COLUMN_TYPES[kind]) if draw(st.booleans()) else
                               COLUMN_TYPES[kind], min_size=4, max_size=4))
        columns[name] = pa.array(values, pa.null() if kind == "null" else None)
    buf = io.BytesIO()
    pq.write_table(manifest_table(**columns), buf)
    return "m.parquet", buf.getvalue()


def test_the_embed_manifest_is_valid(images, tmp_path):
    """The manifest the generated ones are made from embeds all four rows."""
    ok("embed", images / "m.parquet", "--out", tmp_path / "out", "--model", "sanitize-demo-clip", "--pretrained",
       "none", "--workers", "0")
    assert np.load(tmp_path / "out" / "embeddings" / "img_emb" / "img_emb_00000.npy").shape[0] == 4


@settings(SLOW, max_examples=40)
@given(st.data())
def test_embed_of_a_corrupted_manifest(images, data):
    """Exit 0 only with every shard embedded (its marker, and metadata rows matching the embeddings); else one
    line naming the manifest and no embed marker or embeddings."""
    name, manifest = data.draw(manifests((images / "m.parquet").read_bytes()))
    with tempfile.TemporaryDirectory(dir=images) as tmp:
        path, out = Path(tmp, name), Path(tmp, "out")
        path.write_bytes(manifest)
        # image paths are relative to the manifest's folder: the images sit one folder up
        result = invoke("embed", path, "--out", out, "--model", "sanitize-demo-clip", "--pretrained", "none",
                        "--workers", "0", "--image-root", images)
        event(f"exit {result.exit_code}")
        if result.exit_code == 0:
            meta = pq.read_table(out / "embeddings" / "metadata" / "metadata_00000.parquet")
            x = np.load(out / "embeddings" / "img_emb" / "img_emb_00000.npy")
            assert (out / "stages" / "embed" / "_done" / "00000").is_file() and x.shape[0] == meta.num_rows
            return
        assert_failed_in_one_line(result, (1, 2), path, Path(tmp))
        assert not (out / "stages" / "embed" / "_done").exists() and not (out / "embeddings" / "img_emb").exists()


@settings(SLOW, max_examples=40)
@given(st.data())
def test_inspect_of_a_corrupted_manifest(images, data):
    """`inspect` reads manifests as embed does: exit 0 only with a description of every row; else one line naming
    the manifest, and nothing written beside it."""
    name, manifest = data.draw(manifests((images / "m.parquet").read_bytes()))
    with tempfile.TemporaryDirectory(dir=images) as tmp:
        path = Path(tmp, name)
        path.write_bytes(manifest)
        result = invoke("inspect", path, "--json")
        event(f"exit {result.exit_code}")
        assert files_under(Path(tmp)) == {Path(name)}  # inspect writes nothing
        if result.exit_code == 0:
            assert json.loads(result.stdout)["rows"] == pq.read_metadata(path).num_rows
            return
        assert_failed_in_one_line(result, (1, 2), path, Path(tmp))
