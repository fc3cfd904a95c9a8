"""LAION's CLIP NSFW heads (MIT, LAION-AI/CLIP-based-NSFW-Detector) as a starting classifier.

The heads are small torch MLPs over OpenAI CLIP image embeddings: ViT-B/32 (512-d) and ViT-L/14 (768-d).
Each standardises its input, ``z = (x - mean) / (sqrt(variance) + 1e-10)``, then applies Linear/ReLU layers
and a sigmoid on one output unit — exactly the shape `EmbeddingClassifier` scores, so a head is converted
once into plain arrays and scored in numpy like any other classifier (and saved as safetensors).

They only mean something on embeddings of the matching OpenAI CLIP model. They cannot be retrained here;
once a category has enough labels, train an `EmbeddingClassifier` instead.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from sanitize.errors import DataError, MissingDependencyError
from sanitize.safety.classifier import EmbeddingClassifier, from_layers

logger = logging.getLogger(__name__)

KIND = "laion-nsfw"
# Embedding dimension -> file name in the LAION release and the CLIP model whose embeddings it expects.
HEAD_FILES = {
    512: ("clip_ViT-B-32_openai_binary_nsfw_head.pth", "ViT-B-32/openai"),
    768: ("clip_ViT-L-14_openai_binary_nsfw_head.pth", "ViT-L-14/openai"),
}
_LINEAR_RE = re.compile(r"^linear_(\d+)\.weight$")


def laion_head_path(folder: str | Path, dim: int) -> Path:
    """The head file in `folder` for `dim`-d embeddings; `DataError` when there is none for that dim."""
    if dim not in HEAD_FILES:
        raise DataError(f"LAION NSFW heads exist for 512-d and 768-d embeddings only, not {dim}-d")
    path = Path(folder) / HEAD_FILES[dim][0]
    if not path.is_file():
        raise DataError(f"{path}: LAION NSFW head not found")
    return path


def load_laion_nsfw_head(path: str | Path, *, dim: int | None = None) -> EmbeddingClassifier:
    """Convert a LAION NSFW head (.pth state dict) into an `EmbeddingClassifier` scoring P(nsfw).

    Loads with ``torch.load(weights_only=True)`` (tensors only, no code). Raises `DataError` for a file that
    does not have the expected keys, or whose input dimension differs from `dim` when `dim` is given.
    """
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is a core dependency
        raise MissingDependencyError("loading LAION heads needs torch: pip install torch") from exc

    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(f"{path}: LAION NSFW head not found") from None
    except Exception as exc:  # torch raises several types for a corrupt or non-weights file
        raise DataError(f"{path}: not a weights-only torch state dict ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict):
        raise DataError(f"{path}: expected a state dict, got {type(state).__name__}")
    arrays = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in state.items()}
    indices = sorted(int(m.group(1)) for k in arrays if (m := _LINEAR_RE.match(k)))
    if not indices or "norm.mean" not in arrays or "norm.variance" not in arrays:
        raise DataError(f"{path}: expected keys norm.mean, norm.variance and linear_<i>.weight/bias")
    try:
        # torch Linear stores (out, in); the numpy forward multiplies x @ W with W as (in, out).
        layers = [(arrays[f"linear_{i}.weight"].T, arrays[f"linear_{i}.bias"]) for i in indices]
    except KeyError as exc:
        raise DataError(f"{path}: missing tensor {exc.args[0]}") from None
    std = np.sqrt(arrays["norm.variance"]) + np.float32(1e-10)
    try:
        clf = from_layers(layers, kind=KIND, input_mean=arrays["norm.mean"], input_std=std)
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None
    if dim is not None and clf.dim != dim:
        raise DataError(f"{path}: head expects {clf.dim}-d embeddings, the pool has {dim}-d embeddings")
    logger.info("loaded LAION NSFW head %s (%d-d, %d layers)", path.name, clf.dim, len(layers))
    return clf
