"""`sanitize classify RUN`: certified thresholds per safety category, then every row scored and decided."""

from __future__ import annotations

import click

from sanitize.io.runfolder import RunFolder
from sanitize.pipeline.stages.classify import run_classify_stage
from sanitize.safety.project import LabelProject
from sanitize_cli.main import cli, emit
from sanitize_cli.options import json_option


@cli.command()
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("--project", required=True, type=click.Path(file_okay=False), help="Labeling project folder.")
@click.option("--category", "categories", multiple=True,
              help="Category to filter (repeatable); default: every category with a classifier.")
@json_option
def classify(run, project, categories, as_json):
    """Certify a recall-favouring threshold per category from random-audit labels and filter every row of RUN."""
    summary = run_classify_stage(RunFolder.open(run), LabelProject.open(project), categories or None)
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
