"""`sanitize run` (the whole pipeline from a TOML config) and `sanitize init` (a commented starter config)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import click

from sanitize.errors import ConfigError
from sanitize.io.atomic import write_text
from sanitize.pipeline.config import STAGES, RunConfig, load_config, starter_config, to_toml
from sanitize.pipeline.options import click_options
from sanitize.pipeline.runner import format_table, open_input, plan_pipeline, run_pipeline
from sanitize_cli.main import emit
from sanitize_cli.options import json_option


@click.command("run")
@click.argument("manifest")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="TOML config (`sanitize init` writes one); without it every option has its default.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run folder to write.")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override one config key (repeatable), e.g. --set dedup.threshold=0.9.")
@click_options("run", RunConfig, only=("skip", "engine", "ray_address"), overrides=True)
@click.option("--resume", is_flag=True, help="Continue a run in OUT whose config differs (changed stages rerun).")
@click.option("--dry-run", is_flag=True, help="Print the resolved config and plan, run nothing.")
@json_option
def run_(manifest, config_path, out, overrides, skip, engine, ray_address, resume, dry_run, as_json):
    from tqdm import tqdm  # imported to run, not for --help

    extra = list(overrides)
    if engine:
        extra.append(f"run.engine={json.dumps(engine)}")
    if ray_address:
        extra.append(f"run.ray_address={json.dumps(ray_address)}")
    config = load_config(config_path, extra)
    config = config.replace("run", skip=sorted(set(config.run.skip) | set(skip), key=STAGES.index))
    if dry_run:
        plans = plan_pipeline(open_input(manifest, config), config, out, resume=resume)
        summary = {"config": config.to_dict(), "plan": [asdict(p) for p in plans], "out": out}
        emit(summary, as_json, [
            f"plan for {manifest} -> {out} ({config.run.engine} engine):",
            *(f"  {p.stage:9s} {p.action:4s}  {p.why}" for p in plans),
            "", "resolved config:", *("  " + line for line in to_toml(config).splitlines()),
        ])
        return
    bars: dict[str, tqdm] = {}

    def progress(stage: str, n: int) -> None:
        if stage not in bars:
            bars[stage] = tqdm(desc=stage, unit="row", disable=as_json, leave=False)
        bars[stage].update(n)

    summary = run_pipeline(manifest, config, out, resume=resume, progress=progress)
    for bar in bars.values():
        bar.close()
    emit(summary, as_json, format_table(summary))


@click.command("init")
@click.argument("path", default="sanitize.toml", type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def init(path, force):
    if Path(path).exists() and not force:
        raise ConfigError(f"{path}: exists; pass --force to overwrite it")
    write_text(path, starter_config())
    click.echo(f"wrote {path}; edit it, then: sanitize run MANIFEST --config {path} --out RUN --dry-run")
