"""`sanitize inspect` and `sanitize export`: look at a manifest, write a run's kept rows."""

from __future__ import annotations

import click

from sanitize.io.runfolder import RunFolder
from sanitize.pipeline.options import click_options, from_cli
from sanitize.pipeline.stage import run_stage
from sanitize.pipeline.stages.export import ExportConfig, ExportStage
from sanitize_cli.main import emit
from sanitize_cli.options import json_option, manifest_options, open_manifest_from


@click.command()
@click.argument("manifest")
@manifest_options
@json_option
def inspect(manifest, as_json, **values):
    m = open_manifest_from(manifest, values)
    rows = m.check_unique_uids()
    first = m.read_shard(0)
    summary = {
        "path": manifest, "preset": m.spec.preset, "shards": len(m.files), "rows": rows,
        "columns": {k: v for k, v in m.spec.to_dict()["columns"].items() if v},
        "with_image": int(sum(1 for k, i in zip(first.table["key"].to_pylist(), first.table["image"].to_pylist(),
                                                strict=True) if k or i)),
        "example_uids": first.table["uid"].to_pylist()[:3],
    }
    emit(summary, as_json, [
        f"{manifest}: preset {m.spec.preset}, {len(m.files)} shard(s), {rows} rows, uids unique",
        f"columns: {summary['columns']}",
        f"example uids: {', '.join(summary['example_uids'])}",
    ])


@click.command()
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click_options("export", ExportConfig)
@json_option
def export(run, as_json, **values):
    summary = run_stage(ExportStage(from_cli("export", ExportConfig, values)), RunFolder.open(run)).to_dict()
    emit(summary, as_json, [f"kept {summary['kept']} of {summary['rows_in']} rows, removed "
                            f"{summary['rows_in'] - summary['kept']}; written to {summary['out']}"])
