"""Bad run folders, projects and checkpoints for the commands that read them (export, audit, classify, the label
commands, embed): one `error:` line, the right exit code, no traceback. The tables feed the README's catalogue
(tools/catalogue.py). Each `make` builds its input under the test's folder, which is the working folder, so the
options of a case can name paths relative to it ("p" is a project, "run" a run folder)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from sanitize.io.manifest import open_manifest
from sanitize.io.runfolder import RunFolder
from sanitize.safety.project import LabelProject
from sanitize_cli.main import cli
from tests.io.test_bad_inputs import assert_one_line_error


def bare_run(tmp: Path) -> Path:
    """A run folder (manifest of two rows) with no stage run yet."""
    pq.write_table(pa.table({"uid": ["a", "b"], "caption": ["x", "y"]}), tmp / "in.parquet")
    return RunFolder.create(tmp / "run", open_manifest(tmp / "in.parquet")).path


def then(make: Callable[[Path], Path], change: Callable[[Path], None]) -> Callable[[Path], Path]:
    """`make`, then `change(tmp)` (e.g. a broken file beside it)."""
    def made(tmp: Path) -> Path:
        path = make(tmp)
        change(tmp)
        return path
    return made


def write(relative: str, data: bytes) -> Callable[[Path], None]:
    def change(tmp: Path) -> None:
        (tmp / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp / relative).write_bytes(data)
    return change


def project(tmp: Path) -> None:
    LabelProject.init(tmp / "p")


def with_project(change: Callable[[Path], None] | None = None) -> Callable[[Path], None]:
    def made(tmp: Path) -> None:
        project(tmp)
        if change is not None:
            change(tmp)
    return made


def layout_one(tmp: Path) -> Path:
    """A folder whose run.json is of an older layout (an empty object)."""
    (tmp / "old").mkdir()
    (tmp / "old" / "run.json").write_text("{}")
    return tmp / "old"


RUN_CASES = [
    pytest.param(then(bare_run, write("run/run.json", b"not json")), ["export"], 1, "run.json: unreadable",
                 id="export-run-json-not-json"),
    pytest.param(layout_one, ["export"], 2, "a run folder of layout 1", id="export-old-layout"),
    pytest.param(bare_run, ["audit"], 2, "run: no finished filter stage to audit", id="audit-nothing-to-audit"),
    pytest.param(bare_run, ["classify", "--project", "p"], 2, "p: not a labeling project (no categories.toml)",
                 id="classify-no-project"),
    pytest.param(then(bare_run, with_project(write("p/models/sexual.safetensors", b"garbage"))),
                 ["classify", "--project", "p"], 1, "sexual.safetensors: not a safetensors classifier file",
                 id="classify-garbage-classifier"),
    pytest.param(then(bare_run, with_project(write("p/models/sexual.safetensors", b""))),
                 ["classify", "--project", "p"], 1, "sexual.safetensors: not a safetensors classifier file",
                 id="classify-empty-classifier"),
    pytest.param(then(bare_run, with_project()), ["label-status"], 1,
                 "run: a run folder without embeddings/img_emb/", id="label-status-run-not-embedded"),
    pytest.param(then(bare_run, with_project()), ["label-next"], 1, "run: a run folder without embeddings/img_emb/",
                 id="label-next-run-not-embedded"),
    pytest.param(bare_run, ["label-audit-sample"], 2, "p: not a labeling project", id="audit-sample-no-project"),
    pytest.param(bare_run, ["embed-pretrained", "missing.pt"], 2, "--pretrained missing.pt: no such checkpoint file",
                 id="embed-missing-checkpoint"),
    pytest.param(then(bare_run, write("bad.pt", b"not a checkpoint")), ["embed-pretrained", "bad.pt"], 1,
                 "cannot load weights bad.pt", id="embed-garbage-checkpoint"),
]


# What each case's first word stands for (the README's catalogue shows these).
COMMANDS = {
    "export": "export RUN",
    "audit": "audit RUN",
    "classify": "classify RUN",
    "label-status": "label status CATEGORY --project P --run RUN",
    "label-next": "label next CATEGORY --project P --run RUN",
    "label-audit-sample": "label audit-sample CATEGORY --project P --run RUN --n 5",
    "embed-pretrained": "embed MANIFEST --out OUT --model sanitize-demo-clip --pretrained",
}


def argv(run: Path, words: list[str]) -> list[str]:
    """The command line of a case: its first word names the command, the rest are its options."""
    what, rest = words[0], words[1:]
    if what == "label-status":
        return ["label", "status", "sexual", "--project", "p", "--run", str(run)]
    if what == "label-next":
        return ["label", "next", "sexual", "--project", "p", "--run", str(run)]
    if what == "label-audit-sample":
        return ["label", "audit-sample", "sexual", "--project", "p", "--run", str(run), "--n", "5"]
    if what == "embed-pretrained":
        return ["embed", str(run.parent / "in.parquet"), "--out", "embedded", "--model", "sanitize-demo-clip",
                "--pretrained", rest[0], "--workers", "0"]
    return [what, str(run), *rest]


@pytest.mark.parametrize("make,args,code,message", RUN_CASES)
def test_bad_run_folder_project_or_checkpoint_is_one_line(tmp_path, monkeypatch, make, args, code, message):
    monkeypatch.chdir(tmp_path)
    run = make(tmp_path)
    result = CliRunner().invoke(cli, argv(run, args))
    assert_one_line_error(result, code, message, Path(message.split(":")[0]))  # the message names its file
    assert not (tmp_path / "embedded" / "embeddings").exists()
