"""The audit stage over a run folder: label each row's attributes, join every stage's decisions, run the audit.

Per manifest shard it builds one table — uid, caption, one column per attribute, ``keep:<stage>`` per finished
stage (null where the stage never saw the row) — and hands the shards to :func:`sanitize.audit.run_audit`, which
counts them shard by shard, merges the counts and writes ``RUN/audit/report.{json,md,html}`` (and
``weights.parquet`` when weighting is asked for).

Attributes are named by tokens: a built-in lexicon (``caption_gender``, ``occupations``) or zero-shot spec
(``perceived_gender``, ``age``, ``perceived_race``, ``skin_tone``), ``lexicon:PATH``, ``zero-shot:PATH``, or
``column:NAME`` for a column of the input manifest.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sanitize.engines import Engine
from sanitize.errors import ConfigError, DataError
from sanitize.io.embeddings import EmbeddingSource, open_embeddings
from sanitize.io.manifest import Manifest, read_parquet
from sanitize.io.runfolder import RunFolder
from sanitize.pipeline.options import option
from sanitize.pipeline.stage import Stage, StageContext, StageResult

if TYPE_CHECKING:  # sanitize.audit (SciPy) and polars load when the stage runs, not when its config is read
    import polars as pl
    import pyarrow as pa

    from sanitize.audit import AttributeInfo, AttributeSpec, AuditOptions, CountTable, Lexicon

logger = logging.getLogger(__name__)

STAGE = "audit"


@dataclass(frozen=True)
class AuditConfig:
    """The ``[audit]`` section: which attributes to audit the filters by, and the weights that undo the shift."""

    attributes: tuple[str, ...] = option(("caption_gender", "occupations"),
                                         "Lexicon or zero-shot names, lexicon:PATH, zero-shot:PATH or column:NAME.",
                                         flag="--attribute")
    weight_on: tuple[str, ...] = option((), "Attributes whose pre-filter distribution the weights restore.")
    target: dict[str, float] = option({}, "Target mix for weight_on instead, e.g. {young = 0.75, old = 0.25}.")
    device: str | None = option(None, "Device of the CLIP text tower (zero-shot attributes).", example="cuda")
    reference: tuple[str, ...] = option((), "Reference of removal-rate ratios, ATTRIBUTE=GROUP or ATTRIBUTE=overall "
                                        "(default: male where an attribute has it, overall for 3+ groups).",
                                        example=["caption_gender=male", "occupation=overall"])
    concepts: tuple[str, ...] = option((), "Concept-conditional views CONCEPT:ATTRIBUTE: within each value of a "
                                       "concept attribute (a lexicon of activities, settings, regions...), who was "
                                       "removed by ATTRIBUTE (default: occupation:<gender attribute> when both are "
                                       "audited).", example=["activity:caption_gender", "occupation:caption_gender"])


class AuditStage(Stage):
    """Who each filter stage removed, by attribute, with statistics, flags, a report and optional weights."""

    name = STAGE
    Config = AuditConfig
    role = "report"
    summary = "attributes per row, counts per filter stage, statistics, flags, weights, report"

    def check_plan(self, running: set[str], finished: set[str], out: str, config) -> None:
        from sanitize.pipeline.registry import stage_classes

        super().check_plan(running, finished, out, config)
        filters = [s.name for s in stage_classes() if s.role == "filter"]
        if not (set(filters) & (running | finished)):
            raise ConfigError(f"audit needs a filter stage ({' or '.join(filters)}) to audit; none is run or "
                              "finished")

    def run(self, context: StageContext) -> StageResult:
        """Audit the run's finished filter stages into RUN/audit/; see `audit_run`."""
        started = time.perf_counter()
        run, c = context.run, self.config
        encode_text = None
        if any(resolve_attribute(a).kind == "zero-shot" for a in c.attributes):
            from sanitize.pipeline.stages.embed import load_run_model

            encode_text = load_run_model(run, device=c.device).encode_text
        folder = run.path / STAGE
        run.begin_stage(STAGE, {"attributes": list(c.attributes), "weight_on": list(c.weight_on),
                                "target": dict(c.target), "reference": list(c.reference),
                                "concepts": list(c.concepts)}, role=self.role,
                       folder=folder)
        details = audit_run(run, attributes=c.attributes, encode_text=encode_text, weight_on=c.weight_on or None,
                            target=c.target or None, engine=context.engine, references=c.reference,
                            concepts=c.concepts)
        run.mark_done(STAGE, 0)
        return context.result(self, started, None, details=details, note=f"{details['flags']} flag(s)",
                              outputs={"report": details["paths"]["html"]})


@dataclass(frozen=True)
class AttributeSource:
    """One attribute to label: how (lexicon, zero-shot, column), its column name, and its spec or lexicon."""

    kind: str
    info: AttributeInfo
    spec: AttributeSpec | Lexicon | None = None


def resolve_attribute(token: str) -> AttributeSource:
    """Turn an attribute token into an AttributeSource. Raises ConfigError listing the choices when unknown."""
    from sanitize.audit import (
        builtin_attribute_specs,
        builtin_lexicons,
        column_info,
        lexicon_info,
        load_attribute_spec,
        load_lexicon,
        spec_info,
    )

    kind, _, rest = token.partition(":")
    if rest and kind == "column":
        return AttributeSource("column", column_info(rest, source=f"column:{rest}"))
    if rest and kind == "lexicon":
        lex = load_lexicon(rest)
        return AttributeSource("lexicon", lexicon_info(lex), lex)
    if rest and kind == "zero-shot":
        spec = load_attribute_spec(rest)
        return AttributeSource("zero-shot", spec_info(spec), spec)
    if token in builtin_lexicons():
        lex = load_lexicon(token)
        return AttributeSource("lexicon", lexicon_info(lex), lex)
    if token in builtin_attribute_specs():
        spec = load_attribute_spec(token)
        return AttributeSource("zero-shot", spec_info(spec), spec)
    choices = sorted([*builtin_lexicons(), *builtin_attribute_specs()])
    raise ConfigError(f"unknown attribute {token!r}; use one of {', '.join(choices)}, lexicon:PATH, "
                      "zero-shot:PATH or column:NAME")


def audit_run(
    run: RunFolder,
    *,
    attributes: Sequence[str] = AuditConfig.attributes,
    encode_text: Callable[[list[str]], np.ndarray] | None = None,
    weight_on: Sequence[str] | None = None,
    target: Mapping[str, float] | None = None,
    options: AuditOptions | None = None,
    engine: Engine,
    references: Sequence[str] = (),
    concepts: Sequence[str] = (),
) -> dict[str, Any]:
    """Audit ``run``'s finished filter stages; writes RUN/audit/ and returns the details (flags, paths, weights).

    ``encode_text`` (the CLIP text tower of the model that embedded the run) is needed for zero-shot
    attributes; without it they raise ConfigError. Stages are audited in pipeline order (a classify stage's
    categories each count as one, by name), so "all stages so far" adds them up in the order they filter.
    ``engine`` computes the per-shard count tables (`count_audit_shard`); they are merged and the statistics
    computed here, on the merged table only. Weights, when asked for, are applied here too. ``references``
    ("ATTRIBUTE=GROUP" or "ATTRIBUTE=overall") set the reference of removal-rate ratios when ``options`` is None.
    """
    from sanitize.audit import class_embeddings, run_audit

    sources = [resolve_attribute(a) for a in attributes]
    names = [s.info.name for s in sources]
    if len(set(names)) != len(names):
        raise ConfigError(f"attribute names repeat: {', '.join(names)}")
    class_emb = {}
    for s in sources:
        if s.kind == "zero-shot":
            if encode_text is None:
                raise ConfigError(f"attribute {s.info.name!r} is zero-shot and needs the run's CLIP model")
            class_emb[s.info.name] = class_embeddings(s.spec, encode_text)
    stages = in_pipeline_order(run, run.decision_sets("filter"))
    if not stages:
        raise ConfigError(f"{run.path}: no finished filter stage to audit (run classify or dedup first)")
    if options is None:
        options = _default_options(sources, references, concepts)

    def shards() -> Iterator[pl.DataFrame]:
        yield from audit_tables(run, sources, class_emb, stages)

    keywords = next((s.spec for s in sources if s.kind == "lexicon" and "gender" in s.info.name), None)
    n_shards = len(run.manifest().files)
    counts = engine.map_tasks(count_audit_shard, list(range(n_shards)),
                              (run.path, tuple(sources), class_emb, tuple(stages), keywords), workers=1)
    result = run_audit(shards, [s.info for s in sources], run.path / STAGE, stages=list(stages),
                       options=options, keywords=keywords, weight_on=list(weight_on) if weight_on else None,
                       target=target, title=f"Filter audit of {run.path.name}", counts=counts)
    details = {"stages": stages, "attributes": names, "flags": len(result.report.get("flags", [])),
               "paths": {k: str(v) for k, v in result.paths.items()}}
    if result.plan is not None:
        details["weights"] = {"on": list(weight_on), "kish_ess": result.plan.ess}
    return details


def _default_options(sources: Sequence[AttributeSource], references: Sequence[str] = (),
                     concepts: Sequence[str] = ()) -> AuditOptions:
    """The audit's options: `concepts` ("CONCEPT:ATTRIBUTE", both audited attribute names) as the
    concept-conditional views, by default occupation × gender when both are audited; `references`
    ("ATTRIBUTE=GROUP" or "ATTRIBUTE=overall") as AuditOptions.references. Raises ConfigError on a malformed
    entry or a name that is not audited."""
    from sanitize.audit import AuditOptions

    names = [s.info.name for s in sources]
    occupation = next((n for n in names if n == "occupation"), None)
    gender = next((n for n in names if "gender" in n), None)
    views = ((occupation, gender),) if occupation and gender else ()
    if concepts:
        views = tuple(_concept_view(item, names) for item in concepts)
    parsed = {}
    for item in references:
        attribute, sep, group = (part.strip() for part in item.partition("="))
        if not sep or not attribute or not group:
            raise ConfigError(f"audit reference {item!r}: expected ATTRIBUTE=GROUP or ATTRIBUTE=overall")
        parsed[attribute] = group
    return AuditOptions(concepts=views, references=parsed)


def _concept_view(item: str, names: Sequence[str]) -> tuple[str, str]:
    """("CONCEPT", "ATTRIBUTE") from "CONCEPT:ATTRIBUTE"; ConfigError unless both are audited and differ."""
    concept, sep, attribute = (part.strip() for part in item.partition(":"))
    if not sep or not concept or not attribute or concept == attribute:
        raise ConfigError(f"audit concept {item!r}: expected CONCEPT:ATTRIBUTE, two different audited attributes")
    for name in (concept, attribute):
        if name not in names:
            raise ConfigError(f"audit concept {item!r}: {name!r} is not an audited attribute ({', '.join(names)})")
    return concept, attribute


def in_pipeline_order(run: RunFolder, names: Sequence[str]) -> list[str]:
    """Decision sets `names` ordered by the registry's position of the stage that wrote each, then by name."""
    from sanitize.pipeline.registry import stage_names

    position = {stage: i for i, stage in enumerate(stage_names())}
    return sorted(names, key=lambda name: (position.get(run.owner(name), len(position)), name))


def audit_tables(run: RunFolder, sources: Sequence[AttributeSource], class_emb: dict[str, np.ndarray],
                 stages: Sequence[str]) -> Iterator[pl.DataFrame]:
    """One table per manifest shard (`audit_shard`), in shard order."""
    manifest = run.manifest()
    embeddings = open_embeddings(run.path) if class_emb else None
    for index in range(len(manifest.files)):
        yield audit_shard(run, manifest, embeddings, sources, class_emb, stages, index)


def audit_shard(run: RunFolder, manifest: Manifest, embeddings: EmbeddingSource | None,
                sources: Sequence[AttributeSource], class_emb: dict[str, np.ndarray], stages: Sequence[str],
                index: int) -> pl.DataFrame:
    """Manifest shard `index` as an audit table: uid, caption, attribute columns, keep:<stage> columns.

    `embeddings` (the run's) is needed only for zero-shot attributes. Raises ConfigError when a column:NAME
    attribute is not in the shard.
    """
    df = attribute_table(manifest, embeddings, sources, class_emb, index)
    for stage in stages:
        df = df.join(_stage_keep(run, stage, index), on="uid", how="left")
    return df


def attribute_table(manifest: Manifest, embeddings: EmbeddingSource | None, sources: Sequence[AttributeSource],
                    class_emb: dict[str, np.ndarray], index: int, raw: pa.Table | None = None) -> pl.DataFrame:
    """Manifest shard `index` as uid, caption and one column per attribute (`raw`: the shard's own columns, when
    the caller has read them already). Raises ConfigError when a column:NAME attribute is not in the shard."""
    import polars as pl

    from sanitize.audit import column_attribute, lexicon_attribute

    base = manifest.read_shard(index).table
    df = pl.DataFrame({"uid": base["uid"].to_pylist(), "caption": base["caption"].to_pylist()},
                      schema={"uid": pl.String, "caption": pl.String})
    if raw is None and any(s.kind == "column" for s in sources):
        raw = manifest.read_raw_shard(index)
    for s in sources:
        if s.kind == "lexicon":
            labels = lexicon_attribute(df["caption"], s.spec)
        elif s.kind == "column":
            if s.info.name not in raw.column_names:
                raise ConfigError(f"{manifest.files[index]}: column {s.info.name!r} (attribute column:"
                                  f"{s.info.name}) not found")
            labels = column_attribute(raw[s.info.name], s.info.name)
        else:
            labels = _zero_shot_labels(df["uid"], embeddings, index, s.spec, class_emb[s.info.name])
        df = df.with_columns(pl.Series(s.info.name, labels, dtype=pl.String))
    return df


@dataclass(frozen=True)
class ExternalFilter:
    """A filter run elsewhere, audited as a stage: `name` (its label in the report) and `rule`, either a SQL
    condition on the manifest's own columns that is true for kept rows (``punsafe < 0.1``; polars' SQL, never
    Python eval) or, with `column`, a boolean column that is true for kept rows. A null result (a null or NaN
    score) means the filter did not decide that row: it counts as not evaluated, like a row a stage never saw."""

    name: str
    rule: str
    column: bool = False

    def keep(self, raw: pl.DataFrame, uids: pl.Series, where: str) -> pl.Series:
        """The keep column of one shard (`raw`: the manifest shard's own columns). ConfigError for a condition
        that does not parse, DataError for a missing or non-boolean column (naming `where`)."""
        import polars as pl

        if self.column:
            if self.rule not in raw.columns:
                raise DataError(f"{where}: --keep-col column {self.rule!r} not found")
            if raw[self.rule].dtype != pl.Boolean:
                raise DataError(f"{where}: --keep-col column {self.rule!r} is {raw[self.rule].dtype}, not boolean")
            return raw[self.rule]
        try:
            kept = raw.select(pl.sql_expr(self.rule).alias("keep"))["keep"]
        except pl.exceptions.ColumnNotFoundError as exc:
            raise DataError(f"{where}: --filter {self.rule!r}: {str(exc).splitlines()[0]}") from None
        except (pl.exceptions.SQLInterfaceError, pl.exceptions.SQLSyntaxError, pl.exceptions.InvalidOperationError,
                pl.exceptions.ComputeError) as exc:
            raise ConfigError(f"--filter {self.rule!r}: not a condition on the manifest's columns "
                              f"({str(exc).splitlines()[0]})") from None
        if kept.dtype != pl.Boolean:
            raise ConfigError(f"--filter {self.rule!r} gives {kept.dtype} values, not true/false")
        return kept


@dataclass(frozen=True)
class KeptIn:
    """A filter known by its result: the rows whose uid is in `after` (the manifest the filter wrote) were kept."""

    name: str
    after: frozenset[str]

    @classmethod
    def of(cls, before: Manifest, after: Manifest) -> KeptIn:
        """The filter that turned `before` into `after`, read with the same options. DataError naming some uids
        when `after` holds rows that `before` does not."""
        after.check_unique_uids()  # a uid twice in 'after' would make the kept count a guess
        kept = frozenset(uid for shard in after.shards() for uid in shard.table["uid"].to_pylist())
        extra = kept - frozenset(uid for shard in before.shards() for uid in shard.table["uid"].to_pylist())
        if extra:
            shown = ", ".join(sorted(extra)[:5])
            raise DataError(f"{after.spec.path}: {len(extra)} rows are not in {before.spec.path}, e.g. {shown}; "
                            "an 'after' manifest must be a subset of the 'before' one")
        return cls(f"kept in {Path(after.spec.path).name}", kept)

    def keep(self, raw: pl.DataFrame, uids: pl.Series, where: str) -> pl.Series:
        """Whether each row's uid is in `after` (a set lookup per row: the work per shard does not grow with N)."""
        import polars as pl

        return pl.Series([uid in self.after for uid in uids.to_list()], dtype=pl.Boolean)


def audit_manifest(manifest: Manifest, filters: Sequence[ExternalFilter | KeptIn], out: str | os.PathLike, *,
                   attributes: Sequence[str] = AuditConfig.attributes, weight_on: Sequence[str] | None = None,
                   target: Mapping[str, float] | None = None, references: Sequence[str] = (),
                   concepts: Sequence[str] = (), embeddings: EmbeddingSource | None = None,
                   encode_text: Callable[[list[str]], np.ndarray] | None = None) -> dict[str, Any]:
    """Audit filters run outside this tool (LAION's punsafe cut, a vendor's score, a keyword list) on `manifest`:
    each of `filters` is a stage, in the given order; the report, flags and weights are those of `audit_run`,
    written to `out`. Zero-shot attributes need `embeddings` of the same rows (joined by uid; a row without one is
    unknown) and `encode_text`, the text tower of the model that made them (see `ZeroShotLabels`).
    `references` ("ATTRIBUTE=GROUP" or "ATTRIBUTE=overall") set the reference of removal-rate ratios; `concepts`
    ("CONCEPT:ATTRIBUTE") the concept-conditional views. Returns the details (stages, attributes, flags, paths,
    weights)."""
    import polars as pl

    from sanitize.audit import run_audit

    if not filters:
        raise ConfigError("nothing to audit: give --filter CONDITION, --keep-col COLUMN or --after MANIFEST (or a "
                          "run folder)")
    names = [f.name for f in filters]
    if len(set(names)) != len(names):
        raise ConfigError(f"filters repeat: {', '.join(names)}")
    manifest.check_unique_uids()  # rows are joined by uid (with 'after', embeddings): each must be one row
    sources = [resolve_attribute(a) for a in attributes]
    zero_shot = [s for s in sources if s.kind == "zero-shot"]
    if zero_shot and (embeddings is None or encode_text is None):
        raise ConfigError(f"attribute {zero_shot[0].info.name!r} is zero-shot: give --embeddings (a run folder, or "
                          "a clip-retrieval folder with --model) of the manifest's rows")
    labels = ZeroShotLabels(embeddings, zero_shot, encode_text, len(manifest.files)) if zero_shot else None
    plain = [s for s in sources if s.kind != "zero-shot"]

    def shards() -> Iterator[pl.DataFrame]:
        for index in range(len(manifest.files)):
            raw = manifest.read_raw_shard(index)
            table = attribute_table(manifest, None, plain, {}, index, raw=raw)
            if labels is not None:
                table = labels.add_to(table, index).select("uid", "caption", *[s.info.name for s in sources])
            # A NaN score is a missing score: the filter did not decide that row (like a null).
            frame = pl.from_arrow(raw).with_columns(pl.col(pl.Float32, pl.Float64).fill_nan(None))
            where = str(manifest.files[index])
            yield table.with_columns(*(f.keep(frame, table["uid"], where).alias(f"keep:{f.name}") for f in filters))

    keywords = next((s.spec for s in sources if s.kind == "lexicon" and "gender" in s.info.name), None)
    options = _default_options(sources, references, concepts)
    result = run_audit(shards, [s.info for s in sources], out, stages=names, options=options, keywords=keywords,
                       weight_on=list(weight_on) if weight_on else None, target=target,
                       title=f"Filter audit of {manifest.spec.path}")
    rows = result.report["meta"]["rows"]
    details = {"stages": names, "attributes": [s.info.name for s in sources],
               "flags": len(result.report.get("flags", [])), "paths": {k: str(v) for k, v in result.paths.items()},
               # rows a filter left undecided (a null keep value, a null or NaN score): not evaluated by it
               "undecided": {st["stage"]: rows - st["evaluated"] for st in result.report["stages"]}}
    if result.plan is not None:
        details["weights"] = {"on": list(weight_on), "kish_ess": result.plan.ess}
    return details


def count_audit_shard(run_path: str | os.PathLike, sources: Sequence[AttributeSource],
                      class_emb: dict[str, np.ndarray], stages: Sequence[str], keywords: Lexicon | None,
                      index: int) -> CountTable:
    """The count table of manifest shard `index` of the run at `run_path` (`audit_shard`, then `count_shard`).

    The per-shard part of the audit, the same for every engine (each call opens the run itself, so it can
    run in another process when the run folder is on storage that process can reach).
    """
    from sanitize.audit import count_shard

    run = RunFolder.open(run_path)
    embeddings = open_embeddings(run.path) if class_emb else None
    table = audit_shard(run, run.manifest(), embeddings, sources, class_emb, stages, index)
    return count_shard(table, [s.info for s in sources], stages, keywords=keywords, source=f"shard {index}")


class ZeroShotLabels:
    """Zero-shot attribute labels of a manifest's rows from embeddings of the same rows, joined by uid.

    When the embeddings have one shard per manifest shard (what `sanitize embed` writes), shard i is labelled when
    manifest shard i is read: memory of one shard. Otherwise every row's labels are computed once, up front, and
    held as (uid, label per attribute): about 50 bytes per row on the driver, stated in the README.
    """

    def __init__(self, embeddings: EmbeddingSource, sources: Sequence[AttributeSource],
                 encode_text: Callable[[list[str]], np.ndarray], n_manifest_shards: int) -> None:
        from sanitize.audit import class_embeddings

        self.embeddings = embeddings
        self.sources = list(sources)
        self.class_emb = {s.info.name: class_embeddings(s.spec, encode_text) for s in self.sources}
        self.aligned = embeddings.n_shards == n_manifest_shards
        self._all = None if self.aligned else self._labels(range(embeddings.n_shards))

    def _labels(self, shards: Iterable[int]) -> pl.DataFrame:
        """uid and one label column per attribute for the embedding shards `shards`."""
        import polars as pl

        from sanitize.audit import zero_shot_attribute

        frames = []
        for index in shards:
            shard = self.embeddings.read_shard(index)
            x = np.asarray(shard.img_emb, np.float32)
            width = next(iter(self.class_emb.values())).shape[1]
            if x.shape[1] != width:
                raise DataError(f"{self.embeddings.path}: {x.shape[1]}-d embeddings, but the model's text tower gives "
                                f"{width}-d: the embeddings were made by another model")
            frames.append(pl.DataFrame({"uid": [str(u) for u in shard.uids], **{
                s.info.name: list(zero_shot_attribute(x, self.class_emb[s.info.name], s.spec).labels)
                for s in self.sources}}, schema={"uid": pl.String, **{s.info.name: pl.String for s in self.sources}}))
        return pl.concat(frames) if frames else pl.DataFrame(
            schema={"uid": pl.String, **{s.info.name: pl.String for s in self.sources}})

    def add_to(self, table: pl.DataFrame, index: int) -> pl.DataFrame:
        """`table` (manifest shard `index`, with uid) with one column per zero-shot attribute; rows without an
        embedding are unknown."""
        import polars as pl

        from sanitize.audit.specs import UNKNOWN

        known = self._labels([index]) if self.aligned and index < self.embeddings.n_shards else self._all
        if known is None:
            known = self._labels([])
        joined = table.join(known, on="uid", how="left", maintain_order="left")
        return joined.with_columns(pl.col(s.info.name).fill_null(UNKNOWN) for s in self.sources)


def _zero_shot_labels(uids: pl.Series, embeddings, index: int, spec: AttributeSpec, class_emb: np.ndarray
                      ) -> pl.Series:
    """Zero-shot labels for the rows of one shard; rows without an embedding are unknown."""
    import polars as pl

    from sanitize.audit import zero_shot_attribute
    from sanitize.audit.specs import UNKNOWN

    shard = embeddings.read_shard(index) if index < embeddings.n_shards else None
    if shard is None or len(shard) == 0:
        return pl.Series([UNKNOWN] * len(uids))
    labels = zero_shot_attribute(np.asarray(shard.img_emb, np.float32), class_emb, spec).labels
    known = pl.DataFrame({"uid": shard.uids.tolist(), "label": list(labels)},
                         schema={"uid": pl.String, "label": pl.String})
    joined = pl.DataFrame({"uid": uids}).join(known, on="uid", how="left", maintain_order="left")
    return joined["label"].fill_null(UNKNOWN)


def _stage_keep(run: RunFolder, stage: str, index: int) -> pl.DataFrame:
    """uid → keep:<stage> for one shard of a stage (empty when the stage has no such shard)."""
    import polars as pl

    column = f"keep:{stage}"
    path = run.shard_path(stage, index)
    if not run.is_done(stage, index):
        return pl.DataFrame(schema={"uid": pl.String, column: pl.Boolean})
    table = read_parquet(path, columns=["uid", "keep"])
    return pl.from_arrow(table).rename({"keep": column})
