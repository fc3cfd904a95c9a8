"""`sanitize label next` and `sanitize label audit-sample`: draw a batch of CATEGORY to label (a CSV/parquet to
fill in and an HTML contact sheet), chosen by active learning or as a random audit sample."""

from __future__ import annotations

import click

from sanitize.io.runfolder import RunFolder
from sanitize.safety.names import AUDIT_STRATEGIES, COLD_START, STRATEGIES
from sanitize_cli.label_cmds import project_option, run_option
from sanitize_cli.main import emit
from sanitize_cli.options import json_option, seed_option


@click.command("next")
@click.argument("category")
@project_option
@run_option
@click.option("--n", "n", default=50, show_default=True, type=click.IntRange(min=1), help="Batch size.")
@click.option("--strategy", default="uncertainty", show_default=True, type=click.Choice([*STRATEGIES, COLD_START]),
              help="How to choose rows once a classifier exists (before that: prompts, then random).")
@seed_option
@click.option("--device", default=None, help="Device for the CLIP text tower (cold start only).")
@json_option
def next_(category, project, run, n, strategy, seed, device, as_json):
    from sanitize.pipeline.stages.embed import load_run_model
    from sanitize.safety.project import LabelProject
    from sanitize.safety.workflow import propose_next_batch

    folder = RunFolder.open(run)
    model = {}

    def encode_text(prompts):
        # The text tower loads only for a cold start.
        if "clip" not in model:
            model["clip"] = load_run_model(folder, device=device)
        return model["clip"].encode_text(prompts)

    result = propose_next_batch(LabelProject.open(project), folder, category, n, strategy=strategy, seed=seed,
                                encode_text=encode_text)
    emit(result.to_dict(), as_json, [
        f"{category} round {result.round}: {result.rows} rows chosen by {result.strategy}",
        f"contact sheet: {result.paths['html']}",
        f"fill in column 'label' (1/0) of {result.paths['csv']}, then: sanitize label add {category} "
        f"{result.paths['csv']} --project {project} --run {run}",
    ])


@click.command("audit-sample")
@click.argument("category")
@project_option
@run_option
@click.option("--n", "n", required=True, type=click.IntRange(min=1), help="Rows to draw (or to add).")
@click.option("--strategy", default="random", show_default=True, type=click.Choice(AUDIT_STRATEGIES))
@click.option("--strata", "n_strata", default=10, show_default=True, type=click.IntRange(min=2),
              help="Strata of a stratified sample.")
@seed_option
@json_option
def audit_sample(category, project, run, n, strategy, n_strata, seed, as_json):
    from sanitize.safety.project import LabelProject
    from sanitize.safety.workflow import draw_audit_batch

    result = draw_audit_batch(LabelProject.open(project), RunFolder.open(run), category, n, strategy=strategy,
                              n_strata=n_strata, seed=seed)
    emit(result.to_dict(), as_json, [
        f"{category}: audit batch of {result.rows} rows ({strategy}); contact sheet: {result.paths['html']}",
        f"label every row of {result.paths['csv']}, then: sanitize label add {category} {result.paths['csv']} "
        f"--project {project} --run {run}",
    ])

