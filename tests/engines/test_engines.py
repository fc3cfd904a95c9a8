"""get_engine and the local engine (no Ray needed)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from sanitize.dedup.parallel import thread_map
from sanitize.engines import LocalEngine, get_engine, resolve_engine
from sanitize.errors import ConfigError


def test_get_engine_local_and_unknown_name():
    engine = get_engine()
    assert isinstance(engine, LocalEngine) and engine.name == "local"
    assert isinstance(resolve_engine(None), LocalEngine)
    with pytest.raises(ConfigError, match="unknown engine 'spark'; use one of local, ray"):
        get_engine("spark")
    with pytest.raises(ConfigError, match="--ray-address needs --engine ray"):
        get_engine("local", address="auto")


def test_ray_missing_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'sanitize-data\[ray\]'"):
        get_engine("ray")


class CountingWorker:
    uses_gpu = False

    def __init__(self):
        self.setups = 0
        self.seen = []

    def setup(self):
        self.setups += 1

    def __call__(self, index):
        self.seen.append(index)
        return index * 10


def test_local_engine_sets_up_once_and_runs_shards_in_order():
    worker, reported = CountingWorker(), []
    with LocalEngine() as engine:
        assert engine.map_shards(worker, [2, 0, 5], progress=reported.append) == {2: 20, 0: 0, 5: 50}
        assert engine.map_shards(CountingWorker(), []) == {}
    assert worker.setups == 1 and worker.seen == [2, 0, 5] and reported == [20, 0, 50]


def shifted_sum(x, shift, item):
    return float(x[item].sum()) + shift


def test_local_map_tasks_is_thread_map_in_order():
    x = np.arange(40, dtype=np.float64).reshape(10, 4)
    items = [9, 3, 0, 7]
    expected = [shifted_sum(x, 0.5, i) for i in items]
    assert LocalEngine().map_tasks(shifted_sum, items, (x, 0.5), workers=2) == expected
    assert thread_map(shifted_sum, items, (x, 0.5), workers=1) == expected
