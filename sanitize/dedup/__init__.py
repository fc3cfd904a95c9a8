"""Near-duplicate removal by the union of several spherical k-means clusterings.

`find_duplicates(x, threshold=0.95, n_clusterings=5)` is the entry point; the modules hold its pure parts:
vectors (checks, unit rows), exact (byte/hash-equal rows), clustering (FAISS k-means on a PCA subspace),
pairs (blockwise search inside clusters), groups (components and keep policy), recall (exact check on a
sample), checkpoint (resume per clustering), parallel (worker threads with single-threaded BLAS).
"""

from __future__ import annotations

from sanitize.dedup.clustering import assign_clusters, default_n_clusters, fit_projection, train_centroids
from sanitize.dedup.exact import exact_representatives
from sanitize.dedup.groups import GroupDecisions, decide_groups, keep_priority
from sanitize.dedup.pairs import confirm_pairs, within_cluster_candidates
from sanitize.dedup.recall import RecallEstimate, recall_from_sample, sampled_pair_recall, true_pairs_of_sample
from sanitize.dedup.run import (
    DEFAULT_CLUSTERINGS,
    DEFAULT_RECALL_SAMPLE,
    DEFAULT_THRESHOLD,
    DedupResult,
    find_duplicates,
)
from sanitize.dedup.vectors import UnitRows, checked_unit_rows, pair_cosines

__all__ = [
    "DEFAULT_CLUSTERINGS",
    "DEFAULT_RECALL_SAMPLE",
    "DEFAULT_THRESHOLD",
    "DedupResult",
    "GroupDecisions",
    "RecallEstimate",
    "UnitRows",
    "assign_clusters",
    "checked_unit_rows",
    "confirm_pairs",
    "decide_groups",
    "default_n_clusters",
    "exact_representatives",
    "find_duplicates",
    "fit_projection",
    "keep_priority",
    "pair_cosines",
    "recall_from_sample",
    "sampled_pair_recall",
    "train_centroids",
    "true_pairs_of_sample",
    "within_cluster_candidates",
]
