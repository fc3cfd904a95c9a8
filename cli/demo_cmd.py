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
@click.option("--pretrained", default=None, metavar="PATH|none",
              help="Weights of the demo model: a checkpoint file, or 'none' for random weights (tests only). "
                   "Default: the trained weights shipped with the package.")
@json_option
def demo(out, rows, seed, workers, engine, pretrained, as_json):
    from tqdm import tqdm

    from sanitize.demo.run import run_demo  # the labeling workflow (scikit-learn): imported to run, not for --help

    bars: dict[str, tqdm] = {}

    def progress(stage: str, n: int) -> None:
        if stage not in bars:
            bars[stage] = tqdm(total=rows, desc=stage, unit="row", disable=as_json, leave=False)
        bars[stage].update(n)

    summary = run_demo(out, n_rows=rows, seed=seed, workers=workers, engine=engine, pretrained=pretrained,
                       progress=progress)
    for bar in bars.values():
        bar.close()
    emit(summary, as_json, [*promise_lines(summary), "", *format_table(summary), "",
                            f"audit report: {summary['totals']['report']}",
                            f"rerun or resume: sanitize run {summary['sample']}/shards --config {summary['config']} "
                            f"--out {summary['run']}"])


def promise_lines(summary: dict) -> list[str]:
    """Each promise of the pipeline with its number on the demo's planted truth: the audit's answer to the
    planted question first, then each classifier, dedup, and the rows removed."""
    answer = summary["women_vs_men"]
    level = f"{answer['confidence']:.0%} intervals" if answer["confidence"] else "intervals"
    lines = [f"Did the filters remove rows about women more often than rows about men? (the sample plants it: its "
             f"motifs are drawn more often in rows whose caption is about women; {level})"]
    rows = [r for r in answer["stages"] if "female" in r and "male" in r]
    cumulative = [r for r in rows if r["view"] == "cumulative"]
    for row in [r for r in rows if r["view"] == "stage"] + cumulative[-1:]:
        where = row["stage"] if row["view"] == "stage" else "all stages"
        lines.append(f"  {where:<10} removes women's rows {_rate(row['female'])}, men's {_rate(row['male'])}")
    if answer["shares"]:
        women, men = answer["shares"].get("female"), answer["shares"].get("male")
        if women and men:
            lines.append(f"  weights restore the shares of kept rows: women {women['kept']:.1%} -> "
                         f"{women['weighted']:.1%} (before the filters {women['before']:.1%}), men {men['kept']:.1%} "
                         f"-> {men['weighted']:.1%} (before {men['before']:.1%})")
    truth = summary["versus_truth"]
    for name, c in summary["categories"].items():
        planted = truth["classify"].get(name, {})
        versus = (f"recall {planted['recall']:.1%} and precision {planted['precision']:.1%} against the "
                  f"{planted['planted']} planted rows" if planted.get("recall") is not None
                  and planted.get("precision") is not None else "no planted row scored")
        certificate = (f"recall >= {c['target_recall']:.0%} certified at {c['confidence']:.0%} (lower bound "
                       f"{c['recall_lower_bound']:.3f} from {c['audit_positives']} audit positives)" if c["certified"]
                       else f"NOT certified for recall {c['target_recall']:.0%} at {c['confidence']:.0%}: "
                       f"{c['more_labels_needed']} more random-audit labels needed")
        lines.append(f"classify {name}: removes {c['removed']} rows ({c['removal_rate']:.1%}), {versus}; "
                     f"{certificate}")
    dedup = truth["dedup"]
    share = dedup["planted_pairs_found"] / dedup["planted_pairs"] if dedup["planted_pairs"] else float("nan")
    lines.append(f"dedup: {dedup['planted_pairs_found']} of the {dedup['planted_pairs']} planted near-duplicate "
                 f"pairs found ({share:.1%}), {dedup['pairs_found']} pairs in all")
    totals = summary["totals"]
    lines.append(f"rows: {summary['rows']} in, {totals['kept']} kept, {summary['rows'] - totals['kept']} removed "
                 f"(by reason, a row counted once per reason: {_by_reason(totals['removed_by_reason'])})")
    return lines


def _rate(group: dict) -> str:
    low, high = group["ci"]
    interval = f"[{low:.1%}, {high:.1%}]" if low is not None and high is not None else "[n/a]"
    return f"{group['removal_rate']:.1%} {interval} of {group['before']}"


def _by_reason(removed: dict[str, int]) -> str:
    broken = sum(n for reason, n in removed.items() if reason.startswith("embed:"))
    others = [f"{n} {reason}" for reason, n in removed.items() if not reason.startswith("embed:")]
    return ", ".join([f"{broken} broken images", *others] if broken else others)
