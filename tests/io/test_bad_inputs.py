"""Every bad input is answered in one line (issue 16): the real CLI, given one broken file, prints
`error: <message naming the file>` on stderr, exits 1 (bad data) or 2 (bad option), shows no traceback and leaves
no finished output. `sanitize dedup SOURCE --out OUT` exercises the embedding readers, `sanitize inspect MANIFEST`
the manifest readers. Then random bytes and random arrays (hypothesis), and --debug / unexpected exceptions.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sanitize.io.embeddings import write_embedding_shard
from sanitize.io.manifest import open_manifest
from sanitize.io.runfolder import RunFolder
from sanitize_cli.main import cli

AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
needs_non_root = pytest.mark.skipif(AS_ROOT, reason="root reads a file whatever its mode")


# -- making bad inputs ---------------------------------------------------------------------------------------------

def unit_rows(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def npy(array: np.ndarray, name: str = "x.npy") -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        np.save(tmp / name, array, allow_pickle=True)
        return tmp / name
    return make


def raw(data: bytes, name: str) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        (tmp / name).write_bytes(data)
        return tmp / name
    return make


def parquet(name: str = "m.parquet", **columns) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        pq.write_table(pa.table(columns), tmp / name)
        return tmp / name
    return make


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def parquet_bytes(**columns) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table(columns), buf)
    return buf.getvalue()


def unreadable(make: Callable[[Path], Path]) -> Callable[[Path], Path]:
    def make_unreadable(tmp: Path) -> Path:
        path = make(tmp)
        path.chmod(0)
        return path
    return make_unreadable


def folder_named(name: str) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        (tmp / name).mkdir()
        return tmp / name
    return make


def rows(n: int, d: int = 4) -> list[list[float]]:
    """`n` unit rows as lists (a parquet list column)."""
    return [list(r) for r in unit_rows(n, d)]


def embeddings_with_uids(*uids: str) -> pa.Table:
    return pa.table({"uid": list(uids), "emb": rows(len(uids))})


def clip_folder(*shards: tuple[np.ndarray, pa.Table], text: np.ndarray | None = None) -> Callable[[Path], Path]:
    """A clip-retrieval folder `emb/` with one (img_emb, metadata) per shard; `text` is shard 0's text_emb."""
    def make(tmp: Path) -> Path:
        folder = tmp / "emb"
        for sub in ("img_emb", "metadata", *(["text_emb"] if text is not None else [])):
            (folder / sub).mkdir(parents=True)
        for index, (x, meta) in enumerate(shards):
            np.save(folder / "img_emb" / f"img_emb_{index:05d}.npy", x)
            pq.write_table(meta, folder / "metadata" / f"metadata_{index:05d}.parquet")
        if text is not None:
            np.save(folder / "text_emb" / "text_emb_00000.npy", text)
        return folder
    return make


def clip_folder_then(change: Callable[[Path], None]) -> Callable[[Path], Path]:
    """A good one-shard clip-retrieval folder, then `change(folder)`."""
    def make(tmp: Path) -> Path:
        folder = clip_folder((unit_rows(3, 4), pa.table({"uid": ["a", "b", "c"]})))(tmp)
        change(folder)
        return folder
    return make


def replace_with_folder(path: Path) -> None:
    path.unlink()
    path.mkdir()


def parquet_folder(*shards: bytes | pa.Table) -> Callable[[Path], Path]:
    """A folder `m/` of shards 00000.parquet, 00001.parquet ... (a table, or the file's bytes)."""
    def make(tmp: Path) -> Path:
        (tmp / "m").mkdir()
        for index, shard in enumerate(shards):
            path = tmp / "m" / f"{index:05d}.parquet"
            if isinstance(shard, bytes):
                path.write_bytes(shard)
            else:
                pq.write_table(shard, path)
        return tmp / "m"
    return make


def run_with(x: np.ndarray) -> Callable[[Path], Path]:
    """A run folder whose embeddings shard holds `x` (for three rows a, b, c)."""
    def make(tmp: Path) -> Path:
        pq.write_table(pa.table({"uid": ["a", "b", "c"], "caption": ["x", "y", "z"]}), tmp / "in.parquet")
        run = RunFolder.create(tmp / "run", open_manifest(tmp / "in.parquet"))
        write_embedding_shard(run.embeddings_dir, 0, unit_rows(3, 4), None, pa.table({"uid": ["a", "b", "c"]}))
        np.save(run.embeddings_dir / "img_emb" / "img_emb_00000.npy", x)
        return run.path
    return make


def run_without_embeddings(tmp: Path) -> Path:
    pq.write_table(pa.table({"uid": ["a"], "caption": ["x"]}), tmp / "in.parquet")
    return RunFolder.create(tmp / "run", open_manifest(tmp / "in.parquet")).path


GOOD = unit_rows(4, 4)
NAN = GOOD.copy()
NAN[1, 2] = np.nan
INF = GOOD.copy()
INF[1, 0] = -np.inf
ZERO = GOOD.copy()
ZERO[2] = 0
HUGE = GOOD.astype(np.float64)
HUGE[3, 1] = 1e300
GOOD_PARQUET = parquet_bytes(uid=["a", "b"], caption=["x", "y"])


# -- the table: (make SOURCE, extra args, exit code, part of the message) ------------------------------------------

DEDUP_CASES = [
    # a wrong file behind a right extension
    pytest.param(raw(b"hello, not parquet\n", "x.parquet"), [], 1, "x.parquet: not a readable parquet file",
                 id="text-as-parquet"),
    pytest.param(raw(b"hello, not numpy\n", "x.npy"), [], 1, "x.npy: not a .npy file", id="text-as-npy"),
    pytest.param(raw(GOOD_PARQUET, "x.npy"), [], 1, "x.npy: not a .npy file", id="parquet-as-npy"),
    pytest.param(raw(npy_bytes(GOOD), "x.parquet"), [], 1, "x.parquet: not a readable parquet file",
                 id="npy-as-parquet"),
    pytest.param(raw(b"PK\x03\x04" + bytes(40), "x.npy"), [], 1, "x.npy: not a .npy file", id="zip-as-npy"),
    # empty and truncated files
    pytest.param(raw(b"", "x.npy"), [], 1, "x.npy: not a readable .npy file (the file is empty)", id="empty-npy"),
    pytest.param(raw(b"", "x.parquet"), [], 1, "x.parquet: not a readable parquet file (the file is empty)",
                 id="empty-parquet"),
    pytest.param(raw(npy_bytes(GOOD)[:-10], "x.npy"), [], 1, "x.npy: truncated", id="truncated-npy-data"),
    pytest.param(raw(npy_bytes(GOOD)[:30], "x.npy"), [], 1, "x.npy: not a readable .npy file",
                 id="truncated-npy-header"),
    pytest.param(raw(GOOD_PARQUET[:-30], "x.parquet"), [], 1, "x.parquet: not a readable parquet file",
                 id="truncated-parquet"),
    # shapes and dtypes
    pytest.param(npy(np.float32(1.0)), [], 1, "x.npy: embeddings must be a 2-D array (rows × dim), got shape ()",
                 id="0-d"),
    pytest.param(npy(np.ones(5, np.float32)), [], 1, "x.npy: embeddings must be a 2-D array (rows × dim), got "
                 "shape (5,)", id="1-d"),
    pytest.param(npy(np.ones((2, 3, 4), np.float32)), [], 1, "got shape (2, 3, 4)", id="3-d"),
    pytest.param(npy(np.zeros((0, 4), np.float32)), [], 1, "x.npy: no embeddings", id="no-rows"),
    pytest.param(npy(np.zeros((3, 0), np.float32)), [], 1, "x.npy: embeddings have 0 columns", id="no-columns"),
    pytest.param(npy(np.array([[1, "a"], [None, 2.0]], dtype=object)), [], 1, "x.npy: embeddings must be floats "
                 "(float16, float32 or float64), got dtype object", id="object-dtype"),
    pytest.param(npy(np.ones((3, 4), np.int64)), [], 1, "got dtype int64", id="int-dtype"),
    pytest.param(npy(np.ones((3, 4), bool)), [], 1, "got dtype bool", id="bool-dtype"),
    pytest.param(npy(np.full((3, 4), "ab")), [], 1, "got dtype <U2", id="string-dtype"),
    # bad rows
    pytest.param(npy(NAN), [], 1, "x.npy: row 1 (uid 1) has a NaN or infinite value", id="nan-row"),
    pytest.param(npy(INF), [], 1, "x.npy: row 1 (uid 1) has a NaN or infinite value", id="inf-row"),
    pytest.param(npy(ZERO), [], 1, "x.npy: row 2 (uid 2) is all zeros", id="zero-row"),
    pytest.param(npy(HUGE), [], 1, "x.npy: row 3 (uid 3) has a value beyond float32's range", id="huge-value"),
    # a folder or an unreadable file where a file is expected
    pytest.param(folder_named("x.npy"), [], 1, "x.npy: not a readable .npy file (it is a folder)", id="npy-folder"),
    # (an unreadable SOURCE itself is click's usage error, exit 2: `click.Path(exists=True)` checks it)
    pytest.param(clip_folder_then(lambda f: (f / "img_emb" / "img_emb_00000.npy").chmod(0)), [], 1,
                 "img_emb_00000.npy: not a readable .npy file (permission denied)", id="npy-unreadable",
                 marks=needs_non_root),
    pytest.param(clip_folder_then(lambda f: (f / "metadata" / "metadata_00000.parquet").chmod(0)), [], 1,
                 "metadata_00000.parquet: not a readable parquet file (permission denied)", id="metadata-unreadable",
                 marks=needs_non_root),
    # clip-retrieval folders
    pytest.param(clip_folder((unit_rows(2, 8), pa.table({"uid": ["a", "b"]})),
                             (unit_rows(2, 6), pa.table({"uid": ["c", "d"]}))), [], 1,
                 "img_emb_00001.npy: embedding dimension 6 differs from 8 in the first shard", id="dimension-differs"),
    pytest.param(clip_folder((unit_rows(3, 4), pa.table({"uid": ["a", "b"]}))), [], 1,
                 "img_emb_00000.npy: 3 rows but", id="npy-rows-differ-from-metadata"),
    pytest.param(clip_folder((unit_rows(3, 4), pa.table({"uid": ["a", "b", "c"]})), text=unit_rows(2, 4)), [], 1,
                 "text_emb_00000.npy: 2 rows but", id="text-rows-differ"),
    pytest.param(clip_folder_then(lambda f: (f / "metadata" / "metadata_00000.parquet").unlink()), [], 1,
                 "img_emb_00000.npy: no matching metadata", id="metadata-missing"),
    pytest.param(clip_folder_then(lambda f: replace_with_folder(f / "metadata" / "metadata_00000.parquet")), [], 1,
                 "metadata_00000.parquet: not a readable parquet file (it is a folder)", id="metadata-is-folder"),
    pytest.param(clip_folder_then(lambda f: replace_with_folder(f / "img_emb" / "img_emb_00000.npy")), [], 1,
                 "img_emb_00000.npy: not a readable .npy file (it is a folder)", id="npy-is-folder"),
    pytest.param(clip_folder_then(lambda f: (f / "metadata" / "metadata_00000.parquet").write_text("no")), [], 1,
                 "metadata_00000.parquet: not a readable parquet file", id="metadata-not-parquet"),
    pytest.param(clip_folder_then(lambda f: (f / "img_emb" / "img_emb_00000.npy").write_bytes(b"\x93NUMPY")), [], 1,
                 "img_emb_00000.npy: not a readable .npy file", id="npy-cut-after-magic"),
    pytest.param(clip_folder((unit_rows(3, 4), pa.table({"uid": ["a", "b", "a"]}))), [], 1,
                 "metadata_00000.parquet: uid 'a' is on rows 0 and 2", id="duplicate-uid-in-shard"),
    pytest.param(clip_folder((unit_rows(2, 4), pa.table({"uid": ["a", "b"]})),
                             (unit_rows(2, 4), pa.table({"uid": ["c", "a"]}))), [], 1,
                 "emb: uids are not unique", id="duplicate-uid-across-shards"),
    pytest.param(clip_folder((unit_rows(2, 4), pa.table({"uid": pa.array(["a", None])}))), [], 1,
                 "metadata_00000.parquet: row 1: id column 'uid' is empty", id="null-uid"),
    pytest.param(clip_folder((unit_rows(2, 4), pa.table({"uid": [[1], [2]]}))), [], 1,
                 "metadata_00000.parquet: column 'uid' has type list<", id="uid-of-lists"),
    pytest.param(clip_folder((unit_rows(2, 4), pa.table({"width": [1, 2]}))), [], 1,
                 "metadata_00000.parquet: no id column (uid) and no url, image or caption column",
                 id="metadata-without-identity"),
    # parquet with an embedding column
    pytest.param(parquet(uid=["a", "b"], emb=[[1.0, 0.0], [1.0]]), [], 1,
                 "m.parquet: column 'emb': row 1 has 1 values, row 0 has 2", id="ragged-list"),
    pytest.param(parquet(uid=["a", "b"], emb=[[1.0, 0.0], None]), [], 1, "m.parquet: column 'emb': row 1 has no "
                 "embedding", id="null-embedding"),
    pytest.param(parquet(uid=["a", "b"], emb=[[1, 0], [0, 1]]), ["--embedding-col", "emb"], 1,
                 "m.parquet: column 'emb': type list<element: int64> is not a list of floats", id="int-list-column"),
    pytest.param(parquet(uid=["a", "b"], emb=["x", "y"]), [], 1, "m.parquet: no embedding column found",
                 id="no-embedding-column"),
    pytest.param(parquet(uid=["a"], emb=[[1.0, 0.0]]), ["--embedding-col", "vec"], 1,
                 "m.parquet: embedding column 'vec' (--embedding-col) not found", id="embedding-col-missing"),
    pytest.param(parquet(uid=["a"], emb=[[1.0, 0.0]]), ["--id-col", "myid"], 1,
                 "m.parquet: id column 'myid' (--id-col) not found", id="id-col-missing"),
    pytest.param(parquet(uid=pa.array(["a", None]), emb=rows(2)), [], 1,
                 "m.parquet: row 1: id column 'uid' is empty", id="parquet-null-uid"),
    pytest.param(parquet(uid=["a", "b", "a"], emb=rows(3)), [], 1,
                 "m.parquet: uid 'a' is on rows 0 and 2", id="parquet-duplicate-uid"),
    pytest.param(parquet(uid=[[1], [2]], emb=rows(2)), [], 1, "m.parquet: column 'uid' has type list<",
                 id="parquet-uid-of-lists"),
    pytest.param(parquet_folder(embeddings_with_uids("a", "b"), b"garbage"), [], 1,
                 "00001.parquet: not a readable parquet file", id="second-shard-garbage"),
    pytest.param(parquet_folder(embeddings_with_uids("a", "b"),
                                pa.table({"uid": ["c"], "emb": rows(1, 6)})), [], 1,
                 "00001.parquet: embedding dimension 6 differs from 4", id="parquet-dimension-differs"),
    # run folders
    pytest.param(run_with(np.ones(3, np.float32)), [], 1, "img_emb_00000.npy: embeddings must be a 2-D array",
                 id="run-1-d"),
    pytest.param(run_without_embeddings, [], 1, "run: a run folder without embeddings/img_emb/",
                 id="run-without-embeddings"),
    # a request the input cannot meet: exit 2 (click's own usage errors keep click's form: see the last test)
    pytest.param(npy(GOOD), ["--keep-by", "width"], 2, "--keep-by column 'width' not found in", id="bad-keep-by"),
]

INSPECT_CASES = [
    pytest.param(raw(b"hello, not parquet\n", "m.parquet"), [], 1, "m.parquet: not a readable parquet file",
                 id="text-as-parquet"),
    pytest.param(raw(npy_bytes(GOOD), "m.parquet"), [], 1, "m.parquet: not a readable parquet file",
                 id="npy-as-parquet"),
    pytest.param(raw(b"", "m.parquet"), [], 1, "m.parquet: not a readable parquet file (the file is empty)",
                 id="empty-file"),
    pytest.param(raw(GOOD_PARQUET[:-30], "m.parquet"), [], 1, "m.parquet: not a readable parquet file",
                 id="truncated"),
    pytest.param(unreadable(parquet(uid=["a"])), [], 1, "m.parquet: not a readable parquet file (permission denied)",
                 id="unreadable", marks=needs_non_root),
    pytest.param(parquet_folder(GOOD_PARQUET, b"garbage"), [], 1, "00001.parquet: not a readable parquet file",
                 id="second-shard-garbage"),
    pytest.param(parquet_folder(GOOD_PARQUET, pa.table({"uid": ["c"], "text": ["z"]})), [], 1,
                 "00001.parquet: column 'caption' (--caption-col, preset generic) not found",
                 id="second-shard-misses-column"),
    pytest.param(folder_named("m.parquet"), [], 1, "m.parquet: no parquet files found", id="folder-not-file"),
    pytest.param(parquet_folder(pa.table({"uid": ["a", "b"]}), pa.table({"uid": ["c", "a"]})), [], 1,
                 "m: 1 duplicate uid(s), e.g. 'a' (00000.parquet row 0, 00001.parquet row 1)", id="duplicate-uids"),
    pytest.param(parquet(uid=pa.array(["a", None]), caption=["x", "y"]), [], 1,
                 "m.parquet: row 1: id column 'uid' is empty", id="null-uid"),
    pytest.param(parquet(uid=["a"], caption=["x"]), ["--caption-col", "text"], 1,
                 "m.parquet: column 'text' (--caption-col, preset generic) not found", id="missing-column"),
    pytest.param(parquet(uid=["a"], caption=["x"]), ["--id-col", "myid"], 1,
                 "m.parquet: id column 'myid' (--id-col) not found", id="missing-id-column"),
    pytest.param(parquet(uid=[[1], [2]], caption=["x", "y"]), [], 1, "m.parquet: column 'uid' has type "
                 "list<element: int64>, not text or a number", id="uid-of-lists"),
    pytest.param(parquet(uid=["a"], caption=[{"x": 1}]), [], 1, "m.parquet: column 'caption' has type struct",
                 id="caption-of-structs"),
    pytest.param(parquet(uid=pa.array([b"\xff\xfe"], pa.binary()), caption=["x"]), [], 1,
                 "m.parquet: column 'uid' has type binary", id="uid-not-utf8"),
    pytest.param(parquet(width=[1, 2]), [], 1, "m.parquet: cannot tell which column identifies a row",
                 id="no-identity"),
    pytest.param(parquet(uid=pa.array([], pa.string())), [], 1, "m.parquet: the manifest has no rows", id="no-rows"),
]


# -- the checks ----------------------------------------------------------------------------------------------------

def assert_one_line_error(result: Result, code: int, message: str, where: Path) -> None:
    """Exit `code`, stderr exactly one line `error: ...` holding `message` (and the path, for data errors), no
    traceback, and no exception other than the exit."""
    assert result.exit_code == code, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert message in lines[0], lines[0]
    assert "unexpected" not in lines[0], lines[0]
    if code == 1:
        assert str(where) in lines[0], lines[0]
    assert "Traceback" not in result.output + result.stderr


@pytest.mark.parametrize("make,args,code,message", DEDUP_CASES)
def test_dedup_bad_source_is_one_line(tmp_path, make, args, code, message):
    source, out = make(tmp_path), tmp_path / "out"
    result = CliRunner().invoke(cli, ["dedup", str(source), "--out", str(out), *args])
    assert_one_line_error(result, code, message, tmp_path)
    assert not (out / "decisions.parquet").exists()
    assert not (source / "stages" / "dedup" / "result.json").exists()


@pytest.mark.parametrize("make,args,code,message", INSPECT_CASES)
def test_inspect_bad_manifest_is_one_line(tmp_path, make, args, code, message):
    manifest = make(tmp_path)
    result = CliRunner().invoke(cli, ["inspect", str(manifest), *args])
    assert_one_line_error(result, code, message, tmp_path)
    assert result.stdout == ""


# -- random files --------------------------------------------------------------------------------------------------

DTYPES = ["float16", "float32", "float64", "int8", "int64", "uint16", "bool", "complex64", "<U3", "S2",
          "datetime64[s]"]
random_arrays = st.sampled_from(DTYPES).flatmap(
    lambda dtype: hnp.arrays(np.dtype(dtype), hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)))
float_matrices = st.sampled_from(["float16", "float32", "float64"]).flatmap(  # mostly valid embeddings
    lambda dtype: hnp.arrays(np.dtype(dtype), st.tuples(st.integers(1, 5), st.integers(1, 4)),
                             elements={"min_value": -4, "max_value": 4, "allow_nan": False}))
object_arrays = st.lists(st.one_of(st.integers(), st.text(max_size=3), st.none()), max_size=5).map(
    lambda items: np.array([*items, None], dtype=object))


@st.composite
def random_files(draw: st.DrawFn) -> tuple[str, bytes]:
    """(file name, its bytes): random bytes, or a random array saved as .npy (a float matrix, any dtype and shape,
    Python objects), intact or cut or with a byte changed."""
    kind = draw(st.sampled_from(["float matrix", "array", "objects", "broken array", "bytes"]))
    if kind == "bytes":
        return draw(st.sampled_from(["x.npy", "x.parquet"])), draw(st.binary(max_size=200))
    arrays = {"float matrix": float_matrices, "objects": object_arrays}.get(kind, random_arrays)
    buf = io.BytesIO()
    np.save(buf, draw(arrays), allow_pickle=True)
    data = buf.getvalue()
    if kind == "broken array":
        cut, at, byte = draw(st.integers(0, len(data))), draw(st.integers(0, len(data) - 1)), draw(st.integers(0, 255))
        data = data[:cut] if draw(st.booleans()) else data[:at] + bytes([byte]) + data[at + 1:]
    return "x.npy", data


def holds_valid_embeddings(name: str, data: bytes) -> bool:
    """Whether numpy reads a 2-D float array with rows and columns from the file, every value finite and within
    float32's range, no row all zeros."""
    try:
        x = np.load(io.BytesIO(data), allow_pickle=False) if name.endswith(".npy") else None
    except Exception:
        return False
    if not isinstance(x, np.ndarray) or x.dtype.kind != "f" or x.ndim != 2 or 0 in x.shape:
        return False
    x = x.astype(np.float64)
    return bool(np.isfinite(x).all() and (np.abs(x) <= np.finfo(np.float32).max).all()
                and (np.linalg.norm(x, axis=1) > 0).all())


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_files())
def test_random_files_succeed_only_when_valid_else_one_line(file):
    """Exit 0 only for valid embeddings. A failure is one `error:` line (after any progress lines), exit 1 or 2; for
    an invalid file, exit 1 from the reader, naming the file. (Valid embeddings may still be refused by dedup itself,
    e.g. when every row is the same.)"""
    name, data = file
    valid = holds_valid_embeddings(name, data)
    with tempfile.TemporaryDirectory() as tmp:
        source, out = Path(tmp, name), Path(tmp, "out")
        source.write_bytes(data)
        result = CliRunner().invoke(cli, ["dedup", str(source), "--out", str(out)])
        if result.exit_code == 0:
            assert valid and (out / "decisions.parquet").exists()
            return
        assert result.exit_code in (1, 2) and isinstance(result.exception, SystemExit), result.exception
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and result.stderr.rstrip("\n").endswith(errors[0]), result.stderr
        assert "unexpected" not in errors[0] and "Traceback" not in result.output + result.stderr
        assert not (out / "decisions.parquet").exists()
        if not valid:
            assert result.exit_code == 1 and str(source) in errors[0], errors[0]


# -- --debug and unexpected exceptions -----------------------------------------------------------------------------

@pytest.fixture
def bad_npy(tmp_path) -> Path:
    np.save(tmp_path / "x.npy", np.ones(5, np.float32))
    return tmp_path / "x.npy"


def test_debug_shows_the_library_error_with_its_traceback(bad_npy, tmp_path):
    args = ["dedup", str(bad_npy), "--out", str(tmp_path / "out")]
    for result in (CliRunner().invoke(cli, ["--debug", *args]),
                   CliRunner().invoke(cli, args, env={"SANITIZE_DEBUG": "1"})):
        assert result.exit_code == 1
        assert type(result.exception).__name__ == "DataError" and "got shape (5,)" in str(result.exception)
        assert result.exc_info[2] is not None
    assert isinstance(CliRunner().invoke(cli, args, env={"SANITIZE_DEBUG": "0"}).exception, SystemExit)


def test_unexpected_exception_is_one_line_or_a_traceback_with_debug(tmp_path, monkeypatch):
    import sanitize_cli.data_cmds

    def broken(*args, **kwargs):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(sanitize_cli.data_cmds, "open_manifest_from", broken)
    result = CliRunner().invoke(cli, ["inspect", str(tmp_path / "m.parquet")])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert result.stderr == "error: unexpected RuntimeError: boom second line (rerun with --debug for the traceback)\n"
    debug = CliRunner().invoke(cli, ["--debug", "inspect", str(tmp_path / "m.parquet")])
    assert debug.exit_code == 1 and isinstance(debug.exception, RuntimeError)


def test_click_usage_errors_keep_their_own_form(tmp_path):
    result = CliRunner().invoke(cli, ["dedup", str(tmp_path), "--no-such-option"])
    assert result.exit_code == 2 and "No such option" in result.stderr and "error: " not in result.stderr
