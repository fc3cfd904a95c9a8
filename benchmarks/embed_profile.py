"""Where embedding time goes on this machine, against the arithmetic limit.

    python benchmarks/embed_profile.py [--images 64] [--batch-size 32] [--model ViT-B-32] [--threads N]

Synthetic 640×480 JPEGs (as benchmarks/embed.py makes them) and the model with random weights (same compute as the
real ones). Each component is timed alone, in this process, after a warm-up: reading + JPEG decode, decode with
Pillow's draft mode (the decoder scales by 1/2, 1/4 or 1/8 while decoding when the image is at least twice the
model's input), the model's preprocessing (resize, crop, normalise), tokenization, the image tower and the text tower
per batch. The arithmetic limit is the towers' FLOPs (counted by torch's FLOP counter on one batch) at the GEMM rate
measured here (float32 matrix products of the towers' shapes). Prints a table and writes
benchmarks/results/embed_profile.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.embed import best_of, gemm_gflops, tower_flops, write_images  # noqa: E402
from sanitize.clip.models import _encode_text, load_clip  # noqa: E402
from sanitize.io.atomic import write_json  # noqa: E402
from sanitize.io.images import decode_image  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "embed_profile.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_clip(args.model, None, device="cpu", seed=0)
    size = model.input_size or 224
    b = args.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        names = write_images(folder, args.images, seed=0)
        blobs = [(folder / name).read_bytes() for name in names]
        captions = [f"a photo of a scene number {i} with a few things in it" for i in range(b)]

        def decode_all(draft: bool) -> list:
            out = []
            for data in blobs:
                image = decode_image(data, draft=(size, size) if draft else None)
                out.append(image)
            return out

        images = decode_all(False)
        pixels = torch.stack([model.preprocess(im) for im in images[:b]])
        tokens = model.tokenizer(captions)
        timings = {
            "read + decode (full size)": best_of(lambda: decode_all(False)) / len(blobs),
            "read + decode (draft)": best_of(lambda: decode_all(True)) / len(blobs),
            "preprocess (resize, crop, normalise)": best_of(lambda: [model.preprocess(im) for im in images]) / len(
                images),
            "tokenize": best_of(lambda: model.tokenizer(captions)) / b,
            "image tower": best_of(lambda: model.encode_images(pixels)) / b,
            "text tower": best_of(lambda: model.encode_text(captions, batch_size=b)) / b,
        }
        image_flops = tower_flops(lambda: model.network.encode_image(pixels)) / b
        # the text tower as ClipModel runs it: on the batch's own length, not the 77-token context
        text_flops = tower_flops(lambda: _encode_text(model.network, tokens)) / b
    gflops = gemm_gflops()
    limit = gflops * 1e9 / (image_flops + text_flops)
    per_row = timings["read + decode (full size)"] + timings["preprocess (resize, crop, normalise)"] + timings[
        "tokenize"] + timings["image tower"] + timings["text tower"]
    result = {
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "platform": platform.platform(), "load_average": os.getloadavg()},
        "arguments": vars(args),
        "seconds_per_image": {k: round(v, 5) for k, v in timings.items()},
        "gflop_per_image": {"image_tower": round(image_flops / 1e9, 2), "text_tower": round(text_flops / 1e9, 2)},
        "gemm_gflops": round(gflops, 1),
        "limit_images_per_s": round(limit, 2),
        "serial_images_per_s": round(1 / per_row, 2),
        "towers_gflops": round((image_flops + text_flops) / (timings["image tower"] + timings["text tower"]) / 1e9, 1),
    }
    write_json(RESULTS, result)
    print("| component | ms per image | share of a serial pass |\n|---|---:|---:|")
    for name, seconds in timings.items():
        share = "" if name == "read + decode (draft)" else f"{seconds / per_row:.0%}"
        print(f"| {name} | {seconds * 1000:.1f} | {share} |")
    print(f"\ntowers: {image_flops / 1e9:.2f} + {text_flops / 1e9:.2f} GFLOP per image at "
          f"{result['towers_gflops']} GFLOP/s; GEMM here {gflops:.0f} GFLOP/s -> limit {limit:.1f} images/s; "
          f"serial pass {1 / per_row:.2f} images/s; load {os.getloadavg()}")


if __name__ == "__main__":
    main()
