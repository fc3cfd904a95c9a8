"""Make docs/label-serve.png: the `sanitize label serve` page on the offline demo, in headless Chromium.

    python docs/screenshot_label_serve.py [--workdir DIR] [--out docs/label-serve.png] [--chromium PATH]

Builds a small demo sample, embeds it with the demo model, runs the demo's scripted labeling rounds and
`sanitize classify` (so the page has a certificate to show), then opens the page in headless Chromium
(Playwright), labels one batch with the sample's planted truth and saves two views, stacked: an item (its
image revealed: the demo's images are abstract shapes) and the finished batch with the retrained metrics.
Needs `pip install playwright` and Debian's `chromium` (nothing is downloaded).
"""

from __future__ import annotations

import argparse
import io
import logging
import shutil
import tempfile
import threading
from pathlib import Path

import polars as pl

from sanitize.clip.defaults import DEMO_MODEL
from sanitize.clip.models import load_clip, packaged_weights
from sanitize.demo.run import scripted_labeling
from sanitize.demo.sample import make_sample
from sanitize.io.atomic import atomic_path
from sanitize.io.manifest import open_manifest
from sanitize.io.runfolder import RunFolder
from sanitize.labelserver import LabelingSession, LabelServer
from sanitize.pipeline.stage import run_stage
from sanitize.pipeline.stages.classify import ClassifyConfig, ClassifyStage
from sanitize.pipeline.stages.embed import EmbedConfig, EmbedStage

CATEGORY = "violence"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def build_demo(workdir: Path) -> tuple[RunFolder, Path, pl.DataFrame]:
    """A 400-row demo sample, embedded, with the demo's labeling rounds done and certified."""
    info = make_sample(workdir / "sample", n_rows=400, seed=0)
    manifest = open_manifest(info.manifest)
    run = RunFolder.create(workdir / "run", manifest)
    model = load_clip(DEMO_MODEL, str(packaged_weights()), device="cpu")
    run_stage(EmbedStage(EmbedConfig(batch_size=64, workers=0), model=model), run)
    truth = pl.read_parquet(info.truth)
    project = scripted_labeling(workdir / "project", run, truth, seed=0, batch=20, audit=150)
    run_stage(ClassifyStage(ClassifyConfig(project=str(project.path))), run)
    return run, project.path, truth


def shoot(run: RunFolder, project_dir: Path, truth: pl.DataFrame, out: Path, chromium: str) -> None:
    from PIL import Image
    from playwright.sync_api import expect, sync_playwright

    from sanitize.safety.project import LabelProject

    label_of = dict(zip(truth["uid"].to_list(), truth[CATEGORY].to_list(), strict=True))
    session = LabelingSession(LabelProject.open(project_dir), run, CATEGORY, n=12, annotator="alex")
    session.load()
    server = LabelServer(session, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    shots = []
    try:
        with tempfile.TemporaryDirectory() as profile, sync_playwright() as p:
            context = p.chromium.launch_persistent_context(profile, executable_path=chromium, headless=True,
                                                           args=FLAGS, viewport={"width": 1100, "height": 600})
            page = context.pages[0] if context.pages else context.new_page()
            page.goto(server.url)
            expect(page.locator("#start")).to_be_visible()
            page.keyboard.press("Enter")
            expect(page.locator("#label")).to_be_visible()
            count = page.locator("#count")

            def answer(k: int) -> None:
                page.keyboard.press("y" if label_of[page.locator("#uid").inner_text()] else "n")
                expect(count).to_have_text(f"{k + 1} of {len(session.uids)}")

            for k in range(4):
                answer(k)
            page.keyboard.press("b")
            expect(page.locator("#pic")).to_have_class("pic")
            page.wait_for_timeout(300)  # the un-blur transition
            shots.append(page.screenshot())
            for k in range(4, len(session.uids)):
                answer(k)
            expect(page.locator("#metrics")).to_contain_text("certified recall", timeout=30_000)
            expect(page.locator("#metrics table")).to_be_visible()
            page.wait_for_timeout(4500)  # let the last toast fade
            shots.append(page.screenshot())
            context.close()
    finally:
        server.shutdown()
        server.server_close()
    images = [Image.open(io.BytesIO(shot)).convert("RGB") for shot in shots]
    gap = 12
    sheet = Image.new("RGB", (max(i.width for i in images), sum(i.height for i in images) + gap), "#c9ced6")
    sheet.paste(images[0], (0, 0))
    sheet.paste(images[1], (0, images[0].height + gap))
    with atomic_path(out) as tmp:
        sheet.save(tmp, format="PNG", optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, help="Folder for the demo (default: a temporary one).")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "label-serve.png")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        run, project_dir, truth = build_demo(workdir)
        shoot(run, project_dir, truth, args.out, args.chromium)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
