"""Tests of meaning: the shipped demo CLIP, loaded like real weights, knows what the sample generator draws.

A wrong tokenizer, a missed normalisation, swapped towers, broken zero-shot prompts or a weights file that does
not load would each fail here, where shape tests pass. Every measure runs through the project's own code paths
(`load_clip` with the packaged checkpoint, `ClipModel.preprocess` / `encode_*`, the audit's zero-shot labelling
with its spec files; test_demo_pipeline.py checks the whole pipeline on the demo run). No training happens here:
the weights are the packaged file that tools/train_demo_clip.py wrote. The scenes are held out (another seed
stream than training).
Each bar sits below the value measured with the shipped weights (quoted beside it) by a margin for torch/BLAS
differences between machines, and far above chance.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sanitize.clip.models import DEMO_MODEL, load_clip, packaged_weights
from sanitize.demo.describe import DRAWN_AGE_SPEC
from sanitize.demo.evaluation import (
    caption_retrieval_top1,
    embed_images,
    held_out_scenes,
    zero_shot_accuracy,
)

# Test scenes come from evaluation stream 1 (the model card's numbers use stream 0, the training script streams
# (1, seed, step)), 600 of them: ~1 s to draw, ~2 s to embed.
N_SCENES = 600


@pytest.fixture(scope="module")
def demo_model():
    """The packaged demo weights, loaded as any local checkpoint is."""
    return load_clip(DEMO_MODEL, str(packaged_weights()), device="cpu")


@pytest.fixture(scope="module")
def scenes():
    return held_out_scenes(N_SCENES, seed=1)


def test_packaged_weights_load_through_the_checkpoint_path(demo_model):
    path = packaged_weights()
    assert path.suffix == ".safetensors" and path.stat().st_size <= 20_000_000
    assert demo_model.pretrained == str(path) and demo_model.dim == 128
    random = load_clip(DEMO_MODEL, None, device="cpu")
    tokens = ["a photo of a woman, in the park"]
    assert not np.allclose(demo_model.encode_text(tokens), random.encode_text(tokens), atol=1e-3)


def test_image_to_text_retrieval_on_held_out_scenes(demo_model, scenes):
    result = caption_retrieval_top1(demo_model, scenes)
    # Measured 0.76 with the shipped weights among 180 distinct captions (chance 0.006). The captions name
    # figures left to right, so a scene's caption competes with its own mirror order and with the caption that
    # differs in one figure's gender or age.
    assert result["top1"] >= 0.65, result


def test_zero_shot_gender_of_drawn_figures(demo_model, scenes):
    result = zero_shot_accuracy(demo_model, scenes, "perceived_gender")
    # The built-in spec (resources/attributes/perceived_gender.toml, margin 0.2) on scenes with one figure or
    # none, against the planted figure; "unknown" counts wrong. Measured 0.84 (chance 1/3): women 0.79,
    # men 0.82; 0.92 on scenes without a motif, 0.69 where a motif is drawn (it can hide the figure).
    assert result["accuracy"] >= 0.75, result
    assert min(result["accuracy_female"], result["accuracy_male"]) >= 0.65, result
    assert result["accuracy_no_motif"] >= 0.85, result


def test_zero_shot_age_of_drawn_figures(demo_model, scenes):
    result = zero_shot_accuracy(demo_model, scenes, DRAWN_AGE_SPEC)
    # The demo's spec (resources/demo/drawn_age.toml: child / adult / no person). Measured 0.87 (chance 1/3):
    # children 0.84, adults 0.87; 0.94 without a motif, 0.75 with one.
    assert result["accuracy"] >= 0.75, result
    assert min(result["accuracy_child"], result["accuracy_adult"]) >= 0.7, result
    assert result["accuracy_no_motif"] >= 0.85, result


UKBENCH_VARIANTS = {  # variant file -> its base image, in ../shared/data/imagededup_ukbench
    "mixed_images/ukbench00120_hflip.jpg": "ukbench00120.jpg",
    "mixed_images/ukbench00120_resize.jpg": "ukbench00120.jpg",
    "mixed_images/ukbench00120_rotation.jpg": "ukbench00120.jpg",
    "ukbench00120_gray.jpg": "ukbench00120.jpg",
    "formats_images/ukbench09380.webp": "ukbench09380.jpg",
}


def test_ukbench_variants_are_closest_to_their_base_photo(demo_model, shared_data):
    # Real photos, a domain the demo model never saw: the check is that an edited copy (flip, squash to 300x300,
    # 45° rotation, grey, WebP re-encode) stays nearer its own photo than the other nine base photos.
    folder = shared_data / "imagededup_ukbench"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    bases = sorted((folder / "base_images").glob("*.jpg"))
    names = [p.name for p in bases]
    base_emb = embed_images(demo_model, [Image.open(p) for p in bases])
    variant_emb = embed_images(demo_model, [Image.open(folder / v) for v in UKBENCH_VARIANTS])
    similarity = variant_emb @ base_emb.T
    own = np.array([names.index(base) for base in UKBENCH_VARIANTS.values()])
    nearest = [names[i] for i in similarity.argmax(axis=1)]
    assert nearest == list(UKBENCH_VARIANTS.values()), dict(zip(UKBENCH_VARIANTS, nearest, strict=True))
    # Margin over the closest other photo: measured 0.13 at the least (the grey copy); random weights put the
    # grey copy nearer another photo.
    others = similarity.copy()
    others[np.arange(len(own)), own] = -1
    assert (similarity[np.arange(len(own)), own] - others.max(axis=1)).min() >= 0.05



def test_draft_decoding_keeps_the_embeddings_of_real_photos(demo_model, shared_data):
    # Draft decoding (the JPEG decoder scales by 1/2, 1/4 or 1/8, never below the model's input) on the UKBench
    # photos (640x480, decoded at 160x120 for the 64-px model): the demo CLIP's embeddings stay at cosine >= 0.99
    # of the full decode's (measured: min 0.9996 over all 21 UKBench JPEGs), each nearest its own.
    import torch

    from sanitize.io.images import decode_image

    folder = shared_data / "imagededup_ukbench" / "base_images"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    blobs = [p.read_bytes() for p in sorted(folder.glob("*.jpg"))]
    size = (demo_model.input_size, demo_model.input_size)
    assert decode_image(blobs[0], draft=size).size[0] < decode_image(blobs[0]).size[0]  # it did decode smaller
    full = demo_model.encode_images(torch.stack([demo_model.preprocess(decode_image(b)) for b in blobs]))
    draft = demo_model.encode_images(torch.stack([demo_model.preprocess(decode_image(b, draft=size)) for b in blobs]))
    cosines = np.einsum("ij,ij->i", full, draft)
    assert cosines.min() >= 0.99, cosines
    assert ((draft @ full.T).argmax(axis=1) == np.arange(len(blobs))).all()


def test_bf16_on_cpu_keeps_what_the_model_knows(demo_model, scenes):
    # --precision bf16 on a CPU: the weights are converted to bfloat16 (about 2x faster where the CPU has bf16
    # instructions). Embeddings stay at cosine >= 0.999 of fp32 (measured: min 0.9999) and the zero-shot gender
    # accuracy within 0.03 of fp32's.
    half = load_clip(DEMO_MODEL, str(packaged_weights()), device="cpu", precision="bf16")
    assert half.precision == "bf16" and next(half.network.parameters()).dtype == torch.bfloat16
    images = [image for _, image in scenes[:200]]
    full_emb, half_emb = embed_images(demo_model, images), embed_images(half, images)
    assert np.einsum("ij,ij->i", full_emb, half_emb).min() >= 0.999
    captions = ["a photo of a woman", "a drawing of two men and a girl, in the kitchen", ""]
    assert np.einsum("ij,ij->i", demo_model.encode_text(captions), half.encode_text(captions)).min() >= 0.999
    full_acc = zero_shot_accuracy(demo_model, scenes, "perceived_gender")["accuracy"]
    half_acc = zero_shot_accuracy(half, scenes, "perceived_gender")["accuracy"]
    assert abs(full_acc - half_acc) <= 0.03, (full_acc, half_acc)
