"""Connected components of a graph given only by its edges: vectorised union-find on compact node ids.

Duplicate pairs touch a small share of the rows, so the graph is relabelled onto the rows that occur in an
edge (`compact_ids`) and solved there; nothing grows with the number of rows that have no duplicate. The
solver hooks the larger of two roots under the smaller one for every edge at once, then halves paths until
every node points at its root, and repeats until no edge joins two roots (the parallel union-find of
Shiloach and Vishkin, in numpy). Edges may come in chunks (`edge_chunks`), so an edge list read from files
need not be concatenated; each round reads every chunk once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np


def compact_ids(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Relabel the endpoints of edges (a[i], b[i]) (any int64 ids, e.g. beyond 3·10⁹) onto 0..m-1.

    Returns (nodes, a_local, b_local): `nodes` the sorted distinct ids (int64), and each endpoint's position in
    it, so nodes[a_local] == a. Compact ids keep the order of the original ids.
    """
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    nodes = np.unique(np.concatenate([a, b]))
    return nodes, np.searchsorted(nodes, a), np.searchsorted(nodes, b)


def component_roots(n_nodes: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For each node 0..n_nodes-1, the smallest node of its connected component (edges a[i]–b[i]), int64."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    return component_roots_of_chunks(n_nodes, lambda: [(a, b)])


def component_roots_of_chunks(n_nodes: int, edge_chunks: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]
                              ) -> np.ndarray:
    """`component_roots` over edges given as chunks: `edge_chunks()` yields (a, b) arrays and may be called
    once per round (e.g. to read them from files again). Memory: the parent array plus one chunk."""
    parent = np.arange(n_nodes, dtype=np.int64)
    while True:
        hooked = False
        for a, b in edge_chunks():
            ra, rb = parent[a], parent[b]
            low, high = np.minimum(ra, rb), np.maximum(ra, rb)
            joins = low != high
            if joins.any():
                # Every `high` is a root here; hooking it under a smaller node never makes a cycle.
                np.minimum.at(parent, high[joins], low[joins])
                hooked = True
                _compress(parent)
        if not hooked:
            return parent


def _compress(parent: np.ndarray) -> None:
    """Point every node at its root, in place (pointer jumping: halves every path per step)."""
    while True:
        grand = parent[parent]
        if np.array_equal(grand, parent):
            return
        parent[:] = grand
