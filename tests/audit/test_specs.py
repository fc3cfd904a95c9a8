from __future__ import annotations

import pytest

from sanitize.audit.specs import builtin_attribute_specs, load_attribute_spec, load_lexicon
from sanitize.errors import ConfigError


def test_builtin_attribute_specs_load_with_no_person_option():
    names = set(builtin_attribute_specs())
    assert {"perceived_gender", "age", "perceived_race", "skin_tone"} <= names
    for name in names:
        spec = load_attribute_spec(name)
        assert "no_person" in spec.classes
        assert spec.not_applicable == ("no_person",)
        assert all(len(p) >= 2 for p in spec.prompts), name
        assert spec.source == f"builtin:{name}"
    race = load_attribute_spec("perceived_race")
    assert len([c for c in race.classes if c != "no_person"]) == 7


def test_builtin_lexicons_load():
    gender = load_lexicon("caption_gender")
    assert gender.classes == ("female", "male")
    assert gender.multiple == "mixed"
    assert {"woman", "women", "girl", "mother"} <= set(gender.terms[0])
    assert {"man", "men", "boy"} <= set(gender.terms[1])
    assert {"she", "her"} <= set(gender.pronouns[0]) and {"he", "his"} <= set(gender.pronouns[1])
    assert {"person", "player"} <= set(gender.persons) and "dog" in gender.non_persons
    assert "man made" in gender.exclude
    occupations = load_lexicon("occupations")
    assert {"nurse", "doctor", "engineer", "ceo", "cleaner", "teacher"} <= set(occupations.classes)


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_spec_class_without_prompts_is_a_config_error(tmp_path):
    path = _write(
        tmp_path,
        "bad.toml",
        'name = "x"\n[[classes]]\nlabel = "a"\nprompts = ["a photo of a."]\n[[classes]]\nlabel = "b"\nprompts = []\n',
    )
    with pytest.raises(ConfigError, match=r"bad\.toml: class 'b': has no prompts"):
        load_attribute_spec(path)


def test_spec_class_with_missing_prompts_key_is_a_config_error(tmp_path):
    path = _write(tmp_path, "bad.toml", '[[classes]]\nlabel = "a"\nprompts = ["x"]\n[[classes]]\nlabel = "b"\n')
    with pytest.raises(ConfigError, match="class 'b': has no prompts"):
        load_attribute_spec(path)


TWO = '[[classes]]\nlabel = "a"\nprompts = ["x"]\n[[classes]]\nlabel = "b"\nprompts = ["y"]\n'


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('name = "x"\n', "at least two"),
        ('[[classes]]\nlabel = "a"\nprompts = ["x"]\n[[classes]]\nlabel = "a"\nprompts = ["y"]\n', "duplicate class"),
        ('[[classes]]\nlabel = "unknown"\nprompts = ["x"]\n[[classes]]\nlabel = "b"\nprompts = ["y"]\n', "reserved"),
        ('[[classes]]\nlabel = "a"\nprompts = ["  "]\n[[classes]]\nlabel = "b"\nprompts = ["y"]\n', "empty prompt"),
        ("margin = 1.5\n" + TWO, "margin"),
        ('not_applicable = ["c"]\n' + TWO, "not_applicable label 'c'"),
        ("[[classes]\n", "not valid TOML"),
    ],
)
def test_bad_specs_name_file_and_entry(tmp_path, body, message):
    path = _write(tmp_path, "spec.toml", body)
    with pytest.raises(ConfigError, match=message) as info:
        load_attribute_spec(path)
    assert "spec.toml" in str(info.value)


def test_missing_spec_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_attribute_spec(tmp_path / "nope.toml")


def test_a_spec_that_is_not_text_is_a_config_error(tmp_path):
    path = tmp_path / "binary.toml"
    path.write_bytes(b"\xff\xfe\x00garbage")
    for load in (load_attribute_spec, load_lexicon):
        with pytest.raises(ConfigError, match="binary.toml: not valid TOML"):
            load(path)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('[classes]\nfemale = ["woman", "girl", "woman"]\n', "class 'female': duplicate term 'woman'"),
        ('[classes]\nfemale = ["woman"]\nmale = ["Woman"]\n', "duplicate term 'woman' \\(also in class 'female'\\)"),
        ('[classes]\nfemale = ["woman", ""]\n', "class 'female': empty term ''"),
        ('[classes]\nfemale = ["woman", "   "]\n', "empty term"),
        ("[classes]\nfemale = []\n", "class 'female': has no terms"),
        ('name = "x"\n', "non-empty \\[classes\\]"),
        ('multiple = "female"\n[classes]\nfemale = ["woman"]\n', "also a class"),
        ('[classes]\nfemale = ["woman"]\n[pronouns]\nmale = ["he"]\n', "'male', which is not a class"),
        ('[classes]\nfemale = ["woman", "she"]\n[pronouns]\nfemale = ["she"]\n', "duplicate word 'she'"),
        ('[classes]\nfemale = ["woman"]\n[referents]\nanimal = ["dog"]\n', "may only hold 'person' and 'other'"),
        ('exclude = "man made"\n[classes]\nfemale = ["woman"]\n', "exclude: must be a list"),
    ],
)
def test_bad_lexicons_name_file_and_entry(tmp_path, body, message):
    path = _write(tmp_path, "lex.toml", body)
    with pytest.raises(ConfigError, match=message) as info:
        load_lexicon(path)
    assert "lex.toml" in str(info.value)


def test_user_lexicon_file_adds_an_attribute_without_code(tmp_path):
    path = _write(tmp_path, "vehicles.toml", 'name = "vehicle"\n[classes]\ncar = ["car", "Cars"]\nbike = ["bicycle"]\n')
    lex = load_lexicon(path)
    assert lex.name == "vehicle"
    assert lex.terms == (("car", "cars"), ("bicycle",))
    assert lex.source == str(path)
