"""Mergeable per-shard count tables: the only thing the audit statistics read.

A shard (one table with attribute columns and one boolean `keep:<stage>` column per stage, in pipeline order)
is reduced to counts per joint attribute cell — one row per combination of attribute labels that occurs:

    n                 rows in the cell
    evaluated:<s>     rows that stage s decided on (its keep value is not null)
    kept:<s>          rows stage s kept (keep is true)
    survived:<s>      rows no stage up to and including s removed (cumulative view)

A null keep value means "this stage did not look at the row" (e.g. dedup ran only on rows the safety filters
kept); it counts as not removed. Counts of shards add up, so `merge_counts` is a sum, and every marginal or
intersection is a sum over the joint cells. Optional keyword counts (captions mentioning each term, DALL·E 2's
table) are kept beside the cells with the same columns.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import polars as pl
import pyarrow as pa

from sanitize.audit.attributes import AttributeInfo, column_info, keyword_mentions
from sanitize.audit.specs import UNKNOWN, Lexicon
from sanitize.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

KEEP_PREFIX = "keep:"
COUNT_KINDS = ("evaluated", "kept", "survived")


def count_columns(stages: Sequence[str]) -> list[str]:
    """Names of the count columns for `stages`, in table order (after "n")."""
    return [f"{kind}:{s}" for s in stages for kind in COUNT_KINDS]


@dataclass(frozen=True)
class CountTable:
    """Counts per joint attribute cell (and per keyword) for a list of stages; add with `merge_counts`."""

    attributes: tuple[AttributeInfo, ...]
    stages: tuple[str, ...]
    cells: pl.DataFrame
    keyword_terms: tuple[str, ...] = ()
    keywords: pl.DataFrame | None = None

    @property
    def attribute_names(self) -> list[str]:
        return [a.name for a in self.attributes]

    def attribute(self, name: str) -> AttributeInfo:
        for a in self.attributes:
            if a.name == name:
                return a
        raise ConfigError(f"attribute '{name}' is not in the count table (have: {', '.join(self.attribute_names)})")

    @property
    def rows(self) -> int:
        return int(self.cells["n"].sum()) if self.cells.height else 0

    def marginal(self, names: Sequence[str]) -> pl.DataFrame:
        """Counts summed over all attributes except `names`; one row per observed combination, sorted."""
        for name in names:
            self.attribute(name)
        sums = [pl.col(c).sum() for c in ["n", *count_columns(self.stages)]]
        return self.cells.group_by(list(names)).agg(sums).sort(list(names))

    def to_json(self) -> dict:
        """A JSON-serialisable dict (write it with sanitize.io.atomic.write_json); inverse of `from_json`."""
        return {
            "attributes": [a.to_json() for a in self.attributes],
            "stages": list(self.stages),
            "cells": self.cells.to_dict(as_series=False),
            "keyword_terms": list(self.keyword_terms),
            "keywords": None if self.keywords is None else self.keywords.to_dict(as_series=False),
        }

    @classmethod
    def from_json(cls, obj: dict) -> CountTable:
        attributes = tuple(AttributeInfo.from_json(a) for a in obj["attributes"])
        stages = tuple(obj["stages"])
        schema = _cell_schema([a.name for a in attributes], stages)
        keywords = obj.get("keywords")
        return cls(
            attributes=attributes,
            stages=stages,
            cells=pl.DataFrame(obj["cells"], schema=schema),
            keyword_terms=tuple(obj.get("keyword_terms", ())),
            keywords=None if keywords is None else pl.DataFrame(keywords, schema=_cell_schema(["term"], stages)),
        )


def _cell_schema(names: Sequence[str], stages: Sequence[str]) -> dict:
    return {**{n: pl.String for n in names}, "n": pl.Int64, **{c: pl.Int64 for c in count_columns(stages)}}


def _as_polars(table: pa.Table | pl.DataFrame) -> pl.DataFrame:
    if isinstance(table, pl.DataFrame):
        return table
    if isinstance(table, pa.Table):
        return pl.from_arrow(table)
    raise DataError(f"expected a pyarrow Table or polars DataFrame, got {type(table).__name__}")


def stage_columns(table: pa.Table | pl.DataFrame) -> list[str]:
    """Stage names of the `keep:<stage>` columns of `table`, in column order (= pipeline order)."""
    names = table.column_names if isinstance(table, pa.Table) else table.columns
    return [c[len(KEEP_PREFIX) :] for c in names if c.startswith(KEEP_PREFIX)]


def _count_exprs(stages: Sequence[str]) -> list[pl.Expr]:
    exprs: list[pl.Expr] = [pl.len().cast(pl.Int64).alias("n")]
    removed_so_far = pl.lit(False)
    for s in stages:
        keep = pl.col(f"{KEEP_PREFIX}{s}")
        removed_so_far = removed_so_far | keep.not_().fill_null(False)
        exprs += [
            keep.is_not_null().sum().cast(pl.Int64).alias(f"evaluated:{s}"),
            keep.fill_null(False).sum().cast(pl.Int64).alias(f"kept:{s}"),
            removed_so_far.not_().sum().cast(pl.Int64).alias(f"survived:{s}"),
        ]
    return exprs


def count_shard(
    table: pa.Table | pl.DataFrame,
    attributes: Sequence[str | AttributeInfo],
    stages: Sequence[str] | None = None,
    keywords: Lexicon | Sequence[str] | None = None,
    caption_column: str = "caption",
    source: str = "shard",
) -> CountTable:
    """Reduce one shard to a `CountTable`.

    `table` has one string column per attribute ("unknown" or null when undetermined) and a boolean
    `keep:<stage>` column per stage; `stages` defaults to all `keep:` columns in column order. With
    `keywords` (a lexicon or a term list) captions in `caption_column` are also counted per term.
    `source` names the shard in error messages. Raises DataError for missing or mistyped columns.
    """
    df = _as_polars(table)
    infos = tuple(a if isinstance(a, AttributeInfo) else column_info(a) for a in attributes)
    names = [a.name for a in infos]
    if not names:
        raise ConfigError("count_shard: no attributes given")
    if len(set(names)) != len(names):
        raise ConfigError(f"count_shard: attribute names repeat: {names}")
    stages = tuple(stage_columns(df) if stages is None else stages)
    if not stages:
        raise DataError(f"{source}: no '{KEEP_PREFIX}<stage>' columns")
    for name in names:
        if name not in df.columns:
            raise DataError(f"{source}: attribute column '{name}' is missing")
        if df.schema[name] not in (pl.String, pl.Categorical, pl.Enum):
            raise DataError(f"{source}: attribute column '{name}' must hold strings, has {df.schema[name]}")
    for s in stages:
        col = f"{KEEP_PREFIX}{s}"
        if col not in df.columns:
            raise DataError(f"{source}: stage column '{col}' is missing")
        if df.schema[col] not in (pl.Boolean, pl.Null):
            raise DataError(f"{source}: stage column '{col}' must be boolean, has {df.schema[col]}")
    labels = [pl.col(n).cast(pl.String).fill_null(UNKNOWN).alias(n) for n in names]
    keeps = [pl.col(f"{KEEP_PREFIX}{s}").cast(pl.Boolean) for s in stages]
    slim = df.select(*labels, *keeps)
    cells = slim.group_by(names).agg(_count_exprs(stages)).sort(names)

    terms: tuple[str, ...] = ()
    keyword_counts = None
    if keywords is not None:
        terms = tuple(_keyword_terms(keywords))
        if caption_column not in df.columns:
            raise DataError(f"{source}: caption column '{caption_column}' is missing (needed for keyword counts)")
        exclude = keywords.exclude if isinstance(keywords, Lexicon) else ()
        mentions = keyword_mentions(df[caption_column], terms, exclude).alias("term")
        keyword_counts = (
            slim.select(keeps)
            .with_columns(mentions)
            .explode("term")
            .drop_nulls("term")
            .group_by("term")
            .agg(_count_exprs(stages))
            .sort("term")
        )
    return CountTable(attributes=infos, stages=stages, cells=cells, keyword_terms=terms, keywords=keyword_counts)


def _keyword_terms(keywords: Lexicon | Sequence[str]) -> list[str]:
    """The words counted in the keyword table: a lexicon's nouns and pronouns (raw word frequencies, as in the
    DALL-E 2 table), or the given words."""
    if isinstance(keywords, Lexicon):
        return [*keywords.all_terms(), *(w for words in keywords.class_pronouns() for w in words)]
    return list(keywords)


def merge_counts(tables: Iterable[CountTable]) -> CountTable:
    """Sum count tables of shards of one dataset. They must have the same attributes, stages and keyword terms."""
    tables = list(tables)
    if not tables:
        raise ConfigError("merge_counts: no count tables given")
    first = tables[0]
    for i, t in enumerate(tables[1:], start=1):
        if t.stages != first.stages:
            raise DataError(f"merge_counts: table {i} has stages {list(t.stages)}, table 0 has {list(first.stages)}")
        if [(a.name, a.method) for a in t.attributes] != [(a.name, a.method) for a in first.attributes]:
            raise DataError(
                f"merge_counts: table {i} has attributes {t.attribute_names}, table 0 has {first.attribute_names}"
            )
        if t.keyword_terms != first.keyword_terms:
            raise DataError(f"merge_counts: table {i} counts different keyword terms than table 0")
    names = first.attribute_names
    sums = [pl.col(c).sum() for c in ["n", *count_columns(first.stages)]]
    cells = pl.concat([t.cells for t in tables]).group_by(names).agg(sums).sort(names)
    keywords = None
    if first.keywords is not None:
        keywords = pl.concat([t.keywords for t in tables]).group_by("term").agg(sums).sort("term")
    return CountTable(
        attributes=first.attributes,
        stages=first.stages,
        cells=cells,
        keyword_terms=first.keyword_terms,
        keywords=keywords,
    )
