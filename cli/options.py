"""Options shared by several commands."""

from __future__ import annotations

import click

from sanitize.io.manifest import PRESETS, Manifest, open_manifest

json_option = click.option("--json", "as_json", is_flag=True, help="Print a JSON summary instead of text.")


def manifest_options(f):
    """The options that say how to read a manifest (preset and explicit column mapping)."""
    for opt in reversed([
        click.option("--preset", type=click.Choice(["auto", *PRESETS]), default="auto", show_default=True,
                     help="Layout of the manifest (the tool that wrote it)."),
        click.option("--id-col", help="Column with a stable unique id per row."),
        click.option("--caption-col", help="Column with the caption."),
        click.option("--image-col", help="Column with the image path (relative to --image-root)."),
        click.option("--url-col", help="Column with the image URL."),
        click.option("--image-root", type=click.Path(file_okay=False), help="Folder that image paths are relative to."),
    ]):
        f = opt(f)
    return f


def open_manifest_from(manifest: str, preset: str, id_col, caption_col, image_col, url_col, image_root) -> Manifest:
    return open_manifest(manifest, preset=preset, id_col=id_col, caption_col=caption_col, image_col=image_col,
                         url_col=url_col, image_root=image_root)
