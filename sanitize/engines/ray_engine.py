"""The Ray engine: shards on Ray Data actors (the model loaded once per actor), numeric tasks as Ray tasks.

Workers read and write the run folder themselves, so it must be on storage every node sees (one machine, or
a shared file system), and every node needs this package installed (`pip install 'sanitize-data[ray]'`).
A local Ray started here puts this package's folder on its workers' PYTHONPATH, so they run the same code.
Import this module only through `sanitize.engines.get_engine("ray")`, which checks that Ray is installed.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import ray

from sanitize.engines import Engine, ShardWorker
from sanitize.errors import ConfigError, DataError, MissingDependencyError, SanitizeError

logger = logging.getLogger(__name__)

R = TypeVar("R")
T = TypeVar("T")

# Tasks per CPU for map_tasks: enough to even out uneven clusters, few enough that the per-task overhead
# of Ray (milliseconds) stays small next to the work.
TASKS_PER_CPU = 4
SHARED_CACHE_SIZE = 4  # large objects kept in the object store between map_tasks calls (by identity)
PLAIN = (int, float, str, bool, type(None))
_ERRORS = {cls.__name__: cls for cls in (SanitizeError, DataError, ConfigError, MissingDependencyError)}


class RayEngine(Engine):
    """Run stages on Ray.

    `address`: None starts a local Ray with `num_cpus` CPUs (or reuses the one this process already
    initialised); "auto" (the cluster this machine belongs to), "HOST:PORT" (a head node's GCS address) or
    "ray://HOST:PORT" (Ray Client, from outside the cluster) connects to a running cluster. `actors`: actors per shard
    stage (default: one per GPU for GPU work when the cluster has GPUs, else one per CPU, at most one
    per shard). `close()` shuts down only a Ray this engine started or connected to.
    """

    name = "ray"

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None,
                 actors: int | None = None) -> None:
        if address is not None:
            check_address(address)
        if num_cpus is not None and num_cpus < 1:
            raise ConfigError(f"num_cpus must be >= 1, got {num_cpus}")
        if actors is not None and actors < 1:
            raise ConfigError(f"actors must be >= 1, got {actors}")
        self.actors = actors
        self._owns = not ray.is_initialized()
        if self._owns:
            if address is None:
                package_root = str(Path(__file__).resolve().parents[2])
                path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
                # address="local": a Ray of this process's own, even when `ray start` left a cluster on this
                # machine (ray.init() without an address would join it, and then refuse num_cpus).
                ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING,
                         runtime_env={"env_vars": {"PYTHONPATH": path}})
            else:
                try:
                    ray.init(address=address, logging_level=logging.WARNING)
                except ConnectionError as exc:
                    raise ConfigError(f"--ray-address {address}: no Ray cluster answered ({exc})") from None
        self._shared: OrderedDict[int, tuple[Any, ray.ObjectRef]] = OrderedDict()
        # Bytes this engine moved through the object store for `map_tasks`: shared values put, results returned
        # (serialized sizes, measured by pickling them), so benchmarks can show what crosses the network.
        self.transfer = {"put_bytes": 0, "returned_bytes": 0}
        self._chunk = ray.remote(num_cpus=1)(_run_chunk)
        resources = ray.cluster_resources()
        logger.info("ray engine: %s CPUs, %s GPUs", resources.get("CPU", 0), resources.get("GPU", 0))

    # -- shards on Ray Data actors ----------------------------------------------------------------------------
    def map_shards(self, worker: ShardWorker, indices: Sequence[int],
                   progress: Callable[[Any], Any] | None = None) -> dict[int, Any]:
        import ray.data

        results: dict[int, Any] = {}
        if not indices:
            return results
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0)) if worker.uses_gpu else 0
        actors = self.actors or (gpus or max(1, int(resources.get("CPU", 1))))
        actors = min(actors, len(indices))
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        items = ray.data.from_items([{"index": int(i)} for i in indices], override_num_blocks=len(indices))
        done = items.map_batches(
            _ShardActor, fn_constructor_kwargs={"worker": worker}, batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_gpus=1 if gpus else 0, num_cpus=1,
        )
        for row in done.iter_rows():
            result = json.loads(row["result"])
            if isinstance(result, dict) and "sanitize_error" in result:
                raise _ERRORS[result["sanitize_error"]](result["message"])
            results[int(row["index"])] = result
            if progress is not None:
                progress(result)
        missing = sorted(set(indices) - set(results))
        if missing:
            raise RuntimeError(f"ray engine: shards {missing[:5]} returned no result")
        return dict(sorted(results.items()))

    # -- numeric tasks ----------------------------------------------------------------------------------------
    def map_tasks(self, fn: Callable[..., R], items: Sequence[T], shared: tuple = (),
                  workers: int | None = None) -> list[R]:
        """[fn(*shared, item) ...] as Ray tasks over contiguous groups of items; results in item order.

        Each non-trivial `shared` value goes into the object store once and is reused, by identity, by
        later calls (arrays are then read zero-copy by workers on the same node): do not modify a shared
        array while the engine is open. `workers` is ignored (Ray schedules on all CPUs).
        """
        items = list(items)
        if not items:
            return []
        refs = [v if isinstance(v, PLAIN) else self._put(v) for v in shared]
        n_tasks = min(len(items), TASKS_PER_CPU * max(1, int(ray.cluster_resources().get("CPU", 1))))
        bounds = np.linspace(0, len(items), n_tasks + 1).round().astype(int)
        futures = [self._chunk.remote(fn, items[a:b], *refs) for a, b in itertools.pairwise(bounds) if b > a]
        try:
            chunks = ray.get(futures)
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, SanitizeError):  # the user's one-line message, not Ray's traceback
                raise exc.cause from None
            raise
        self.transfer["returned_bytes"] += sum(_serialized_size(chunk) for chunk in chunks)
        return [r for chunk in chunks for r in chunk]

    def _put(self, value: Any) -> ray.ObjectRef:
        key = id(value)
        if key in self._shared and self._shared[key][0] is value:
            self._shared.move_to_end(key)
            return self._shared[key][1]
        ref = ray.put(value)
        self.transfer["put_bytes"] += _serialized_size(value)
        self._shared[key] = (value, ref)  # holding `value` keeps its id from being reused
        while len(self._shared) > SHARED_CACHE_SIZE:
            self._shared.popitem(last=False)
        return ref

    def close(self) -> None:
        self._shared.clear()
        if self._owns and ray.is_initialized():
            ray.shutdown()
        self._owns = False

    def __repr__(self) -> str:
        return f"RayEngine(actors={self.actors})"


def check_address(address: str) -> None:
    """Raise ConfigError unless `address` is "auto", "HOST:PORT" or "ray://HOST:PORT" (and, for the last, unless
    Ray Client's dependencies are installed)."""
    if address == "auto":
        return
    scheme, _, rest = address.rpartition("://")
    host, colon, port = rest.rpartition(":")
    if scheme not in ("", "ray") or not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--ray-address must be 'auto', 'HOST:PORT' or 'ray://HOST:PORT', got {address!r}")
    if scheme == "ray":
        try:
            import grpc  # noqa: F401  (Ray Client talks gRPC)
        except ImportError:
            raise ConfigError("--ray-address ray://…: Ray Client needs pip install 'sanitize-data[ray]' "
                              "(ray[client])") from None


class _ShardActor:
    """A Ray Data actor: sets the worker up once, then runs it on each shard index of a batch."""

    def __init__(self, worker: ShardWorker) -> None:
        self.worker = worker
        self.worker.setup()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        indices = [int(i) for i in batch["index"]]
        results = [json.dumps(self._run(i)) for i in indices]
        return {"index": np.asarray(indices, dtype=np.int64), "result": np.asarray(results, dtype=object)}


    def _run(self, index: int) -> Any:
        # Ray Data wraps exceptions in its own; send ours back as data so the driver raises them as they are.
        try:
            return self.worker(index)
        except SanitizeError as exc:
            return {"sanitize_error": type(exc).__name__, "message": str(exc)}


def _run_chunk(fn: Callable[..., R], items: Sequence[T], *shared: Any) -> list[R]:
    """A Ray task: fn(*shared, item) for a group of items, with one BLAS thread (as the local threads run)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        return [fn(*shared, item) for item in items]


def _serialized_size(value: Any) -> int:
    """Bytes of `value` pickled (protocol 5, as Ray serializes it, give or take its framing)."""
    import pickle

    return len(pickle.dumps(value, protocol=5))
