"""Run independent numeric tasks on worker threads, each with a single-threaded BLAS.

Thousands of small matrix products (one per cluster, one per batch) run faster as one product per core
than as each product split over all cores: splitting a 1000 × 1000 product costs synchronisation, and
on a shared machine a multi-threaded BLAS spins waiting for busy cores (measured on 2 cores with one
busy: 6–60 GFLOP/s with 2 BLAS threads, 50–170 with 1). numpy releases the GIL inside matrix products.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, TypeVar

from threadpoolctl import threadpool_limits

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    """CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int | None = None) -> list[R]:
    """[fn(item) for item in items], computed on `workers` threads (default: all cores), in item order.

    BLAS is limited to one thread per call for the duration, so the results of matrix products are the
    same whatever the number of workers.
    """
    workers = default_workers() if workers is None else workers
    with threadpool_limits(limits=1, user_api="blas"):
        if workers <= 1:
            return [fn(item) for item in items]
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(fn, items))


class TaskMap(Protocol):
    """How `find_duplicates` runs its independent tasks: [fn(*shared, item) for item in items], in item order.

    `shared` holds the large read-only inputs every task needs (the embedding rows, the centroids); an
    implementation may ship them to other processes once per call (or once per object) rather than once per
    task. `fn` must be a module-level function so it can be sent to another process. `workers` is a hint for
    thread pools (None: all cores). The default is `thread_map`; `sanitize.engines` provides a Ray version.
    """

    def __call__(self, fn: Callable[..., R], items: Sequence[T], shared: tuple = (),
                 workers: int | None = None) -> list[R]: ...


def thread_map(fn: Callable[..., R], items: Sequence[T], shared: tuple = (), workers: int | None = None) -> list[R]:
    """The default TaskMap: `ordered_map` of fn(*shared, item) on this process's threads."""
    return ordered_map(lambda item: fn(*shared, item), items, workers)
