"""`sanitize dedup SOURCE`: near-duplicates by the union of several k-means clusterings, with its own recall."""

from __future__ import annotations

import click

from sanitize.pipeline.stages.dedup import run_dedup_stage
from sanitize_cli.main import cli, emit
from sanitize_cli.options import json_option


@cli.command()
@click.argument("source", type=click.Path(exists=True))
@click.option("--out", type=click.Path(file_okay=False), help="Output folder (required unless SOURCE is a run).")
@click.option("--threshold", default=0.95, show_default=True, type=click.FloatRange(-1, 1),
              help="Cosine at or above which two rows are near-duplicates.")
@click.option("--clusterings", default=5, show_default=True, type=click.IntRange(min=1),
              help="Independent k-means clusterings whose pairs are united (1 = a SemDeDup-style pass).")
@click.option("--clusters", type=click.IntRange(min=1), help="Clusters per clustering (default: from N).")
@click.option("--keep-by", help="Column whose largest (or smallest, --keep min) value is kept in each group.")
@click.option("--keep", type=click.Choice(["max", "min"]), default="max", show_default=True)
@click.option("--refuse-chains", is_flag=True, help="Remove only rows within threshold of the kept row.")
@click.option("--hash-col", default="sha256", show_default=True, help="Equal values are exact duplicates.")
@click.option("--require-normalized", is_flag=True, help="Refuse rows that are not L2-normalised.")
@click.option("--recall-sample", default=1000, show_default=True, type=click.IntRange(min=0),
              help="Rows searched exhaustively to estimate pair recall (0: skip).")
@click.option("--embedding-col", help="Embedding column of a parquet SOURCE.")
@click.option("--id-col", help="Id column of a parquet SOURCE.")
@click.option("--seed", default=0, show_default=True)
@json_option
def dedup(source, out, threshold, clusterings, clusters, keep_by, keep, refuse_chains, hash_col, require_normalized,
          recall_sample, embedding_col, id_col, seed, as_json):
    """Remove near-duplicates in SOURCE (run folder, clip-retrieval folder, parquet, or .npy)."""

    def progress(phase: str, done: int, total: int) -> None:
        if not as_json:
            click.echo(f"  {phase} {done}/{total}", err=True)

    stats = run_dedup_stage(source, out=out, threshold=threshold, n_clusterings=clusterings, n_clusters=clusters,
                            seed=seed, keep_by=keep_by, keep=keep, refuse_chains=refuse_chains, hash_col=hash_col,
                            require_normalized=require_normalized, recall_sample=recall_sample,
                            embedding_col=embedding_col, id_col=id_col, progress=progress)
    lines = [f"{stats['rows']} rows, {stats['pairs']} pairs ({stats['exact_pairs']} exact), {stats['groups']} groups, "
             f"removed {stats['removed']} in {stats['seconds']['total']:.1f} s"]
    recall = stats.get("recall")
    if recall and recall.get("recall") is not None:
        lines.append(f"pair recall {recall['recall']:.3f} [{recall['ci_low']:.3f}, {recall['ci_high']:.3f}] "
                     f"({recall['confidence']:.0%} CI, {recall['true_pairs']} true pairs of "
                     f"{recall['sampled_rows']} sampled rows)")
    elif recall:
        lines.append(f"pair recall unknown: the {recall['sampled_rows']} sampled rows have no true pair")
    emit(stats, as_json, lines)
