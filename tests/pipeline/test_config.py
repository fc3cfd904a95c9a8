from __future__ import annotations

import re

import pytest

from sanitize.errors import ConfigError
from sanitize.pipeline.config import (
    OPTIONS,
    default_config,
    load_config,
    resolve_config,
    starter_config,
)


def test_starter_config_parses_to_the_defaults_and_uncommented_examples_parse(tmp_path):
    text = starter_config()
    (tmp_path / "a.toml").write_text(text)
    assert load_config(tmp_path / "a.toml") == default_config()
    # Every commented-out key shows a valid example value.
    uncommented = re.sub(r"(?m)^# ([a-z_]+ = )", r"\1", text)
    (tmp_path / "b.toml").write_text(uncommented)
    config = load_config(tmp_path / "b.toml", ["run.engine=ray"])
    assert config["dedup"].clusters == 4096 and config["run"].ray_address == "auto"
    assert all(o.help for o in OPTIONS)


def test_stage_command_options_are_the_config_fields_with_the_same_defaults():
    """Each single-stage command's options are built from its stage's config dataclass: every CLI field is an
    option, under the same name, with the dataclass default (declared once, so nothing can drift)."""
    from sanitize.pipeline.config import InputConfig
    from sanitize.pipeline.options import options_of
    from sanitize.pipeline.registry import stage_class
    from sanitize_cli.main import cli

    def check(command, section, cls):
        params = {p.name: p for p in cli.commands[command].params}
        for o in options_of(section, cls):
            if not o.cli:
                continue
            assert o.name in params, f"{command}: {section}.{o.name} has no option"
            default = params[o.name].default
            assert (tuple(default) if isinstance(default, (list, tuple)) else default) == (
                None if o.kind == "dict[str,float]" else o.default), (command, o.name)

    for name in ("embed", "classify", "dedup", "audit", "export"):
        check(name, name, stage_class(name).Config)
    for command in ("embed", "inspect"):
        check(command, "input", InputConfig)


def test_a_bad_cli_value_is_checked_like_a_toml_value():
    from click.testing import CliRunner

    from sanitize_cli.main import cli

    result = CliRunner().invoke(cli, ["audit", ".", "--target", "young=most"])
    assert result.exit_code == 2 and "--target: 'young=most' is not NAME=SHARE" in result.stderr


@pytest.mark.parametrize(("raw", "message"), [
    ({"dedup": {"treshold": 0.9}}, "unknown key dedup.treshold; did you mean dedup.threshold?"),
    ({"dedupe": {"threshold": 0.9}}, r"unknown section \[dedupe\]; did you mean \[dedup\]?"),
    ({"embed": {"keep": "min"}}, r"unknown key embed.keep; it belongs in \[dedup\]"),
    ({"dedup": {"threshold": "high"}}, "dedup.threshold must be a number, got 'high'"),
    ({"dedup": {"clusterings": 2.5}}, "dedup.clusterings must be an integer"),
    ({"dedup": {"clusterings": True}}, "dedup.clusterings must be an integer"),
    ({"dedup": {"refuse_chains": "yes"}}, "dedup.refuse_chains must be true or false"),
    ({"run": {"engine": "rey"}}, "run.engine = 'rey' is not one of local, ray; did you mean ray?"),
    ({"run": {"stages": ["embd"]}}, "run.stages: 'embd' is not one of .*did you mean embed?"),
    ({"run": {"stages": "embed"}}, "run.stages must be a list of strings"),
    ({"audit": {"target": {"young": "most"}}}, "audit.target must be a table of numbers"),
    ({"embed": {"batch_size": 0}}, "embed.batch_size must be at least 1, got 0"),
    ({"dedup": {"threshold": 1.5}}, "dedup.threshold must be between -1 and 1, got 1.5"),
    ({"run": {"ray_address": "auto"}}, "need run.engine = \"ray\""),
    ({"run": 3}, r"\[run\] must be a table"),
])
def test_bad_config_names_the_key(raw, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config(raw, where="x.toml")


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="missing.toml: config file not found"):
        load_config(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("[dedup\nthreshold = ")
    with pytest.raises(ConfigError, match="bad.toml: not readable TOML"):
        load_config(tmp_path / "bad.toml")


def test_overrides_and_types():
    config = load_config(None, ["dedup.threshold=0.9", "audit.weight_on=[\"caption_gender\"]", "embed.device=cpu",
                                "audit.target={a = 1, b = 3}", "dedup.clusters=8"])
    assert config["dedup"].threshold == 0.9 and config["embed"].device == "cpu"
    assert config["audit"].target == {"a": 1.0, "b": 3.0} and config["dedup"].clusters == 8
    assert resolve_config({"dedup": {"threshold": 1}})["dedup"].threshold == 1.0  # an int is a number
    with pytest.raises(ConfigError, match="expected SECTION.KEY=VALUE"):
        load_config(None, ["threshold=0.9"])


def test_planned_stages_keep_pipeline_order_minus_skips():
    config = resolve_config({"run": {"stages": ["export", "embed", "dedup"], "skip": ["embed"]}})
    assert config.planned_stages() == ["dedup", "export"]
