"""A tiny open_clip architecture (32-d, two layers per tower, 64-pixel images) for fast, offline tests."""

from __future__ import annotations

import json

import pytest

TINY = "sanitize-tiny-clip"
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="session")
def tiny_name(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Registers the tiny config with open_clip (real open_clip code, random weights) and returns its name."""
    import open_clip

    path = tmp_path_factory.mktemp("model_configs") / f"{TINY}.json"
    path.write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(path)
    return TINY


@pytest.fixture(scope="session")
def tiny_model(tiny_name: str):
    """The tiny model with seeded random weights, on the CPU."""
    from sanitize.clip.models import load_clip

    return load_clip(tiny_name, None, device="cpu", seed=0)
