"""`sanitize label …`: labeling rounds for safety categories in a project folder, over a run's embeddings."""

from __future__ import annotations

import click

from sanitize.io.runfolder import RunFolder
from sanitize.pipeline.stages.embed import load_run_model
from sanitize.safety.audit_sample import STRATEGIES as AUDIT_STRATEGIES
from sanitize.safety.classifier import MIN_PER_CLASS
from sanitize.safety.labels import ON_CONFLICT, SOURCES, LabelConflictError, UnknownUidError
from sanitize.safety.project import LabelProject
from sanitize.safety.strategies import COLD_START, STRATEGIES
from sanitize.safety.workflow import add_answers, category_status, draw_audit_batch, propose_next_batch
from sanitize_cli.main import cli, emit
from sanitize_cli.options import json_option, seed_option

project_option = click.option("--project", required=True, type=click.Path(file_okay=False),
                              help="Labeling project folder (from `sanitize label init`).")
run_option = click.option("--run", "run", required=True, type=click.Path(exists=True, file_okay=False),
                          help="Run folder whose embeddings are the pool.")
conflict_option = click.option(
    "--on-conflict", type=click.Choice(ON_CONFLICT), default="raise", show_default=True,
    help="Answers that contradict stored ones: raise (list them, store nothing), skip them, or override.")


@cli.group()
def label():
    """Label safety categories: seed, active-learning rounds, audit samples, status."""


@label.command("init")
@click.argument("project", type=click.Path(file_okay=False))
@click.option("--spec", "spec_file", type=click.Path(dir_okay=False),
              help="Category spec (TOML) to start from; default: the shipped example (sexual, violence).")
@json_option
def init(project, spec_file, as_json):
    """Create a labeling project folder PROJECT with its categories.toml."""
    folder = LabelProject.init(project, spec_file)
    names = folder.spec.names
    emit({"project": str(folder.path), "categories": names}, as_json,
         [f"project {folder.path}: categories {', '.join(names)} (edit {folder.spec.path} to add more)"])


@label.command("next")
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
    """Propose the next batch of CATEGORY to label: CSV/parquet to fill in and an HTML contact sheet."""
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


def _ingest(category, project, run, file, source, annotator, default_source, on_conflict, seed, as_json):
    try:
        summary = add_answers(LabelProject.open(project), RunFolder.open(run), category, file, source=source,
                              annotator=annotator, default_source=default_source, on_conflict=on_conflict,
                              seed=seed)
    except LabelConflictError as exc:
        for c in exc.conflicts:
            click.echo(f"conflict: {c.uid}: stored {c.stored_label} ({c.stored_source}, round {c.stored_round}),"
                       f" new {c.new_label}", err=True)
        raise
    except UnknownUidError as exc:
        for uid in exc.uids:
            click.echo(f"not in run: {uid}", err=True)
        raise
    emit(summary.to_dict(), as_json, [
        f"{category}: {summary.added} labels added as {summary.source}, {summary.unchanged} unchanged"
        + (f", {summary.unanswered} rows unanswered" if summary.unanswered else "")
        + (f", {summary.conflicts} conflicts ({on_conflict})" if summary.conflicts else ""),
        summary.message,
    ])


@label.command("add")
@click.argument("category")
@click.argument("file", type=click.Path(dir_okay=False))
@project_option
@run_option
@click.option("--source", type=click.Choice(SOURCES), default=None,
              help="Default: random-audit for batches from `label audit-sample`, else active.")
@click.option("--annotator", default="", help="Who labelled the file.")
@conflict_option
@seed_option
@json_option
def add(category, file, project, run, source, annotator, on_conflict, seed, as_json):
    """Store the answers in FILE (uid,label[,round]; CSV or parquet) for CATEGORY and retrain its classifier."""
    _ingest(category, project, run, file, source, annotator, "active", on_conflict, seed, as_json)


@label.command("import")
@click.argument("category")
@click.argument("file", type=click.Path(dir_okay=False))
@project_option
@run_option
@click.option("--source", type=click.Choice(SOURCES), default="seed", show_default=True)
@click.option("--annotator", default="", help="Who labelled the file.")
@conflict_option
@seed_option
@json_option
def import_(category, file, project, run, source, annotator, on_conflict, seed, as_json):
    """Seed CATEGORY with labelled examples from FILE: a uid or image path column and a label column."""
    _ingest(category, project, run, file, source, annotator, "seed", on_conflict, seed, as_json)


@label.command("status")
@click.argument("category", required=False)
@project_option
@click.option("--run", "run", type=click.Path(exists=True, file_okay=False),
              help="Run folder: adds cross-validated precision/recall and the expected removal rate.")
@seed_option
@json_option
def status(category, project, run, seed, as_json):
    """Labels by source and round, cross-validated quality, removal rate, and whether the saved classifier is
    current, per category (or one). Reads only: a stale classifier is reported, not retrained."""
    folder = LabelProject.open(project)
    names = [category] if category else folder.spec.names
    run_folder = RunFolder.open(run) if run else None
    reports = [category_status(folder, name, run_folder, seed=seed) for name in names]
    lines = []
    for report in reports:
        lines.append(report["markdown"].rstrip("\n"))
        audit = report["audit"]
        lines.append(f"audit sample: {audit['drawn'] or 0} drawn, {audit['labelled']} random-audit labels")
        lines.append(_classifier_line(report))
        cert = report["certificate"]
        if cert:
            lines.append(f"last certificate: threshold {cert['threshold']}, certified {cert['certified']}, "
                         f"recall ≥ {cert['recall_lower_bound']:.4f} at {cert['confidence']:.0%}")
        lines.append("")
    emit({"categories": [{k: v for k, v in r.items() if k != "markdown"} for r in reports]}, as_json, lines)


def _classifier_line(report: dict) -> str:
    """One line on the saved classifier of a `category_status` report: current, stale (and how to fix), or none."""
    now, saved = report["classifier_labels"]["current"], report["classifier_labels"]["saved"]
    labels = f"{now['positive']} positive / {now['negative']} negative seed+active labels"
    if report["classifier_current"]:
        return f"classifier: current (trained on the {labels})"
    if min(now["positive"], now["negative"]) < MIN_PER_CLASS:
        return f"classifier: none for the current labels ({labels}; training needs {MIN_PER_CLASS} of each)"
    saved_on = "none saved" if saved is None else f"saved one trained on {saved['positive']} / {saved['negative']}"
    return (f"classifier: not current ({saved_on}, labels now {labels}); "
            "`sanitize label next` or `label add` retrains and saves it")


@label.command("audit-sample")
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
    """Draw a random (or score-stratified) audit sample of CATEGORY from the whole run, as a labeling batch."""
    result = draw_audit_batch(LabelProject.open(project), RunFolder.open(run), category, n, strategy=strategy,
                              n_strata=n_strata, seed=seed)
    emit(result.to_dict(), as_json, [
        f"{category}: audit batch of {result.rows} rows ({strategy}); contact sheet: {result.paths['html']}",
        f"label every row of {result.paths['csv']}, then: sanitize label add {category} {result.paths['csv']} "
        f"--project {project} --run {run}",
    ])

