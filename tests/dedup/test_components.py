"""Connected components from edges: equal to scipy's on random graphs, ids beyond 3·10⁹, chunked edges."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from sanitize.dedup.components import compact_ids, component_roots, component_roots_of_chunks


def _scipy_min_node(n, a, b):
    _, label = connected_components(coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n)), directed=False)
    first = np.full(label.max() + 1, n, dtype=np.int64)
    np.minimum.at(first, label, np.arange(n))
    return first[label]


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 60).flatmap(lambda n: st.tuples(
    st.just(n), st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=3 * n))))
def test_component_roots_equal_scipy(graph):
    n, edges = graph
    a = np.array([e[0] for e in edges], dtype=np.int64)
    b = np.array([e[1] for e in edges], dtype=np.int64)
    np.testing.assert_array_equal(component_roots(n, a, b), _scipy_min_node(n, a, b))


def test_long_chain_and_star_in_chunks():
    rng = np.random.default_rng(0)
    n = 5000
    order = rng.permutation(n)  # one path through every node in random order: the worst case for hooking
    a, b = order[:-1], order[1:]
    chunks = [(a[i:i + 700], b[i:i + 700]) for i in range(0, len(a), 700)]
    roots = component_roots_of_chunks(n, lambda: chunks)
    assert (roots == 0).all()


def test_compact_ids_beyond_three_billion():
    base = 3_100_000_000
    a = np.array([base + 7, base + 2, 5], dtype=np.int64)
    b = np.array([base + 9, base + 7, 6], dtype=np.int64)
    nodes, la, lb = compact_ids(a, b)
    np.testing.assert_array_equal(nodes[la], a)
    np.testing.assert_array_equal(nodes[lb], b)
    roots = nodes[component_roots(len(nodes), la, lb)]
    assert roots.tolist() == [5, 5, base + 2, base + 2, base + 2]
