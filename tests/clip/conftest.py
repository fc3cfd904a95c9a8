"""One demo run with the shipped demo CLIP, shared by the tests of meaning that need a whole pipeline run."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """`sanitize demo` as a fresh clone runs it (1,200 rows, seed 0, the packaged trained weights), in process:
    (demo folder, summary). ~15 s."""
    from sanitize.demo.run import run_demo

    out = tmp_path_factory.mktemp("demo")
    return out, run_demo(out, n_rows=1200, workers=0)
