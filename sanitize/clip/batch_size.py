"""The batch size a GPU holds: the largest batch of images and captions a model embeds without running out of
memory, found by trying.

A GPU's throughput grows with the batch until the towers' products fill it, so the batch is best set by memory, not
by a fixed number. Activation memory depends on the model, the precision and what else holds the GPU, so it is
measured rather than computed: `largest_fitting` doubles a trial batch until one fails, then bisects; each trial
embeds a batch of blank images and of captions as long as the context (the most memory a real batch can take).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from sanitize.errors import ConfigError

if TYPE_CHECKING:
    from sanitize.clip.models import ClipModel


def largest_fitting(fits: Callable[[int], bool], limit: int) -> int:
    """The largest n in [1, limit] with `fits(n)` true, for a `fits` that holds up to some size and fails above it.

    Tries 1, 2, 4, ... (and `limit`) until one fails, then bisects between the last that fit and the first that
    failed: about 2·log2(limit) calls. Returns 0 when even `fits(1)` is false.
    """
    if limit < 1:
        raise ConfigError(f"limit must be >= 1, got {limit}")
    good, size = 0, 1  # good: the largest size known to fit
    while fits(size):
        good = size
        if size == limit:
            return limit
        size = min(2 * size, limit)
    bad = size  # the smallest size known to fail
    while bad - good > 1:
        middle = (good + bad) // 2
        if fits(middle):
            good = middle
        else:
            bad = middle
    return good


def gpu_batch_size(model: ClipModel, *, limit: int = 4096, headroom: float = 0.9, text: bool = True) -> int:
    """The batch size for `embed_shard` on `model`'s GPU: `headroom` × the largest batch (≤ `limit`) of images (and,
    with `text`, context-long captions) the model embeds without a CUDA out-of-memory error, at least 1.

    The trials allocate and free GPU memory (the cache is emptied after each); the model is unchanged. Raises
    ConfigError for a model on the CPU (its batch is bounded by speed, not memory) or when even one image does not
    fit.
    """
    import torch

    if model.device.type != "cuda":
        raise ConfigError(f"batch size by memory needs a model on a GPU; this one is on {model.device}")
    if not 0 < headroom <= 1:
        raise ConfigError(f"headroom must be in (0, 1], got {headroom}")
    side = model.input_size or 224
    caption = " ".join(["word"] * 200)  # cut at the context: the longest a caption can be

    def fits(size: int) -> bool:
        try:
            model.encode_images(torch.zeros((size, 3, side, side)))
            if text:
                model.encode_text([caption] * size, batch_size=size)
            return True
        except torch.OutOfMemoryError:
            return False
        finally:
            torch.cuda.empty_cache()

    largest = largest_fitting(fits, limit)
    if largest == 0:
        raise ConfigError(f"{model.name}: one image does not fit in the GPU's free memory")
    return max(1, int(largest * headroom))
