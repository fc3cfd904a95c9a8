"""The decontaminate stage: drop training rows that are near-duplicates of evaluation sets.

A model evaluated on images it was trained on reports inflated scores; DataComp ships decontamination as a separate
script. Here each reference set (`against`: clip-retrieval folders or run folders embedded with the same model as
this run) is searched exhaustively (FAISS inner-product range search over every reference row) for every row of the
run, so nothing is missed: a row whose image embedding has cosine >= `threshold` with any reference row is dropped,
its reason naming the closest one (``contaminated:coco:000123:0.9731``).

Per embedding shard it writes ``RUN/stages/decontaminate/NNNNN.parquet`` (uid, keep, reason, ref_set, ref_uid,
cosine) and ``matches/NNNNN.parquet`` (every pair above the threshold), then the marker; at the end
``reference_matches.parquet`` lists, per reference item with a match in the corpus, how many rows matched it. Cost:
rows × reference rows × dimension multiply-adds. Opt-in: add
``decontaminate`` to ``run.stages`` and name the reference sets in ``decontaminate.against``.
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from sanitize.dedup.defaults import DEFAULT_THRESHOLD
from sanitize.errors import ConfigError, DataError
from sanitize.io import atomic
from sanitize.io.embeddings import EmbeddingSource, open_embeddings
from sanitize.io.manifest import read_parquet
from sanitize.io.runfolder import RunFolder
from sanitize.pipeline.options import option, section_dict
from sanitize.pipeline.stage import ShardStats, Stage, StageContext, StageResult, stored_counts

STAGE = "decontaminate"


@dataclass(frozen=True)
class DecontaminateConfig:
    """The ``[decontaminate]`` section: evaluation sets the training rows must not repeat."""

    against: tuple[str, ...] = option((), "Reference sets (clip-retrieval or run folders of the same model) whose "
                                      "near-duplicates are dropped.", flag="--against")
    threshold: float = option(DEFAULT_THRESHOLD, "Cosine at or above which a row repeats a reference item.",
                              low=-1, high=1)


@dataclass(frozen=True)
class Reference:
    """One reference set: its name (the folder's), uids and float32 unit rows."""

    name: str
    uids: np.ndarray
    x: np.ndarray

    def index(self) -> Any:
        """A FAISS exact inner-product index over the rows (build once per process, search per shard)."""
        import faiss

        index = faiss.IndexFlatIP(self.x.shape[1])
        index.add(self.x)
        return index


class DecontaminateStage(Stage):
    """Rows that repeat an item of an evaluation set are dropped; the report says which items were found."""

    name = STAGE
    Config = DecontaminateConfig
    runs_by_default = False
    summary = "near-duplicates of evaluation sets (exhaustive search), per reference item"

    def skip_reason(self) -> str | None:
        return None if self.config.against else "no [decontaminate] against sets"

    def run(self, context: StageContext) -> StageResult:
        started = time.perf_counter()
        run, c = context.run, self.config
        if not c.against:
            raise ConfigError("decontaminate needs reference sets (--against / decontaminate.against)")
        source = open_embeddings(run.path)
        references = load_references(c.against, dim=source.read_shard(0).img_emb.shape[1] if source.n_shards else 0)
        run.begin_stage(STAGE, {**section_dict(c), "against": [str(Path(p).resolve()) for p in c.against]})
        todo = run.todo(STAGE, source.n_shards)
        context.engine.map_shards(DecontaminateWorker(run.path, c), todo)
        details = write_reference_matches(run, references, source.n_shards)
        return context.result(self, started, stored_counts(run, STAGE), details=details)


def load_references(paths: tuple[str, ...], *, dim: int) -> list[Reference]:
    """Every reference set as float32 rows, checked: names unique, `dim` wide (the run's), uids unique."""
    references = []
    for path in paths:
        name = Path(path).resolve().name
        if any(r.name == name for r in references):
            raise ConfigError(f"--against {path}: two reference sets are named {name!r}; rename one folder")
        source = open_embeddings(path)
        shards = list(source.shards())
        if not shards or sum(len(s) for s in shards) == 0:
            raise DataError(f"{path}: reference set has no embeddings")
        x = np.concatenate([np.asarray(s.img_emb, dtype=np.float32) for s in shards])
        if x.shape[1] != dim:
            raise DataError(f"{path}: reference embeddings are {x.shape[1]}-d, this run's are {dim}-d (another "
                            "model?); embed the reference set with the run's model")
        uids = np.concatenate([s.uids for s in shards]).astype(str)
        if len(set(uids.tolist())) != len(uids):
            raise DataError(f"{path}: reference uids are not unique")
        references.append(Reference(name, uids, x))
    return references


def shard_matches(x: np.ndarray, indexed: list[tuple[Reference, Any]], threshold: float
                  ) -> list[tuple[int, str, str, float]]:
    """(row, reference set, reference uid, cosine) for every pair with cosine >= `threshold`, searching each
    reference's index (`Reference.index`) exhaustively."""
    out = []
    query = np.ascontiguousarray(x, dtype=np.float32)
    radius = float(np.nextafter(np.float32(threshold), np.float32(-np.inf)))  # FAISS keeps IP > radius
    for ref, index in indexed:
        lims, cos, ids = index.range_search(query, radius)
        rows = np.repeat(np.arange(len(query)), np.diff(lims.astype(np.int64)))
        hit = cos >= threshold
        out += [(int(r), ref.name, str(u), float(c))
                for r, u, c in zip(rows[hit], ref.uids[ids[hit]], cos[hit], strict=True)]
    return out


def decision_table(uids: np.ndarray, matches: list[tuple[int, str, str, float]]) -> pa.Table:
    """uid, keep, reason (the closest reference item), ref_set, ref_uid, cosine for each row of a shard."""
    best: dict[int, tuple[str, str, float]] = {}
    for row, ref, ref_uid, cos in matches:
        if row not in best or cos > best[row][2]:
            best[row] = (ref, ref_uid, cos)
    rows = range(len(uids))
    return pa.table({
        "uid": pa.array(np.asarray(uids).tolist(), pa.string()),
        "keep": pa.array([r not in best for r in rows]),
        "reason": pa.array([f"contaminated:{best[r][0]}:{best[r][1]}:{best[r][2]:.4f}" if r in best else None
                            for r in rows], pa.string()),
        "ref_set": pa.array([best[r][0] if r in best else None for r in rows], pa.string()),
        "ref_uid": pa.array([best[r][1] if r in best else None for r in rows], pa.string()),
        "cosine": pa.array([best[r][2] if r in best else None for r in rows], pa.float32()),
    })


def decontaminate_folder(source: str | os.PathLike, out: str | os.PathLike, config: DecontaminateConfig, *,
                         embedding_col: str | None = None, id_col: str | None = None,
                         engine: Any = None) -> dict[str, Any]:
    """The stage's search for embeddings that are not a run folder (`sanitize dedup SOURCE --against REF`): per
    part of `source`, ``OUT/decisions/NNNNN.parquet`` and ``OUT/matches/NNNNN.parquet`` (a part already written is
    kept, so a rerun resumes), then ``OUT/decisions.parquet`` (every part's, in order),
    ``OUT/reference_matches.parquet`` and ``OUT/stats.json``. Returns the stats."""
    from sanitize.engines import resolve_engine
    from sanitize.io.runfolder import peak_memory_mb

    started = time.perf_counter()
    engine = resolve_engine(engine)
    if not config.against:
        raise ConfigError("--against needs at least one reference set")
    embeddings = open_embeddings(source, embedding_col=embedding_col, id_col=id_col)
    if embeddings.n_shards == 0:
        raise DataError(f"{source}: no embeddings")
    references = load_references(config.against, dim=embeddings.read_shard(0).img_emb.shape[1])
    out = Path(out)
    todo = [i for i in range(embeddings.n_shards) if not (out / "decisions" / f"{i:05d}.parquet").exists()]
    engine.map_tasks(_decontaminate_part, todo, (str(source), embedding_col, id_col, str(out), config))
    parts = [read_parquet(out / "decisions" / f"{i:05d}.parquet") for i in range(embeddings.n_shards)]
    atomic.write_parquet(out / "decisions.parquet", pa.concat_tables(parts))
    details = _reference_matches(out, references, embeddings.n_shards)
    rows = sum(p.num_rows for p in parts)
    kept = sum(int(np.count_nonzero(p["keep"].to_numpy(zero_copy_only=False))) for p in parts)
    stats = {**ShardStats(rows_in=rows, kept=kept, dropped={"contaminated": rows - kept}).to_dict(),
             "threshold": config.threshold, **details, "seconds": round(time.perf_counter() - started, 3),
             "engine": engine.name, "peak_memory_mb": round(peak_memory_mb(), 1)}
    atomic.write_json(out / "stats.json", stats)
    return stats


@functools.lru_cache(maxsize=2)
def _indexed(against: tuple[str, ...], dim: int) -> list[tuple[Reference, Any]]:
    """The reference sets with their FAISS indexes, loaded once per process (every part's task searches them)."""
    return [(ref, ref.index()) for ref in load_references(against, dim=dim)]


def _decontaminate_part(source: str, embedding_col: str | None, id_col: str | None, out: str,
                        config: DecontaminateConfig, part: int) -> None:
    """One task of `decontaminate_folder`: part `part`'s matches, then its decisions (written last)."""
    embeddings = open_embeddings(source, embedding_col=embedding_col, id_col=id_col)
    shard = embeddings.read_shard(part)
    matches = shard_matches(shard.img_emb, _indexed(config.against, shard.img_emb.shape[1]), config.threshold)
    atomic.write_parquet(Path(out) / "matches" / f"{part:05d}.parquet", pa.table({
        "uid": pa.array([str(shard.uids[m[0]]) for m in matches], pa.string()),
        "ref_set": pa.array([m[1] for m in matches], pa.string()),
        "ref_uid": pa.array([m[2] for m in matches], pa.string()),
        "cosine": pa.array([m[3] for m in matches], pa.float32())}))
    atomic.write_parquet(Path(out) / "decisions" / f"{part:05d}.parquet", decision_table(shard.uids, matches))


class DecontaminateWorker:
    """The stage's `ShardWorker`: loads the reference sets once per process, then searches one shard per call."""

    uses_gpu = False

    def __init__(self, run_path: str | os.PathLike, config: DecontaminateConfig) -> None:
        self.run = RunFolder(run_path)
        self.config = config
        self._indexed: list[tuple[Reference, Any]] | None = None
        self._source: EmbeddingSource | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_indexed": None, "_source": None}

    def setup(self) -> None:
        if self._source is None:
            self._source = open_embeddings(self.run.path)
            dim = self._source.read_shard(0).img_emb.shape[1]
            self._indexed = [(ref, ref.index()) for ref in load_references(self.config.against, dim=dim)]

    def __call__(self, index: int) -> int:
        self.setup()
        shard = self._source.read_shard(index)
        matches = shard_matches(shard.img_emb, self._indexed, self.config.threshold)
        atomic.write_parquet(self.run.stage_dir(STAGE) / "matches" / f"{index:05d}.parquet", pa.table({
            "uid": pa.array([str(shard.uids[m[0]]) for m in matches], pa.string()),
            "ref_set": pa.array([m[1] for m in matches], pa.string()),
            "ref_uid": pa.array([m[2] for m in matches], pa.string()),
            "cosine": pa.array([m[3] for m in matches], pa.float32())}))
        table = decision_table(shard.uids, matches)
        kept = int(np.count_nonzero(table["keep"].to_numpy(zero_copy_only=False)))
        per_set = {f"rows_matching:{r.name}": len({m[0] for m in matches if m[1] == r.name})
                   for r, _ in self._indexed}
        counts = ShardStats(rows_in=len(shard), kept=kept, dropped={"contaminated": len(shard) - kept},
                            other=per_set)
        self.run.write_shard(STAGE, index, table, counts.to_dict())
        return len(shard)


def write_reference_matches(run: RunFolder, references: list[Reference], n_shards: int) -> dict[str, Any]:
    """reference_matches.parquet (ref_set, ref_uid, corpus_rows, best_cosine, example_uid) from the shards' match
    files, and per reference set: its items and how many of them the corpus repeats."""
    return _reference_matches(run.stage_dir(STAGE), references, n_shards)


def _reference_matches(folder: Path, references: list[Reference], n_shards: int) -> dict[str, Any]:
    """`write_reference_matches` for the match files in `folder`/matches/, written to `folder`."""
    import polars as pl

    frames = [pl.from_arrow(read_parquet(folder / "matches" / f"{i:05d}.parquet")) for i in range(n_shards)]
    pairs = pl.concat(frames) if frames else pl.DataFrame(
        schema={"uid": pl.String, "ref_set": pl.String, "ref_uid": pl.String, "cosine": pl.Float32})
    found = (pairs.sort("cosine", "uid", descending=[True, False])
             .group_by("ref_set", "ref_uid", maintain_order=True)
             .agg(pl.len().alias("corpus_rows"), pl.col("cosine").first().alias("best_cosine"),
                  pl.col("uid").first().alias("example_uid"))
             .sort("ref_set", "ref_uid"))
    atomic.write_parquet(folder / "reference_matches.parquet", found.to_arrow())
    return {"references": {r.name: {"items": len(r.uids),
                                    "items_found_in_corpus": found.filter(pl.col("ref_set") == r.name).height}
                           for r in references}}
