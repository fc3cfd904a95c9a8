from __future__ import annotations

import re

import numpy as np
import polars as pl
import pytest

from sanitize.audit.attributes import (
    class_embeddings,
    column_attribute,
    keyword_mentions,
    lexicon_attribute,
    zero_shot_attribute,
)
from sanitize.audit.specs import AttributeSpec, load_attribute_spec, load_lexicon
from sanitize.errors import DataError

DIM = 32


def fake_encoder(texts: list[str]) -> np.ndarray:
    """A deterministic stand-in for a CLIP text tower: one random vector per distinct prompt."""
    out = []
    for t in texts:
        seed = sum(ord(c) * (i + 1) for i, c in enumerate(t)) % 2**32
        out.append(np.random.default_rng(seed).normal(size=DIM))
    return np.stack(out)


SPEC = AttributeSpec(
    name="toy",
    classes=("cat", "dog", "no_person"),
    prompts=(("a cat.", "a kitten."), ("a dog.",), ("nothing.", "an empty room.")),
    margin=0.2,
    logit_scale=100.0,
    not_applicable=("no_person",),
)


def test_class_embeddings_average_unit_prompts_and_renormalise():
    emb = class_embeddings(SPEC, fake_encoder)
    assert emb.shape == (3, DIM)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-6)
    raw = fake_encoder(["a cat.", "a kitten."])
    raw /= np.linalg.norm(raw, axis=1, keepdims=True)
    expected = raw.mean(axis=0) / np.linalg.norm(raw.mean(axis=0))
    np.testing.assert_allclose(emb[0], expected, rtol=1e-4, atol=1e-6)


def test_zero_shot_softmax_labels_and_margin():
    emb = class_embeddings(SPEC, fake_encoder)
    # Row 0: exactly a cat; row 1: exactly a dog; row 2: halfway between cat and dog -> unknown.
    images = np.stack([emb[0], emb[1], emb[0] + emb[1]]) * 3.0  # scale must not matter
    out = zero_shot_attribute(images, emb, SPEC)
    assert out.classes == SPEC.classes
    assert list(out.labels) == ["cat", "dog", "unknown"]
    np.testing.assert_allclose(out.probabilities.sum(axis=1), 1.0, rtol=1e-6)
    cos = (images / np.linalg.norm(images, axis=1, keepdims=True)) @ emb.T
    logits = 100.0 * cos
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(out.probabilities, expected, rtol=1e-4, atol=1e-6)


def test_zero_shot_margin_zero_never_unknown_and_batches_agree():
    emb = class_embeddings(SPEC, fake_encoder)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(50, DIM)).astype(np.float16)
    spec0 = AttributeSpec(**{**SPEC.__dict__, "margin": 0.0})
    a = zero_shot_attribute(images, emb, spec0, batch_size=7)
    b = zero_shot_attribute(images, emb, spec0)
    assert "unknown" not in set(a.labels)
    assert list(a.labels) == list(b.labels)
    np.testing.assert_allclose(a.probabilities, b.probabilities, rtol=1e-4, atol=1e-6)


def test_zero_shot_with_builtin_spec_and_fake_encoder():
    spec = load_attribute_spec("perceived_gender")
    emb = class_embeddings(spec, fake_encoder)
    out = zero_shot_attribute(emb, emb, spec)
    assert list(out.labels) == list(spec.classes)


def test_zero_shot_bad_inputs():
    emb = class_embeddings(SPEC, fake_encoder)
    with pytest.raises(DataError, match="do not match class embedding dimension"):
        zero_shot_attribute(np.ones((2, DIM + 1)), emb, SPEC)
    bad = np.ones((3, DIM))
    bad[1, 4] = np.nan
    with pytest.raises(DataError, match="row 1 has NaN"):
        zero_shot_attribute(bad, emb, SPEC)
    with pytest.raises(DataError, match="2 class embeddings for 3 classes"):
        zero_shot_attribute(np.ones((2, DIM)), emb[:2], SPEC)
    with pytest.raises(DataError, match="returned 1 rows for 5 prompts"):
        class_embeddings(SPEC, lambda texts: np.ones((1, DIM)))


def test_lexicon_word_boundaries_case_and_mixed():
    lex = load_lexicon("caption_gender")
    captions = [
        "A WOMAN holding an umbrella.",
        "A woman's hat on a table.",
        "Two men and a girl at the beach.",
        "A human being walks by.",  # "man" inside "human": no match
        "Shepherd with sheep.",  # "she"/"he" inside words: no match
        "He rides a horse.",
        None,
        "",
    ]
    labels = lexicon_attribute(captions, lex).to_list()
    assert labels == ["female", "female", "mixed", "unknown", "unknown", "male", "unknown", "unknown"]


def test_lexicon_multiword_terms_win_over_their_parts():
    occ = load_lexicon("occupations")
    labels = lexicon_attribute(["a police officer on a horse", "a nurse and a doctor", "officers"], occ).to_list()
    assert labels == ["police", "multiple", "police"]
    mentions = keyword_mentions(["Police officer, police officer!", None], occ.all_terms()).to_list()
    assert mentions == [["police officer"], []]


def test_column_attribute_nulls_and_blanks_become_unknown():
    assert column_attribute(["en", None, "  ", " fr "], "LANGUAGE").to_list() == ["en", "unknown", "unknown", "fr"]
    assert column_attribute(pl.Series([3, None]), "x").to_list() == ["3", "unknown"]


def _reference_label(caption: str, lexicon) -> str:
    """The lexicon rules written out plainly, one caption at a time (an independent check of the vectorised code):
    mask hyphen compounds and excluded phrases; nouns count; a pronoun counts when the nearest referent word
    before it is a person (class noun or person word) or when it is the caption's first word."""
    text = re.sub(r"\w+(?:[-\u2010\u2011]\w+)+", " ", caption)
    for phrase in sorted(lexicon.exclude, key=len, reverse=True):
        text = re.sub(rf"(?i)\b{re.escape(phrase)}\b", " ", text)
    words = [(m.start(), m.group(0).lower()) for m in re.finditer(r"\w+(?:'\w+)?", text)]
    hits = set()
    for label, terms in zip(lexicon.classes, lexicon.terms, strict=True):
        if any(re.search(rf"(?i)\b{re.escape(t)}\b", text) for t in terms):
            hits.add(label)
    persons = set(lexicon.all_terms()) | set(lexicon.persons)
    last = None
    for i, (_, word) in enumerate(words):
        base = word.split("'")[0]
        if base in persons:
            last = "person"
        elif base in lexicon.non_persons:
            last = "other"
        for label, pronouns in zip(lexicon.classes, lexicon.class_pronouns(), strict=True):
            if base in pronouns and (last == "person" or (last is None and i == 0)):
                hits.add(label)
    hits = [c for c in lexicon.classes if c in hits]
    if not hits:
        return "unknown"
    return hits[0] if len(hits) == 1 else lexicon.multiple


def test_lexicon_on_real_coco_captions_matches_a_plain_reference(shared_data):
    frame = pl.read_csv(shared_data / "coco5k_clipscore" / "val_clip_scores.tsv", separator="\t", quote_char=None)
    assert frame.columns == ["id", "caption", "file_name", "clip_score"]
    assert frame.height == 5000
    captions = frame["caption"].to_list()
    for name in ("caption_gender", "occupations"):
        lex = load_lexicon(name)
        labels = lexicon_attribute(frame["caption"], lex).to_list()
        assert labels == [_reference_label(c, lex) for c in captions], name
    gender = lexicon_attribute(frame["caption"], load_lexicon("caption_gender"))
    counts = gender.value_counts().to_dict(as_series=False)
    by = dict(zip(counts["caption_gender"], counts["count"], strict=True))
    # COCO captions name men more often than women (a known skew of the data set).
    assert by["male"] > by["female"] > by["mixed"] > 0
    assert by["unknown"] > 2000
