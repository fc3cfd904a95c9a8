"""Batch size by GPU memory: the search over sizes, and the probe's trials on a model that runs out of memory."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sanitize.clip.batch_size import gpu_batch_size, largest_fitting
from sanitize.errors import ConfigError


@given(limit=st.integers(1, 5000), cap=st.integers(0, 5100))
def test_the_largest_size_that_fits_in_a_few_trials(limit, cap):
    tried = []

    def fits(n):
        tried.append(n)
        return n <= cap

    assert largest_fitting(fits, limit) == min(cap, limit)
    assert all(1 <= n <= limit for n in tried)
    assert len(tried) <= 2 * math.ceil(math.log2(limit)) + 2


def test_a_limit_below_one_is_refused():
    with pytest.raises(ConfigError, match="limit must be >= 1, got 0"):
        largest_fitting(lambda n: True, 0)


class _SmallGpu:
    """Stands in for a ClipModel on a GPU that holds `images` images and `captions` captions per batch."""

    def __init__(self, images: int, captions: int) -> None:
        self.name, self.device, self.input_size = "small", torch.device("cuda"), 32
        self.images, self.captions, self.seen = images, captions, []

    def encode_images(self, batch: torch.Tensor) -> np.ndarray:
        self.seen.append(tuple(batch.shape))
        if len(batch) > self.images:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return np.zeros((len(batch), 4), np.float32)

    def encode_text(self, texts, *, batch_size: int) -> np.ndarray:
        assert batch_size == len(texts) and len(texts[0].split()) > 77  # as long as a caption can be
        if len(texts) > self.captions:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return np.zeros((len(texts), 4), np.float32)


@pytest.fixture
def no_cache(monkeypatch):
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)


def test_the_batch_is_the_headroom_share_of_what_both_towers_hold(no_cache):
    model = _SmallGpu(images=100, captions=70)
    assert gpu_batch_size(model, limit=1000) == 63  # 0.9 × 70: the text tower is the tighter here
    assert all(shape[1:] == (3, 32, 32) for shape in model.seen)  # images of the model's input size
    assert gpu_batch_size(model, limit=1000, text=False) == 90
    assert gpu_batch_size(model, limit=50, headroom=1.0) == 50
    assert gpu_batch_size(_SmallGpu(images=1, captions=1), limit=8) == 1  # never below one


def test_a_gpu_that_holds_no_image_and_a_cpu_model_are_refused(no_cache, tiny_model):
    with pytest.raises(ConfigError, match="small: one image does not fit"):
        gpu_batch_size(_SmallGpu(images=0, captions=10))
    with pytest.raises(ConfigError, match="needs a model on a GPU; this one is on cpu"):
        gpu_batch_size(tiny_model)
    with pytest.raises(ConfigError, match=r"headroom must be in \(0, 1\], got 0"):
        gpu_batch_size(_SmallGpu(images=4, captions=4), headroom=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_real_gpu_the_found_batch_embeds(tiny_name):
    from sanitize.clip.models import load_clip

    model = load_clip(tiny_name, None, device="cuda", seed=0)
    size = gpu_batch_size(model, limit=256)
    side = model.input_size or 224
    assert 1 <= size <= 256
    assert model.encode_images(torch.zeros((size, 3, side, side))).shape == (size, model.dim)
