"""The options of one dedup search, shared by the in-memory, out-of-core and incremental paths.

One place for what each option may be (`SearchOptions` checks itself when built), for the seeds derived from the
run's seed (each random choice draws from its own stream, so clustering c gets the same seed whatever the number
of clusterings) and for the options a resumed phase must match. How the work runs (threads, an engine, a checkpoint
folder) is not an option here: it never changes a result.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass

import numpy as np

from sanitize.dedup.defaults import (
    DEFAULT_BLOCK_ROWS,
    DEFAULT_CLUSTERING_DIMS,
    DEFAULT_CLUSTERINGS,
    DEFAULT_KMEANS_ITERATIONS,
    DEFAULT_POINTS_PER_CENTROID,
    DEFAULT_RECALL_SAMPLE,
    DEFAULT_THRESHOLD,
)
from sanitize.errors import ConfigError

CLUSTERING_STREAM, RECALL_STREAM, PROJECTION_STREAM = 0, 1, 2


@dataclass(frozen=True)
class SearchOptions:
    """What `find_duplicates` and `find_duplicates_sharded` search with; see `find_duplicates` for each option.

    Built checked: raises ConfigError naming the first option out of range (the threshold first).
    """

    threshold: float = DEFAULT_THRESHOLD
    n_clusterings: int = DEFAULT_CLUSTERINGS
    n_clusters: int | None = None
    seed: int = 0
    refuse_chains: bool = False
    recall_sample: int = DEFAULT_RECALL_SAMPLE
    block_rows: int = DEFAULT_BLOCK_ROWS
    max_points_per_centroid: int = DEFAULT_POINTS_PER_CENTROID
    kmeans_iterations: int = DEFAULT_KMEANS_ITERATIONS
    clustering_dims: int | None = DEFAULT_CLUSTERING_DIMS

    def __post_init__(self) -> None:
        threshold = self.threshold
        if (
            not isinstance(threshold, numbers.Real)
            or isinstance(threshold, bool)
            or math.isnan(threshold)
            or not -1.0 <= threshold <= 1.0
        ):
            raise ConfigError(f"threshold must be a cosine in [-1, 1], got {threshold!r}")
        for name, low in (
            ("n_clusterings", 1),
            ("seed", 0),
            ("recall_sample", 0),
            ("block_rows", 1),
            ("max_points_per_centroid", 1),
            ("kmeans_iterations", 1),
        ):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
        for name in ("n_clusters", "clustering_dims"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, np.integer)) or isinstance(value, bool)
                                      or value < 1):
                raise ConfigError(f"{name} must be a positive integer or None, got {value!r}")

    def to_dict(self) -> dict:
        """JSON-ready {option: value} (plain ints and floats), in field order."""
        return {name: _plain(value) for name, value in asdict(self).items()}

    def clustering_seed(self, c: int) -> int:
        """The seed of clustering `c` (its k-means sample and FAISS's initialisation)."""
        return stream_seed(self.seed, CLUSTERING_STREAM, c)

    def projection_seed(self) -> int:
        """The seed of the projection's row sample."""
        return stream_seed(self.seed, PROJECTION_STREAM, 0)

    def recall_seed(self) -> int:
        """The seed of the recall check's row sample."""
        return stream_seed(self.seed, RECALL_STREAM, 0)


def stream_seed(seed: int, stream: int, index: int) -> int:
    """Independent seed for (stream, index) from the run's `seed`: clustering c gets the same seed whatever
    n_clusterings is."""
    return int(np.random.SeedSequence([seed, stream, index]).generate_state(1)[0] & 0x7FFFFFFF)


def _plain(value):
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (numbers.Integral, np.integer)):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return value
