from __future__ import annotations

import re

import pytest

from sanitize.errors import ConfigError
from sanitize.pipeline.config import (
    OPTIONS,
    default_config,
    load_config,
    planned_stages,
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
    assert config["dedup"]["clusters"] == 4096 and config["run"]["ray_address"] == "auto"
    assert all(o.help for o in OPTIONS)


def test_every_cli_option_of_the_stage_commands_is_a_config_key():
    from sanitize_cli import commands  # noqa: F401
    from sanitize_cli.main import cli

    keys = {(o.section, o.name) for o in OPTIONS}
    # Options that name what a single command reads or writes, which `sanitize run` takes as its own arguments.
    not_settable = {"manifest", "out", "run", "source", "as_json", "embedding_col"}
    moved = {("embed", p): "input" for p in ("preset", "id_col", "caption_col", "image_col", "url_col", "image_root")}
    moved[("dedup", "seed")] = "run"
    moved[("dedup", "id_col")] = None  # the id column of a parquet SOURCE; a run folder has uids
    for stage in ("embed", "classify", "dedup", "audit"):
        for param in cli.commands[stage].params:
            if param.name in not_settable:
                continue
            section = moved.get((stage, param.name), stage)
            if section is None:
                continue
            assert (section, param.name) in keys, f"{stage} --{param.name} is not settable in the config"


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
    assert config["dedup"]["threshold"] == 0.9 and config["embed"]["device"] == "cpu"
    assert config["audit"]["target"] == {"a": 1.0, "b": 3.0} and config["dedup"]["clusters"] == 8
    assert resolve_config({"dedup": {"threshold": 1}})["dedup"]["threshold"] == 1.0  # an int is a number
    with pytest.raises(ConfigError, match="expected SECTION.KEY=VALUE"):
        load_config(None, ["threshold=0.9"])


def test_planned_stages_keep_pipeline_order_minus_skips():
    config = resolve_config({"run": {"stages": ["export", "embed", "dedup"], "skip": ["embed"]}})
    assert planned_stages(config) == ["dedup", "export"]
