"""`sanitize embed`: CLIP image and caption embeddings for a manifest, into a run folder."""

from __future__ import annotations

import click

from sanitize.io.runfolder import RunFolder
from sanitize.pipeline.options import click_options, from_cli
from sanitize.pipeline.stage import run_stage
from sanitize.pipeline.stages.embed import EmbedConfig, EmbedStage
from sanitize_cli.main import emit
from sanitize_cli.options import json_option, manifest_options, open_manifest_from, seed_option


@click.command()
@click.argument("manifest")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Run folder to write.")
@manifest_options
@click_options("embed", EmbedConfig)
@seed_option
@json_option
def embed(manifest, out, seed, as_json, **values):
    from tqdm import tqdm  # imported to run, not for --help

    stage = EmbedStage(from_cli("embed", EmbedConfig, values))
    stage.prepare(seed)  # fails fast (missing weights), before any data is read
    m = open_manifest_from(manifest, values)
    run = RunFolder.create(out, m)
    with tqdm(total=len(m), desc="embed", unit="img", disable=as_json, leave=False) as bar:
        result = run_stage(stage, run, seed=seed, progress=lambda _, n: bar.update(n)).to_dict()
    dropped = ", ".join(f"{k} {v}" for k, v in result["dropped"].items()) or "none"
    emit(result, as_json, [f"embedded {result['kept']} of {result['rows_in']} rows into {out} "
                           f"({result['seconds']:.1f} s); not embedded: {dropped}"])
