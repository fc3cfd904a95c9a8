"""What the demo CLIP knows, measured on generated scenes it never saw: the numbers of its model card and tests.

The training script (tools/train_demo_clip.py) draws its scenes from the streams `training_rng(seed, step)`;
`held_out_scenes` draws from another stream, so no held-out scene (and none of the sample's near-duplicate
variants) is a training scene. Every measure goes through the real code paths: `ClipModel.preprocess`,
`encode_images`, `encode_text`, the audit's zero-shot labelling with its attribute spec files.

Functions take a `ClipModel` (any weights) and return plain numbers, so a benchmark, a test and the model card
report the same computation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sanitize.audit.attributes import class_embeddings, zero_shot_attribute
from sanitize.audit.specs import UNKNOWN, load_attribute_spec
from sanitize.clip.models import ClipModel
from sanitize.demo.describe import describe_scene
from sanitize.demo.sample import VARIANT_KINDS, Scene, draw_scenes, make_variant

# First entropy word of the scene streams: training and evaluation never share a stream.
TRAIN_STREAM = 1
EVAL_STREAM = 2


def training_rng(seed: int, step: int) -> np.random.Generator:
    """The generator of training step `step` of a run seeded `seed` (independent of the steps before it)."""
    return np.random.default_rng((TRAIN_STREAM, seed, step))


def held_out_scenes(n: int, *, seed: int = 0, motif_rate: float = 0.2) -> list[tuple[Scene, Image.Image]]:
    """`n` scenes and their images from the evaluation stream `seed`: never drawn by training (another stream)."""
    return draw_scenes(np.random.default_rng((EVAL_STREAM, seed)), n, motif_rate=motif_rate)


def embed_images(model: ClipModel, images: Sequence[Image.Image], *, batch_size: int = 256) -> np.ndarray:
    """Unit image embeddings (n, dim) through the model's own preprocessing."""
    parts = [np.zeros((0, model.dim), dtype=np.float32)]
    for start in range(0, len(images), batch_size):
        batch = torch.stack([model.preprocess(im.convert("RGB")) for im in images[start : start + batch_size]])
        parts.append(model.encode_images(batch))
    return np.concatenate(parts)


def caption_retrieval_top1(model: ClipModel, scenes: Sequence[tuple[Scene, Image.Image]]) -> dict[str, float]:
    """Image→text retrieval among the distinct canonical captions (`describe_scene`) of `scenes`.

    An image is right when its most similar caption is its own (scenes with the same content share a caption,
    so the candidates are the distinct strings). Returns {"top1": share right, "captions": candidates,
    "chance": 1 / candidates}.
    """
    own = [describe_scene(s) for s, _ in scenes]
    captions = sorted(set(own))
    index = {c: i for i, c in enumerate(captions)}
    scores = embed_images(model, [image for _, image in scenes]) @ model.encode_text(captions).T
    right = scores.argmax(axis=1) == np.array([index[c] for c in own])
    return {"top1": float(right.mean()), "captions": len(captions), "chance": 1.0 / len(captions)}


def figure_truth(scene: Scene, attribute: str) -> str | None:
    """The planted answer for a zero-shot attribute of `scene`: for "perceived_gender" female / male, for
    "drawn_age" child / adult, "no_person" when nobody is drawn; None (not scored) with two or more figures."""
    if not scene.figures:
        return "no_person"
    if len(scene.figures) > 1:
        return None
    figure = scene.figures[0]
    if attribute == "perceived_gender":
        return "female" if figure.endswith("f") else "male"
    if attribute == "drawn_age":
        return "child" if figure.startswith("c") else "adult"
    raise ValueError(f"no planted truth for attribute {attribute!r}")


def zero_shot_accuracy(model: ClipModel, scenes: Sequence[tuple[Scene, Image.Image]],
                       spec_path: str | Path) -> dict[str, float]:
    """Zero-shot labels of the audit (`zero_shot_attribute` with the spec's prompts, margin and logit scale)
    against `figure_truth`, on scenes with at most one figure.

    Returns {"accuracy": right / scored (an "unknown" label counts wrong), "unknown": share labelled unknown,
    "scored": n, "accuracy_<class>": per planted class, "accuracy_no_motif" / "accuracy_motif": on scenes
    without / with a motif drawn (a motif drawn over a figure hides it)}.
    """
    spec = load_attribute_spec(spec_path)
    kept = [(s, image, t) for s, image in scenes if (t := figure_truth(s, spec.name)) is not None]
    truth = np.array([t for *_, t in kept], dtype=object)
    motif = np.array([s.sexual or s.violence for s, *_ in kept], dtype=bool)
    labels = zero_shot_attribute(embed_images(model, [image for _, image, _ in kept]),
                                 class_embeddings(spec, model.encode_text), spec).labels
    right = labels == truth
    out = {"accuracy": float(right.mean()), "unknown": float((labels == UNKNOWN).mean()), "scored": len(kept)}
    for label in spec.classes:
        mask = truth == label
        if mask.any():
            out[f"accuracy_{label}"] = float(right[mask].mean())
    for name, mask in (("no_motif", ~motif), ("motif", motif)):
        if mask.any():
            out[f"accuracy_{name}"] = float(right[mask].mean())
    return out


def near_duplicate_separation(model: ClipModel, scenes: Sequence[tuple[Scene, Image.Image]], *,
                              threshold: float = 0.95,
                              seed: int = 0) -> dict[str, float]:
    """How the sample's near-duplicate edits (`make_variant`, each kind in turn) compare with distinct scenes.

    Returns "variants_at_threshold": share of (scene, variant) pairs with cosine >= `threshold`,
    "variant_cosine_p05": their 5th-percentile cosine, "distinct_at_threshold": share of scenes whose most
    similar *other* scene reaches `threshold` (a false near-duplicate), "distinct_cosine_p95": the 95th
    percentile of that nearest-other cosine.
    """
    rng = np.random.default_rng(seed)
    images = [image for _, image in scenes]
    variants = [make_variant(rng, image, VARIANT_KINDS[i % len(VARIANT_KINDS)]) for i, image in enumerate(images)]
    originals = embed_images(model, images)
    pair_cos = np.einsum("ij,ij->i", originals, embed_images(model, variants))
    others = originals @ originals.T
    np.fill_diagonal(others, -1.0)
    nearest = others.max(axis=1)
    return {"variants_at_threshold": float((pair_cos >= threshold).mean()),
            "variant_cosine_p05": float(np.quantile(pair_cos, 0.05)),
            "distinct_at_threshold": float((nearest >= threshold).mean()),
            "distinct_cosine_p95": float(np.quantile(nearest, 0.95))}
