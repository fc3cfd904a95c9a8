"""Filter audit: who each filter removed, with statistics that hold up, and weights that undo the shift.

Flow (each step a plain function; `run_audit` chains them):
    labels   attributes.zero_shot_attribute / lexicon_attribute / column_attribute  -> one string column each
    counts   counts.count_shard(shard) per shard, counts.merge_counts(all)          -> CountTable
    numbers  analysis.audit_report(counts, AuditOptions(...))                       -> dict (report.json)
    weights  reweight.weighting_plan(counts, ...), reweight.apply_weights(shard)    -> (uid, weight)
    files    report.write_report(report, out_dir)                                   -> report.json/.md/.html
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa

from sanitize.audit.analysis import AuditOptions, audit_report
from sanitize.audit.attributes import (
    AttributeInfo,
    ZeroShotLabels,
    class_embeddings,
    column_attribute,
    column_info,
    lexicon_attribute,
    lexicon_info,
    spec_info,
    zero_shot_attribute,
)
from sanitize.audit.counts import CountTable, count_shard, merge_counts
from sanitize.audit.report import render_html, render_markdown, write_report
from sanitize.audit.reweight import WeightingPlan, apply_weights, weighting_plan
from sanitize.audit.specs import (
    UNKNOWN,
    AttributeSpec,
    Lexicon,
    builtin_attribute_specs,
    builtin_lexicons,
    load_attribute_spec,
    load_lexicon,
)
from sanitize.io.atomic import write_parquet

logger = logging.getLogger(__name__)

__all__ = [
    "UNKNOWN",
    "AttributeInfo",
    "AttributeSpec",
    "AuditOptions",
    "AuditResult",
    "CountTable",
    "Lexicon",
    "WeightingPlan",
    "ZeroShotLabels",
    "apply_weights",
    "audit_report",
    "builtin_attribute_specs",
    "builtin_lexicons",
    "class_embeddings",
    "column_attribute",
    "column_info",
    "count_shard",
    "lexicon_attribute",
    "lexicon_info",
    "load_attribute_spec",
    "load_lexicon",
    "merge_counts",
    "render_html",
    "render_markdown",
    "run_audit",
    "spec_info",
    "weighting_plan",
    "write_report",
    "zero_shot_attribute",
]

Shard = pa.Table | pl.DataFrame


@dataclass(frozen=True)
class AuditResult:
    """What `run_audit` produced: the report dict, the merged counts, the weighting plan and file paths."""

    report: dict
    counts: CountTable
    plan: WeightingPlan | None
    paths: dict[str, Path]


def run_audit(
    shards: Callable[[], Iterable[Shard]] | Sequence[Shard],
    attributes: Sequence[str | AttributeInfo],
    out_dir: str | os.PathLike,
    stages: Sequence[str] | None = None,
    options: AuditOptions | None = None,
    keywords: Lexicon | Sequence[str] | None = None,
    weight_on: Sequence[str] | None = None,
    target: Mapping | None = None,
    weight_method: str | None = None,
    title: str = "Filter audit",
    counts: Sequence[CountTable] | None = None,
) -> AuditResult:
    """Audit labelled shards and write report.json/.md/.html (and weights.parquet with `weight_on`) to `out_dir`.

    `shards` is a sequence of tables or a callable returning a fresh iterable (read twice when weighting:
    once to count, once to apply weights). Each table has `uid`, the attribute columns, `keep:<stage>` columns
    and, for `keywords`, `caption`. `counts`: the shards' `count_shard` tables when the caller computed them
    already (e.g. on other workers); the shards are then read only to apply weights. Raises DataError /
    ConfigError as the steps do.
    """

    def iterate() -> Iterable[Shard]:
        return shards() if callable(shards) else shards

    if counts is None:
        counts = [
            count_shard(t, attributes, stages, keywords=keywords, source=f"shard {i}")
            for i, t in enumerate(iterate())
        ]
    counts = merge_counts(counts)
    plan = None
    if weight_on:
        plan = weighting_plan(counts, weight_on, target=target, method=weight_method)
    report = audit_report(counts, options, weighting=None if plan is None else plan.summary())
    paths = write_report(report, out_dir, title)
    if plan is not None:
        tables = [apply_weights(t, plan, source=f"shard {i}") for i, t in enumerate(iterate())]
        paths["weights"] = Path(out_dir) / "weights.parquet"
        write_parquet(paths["weights"], pa.concat_tables(tables))
    return AuditResult(report=report, counts=counts, plan=plan, paths=paths)
