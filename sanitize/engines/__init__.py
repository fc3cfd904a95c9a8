"""Engines: where a stage's per-shard and per-task work runs. The local engine (default) or Ray (an extra).

A stage never branches on the engine. It describes its work in two shapes, and the engine runs them:

- `map_shards(worker, indices)`: a `ShardWorker` is a small picklable object that loads its heavy state
  (a CLIP model, the classifiers) in `setup()` and then handles one shard per call, writing that shard's
  files and completion marker itself. Locally: `setup()` once, then the shards in order. Ray: a Ray Data
  `map_batches` over the shard indices with one worker per actor, so the model loads once per actor.
- `map_tasks(fn, items, shared)`: [fn(*shared, item) for item in items], in item order (the dedup
  `TaskMap`). Locally: threads. Ray: the `shared` arrays go into the object store once, and tasks run over
  contiguous groups of items.

Both engines call the same functions on the same inputs, so the outputs are the same files.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from sanitize.errors import ConfigError

logger = logging.getLogger(__name__)

R = TypeVar("R")
T = TypeVar("T")

ENGINES = ("local", "ray")
RAY_HINT = "engine 'ray' needs Ray: pip install 'sanitize-data[ray]'"


class ShardWorker(Protocol):
    """The per-shard work of a stage, as one object an engine can copy to another process.

    `uses_gpu`: whether a GPU speeds it up (the Ray engine then gives each actor one when there are GPUs).
    `setup()` loads what every shard needs and is called once per process before the first shard;
    `__call__(index)` processes shard `index` (writes its files, then its marker) and returns a small
    JSON-ready value (e.g. the number of rows).
    """

    uses_gpu: bool

    def setup(self) -> None: ...

    def __call__(self, index: int) -> Any: ...


class Engine:
    """Runs a stage's work. Subclasses: `LocalEngine`, `sanitize.engines.ray_engine.RayEngine`.

    Use as a context manager, or call `close()` when done.
    """

    name: str = "engine"

    def map_shards(self, worker: ShardWorker, indices: Sequence[int],
                   progress: Callable[[Any], Any] | None = None) -> dict[int, Any]:
        """Run `worker` on each shard of `indices`; returns {index: result}. `progress(result)` as shards finish."""
        raise NotImplementedError

    def map_tasks(self, fn: Callable[..., R], items: Sequence[T], shared: tuple = (),
                  workers: int | None = None) -> list[R]:
        """[fn(*shared, item) for item in items], in item order (a `sanitize.dedup.parallel.TaskMap`)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the engine started (nothing for the local engine)."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class LocalEngine(Engine):
    """This process: shards one after another, tasks on threads (`thread_map`)."""

    name = "local"

    def map_shards(self, worker: ShardWorker, indices: Sequence[int],
                   progress: Callable[[Any], Any] | None = None) -> dict[int, Any]:
        results: dict[int, Any] = {}
        if not indices:
            return results
        worker.setup()
        for index in indices:
            results[index] = worker(index)
            if progress is not None:
                progress(results[index])
        return results

    def map_tasks(self, fn: Callable[..., R], items: Sequence[T], shared: tuple = (),
                  workers: int | None = None) -> list[R]:
        from sanitize.dedup.parallel import thread_map  # not at import: sanitize.dedup loads FAISS

        return thread_map(fn, items, shared, workers)


def get_engine(name: str = "local", *, address: str | None = None, num_cpus: int | None = None) -> Engine:
    """The engine called `name`: "local" (default) or "ray".

    For "ray", `address` None starts a local Ray with `num_cpus` CPUs (or reuses one already initialised in
    this process); "auto" or "ray://HOST:PORT" connects to a running cluster. Raises ConfigError for an
    unknown name, for Ray options given to the local engine, and when Ray is not installed (with the
    install hint).
    """
    if name == "local":
        if address is not None:
            raise ConfigError("--ray-address needs --engine ray")
        return LocalEngine()
    if name == "ray":
        try:
            import ray  # noqa: F401  (only to check it is installed)
        except ImportError:
            raise ConfigError(RAY_HINT) from None
        from sanitize.engines.ray_engine import RayEngine

        return RayEngine(address=address, num_cpus=num_cpus)
    raise ConfigError(f"unknown engine {name!r}; use one of {', '.join(ENGINES)}")


def resolve_engine(engine: Engine | None) -> Engine:
    """`engine`, or a LocalEngine when None (what a stage called without an engine uses)."""
    return LocalEngine() if engine is None else engine
