"""Packaging: every package folder is listed in pyproject.toml, and no top-level `cli` module is installed."""

from __future__ import annotations

import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]


def test_every_package_is_listed():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "sanitize").rglob("__init__.py")}
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"
    assert "cli" not in listed and "sanitize_cli" in listed


def test_cli_package_is_importable_under_its_unique_name():
    import sanitize_cli.main

    assert Path(sanitize_cli.main.__file__).parent.name == "cli"


def test_package_data_ships_the_demo_model():
    # The demo runs on a fresh install: its architecture, trained weights, model card and age spec must be package
    # data (pyproject's [tool.setuptools.package-data] globs, as setuptools expands them under sanitize/).
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["sanitize"]
    shipped = {p for pattern in patterns for p in (REPO / "sanitize").glob(pattern) if p.is_file()}
    models = REPO / "sanitize" / "resources" / "models"
    needed = [models / "sanitize-demo-clip.json", models / "sanitize-demo-clip.safetensors",
              models / "sanitize-demo-clip.md", REPO / "sanitize" / "resources" / "demo" / "drawn_age.toml"]
    assert all(p in shipped for p in needed), sorted(str(p) for p in set(needed) - shipped)
    assert (models / "sanitize-demo-clip.safetensors").stat().st_size <= 20_000_000
