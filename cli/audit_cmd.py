"""`sanitize audit RUN|MANIFEST`: who each filter removed, with statistics, a report, and weights that undo the
shift; filters of a run folder, or filters run elsewhere, given as conditions on a manifest's columns."""

from __future__ import annotations

from pathlib import Path

import click

from sanitize.errors import ConfigError
from sanitize.io.runfolder import RunFolder
from sanitize.pipeline.options import click_options, from_cli
from sanitize.pipeline.stage import run_stage
from sanitize.pipeline.stages.audit import AuditConfig, AuditStage, ExternalFilter, KeptIn, audit_manifest
from sanitize_cli.main import emit
from sanitize_cli.options import json_option, manifest_options, open_manifest_from


@click.command()
@click.argument("source")
@click_options("audit", AuditConfig)
@click.option("--filter", "conditions", multiple=True, metavar="CONDITION",
              help="MANIFEST only: a filter run elsewhere, as the SQL condition its kept rows meet, e.g. "
                   "'punsafe < 0.1' (repeatable: each is a stage, in order).")
@click.option("--keep-col", "keep_cols", multiple=True, metavar="COLUMN",
              help="MANIFEST only: a boolean column that is true for the rows a filter kept (repeatable).")
@click.option("--after", help="MANIFEST only: the manifest a filter wrote from MANIFEST (read with the same options); "
                             "its rows are the kept ones.")
@click.option("--out", type=click.Path(file_okay=False), help="MANIFEST only: folder for the report.")
@click.option("--embeddings", "embeddings_path", type=click.Path(exists=True),
              help="MANIFEST only: image embeddings of the same rows (a run folder, or a clip-retrieval folder / "
                   "parquet with --model), joined by uid, for zero-shot attributes.")
@click.option("--model", "clip_model", help="With --embeddings that are not a run folder: the open_clip model that "
                                            "made them (its text tower writes the zero-shot prompts).")
@click.option("--pretrained", "clip_pretrained", help="With --model: its weights (tag or checkpoint path).")
@manifest_options
@json_option
def audit(source, conditions, keep_cols, after, out, embeddings_path, clip_model, clip_pretrained, as_json, **values):
    """SOURCE is a run folder (its finished filter stages are audited; the report goes to RUN/audit/) or a
    manifest (file, glob or folder) with --filter / --keep-col / --after and --out."""
    config = from_cli("audit", AuditConfig, values)
    if Path(source, "run.json").is_file():
        if conditions or keep_cols or after or out or embeddings_path:
            raise ConfigError("--filter, --keep-col, --after, --out and --embeddings are for a MANIFEST; a run folder "
                              "audits its stages")
        stats = run_stage(AuditStage(config), RunFolder.open(source)).to_dict()
    else:
        if out is None:
            raise ConfigError("--out is needed when SOURCE is a manifest")
        manifest = open_manifest_from(source, values)
        filters = [*(ExternalFilter(c, c) for c in conditions), *(ExternalFilter(c, c, column=True) for c in keep_cols)]
        if after:
            filters.append(KeptIn.of(manifest, open_manifest_from(after, values)))
        embeddings, encode_text = _embeddings(embeddings_path, clip_model, clip_pretrained, config.device)
        stats = audit_manifest(manifest, filters, out, attributes=config.attributes,
                               weight_on=config.weight_on, target=config.target or None,
                               references=config.reference, concepts=config.concepts, embeddings=embeddings,
                               encode_text=encode_text)
    lines = [f"audited stages {', '.join(stats['stages'])} by {', '.join(stats['attributes'])}: "
             f"{stats['flags']} flag(s)", f"report: {stats['paths']['html']}"]
    lines += [f"{stage}: {n} rows undecided (a null keep value or a null/NaN score): not evaluated by it"
              for stage, n in stats.get("undecided", {}).items() if n]
    if "weights" in stats:
        lines.append(f"weights: {stats['paths']['weights']} (Kish effective sample size "
                     f"{stats['weights']['kish_ess']:.0f})")
    emit(stats, as_json, lines)


def _embeddings(path, model, pretrained, device):
    """(EmbeddingSource, text tower loaded on first use) for --embeddings, or (None, None) without it."""
    from sanitize.io.embeddings import open_embeddings

    if path is None:
        if model or pretrained:
            raise ConfigError("--model and --pretrained name the model of --embeddings; give --embeddings too")
        return None, None
    loaded = {}
    if Path(path, "run.json").is_file():
        run = RunFolder.open(path)
        if model:
            raise ConfigError(f"--model: {path} is a run folder, which records its own model")

        def load():
            from sanitize.pipeline.stages.embed import load_run_model

            return load_run_model(run, device=device)
        embeddings = open_embeddings(run.path)
    else:
        if not model:
            raise ConfigError(f"--embeddings {path} is not a run folder: name the model that made them with --model "
                              "(and --pretrained)")

        def load():
            from sanitize.clip.models import load_clip

            return load_clip(model, pretrained, device=device)
        embeddings = open_embeddings(path)

    def encode_text(prompts):
        if "clip" not in loaded:
            loaded["clip"] = load()
        return loaded["clip"].encode_text(prompts)
    return embeddings, encode_text
