"""`sanitize demo OUT`: the whole pipeline on a generated sample, offline."""

from __future__ import annotations

import click

from sanitize.engines import ENGINES
from sanitize.pipeline.runner import format_table
from sanitize_cli.main import emit
from sanitize_cli.options import json_option


@click.command()
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--rows", default=1200, show_default=True, type=click.IntRange(100, 2000), help="Sample size.")
@click.option("--seed", default=0, show_default=True, help="Seed of the sample and of the demo model.")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=0), help="Decoding processes.")
@click.option("--engine", type=click.Choice(ENGINES), default="local", show_default=True,
              help="Run the pipeline in this process or on a local Ray.")
@json_option
def demo(out, rows, seed, workers, engine, as_json):
    from tqdm import tqdm

    from sanitize.demo.run import run_demo  # the labeling workflow (scikit-learn): imported to run, not for --help

    bars: dict[str, tqdm] = {}

    def progress(stage: str, n: int) -> None:
        if stage not in bars:
            bars[stage] = tqdm(total=rows, desc=stage, unit="row", disable=as_json, leave=False)
        bars[stage].update(n)

    summary = run_demo(out, n_rows=rows, seed=seed, workers=workers, engine=engine, progress=progress)
    for bar in bars.values():
        bar.close()
    # The demo model has random weights: weak classifiers, so certified recall costs many rows (the point of
    # certifying: it shows the price).
    truth = summary["versus_truth"]["dedup"]
    emit(summary, as_json, [
        f"sample: {summary['sample']} ({summary['rows']} rows); config: {summary['config']}",
        *(f"classify {name}: threshold {c['threshold']:.3f}, removes {c['removal_rate']:.1%}; "
          + (f"recall >= {c['target_recall']:.0%} certified at {c['confidence']:.0%} (lower bound "
             f"{c['recall_lower_bound']:.3f}, {c['audit_positives']} audit positives)" if c["certified"] else
             f"NOT certified: {c['more_labels_needed']} more random-audit labels needed")
          for name, c in summary["categories"].items()),
        f"dedup: {truth['planted_pairs_found']} of the {truth['planted_pairs']} planted near-duplicate pairs "
        f"found, {truth['pairs_found']} pairs in all (the demo model has random weights)",
        "",
        *format_table(summary),
        "",
        f"audit report: {summary['totals']['report']}",
        f"rerun or resume: sanitize run {summary['sample']}/shards --config {summary['config']} --out {summary['run']}",
    ])
