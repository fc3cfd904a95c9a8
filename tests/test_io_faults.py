"""I/O faults during `sanitize run`: a full disk, an input shard that changes or vanishes, a read-only run folder,
a killed Ray worker.

A full disk is injected at the write layer (`sanitize.io.atomic.atomic_path`, half the bytes then ENOSPC) at
chosen files, and made for real on a small tmpfs where the test may mount one (root); a read-only folder is made
with chmod (run without CAP_DAC_OVERRIDE, since root ignores modes) and with a read-only bind mount; shards are
deleted or rewritten at an exact point of a stage. For every fault: exit 1 (2 for a refused folder) with exactly
one ``error:`` line naming the file and no traceback, no temporary or half-written file left in the run folder,
and, once the fault is removed, a rerun of the same command that ends with files byte-identical to a run that
never failed. Tests that need root for mounts or setpriv skip where those are unavailable.

This file is also the fault injector the subprocesses run:

    python tests/test_io_faults.py enospc PATTERN COUNT -- sanitize-args…   (ENOSPC in the COUNT-th write
                                                                            of a file matching PATTERN)
    python tests/test_io_faults.py after PATTERN COUNT delete|change FILE -- sanitize-args…
                                        (delete FILE, or rewrite it one row short, right after the COUNT-th
                                         file matching PATTERN is put in place)
"""

from __future__ import annotations

import errno
import fnmatch
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

# Marked slow: the tests that run the CLI two or three times (about 20 s each on 2 cores).
HERE = Path(__file__).resolve()
STAGES = ("embed", "dedup")  # no labeling project needed; still shards, markers, npy, parquet and json writes
AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


# -- the small run every test starts from ----------------------------------------------------------------------

class Small:
    """A 100-row sample in 3 shards and an embed+dedup config with the demo model's random weights."""

    def __init__(self, root: Path) -> None:
        from sanitize.demo.run import demo_config
        from sanitize.demo.sample import make_sample
        from sanitize.io.atomic import write_text
        from sanitize.pipeline.config import to_toml

        self.root = root
        self.shards = make_sample(root / "sample", n_rows=100, seed=3, n_shards=3).manifest
        config = demo_config(root, seed=0, workers=0, pretrained="none").replace("run", stages=STAGES)
        self.config = root / "sanitize.toml"
        write_text(self.config, to_toml(config))

    def args(self, out: Path) -> list[str]:
        return ["run", str(self.shards), "--config", str(self.config), "--out", str(out)]


def sanitize(args: list[str], *, inject: list[str] | None = None) -> subprocess.CompletedProcess:
    """Run the CLI in a subprocess, through this file's fault injector when `inject` is given."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    prefix = [sys.executable, str(HERE), *inject, "--"] if inject else [sys.executable, "-m", "sanitize_cli"]
    return subprocess.run(prefix + [str(a) for a in args], capture_output=True, text=True, env=env, timeout=300)


def data_files(run: Path) -> dict[str, bytes]:
    """Every output file of a run by relative path, less stats.json (timings) and run.json (paths)."""
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.is_file() and p.name not in ("stats.json", "run.json") and not p.name.startswith(".")}


def leftovers(run: Path) -> list[str]:
    """Temporary files (`.<name>.<random>.tmp<suffix>`) anywhere under the run folder."""
    return sorted(str(p.relative_to(run)) for p in run.rglob(".*.tmp*"))


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one ``error:`` line of a failed run (asserting there is exactly one and no traceback)."""
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr[-2000:]
    return lines[0]


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Small:
    return Small(tmp_path_factory.mktemp("io-faults"))


@pytest.fixture(scope="module")
def clean(small, tmp_path_factory) -> dict[str, bytes]:
    """The files of a run that never failed."""
    out = tmp_path_factory.mktemp("clean") / "run"
    result = sanitize(small.args(out))
    assert result.returncode == 0, result.stderr[-2000:]
    return data_files(out)


# -- the write layer ---------------------------------------------------------------------------------------------

def test_a_failed_write_names_the_target_and_leaves_the_old_file(tmp_path, monkeypatch):
    """ENOSPC half-way through a parquet write: a WriteError (an OSError and a SanitizeError, exit 1) naming the
    target, the previous file untouched, no temporary file beside it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sanitize.errors import SanitizeError
    from sanitize.io import atomic

    target = tmp_path / "out" / "table.parquet"
    atomic.write_parquet(target, pa.table({"a": [1, 2, 3]}))
    before = target.read_bytes()
    real_write = pq.write_table

    def half_then_full(table, where, **kwargs):
        real_write(table.slice(0, 1), where, **kwargs)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic.pq, "write_table", half_then_full)
    with pytest.raises(atomic.WriteError) as caught:
        atomic.write_parquet(target, pa.table({"a": [4, 5, 6]}))
    assert str(caught.value) == f"{target}: cannot write (No space left on device)"
    assert isinstance(caught.value, OSError) and isinstance(caught.value, SanitizeError)
    assert (caught.value.errno, caught.value.exit_code) == (errno.ENOSPC, 1)
    assert target.read_bytes() == before and sorted(p.name for p in target.parent.iterdir()) == ["table.parquet"]


def test_read_errors_inside_an_atomic_write_are_not_write_errors(tmp_path):
    """An input that vanished, read inside the `with`, stays a FileNotFoundError (it is not the target's fault)."""
    from sanitize.io import atomic

    with pytest.raises(FileNotFoundError) as caught, atomic.atomic_path(tmp_path / "out.bin") as tmp:
        tmp.write_bytes((tmp_path / "missing-input").read_bytes())
    assert not isinstance(caught.value, atomic.WriteError) and list(tmp_path.iterdir()) == []


# -- disk full ---------------------------------------------------------------------------------------------------

ENOSPC_POINTS = {  # where the disk fills: the COUNT-th write of a file matching PATTERN
    "embedding npy": ("*/embeddings/img_emb/img_emb_00001.npy", 1),
    "dedup shard parquet": ("*/stages/dedup/00001.parquet", 1),
    "stage marker": ("*/stages/embed/_done/00000", 1),
}


@pytest.mark.slow
@pytest.mark.parametrize("point", list(ENOSPC_POINTS))
def test_disk_full_during_a_shard_write_then_rerun_gives_identical_output(small, clean, tmp_path, point):
    pattern, count = ENOSPC_POINTS[point]
    out = tmp_path / "run"
    failed = sanitize(small.args(out), inject=["enospc", pattern, str(count)])
    assert failed.returncode == 1, failed.stderr[-2000:]
    line = error_line(failed)
    target = out / pattern.removeprefix("*/")  # the pattern's "*/" stands for the run folder
    assert line == f"error: {target}: cannot write (No space left on device)"
    assert not target.exists() and leftovers(out) == []  # nothing half-written, under any name
    assert data_files(out) != clean
    rerun = sanitize(small.args(out))
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert data_files(out) == clean and leftovers(out) == []


@contextmanager
def tmpfs(mountpoint: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` at `mountpoint`, unmounted afterwards; skips the test where mounting is not allowed."""
    mountpoint.mkdir(parents=True)
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mountpoint)],
                          capture_output=True, text=True) if shutil.which("mount") and AS_ROOT else None
    if made is None or made.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN)")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


@pytest.mark.slow
def test_a_really_full_disk_then_more_space_gives_identical_output(small, clean, tmp_path):
    """The run folder on a 96 KiB tmpfs: the disk fills for real; after a remount with room, the rerun finishes."""
    with tmpfs(tmp_path / "mnt", "96k") as disk:
        out = disk / "run"
        failed = sanitize(small.args(out))
        assert failed.returncode == 1, failed.stderr[-2000:]
        line = error_line(failed)
        assert line.startswith(f"error: {out}/") and ": cannot write (No space left on device" in line, line
        written = Path(line.removeprefix("error: ").split(": cannot write")[0])
        assert not written.exists() and leftovers(out) == []
        subprocess.run(["mount", "-o", "remount,size=16m", str(disk)], check=True)
        rerun = sanitize(small.args(out))
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        assert data_files(out) == clean and leftovers(out) == []


# -- an input shard that changes or vanishes during the run -------------------------------------------------------

@pytest.fixture
def shard(small, tmp_path) -> Iterator[Path]:
    """Input shard 00002 of the sample, which this test may damage, with its tar: both put back as they were (bytes
    and modification time, so the same fingerprint) afterwards, also kept as tmp_path/kept.parquet and kept.tar.
    The run's outputs name the input's path, so the sample stays in place."""
    path = small.shards / "00002.parquet"
    for suffix in (".parquet", ".tar"):
        shutil.copy2(path.with_suffix(suffix), tmp_path / f"kept{suffix}")
    yield path
    for suffix in (".parquet", ".tar"):
        shutil.copy2(tmp_path / f"kept{suffix}", path.with_suffix(suffix))


@pytest.mark.slow
def test_a_shard_changed_during_a_stage_is_detected_and_the_stage_redone(small, clean, shard, tmp_path):
    out = tmp_path / "run"
    failed = sanitize(small.args(out), inject=["after", "*/stages/embed/_done/00000", "1", "change", str(shard)])
    assert failed.returncode == 1, failed.stderr[-2000:]
    assert error_line(failed).startswith(f"error: {shard}: input file changed (size or modification time) while "
                                         "stage embed ran")
    assert leftovers(out) == []
    refused = sanitize(small.args(out))  # still changed: this folder holds a run of the old input
    assert refused.returncode == 2 and "holds a run of another input" in error_line(refused)
    shutil.copy2(tmp_path / "kept.parquet", shard)  # the fault removed: the same bytes and modification time
    rerun = sanitize(small.args(out))
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert data_files(out) == clean


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".parquet", ".tar"])
def test_a_shard_or_its_tar_that_vanishes_during_a_stage_then_reappears(small, clean, shard, tmp_path, suffix):
    """The shard's parquet (read by the stage: its error names it) or its tar of images (read as "no image", so
    caught by the input check after the stage) is deleted right after shard 00000 is embedded."""
    victim = shard.with_suffix(suffix)
    out = tmp_path / "run"
    failed = sanitize(small.args(out), inject=["after", "*/stages/embed/_done/00000", "1", "delete", str(victim)])
    assert failed.returncode == 1, failed.stderr[-2000:]
    line = error_line(failed)
    assert line.startswith(f"error: {victim}: ") and ("no such file" in line or "vanished" in line), line
    assert leftovers(out) == []
    shutil.copy2(tmp_path / f"kept{suffix}", victim)
    rerun = sanitize(small.args(out))
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert data_files(out) == clean


# -- a read-only run folder ---------------------------------------------------------------------------------------

NO_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-dac_override,-dac_read_search"]


def _can_drop_dac() -> bool:
    """Whether `setpriv` can run a root process that obeys file permissions (root otherwise writes anywhere)."""
    if not AS_ROOT:
        return True  # permissions apply anyway
    if shutil.which("setpriv") is None:
        return False
    probe = subprocess.run([*NO_DAC, "true"], capture_output=True)
    return probe.returncode == 0


def _set_writable(root: Path, writable: bool) -> None:
    for path in [root, *root.rglob("*")]:
        mode = path.stat().st_mode & 0o7777
        path.chmod(mode | 0o200 if writable else mode & ~0o222)


@contextmanager
def read_only(folder: Path, how: str) -> Iterator[list[str]]:
    """Make `folder` read-only (`how`: "chmod", every write bit off, or "mount", a read-only bind mount) and yield
    the command prefix under which the CLI must run to feel it; undo it afterwards."""
    if how == "chmod":
        if not _can_drop_dac():
            pytest.skip("root ignores file modes and setpriv cannot drop CAP_DAC_OVERRIDE here")
        _set_writable(folder, False)
        try:
            yield NO_DAC if AS_ROOT else []
        finally:
            _set_writable(folder, True)
        return
    bound = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True) \
        if AS_ROOT and shutil.which("mount") else None
    if bound is None or bound.returncode != 0:
        pytest.skip("cannot bind-mount here (needs root with CAP_SYS_ADMIN)")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True, capture_output=True)
        yield []
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.mark.slow
@pytest.mark.parametrize("how,reason", [("chmod", "Permission denied"), ("mount", "Read-only file system")])
def test_a_read_only_run_folder_fails_in_one_line_and_changes_nothing(small, clean, tmp_path, how, reason):
    out = tmp_path / "run"
    partial = sanitize(small.args(out), inject=["enospc", "*/stages/dedup/00001.parquet", "1"])
    assert partial.returncode == 1  # a run stopped half-way, as a rerun would find it
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    with read_only(out, how) as prefix:
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        failed = subprocess.run([*prefix, sys.executable, "-m", "sanitize_cli", *small.args(out)],
                                capture_output=True, text=True, env=env, timeout=300)
        assert failed.returncode == 1, failed.stderr[-2000:]
        line = error_line(failed)
        assert line.startswith(f"error: {out}/") and line.endswith(f": cannot write ({reason})"), line
        assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before
    rerun = sanitize(small.args(out))
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert data_files(out) == clean and leftovers(out) == []


# -- a Ray worker killed mid-stage ---------------------------------------------------------------------------------

# Imported by every Python process of the run through PYTHONPATH (Ray's workers inherit the driver's environment):
# in a Ray worker, the first file matching the pattern to be put in place makes that worker SIGKILL itself, once.
RAY_KILL_HOOK = """
import fnmatch, os, signal, sys
if sys.argv and sys.argv[0].endswith("default_worker.py"):
    _real_replace, _pattern, _flag = os.replace, os.environ["FAULT_KILL_PATTERN"], os.environ["FAULT_KILL_FLAG"]

    def _replace_then_die(src, dst, *args, **kwargs):
        _real_replace(src, dst, *args, **kwargs)
        if fnmatch.fnmatch(os.fspath(dst), _pattern):
            try:
                os.close(os.open(_flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return
            os.kill(os.getpid(), signal.SIGKILL)

    os.replace = _replace_then_die
"""


@pytest.mark.slow
def test_a_killed_ray_worker_then_rerun_gives_identical_output(small, clean, tmp_path):
    """A Ray worker dies (SIGKILL) right after writing a shard's embeddings, before its marker: the run either
    retries the shard and finishes, or stops with one error line; either way the (re)run ends identical."""
    pytest.importorskip("ray")
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(RAY_KILL_HOOK)
    flag = tmp_path / "killed"
    # RAY_ADDRESS=local: a Ray of our own even when another job's `ray start` cluster runs on this machine
    # (without it, ray.init would join that cluster and refuse num_cpus).
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "FAULT_KILL_FLAG": str(flag), "RAY_ADDRESS": "local",
           "FAULT_KILL_PATTERN": "*/embeddings/img_emb/img_emb_00001.npy",
           "PYTHONPATH": os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH")) if p)}
    out = tmp_path / "run"
    args = [*small.args(out), "--engine", "ray", "--set", "run.ray_num_cpus=2"]
    first = subprocess.run([sys.executable, "-m", "sanitize_cli", *args], capture_output=True, text=True, env=env,
                           timeout=600)
    assert flag.exists(), f"no worker was killed: {first.stderr[-2000:]}"
    assert leftovers(out) == []
    if first.returncode != 0:  # not retried: one clear line, then a rerun finishes
        assert first.returncode == 1 and error_line(first)
        rerun = sanitize(small.args(out))
        assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert data_files(out) == clean


# -- the injector (run as a script by the tests above) -----------------------------------------------------------

def _inject_after(pattern: str, count: int, action: str, victim: str) -> None:
    """Right after the COUNT-th file matching PATTERN is put in place, delete VICTIM or change it (one row less)."""
    real_replace = os.replace
    seen = 0

    def replace_then_damage(src, dst, *args, **kwargs):
        nonlocal seen
        real_replace(src, dst, *args, **kwargs)
        if fnmatch.fnmatch(os.fspath(dst), pattern):
            seen += 1
            if seen == count and action == "delete":
                os.unlink(victim)
            elif seen == count:
                import pyarrow.parquet as pq

                table = pq.read_table(victim)
                pq.write_table(table.slice(0, table.num_rows - 1), victim)

    os.replace = replace_then_damage

def _inject_enospc(pattern: str, count: int) -> None:
    """Make the COUNT-th atomic write of a file matching PATTERN fail as on a full disk: half the bytes written,
    then ENOSPC (with no file name, as `write(2)` reports it)."""
    from sanitize.io import atomic

    real = atomic.atomic_path
    seen = 0

    @contextmanager
    def filling(path: str | os.PathLike, **options) -> Iterator[Path]:
        nonlocal seen
        with real(path, **options) as tmp:
            yield tmp
            if fnmatch.fnmatch(os.fspath(path), pattern):
                seen += 1
                if seen == count:
                    with open(tmp, "r+b") as f:
                        f.truncate(os.path.getsize(tmp) // 2)
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    atomic.atomic_path = filling


def main() -> None:
    fault, *params = sys.argv[1:sys.argv.index("--")]
    if fault == "enospc":
        _inject_enospc(params[0], int(params[1]))
    elif fault == "after":
        _inject_after(params[0], int(params[1]), params[2], params[3])
    else:
        raise SystemExit(f"unknown fault {fault!r}")
    from sanitize_cli.main import main as cli_main

    sys.argv = ["sanitize", *sys.argv[sys.argv.index("--") + 1:]]
    cli_main()


if __name__ == "__main__":
    main()
