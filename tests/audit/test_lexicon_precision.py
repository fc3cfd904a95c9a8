"""Lexicon precision on the hand-checked COCO sample (benchmarks/data/lexicon_check.csv) and the rule cases.

The bars below are the figures stated in README.md ("Caption lexicons: measured precision"); the sample is in the
repository, so this test does not need ../shared/data.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from sanitize.audit import lexicon_attribute, load_lexicon

ROOT = Path(__file__).resolve().parents[2]
# README bars: precision of the shipped lexicons on the checked sample.
GENDER_RANDOM_PRECISION = {"female": 1.00, "male": 1.00, "mixed": 1.00}
GENDER_PRONOUN_ONLY_PRECISION = {"female": 1.00, "male": 1.00}
OCCUPATION_ALL_HITS_PRECISION = 0.99
OCCUPATION_RANDOM_COVERAGE = 0.76


def _bench():
    spec = importlib.util.spec_from_file_location("lexicon_precision", ROOT / "benchmarks" / "lexicon_precision.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def scores() -> dict:
    bench = _bench()
    lexicons = {k: load_lexicon(v) for k, v in bench.LEXICONS.items()}
    labellers = {k: bench.shipped_labeller(v) for k, v in lexicons.items()}
    return bench.evaluate(bench.read_check(), labellers, lexicons)


def test_checked_sample_is_the_documented_one():
    check = _bench().read_check()
    random = check.filter(check["stratum"].str.contains("random"))
    assert random.height == 400
    assert set(random["gender"]) <= {"female", "male", "mixed", "unknown"}
    assert check["id"].n_unique() == check.height


@pytest.mark.parametrize(("cls", "bar"), GENDER_RANDOM_PRECISION.items())
def test_gender_precision_on_random_captions(scores, cls, bar):
    assert scores["gender"]["random"][cls]["precision"] >= bar


@pytest.mark.parametrize(("cls", "bar"), GENDER_PRONOUN_ONLY_PRECISION.items())
def test_gender_precision_on_pronoun_only_captions(scores, cls, bar):
    assert scores["gender"]["pronoun_only"][cls]["precision"] >= bar


def test_occupation_precision_and_coverage(scores):
    assert scores["occupation"]["all_hits"]["any"]["precision"] >= OCCUPATION_ALL_HITS_PRECISION
    assert scores["occupation"]["random"]["any"]["coverage"] >= OCCUPATION_RANDOM_COVERAGE


@pytest.mark.parametrize(
    ("caption", "label"),
    [
        ("A black dog running after his rope toy", "unknown"),
        ("The dog is playing catch with his master.", "unknown"),
        ("A bathroom with his and her sinks.", "unknown"),
        ("A man-made lake next to a road.", "unknown"),
        ("A snowman and a manhole cover.", "unknown"),
        ("Game boy cartridges on a table.", "unknown"),
        ("A king size bed in a hotel room.", "unknown"),
        ("A woman's hat on a table.", "female"),
        ("The women's team on a field.", "female"),
        ("Two men at a bus stop.", "male"),
        ("A men's bicycle leaning on a wall.", "male"),
        ("A man and a woman on a bench.", "mixed"),
        ("He rides a horse.", "male"),
        ("A surfer, surfboard under his arm.", "male"),
        ("A skier bending down as she goes down the slope.", "female"),
        ("A woman walking a dog in his sweater.", "female"),
        ("A man watches as she serves the ball.", "mixed"),
    ],
)
def test_gender_rule_cases(caption, label):
    assert lexicon_attribute([caption], load_lexicon("caption_gender")).to_list() == [label]


@pytest.mark.parametrize(
    ("caption", "label"),
    [
        ("An mp3 player on a desk.", "unknown"),
        ("A vacuum cleaner in a hallway.", "unknown"),
        ("A man wearing a chef's hat.", "unknown"),
        ("A family cook-out in a yard.", "unknown"),
        ("A dvd player next to a tennis player.", "athlete"),
        ("A batter swings at the ball.", "athlete"),
        ("Two police officers on horses.", "police"),
        ("A surfing instructor on a beach.", "teacher"),
    ],
)
def test_occupation_rule_cases(caption, label):
    assert lexicon_attribute([caption], load_lexicon("occupations")).to_list() == [label]
