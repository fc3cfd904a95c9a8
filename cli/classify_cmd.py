"""`sanitize classify RUN`: certified thresholds per safety category, then every row scored and decided."""

from __future__ import annotations

import click

from sanitize.io.runfolder import RunFolder
from sanitize.pipeline.options import click_options, from_cli
from sanitize.pipeline.stage import run_stage
from sanitize.pipeline.stages.classify import ClassifyConfig, ClassifyStage
from sanitize_cli.main import emit
from sanitize_cli.options import json_option


@click.command()
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click_options("classify", ClassifyConfig)
@json_option
def classify(run, as_json, **values):
    config = from_cli("classify", ClassifyConfig, values)
    if not config.project:
        raise click.UsageError("--project is required: the labeling project with the classifiers")
    summary = run_stage(ClassifyStage(config), RunFolder.open(run)).to_dict()
    lines = ["| category | rows | removed | removal rate | threshold | certified | recall ≥ (conf.) |",
             "|---|---:|---:|---:|---:|---|---:|"]
    notes = []
    for name, s in summary["categories"].items():
        threshold = s["threshold"] if isinstance(s["threshold"], str) else f"{s['threshold']:.4f}"
        lines.append(f"| {name} | {s['rows_in']} | {s['removed']} | {s['removal_rate']:.2%} | {threshold} | "
                     f"{'yes' if s['certified'] else 'no'} | {s['recall_lower_bound']:.4f} "
                     f"({s['confidence']:.0%}) |")
        if not s["certified"]:
            needed = s["more_labels_needed"]
            notes.append(f"{name}: not certified for recall {s['target_recall']:g}; "
                         + (f"about {needed} more random-audit labels needed" if needed is not None
                            else "no audit positive yet, every row flagged")
                         + "; the conservative fallback threshold was used")
    overlap = summary["overlap"]
    lines.append(f"removed by any category: {overlap['removed_by_any']}"
                 + "".join(f"; {pair}: {n}" for pair, n in overlap["pairs"].items()))
    emit(summary, as_json, lines + notes)
