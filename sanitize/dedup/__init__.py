"""Near-duplicate removal by the union of several spherical k-means clusterings.

`find_duplicates(x, threshold=0.95, n_clusterings=5)` is the in-memory entry point, and
`find_duplicates_sharded(rows, workdir)` the same algorithm as phases over files for data larger than memory
(sharded, with shards/scan/buckets/components); the modules hold their pure parts:
vectors (checks, unit rows), exact (byte/hash-equal rows), clustering (FAISS k-means on a PCA subspace),
pairs (blockwise search inside clusters), groups (components and keep policy), recall (exact check on a
sample), checkpoint (resume per clustering), parallel (worker threads with single-threaded BLAS), options (the
search options both entry points share: checks, derived seeds), clock (seconds per phase), defaults (the default
options, importable without FAISS).

The names below are imported from their module on first use, so `import sanitize.dedup.defaults` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> the module of this package that defines it
_EXPORTS = {
    "DEFAULT_CLUSTERINGS": "defaults",
    "DEFAULT_RECALL_SAMPLE": "defaults",
    "DEFAULT_THRESHOLD": "defaults",
    "DedupResult": "run",
    "GroupDecisions": "groups",
    "RecallEstimate": "recall",
    "SearchOptions": "options",
    "UnitRows": "vectors",
    "assign_clusters": "clustering",
    "checked_unit_rows": "vectors",
    "confirm_pairs": "pairs",
    "decide_groups": "groups",
    "default_n_clusters": "clustering",
    "exact_representatives": "exact",
    "find_duplicates": "run",
    "find_duplicates_sharded": "sharded",
    "fit_projection": "clustering",
    "keep_priority": "groups",
    "pair_cosines": "vectors",
    "recall_from_sample": "recall",
    "sampled_pair_recall": "recall",
    "train_centroids": "clustering",
    "true_pairs_of_sample": "recall",
    "within_cluster_candidates": "pairs",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    """`sanitize.dedup.<name>`: imported from the submodule that defines it (AttributeError for other names)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
