"""Scenes in memory (the demo model's training and test data) and the captions that name what they show."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from sanitize.demo.describe import describe_scene
from sanitize.demo.sample import VARIANT_KINDS, Scene, draw_scene, draw_scenes, make_variant, plan_scene
from sanitize.errors import ConfigError


def test_same_generator_state_same_scenes_pixel_for_pixel():
    a = draw_scenes(np.random.default_rng(5), 30)
    b = draw_scenes(np.random.default_rng(5), 30)
    assert [s for s, _ in a] == [s for s, _ in b]
    assert all(x.tobytes() == y.tobytes() for (_, x), (_, y) in zip(a, b, strict=True))
    assert {s.caption_gender for s, _ in a} >= {"female", "male"}


def test_a_twin_from_the_same_state_differs_only_where_its_figure_is():
    rng = np.random.default_rng(1)
    scene = Scene("a woman at the beach", "female", ("f",), "beach")
    state = copy.deepcopy(rng)
    woman = np.asarray(draw_scene(rng, scene), dtype=int)
    man = np.asarray(draw_scene(state, Scene("a man at the beach", "male", ("m",), "beach")), dtype=int)
    changed = (woman != man).any(axis=2)
    assert 0 < changed.mean() < 0.15  # the dress and hair, nothing of the background or clutter


def test_variants_and_motif_rate_are_checked():
    image = draw_scenes(np.random.default_rng(0), 1)[0][1]
    for kind in VARIANT_KINDS:
        assert make_variant(np.random.default_rng(0), image, kind).mode == "RGB"
    with pytest.raises(ConfigError, match="variant kind"):
        make_variant(np.random.default_rng(0), image, "blur")
    with pytest.raises(ConfigError, match="motif_rate"):
        plan_scene(np.random.default_rng(0), motif_rate=1.5)


def test_captions_name_what_is_drawn():
    girl = Scene("a girl in the park", "female", ("cf",), "park", sexual=True)
    assert describe_scene(girl) == "a photo of a girl, in the park, with skin-coloured blobs"
    nurse = Scene("he works as a nurse in a hospital", "male", ("m",), "hospital", occupation="nurse", violence=True)
    assert describe_scene(nurse) == "a photo of a man, working as a nurse, in a hospital, with red splatter"
    family = Scene("two people at the beach", "neutral", ("m", "m", "cf"), "beach")
    assert describe_scene(family) == "a photo of two men and a girl, at the beach"
    car = Scene("a red car", "none", (), "street", thing="a red car")
    assert describe_scene(car) == "a photo of a red car, an object, with no people in it"
    # Drawn wordings vary but never drop a motif, and never name a person in a scene without one.
    rng = np.random.default_rng(0)
    assert all("blob" in c or "nsfw" in c or "nude" in c for c in (describe_scene(girl, rng) for _ in range(50)))
    people = {"woman", "man", "girl", "boy", "child", "kid", "adult", "lady", "guy"}  # "without any person" is fine
    assert not any(people & set(describe_scene(car, rng).replace(",", " ").split()) for _ in range(50))
