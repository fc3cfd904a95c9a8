"""`sanitize dedup SOURCE`: near-duplicates by the union of several k-means clusterings, with its own recall."""

from __future__ import annotations

from pathlib import Path

import click

from sanitize.errors import ConfigError
from sanitize.io.runfolder import RunFolder
from sanitize.pipeline.options import click_options, from_cli
from sanitize.pipeline.stage import run_stage
from sanitize.pipeline.stages.dedup import DedupConfig, DedupStage, dedup_folder
from sanitize_cli.main import emit
from sanitize_cli.options import json_option, seed_option


@click.command()
@click.argument("source", type=click.Path(exists=True))
@click.option("--out", type=click.Path(file_okay=False), help="Output folder (required unless SOURCE is a run).")
@click_options("dedup", DedupConfig)
@click.option("--embedding-col", help="Embedding column of a parquet SOURCE.")
@click.option("--id-col", help="Id column of a parquet SOURCE.")
@click.option("--against", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="Decontaminate instead: drop rows of SOURCE that repeat an item of this reference set (an "
                   "evaluation set's clip-retrieval or run folder, same model); exhaustive search. Repeatable.")
@seed_option
@json_option
def dedup(source, out, embedding_col, id_col, against, seed, as_json, **values):
    """SOURCE is a run folder, a clip-retrieval folder, parquet with an embedding column, or a .npy file."""
    config = from_cli("dedup", DedupConfig, values)
    if against:
        _decontaminate(source, out, against, config.threshold, embedding_col, id_col, as_json,
                       config.keep_index or config.since)
        return

    def progress(phase: str, done: int, total: int) -> None:
        if not as_json:
            click.echo(f"  {phase} {done}/{total}", err=True)

    if Path(source, "run.json").is_file():
        stats = run_stage(DedupStage(config, progress=progress), RunFolder.open(source), seed=seed).to_dict()
    elif out is None:
        raise ConfigError("--out is needed when SOURCE is not a run folder")
    else:
        stats = dedup_folder(source, out, config, seed=seed, embedding_col=embedding_col, id_col=id_col,
                             progress=progress)
    removed = stats["dropped"].get("duplicate", 0)
    if config.since:
        lines = [f"{stats['rows_in']} new rows against {stats['index_rows']} earlier ones: {stats['pairs']} pairs "
                 f"({stats['pairs_with_earlier_rows']} with an earlier row), removed {removed} in "
                 f"{stats['seconds']:.1f} s"]
    else:
        lines = [f"{stats['rows_in']} rows, {stats['pairs']} pairs ({stats['exact_pairs']} exact), {stats['groups']} "
                 f"groups, removed {removed} in {stats['seconds']:.1f} s"]
    recall = stats.get("recall")
    if recall and recall.get("recall") is not None:
        lines.append(f"pair recall {recall['recall']:.3f} [{recall['ci_low']:.3f}, {recall['ci_high']:.3f}] "
                     f"({recall['confidence']:.0%} CI, {recall['true_pairs']} true pairs of "
                     f"{recall['sampled_rows']} sampled rows)")
    elif recall:
        lines.append(f"pair recall unknown: the {recall['sampled_rows']} sampled rows have no true pair")
    emit(stats, as_json, lines)


def _decontaminate(source, out, against, threshold, embedding_col, id_col, as_json, other_mode) -> None:
    """`sanitize dedup SOURCE --against REF`: the decontaminate stage's search, into the run or into --out."""
    from sanitize.pipeline.stages.decontaminate import DecontaminateConfig, DecontaminateStage, decontaminate_folder

    if other_mode:
        raise ConfigError("--against searches reference sets; it does not combine with --keep-index or --since")
    config = DecontaminateConfig(against=tuple(against), threshold=threshold)
    if Path(source, "run.json").is_file():
        stats = run_stage(DecontaminateStage(config), RunFolder.open(source)).to_dict()
    elif out is None:
        raise ConfigError("--out is needed when SOURCE is not a run folder")
    else:
        stats = decontaminate_folder(source, out, config, embedding_col=embedding_col, id_col=id_col)
    lines = [f"{stats['rows_in']} rows against {len(against)} reference set(s) at cosine >= {threshold}: "
             f"removed {stats['dropped'].get('contaminated', 0)}"]
    for name, ref in stats["references"].items():
        lines.append(f"  {name}: {ref['items_found_in_corpus']} of its {ref['items']} items have a near-duplicate "
                     "in SOURCE")
    emit(stats, as_json, lines)
