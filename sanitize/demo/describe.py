"""Captions that name what a generated scene shows: the training text of the demo CLIP (`sanitize-demo-clip`).

The sample's own captions (demo/sample.py) are written like web alt-text: they mention activities that are not
drawn ("reading a book"), say "two people" without saying who, and mention a motif in only some rows. A model
trained on them alone could not learn what a woman, a child or the splatter motif looks like. `describe_scene`
names every drawn thing instead: each figure's gender and age, the occupation, the place, the object, the motifs,
and "no people" when there is nobody.

Its words are chosen to meet the prompts the project asks the model with: the zero-shot attribute specs
(resources/attributes/perceived_gender.toml, resources/demo/drawn_age.toml: "a photo of a woman.", "a photo of a
child.", "a photo with no people in it.") and the demo's category prompts ("red splatter", "a nude photo"). To
the demo model "a nude photo" means the skin-coloured blob motif; it knows nothing about real nudity or violence.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import TypeVar

import numpy as np

from sanitize.demo.sample import PLACES, THINGS, Scene

T = TypeVar("T")

# The demo's age attribute: the generator draws children and adults, not the built-in spec's four adult ages.
DRAWN_AGE_SPEC = Path(str(resources.files("sanitize").joinpath("resources", "demo", "drawn_age.toml")))

SHORT_SHARE = 0.3  # share of drawn captions that name one thing only
PART_KEEP = 0.75  # in the others, the chance that the occupation, and the place, are named
# Each tuple's first entry is the canonical wording (`rng=None`); training draws among all of them.
PREFIXES = ("a photo of", "a picture of", "a drawing of", "an image of", "a close-up photo of", "")
# figure code (see Scene.figures) -> noun phrases that say gender and age
FIGURE_NOUNS: dict[str, tuple[str, ...]] = {
    "f": ("woman", "lady", "female person", "adult woman", "grown-up woman", "woman, an adult"),
    "m": ("man", "guy", "male person", "adult man", "grown-up man", "man, an adult"),
    "cf": ("girl", "little girl", "female child", "girl, a child", "kid, a girl", "young girl"),
    "cm": ("boy", "little boy", "male child", "boy, a child", "kid, a boy", "young boy"),
}
PLURALS = {"f": ("women", "ladies", "adult women"), "m": ("men", "guys", "adult men"),
           "cf": ("girls", "little girls"), "cm": ("boys", "little boys")}
NUMBERS = {2: "two", 3: "three"}
# a lone figure named by age only, in short captions
AGE_NOUNS = {"child": ("child", "kid"), "adult": ("adult", "grown-up")}
# how many people, for scenes with two or more figures
GROUP_WORDS = {2: ("two people", "a pair of people"), 3: ("three people", "a group of three people")}
OCCUPATION_PHRASES = ("working as {occ}", "who is {occ}", "dressed as {occ}", "{occ} at work")
# What kind of thing a no-person scene shows, worded as the no_person prompts of the attribute specs are.
THING_KINDS = {
    "car": ("an object", "a vehicle"),
    "house": ("a building", "a house"),
    "bowl": ("food", "a still life"),
    "boat": ("a landscape", "a seascape"),
    "tree": ("a landscape", "nature"),
    "bicycle": ("an object", "a vehicle"),
}
NO_PEOPLE = ("with no people in it", "no people", "nobody in the picture", "without any person")
MOTIF_WORDS: dict[str, tuple[str, ...]] = {
    "sexual": ("with skin-coloured blobs", "with a cluster of skin-coloured blobs", "marked nsfw", "a nude photo"),
    "violence": ("with red splatter", "with dark-red jagged splatter", "in a violent scene", "a bloody injury"),
}


def describe_scene(scene: Scene, rng: np.random.Generator | None = None) -> str:
    """A caption naming what `scene` shows: figures (gender and age), occupation, place, object, motifs.

    With `rng` None the caption is canonical: every part, first wording everywhere (same scene content → same
    string). With a generator the wording of each part is drawn from its synonyms, and captions vary in length
    as web captions do: `SHORT_SHARE` of them name one thing only ("a photo of a woman", "a photo of a child",
    "a photo with no people in it"), the others leave out the occupation or the place with probability
    1 - `PART_KEEP` each. Drawn motifs are always named; nothing is named that is not drawn (the sample
    caption's activities are left out). Returns lower-case text without a final period.
    """
    prefix = _choose(rng, PREFIXES)
    if rng is not None and rng.random() < SHORT_SHARE:
        parts = [_short_subject(scene, prefix, rng)]
    else:
        parts = [f"{prefix} {_subject(scene, rng)}".strip()]
        if scene.occupation and _keep(rng):
            parts.append(_choose(rng, OCCUPATION_PHRASES).format(occ=_article(scene.occupation)))
        if (scene.figures or scene.thing is None) and _keep(rng):
            parts.append(PLACES[scene.scene])
    for motif in ("sexual", "violence"):
        if getattr(scene, motif):
            parts.append(_choose(rng, MOTIF_WORDS[motif]))
    return ", ".join(parts)


def _subject(scene: Scene, rng: np.random.Generator | None) -> str:
    if scene.figures:
        return _people(scene.figures, rng)
    return f"{scene.thing}, {_choose(rng, THING_KINDS[_thing_kind(scene)])}, {_choose(rng, NO_PEOPLE)}"


def _short_subject(scene: Scene, prefix: str, rng: np.random.Generator) -> str:
    """One named thing: the people (or, for a lone figure, only its age), or the object, its kind, or nobody."""
    if scene.figures:
        if len(scene.figures) == 1 and rng.random() < 0.5:
            noun = _choose(rng, AGE_NOUNS["child" if scene.figures[0].startswith("c") else "adult"])
            return f"{prefix} {_article(noun)}".strip()
        return f"{prefix} {_people(scene.figures, rng)}".strip()
    choice = int(rng.integers(3))
    if choice == 0:
        return f"{prefix} {scene.thing}".strip()
    if choice == 1:
        return f"{prefix} {_choose(rng, THING_KINDS[_thing_kind(scene)])}".strip()
    picture = prefix.removesuffix(" of") if prefix.endswith(" of") else "a photo"
    return f"{picture} {_choose(rng, NO_PEOPLE)}"


def _thing_kind(scene: Scene) -> str:
    return THINGS[scene.thing][1] if scene.thing else "car"


def _keep(rng: np.random.Generator | None) -> bool:
    return rng is None or rng.random() < PART_KEEP


def _people(figures: Sequence[str], rng: np.random.Generator | None) -> str:
    # One phrase per kind of figure, in drawing order: "a man and a woman", "two girls and a woman".
    counts = {f: figures.count(f) for f in dict.fromkeys(figures)}
    named = [_article(_choose(rng, FIGURE_NOUNS[f])) if k == 1 else f"{NUMBERS[k]} {_choose(rng, PLURALS[f])}"
             for f, k in counts.items()]
    listing = named[0] if len(named) == 1 else ", ".join(named[:-1]) + " and " + named[-1]
    if len(figures) > 1 and rng is not None and rng.random() < 0.5:
        return f"{_choose(rng, GROUP_WORDS[len(figures)])}: {listing}"
    return listing


def _article(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def _choose(rng: np.random.Generator | None, options: Sequence[T]) -> T:
    return options[0] if rng is None else options[int(rng.integers(len(options)))]
