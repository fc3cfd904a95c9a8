from __future__ import annotations

from pathlib import Path

import pytest

from sanitize.errors import ConfigError
from sanitize.safety.spec import default_spec_path, load_spec

GOOD = """
[defaults]
target_recall = 0.9

[categories.ai_generated]
description = "Images made by a generative model."
guidelines = "1 if synthetic."
prompts = ["an AI generated image", "a digital render"]
confidence = 0.99
classifier = "mlp"

[categories.hate_symbol]
description = "Hate symbols."
prompts = ["a hate symbol"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "categories.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_shipped_spec_has_sexual_and_violence():
    spec = load_spec()
    assert spec.path == default_spec_path()
    assert spec.names == ["sexual", "violence"]
    sexual = spec.category("sexual")
    assert sexual.prompts and sexual.guidelines and 0 < sexual.target_recall < 1
    assert sexual.target_recall == 0.99  # category value beats [defaults]
    assert spec.category("violence").target_recall == 0.95


def test_user_categories_without_code(tmp_path):
    spec = load_spec(write(tmp_path, GOOD))
    ai = spec.category("ai_generated")
    assert ai.prompts == ("an AI generated image", "a digital render")
    assert (ai.target_recall, ai.confidence, ai.classifier) == (0.9, 0.99, "mlp")
    hate = spec.category("hate_symbol")
    assert (hate.guidelines, hate.confidence, hate.classifier) == ("", 0.95, "logistic")


def test_unknown_category_names_known_ones(tmp_path):
    spec = load_spec(write(tmp_path, GOOD))
    with pytest.raises(ConfigError, match=r"unknown category 'nudity' \(known: ai_generated, hate_symbol\)"):
        spec.category("nudity")


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('description = "d"\n', r"category 'x': key 'prompts' is missing"),
        ('description = "d"\nprompts = []\n', r"category 'x': key 'prompts' must be a non-empty list"),
        ('description = "d"\nprompts = ["a", ""]\n', r"key 'prompts' must be a non-empty list"),
        ('description = "d"\nprompts = ["a"]\ntarget_recall = 1.0\n', r"category 'x': key 'target_recall' is 1.0"),
        ('description = "d"\nprompts = ["a"]\ntarget_recall = 0\n', r"key 'target_recall' is 0"),
        ('description = "d"\nprompts = ["a"]\nconfidence = true\n', r"key 'confidence' is True"),
        ('description = "d"\nprompts = ["a"]\nconfidence = "high"\n', r"key 'confidence' is 'high'"),
        ('description = "d"\nprompts = ["a"]\nclassifier = "svm"\n', r"key 'classifier' is 'svm'"),
        ('description = "d"\nprompts = ["a"]\nprompt = ["typo"]\n', r"category 'x': unknown key 'prompt'"),
        ('prompts = ["a"]\n', r"category 'x': key 'description' is missing"),
    ],
)
def test_invalid_category_names_file_category_and_key(tmp_path, table, message):
    path = write(tmp_path, "[categories.x]\n" + table)
    with pytest.raises(ConfigError, match=message) as info:
        load_spec(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"no categories"),
        ("[categories.x\n", r"not valid TOML"),
        ('[categories."Bad Name"]\ndescription = "d"\nprompts = ["a"]\n', r"name must match"),
        ("[defaults]\ntarget = 0.5\n[categories.x]\n", r"\[defaults\]: unknown key 'target'"),
        ("[categorie.x]\n", r"unknown top-level key 'categorie'"),
    ],
)
def test_invalid_files(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_spec(write(tmp_path, text))


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_spec(tmp_path / "nope.toml")
