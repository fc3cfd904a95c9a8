"""`sanitize embed`: CLIP image and caption embeddings for a manifest, into a run folder."""

from __future__ import annotations

import click
from tqdm import tqdm

from sanitize.clip.models import DEFAULT_MODEL, DEFAULT_PRETRAINED, load_clip
from sanitize.io.images import DEFAULT_MAX_PIXELS
from sanitize.io.runfolder import RunFolder
from sanitize.pipeline.stages.embed import run_embed_stage
from sanitize_cli.main import cli, emit
from sanitize_cli.options import json_option, manifest_options, open_manifest_from


@cli.command()
@click.argument("manifest")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Run folder to write.")
@manifest_options
@click.option("--model", default=DEFAULT_MODEL, show_default=True,
              help="open_clip architecture, local-dir:PATH or hf-hub:ORG/REPO.")
@click.option("--pretrained", default=DEFAULT_PRETRAINED, show_default=True,
              help="Weights tag, checkpoint file path, or 'none' for random weights (tests only).")
@click.option("--device", default=None, help="cpu, cuda, cuda:1 … (default: CUDA when present, else CPU).")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16"]), default=None,
              help="Autocast precision (default fp16 on GPU, fp32 on CPU).")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=0), help="Decoding processes.")
@click.option("--max-pixels", default=DEFAULT_MAX_PIXELS, show_default=True, type=click.IntRange(min=1),
              help="Larger images are recorded as too_large (decompression-bomb guard).")
@json_option
def embed(manifest, out, preset, id_col, caption_col, image_col, url_col, image_root, model, pretrained, device,
          precision, batch_size, workers, max_pixels, as_json):
    """Embed the images and captions of MANIFEST with CLIP into the run folder OUT (resumable)."""
    clip = load_clip(model, pretrained, device=device, precision=precision)  # fails fast, before any data is read
    m = open_manifest_from(manifest, preset, id_col, caption_col, image_col, url_col, image_root)
    run = RunFolder.create(out, m)
    with tqdm(total=len(m), desc="embed", unit="img", disable=as_json, leave=False) as bar:
        stats = run_embed_stage(m, run, clip, batch_size=batch_size, num_workers=workers, max_pixels=max_pixels,
                                progress=bar.update)
    dropped = ", ".join(f"{k} {v}" for k, v in stats["dropped"].items()) or "none"
    emit(stats, as_json, [f"embedded {stats['kept']} of {stats['rows_in']} rows into {out} "
                          f"({stats['seconds']:.1f} s); not embedded: {dropped}"])
