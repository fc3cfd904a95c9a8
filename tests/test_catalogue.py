"""The README's "What we tried" table is the bad-input tests' parameters, rendered: it cannot drift from them."""

from __future__ import annotations

from tools.catalogue import README, render, replaced


def test_readme_catalogue_is_the_tests_table():
    text = README.read_text()
    assert replaced(text, render()) == text, "README's catalogue is stale: run python tools/catalogue.py --write"
    assert render().count("\n") > 60  # every dedup and inspect case is a row
