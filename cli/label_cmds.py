"""`sanitize label …`: labeling rounds for safety categories in a project folder, over a run's embeddings.

The group and its commands `init`, `add`, `import` and `status`; `next` and `audit-sample` are in
label_batch_cmds.py, `serve` in label_serve_cmd.py (their options need scikit-learn, which the commands here
import only when they run).
"""

from __future__ import annotations

import click

from sanitize.io.runfolder import RunFolder
from sanitize.safety.labels import ON_CONFLICT, SOURCES, LabelConflictError, UnknownUidError
from sanitize_cli.commands import LABEL_COMMANDS
from sanitize_cli.main import LazyGroup, emit
from sanitize_cli.options import json_option, seed_option

project_option = click.option("--project", required=True, type=click.Path(file_okay=False),
                              help="Labeling project folder (from `sanitize label init`).")
run_option = click.option("--run", "run", required=True, type=click.Path(exists=True, file_okay=False),
                          help="Run folder whose embeddings are the pool.")
conflict_option = click.option(
    "--on-conflict", type=click.Choice(ON_CONFLICT), default="raise", show_default=True,
    help="Answers that contradict stored ones: raise (list them, store nothing), skip them, or override.")


@click.group(cls=LazyGroup, lazy=LABEL_COMMANDS)
def label():
    pass  # help text and commands: COMMANDS["label"] and LABEL_COMMANDS in cli/commands.py


@click.command("init")
@click.argument("project", type=click.Path(file_okay=False))
@click.option("--spec", "spec_file", type=click.Path(dir_okay=False),
              help="Category spec (TOML) to start from; default: the shipped example (sexual, violence).")
@json_option
def init(project, spec_file, as_json):
    from sanitize.safety.project import LabelProject

    folder = LabelProject.init(project, spec_file)
    names = folder.spec.names
    emit({"project": str(folder.path), "categories": names}, as_json,
         [f"project {folder.path}: categories {', '.join(names)} (edit {folder.spec.path} to add more)"])


def _ingest(category, project, run, file, source, annotator, default_source, on_conflict, seed, as_json):
    from sanitize.safety.project import LabelProject
    from sanitize.safety.workflow import add_answers

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


@click.command("add")
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
    _ingest(category, project, run, file, source, annotator, "active", on_conflict, seed, as_json)


@click.command("import")
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
    _ingest(category, project, run, file, source, annotator, "seed", on_conflict, seed, as_json)


@click.command("status")
@click.argument("category", required=False)
@project_option
@click.option("--run", "run", type=click.Path(exists=True, file_okay=False),
              help="Run folder: adds cross-validated precision/recall and the expected removal rate.")
@seed_option
@json_option
def status(category, project, run, seed, as_json):
    from sanitize.safety.project import LabelProject
    from sanitize.safety.workflow import category_status

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
    from sanitize.safety.classifier import MIN_PER_CLASS

    now, saved = report["classifier_labels"]["current"], report["classifier_labels"]["saved"]
    labels = f"{now['positive']} positive / {now['negative']} negative seed+active labels"
    if report["classifier_current"]:
        return f"classifier: current (trained on the {labels})"
    if min(now["positive"], now["negative"]) < MIN_PER_CLASS:
        return f"classifier: none for the current labels ({labels}; training needs {MIN_PER_CLASS} of each)"
    saved_on = "none saved" if saved is None else f"saved one trained on {saved['positive']} / {saved['negative']}"
    return (f"classifier: not current ({saved_on}, labels now {labels}); "
            "`sanitize label next` or `label add` retrains and saves it")
