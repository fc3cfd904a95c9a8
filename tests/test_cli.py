"""CLI contract: only working commands are listed, --help works on each, errors are one line with exit 1 / 2."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from sanitize_cli.commands import COMMANDS, LABEL_COMMANDS
from sanitize_cli.main import LazyGroup, cli


@pytest.fixture
def runner():
    return CliRunner()


def test_every_listed_command_has_help(runner):
    result = runner.invoke(cli, ["--help"])
    assert result.exit_code == 0
    for name, command in cli.commands.items():
        assert command.help, f"{name} has no help text"
        sub = runner.invoke(cli, [name, "--help"])
        assert sub.exit_code == 0, (name, sub.output)
        if hasattr(command, "commands"):
            for child in command.commands:
                assert runner.invoke(cli, [name, child, "--help"]).exit_code == 0, (name, child)


def test_help_line_is_written_once():
    """A command's first help paragraph comes from cli/commands.py; its docstring holds only the rest."""
    for group, table in ((cli, COMMANDS), (cli.commands["label"], LABEL_COMMANDS)):
        assert set(group.commands) == set(table)
        for name, (_, first) in table.items():
            paragraphs = [" ".join(p.split()) for p in group.commands[name].help.split("\n\n")]
            assert paragraphs[0] == first and first not in paragraphs[1:], name


def test_command_list_is_the_same_before_and_after_the_commands_load(runner):
    group = LazyGroup("sanitize", lazy=COMMANDS)
    before = runner.invoke(group, ["--help"]).output
    assert not group.commands.loaded
    dict(group.commands)  # imports every command
    assert runner.invoke(group, ["--help"]).output == before


def test_data_error_is_one_line_with_exit_1(runner, tmp_path):
    result = runner.invoke(cli, ["inspect", str(tmp_path / "missing.parquet")])
    assert result.exit_code == 1
    assert result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith("error: ") and "missing.parquet: no such file or folder" in result.stderr


def test_usage_error_exit_2(runner, tmp_path):
    p = tmp_path / "m.parquet"
    pq.write_table(pa.table({"uid": ["a"]}), p)
    assert runner.invoke(cli, ["inspect", str(p), "--preset", "nope"]).exit_code == 2
    assert runner.invoke(cli, ["no-such-command"]).exit_code == 2


def test_inspect_json(runner, tmp_path):
    p = tmp_path / "m.parquet"
    pq.write_table(pa.table({"uid": ["a", "b"], "caption": ["x", "y"]}), p)
    result = runner.invoke(cli, ["inspect", str(p), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["rows"] == 2 and summary["preset"] == "generic" and summary["example_uids"] == ["a", "b"]


def test_json_stdout_holds_only_the_summary(runner, tmp_path, monkeypatch):
    # With --json, anything else a command's libraries print to stdout while it runs (Ray forwards worker-failure
    # notices there) goes to stderr, so stdout parses as one JSON document.
    from sanitize.io.manifest import Manifest

    pq.write_table(pa.table({"uid": ["a", "b"], "caption": ["x", "y"]}), tmp_path / "m.parquet")
    check = Manifest.check_unique_uids

    def noisy(self, *args, **kwargs):
        print("(raylet) a worker died")  # what a library's log forwarding writes
        return check(self, *args, **kwargs)

    monkeypatch.setattr(Manifest, "check_unique_uids", noisy)
    result = runner.invoke(cli, ["inspect", str(tmp_path / "m.parquet"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["rows"] == 2
    assert "(raylet) a worker died" in result.stderr
    plain = runner.invoke(cli, ["inspect", str(tmp_path / "m.parquet")])
    assert "(raylet) a worker died" in plain.stdout  # without --json, stdout is left alone
