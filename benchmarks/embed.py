"""Embedding throughput: the pipelined `embed_shard` against a naive one-row-at-a-time loop.

    python benchmarks/embed.py [--quick] [--images N] [--workers 0,1,2] [--batch-size 32] [--model ViT-B-32]

Synthetic 640×480 JPEGs (smooth colour fields plus noise, quality 90, about photo-sized files) are written to a
temporary folder. The model has random weights (`pretrained=None`): the same architecture, so the same compute
cost as the real weights. Both methods do the same work per row — read the file, decode, preprocess, embed the
image and its caption — the naive loop one row at a time in one Python thread, `embed_shard` in batches with N
decode workers (and once with `text=False`: images only). Throughput counts rows (images) per second of wall time,
after one warm-up pass, the best of three passes. Each CPU row is set against its compute limit: the towers' FLOPs
per row (counted by torch's FLOP counter, `tower_flops`) at the GEMM rate measured here in that precision for the
towers' shapes (`gemm_gflops`). With CUDA, the pipeline is also measured on the GPU at fp16: at --batch-size, then
at the batch the GPU's memory holds (`sanitize.clip.batch_size.gpu_batch_size`, over eight such batches of rows),
and the image tower alone at that batch (its ceiling without decoding). `--model ViT-L-14` measures the larger
model. Prints a markdown table and writes benchmarks/results/embed.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sanitize.clip.batch_size import gpu_batch_size  # noqa: E402
from sanitize.clip.embed import embed_shard  # noqa: E402
from sanitize.clip.models import ClipModel, _encode_text, load_clip  # noqa: E402
from sanitize.io.atomic import write_json  # noqa: E402
from sanitize.io.images import decode_image  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "embed.json"


def write_images(folder: Path, n: int, seed: int) -> list[str]:
    """n photo-like 640×480 JPEGs: a smooth upsampled colour field plus pixel noise."""
    rng = np.random.default_rng(seed)
    names = []
    for i in range(n):
        field = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((640, 480), Image.BICUBIC)
        pixels = np.asarray(field, dtype=np.int16) + rng.integers(-20, 21, (480, 640, 3), dtype=np.int16)
        name = f"{i:06d}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / name, "JPEG", quality=90)
        names.append(name)
    return names


def naive_loop(model: ClipModel, folder: Path, names: list[str], captions: list[str]) -> None:
    """Read, decode, preprocess and embed one image and its caption at a time."""
    for name, caption in zip(names, captions, strict=True):
        pixels = model.preprocess(decode_image((folder / name).read_bytes()))
        model.encode_images(pixels.unsqueeze(0))
        model.encode_text([caption])

def best_of(fn, repeat: int = 3) -> float:
    """The fastest of `repeat` timed calls of `fn` (seconds): the least disturbed by other jobs."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def gemm_gflops(rows: int = 1600, width: int = 768, dtype: torch.dtype = torch.float32) -> float:
    """GFLOP/s of the matrix products of a ViT-B layer in `dtype` (attention in-projection, out-projection and the
    two MLP products, `rows` tokens: a batch of 32 images × 50 tokens), each warmed up and then timed as the best of
    10 calls (the least disturbed by other work): their total FLOPs over their total best time."""
    flops = seconds = 0.0
    for k, m in ((width, 3 * width), (width, width), (width, 4 * width), (4 * width, width)):
        a, b = torch.randn(rows, k, dtype=dtype), torch.randn(k, m, dtype=dtype)
        for _ in range(3):
            torch.mm(a, b)
        flops += 2 * rows * k * m
        seconds += best_of(lambda a=a, b=b: torch.mm(a, b), 10)
    return flops / seconds / 1e9


def tower_flops(fn) -> int:
    """FLOPs of one call of `fn`, counted by torch's FLOP counter with autograd on.

    Not under inference mode: there nn.MultiheadAttention takes its fused fast path
    (`aten::_native_multi_head_attention`), which the counter does not see, and the image tower's attention
    projections (a third of its FLOPs) would go uncounted (measured: 5.89 instead of 8.73 GFLOP per ViT-B-32 image).
    """
    from torch.utils.flop_counter import FlopCounterMode

    with torch.enable_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def timed(fn, repeat: int = 3) -> float:
    """Seconds of the fastest of `repeat` calls of `fn` (the least disturbed by other jobs on the machine)."""
    return best_of(fn, repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few images, workers 0 and 2 only")
    parser.add_argument("--images", type=int, default=None, help="images per measurement (default 96; quick 24)")
    parser.add_argument("--workers", default=None, help="comma-separated decode worker counts (default 0,1,2)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    n = args.images or (24 if args.quick else 96)
    workers = [int(w) for w in (args.workers or ("0,2" if args.quick else "0,1,2")).split(",")]

    load_before = os.getloadavg()[0]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="sanitize-bench-embed-") as tmp:
        folder = Path(tmp)
        names = write_images(folder, n, args.seed)
        size_kb = sum((folder / name).stat().st_size for name in names) / n / 1024
        captions = [f"a synthetic photo number {i} of a colourful scene" for i in range(n)]
        table = pa.table({"uid": [str(i) for i in range(n)], "caption": captions, "image": names})

        cpu = load_clip(args.model, None, device="cpu", seed=args.seed)
        warm = table.slice(0, min(n, args.batch_size))
        embed_shard(warm, cpu, image_root=folder, batch_size=args.batch_size, num_workers=0)
        naive_loop(cpu, folder, names[:2], captions[:2])
        size = cpu.input_size or 224
        flops = {"image": tower_flops(lambda: cpu.network.encode_image(torch.zeros(1, 3, size, size))),
                 "text": tower_flops(lambda: _encode_text(cpu.network, cpu.tokenizer(captions[:1])))}
        gemm = {"fp32": gemm_gflops(), "bf16": gemm_gflops(dtype=torch.bfloat16)}

        seconds = timed(lambda: naive_loop(cpu, folder, names, captions))
        rows.append(_row("naive loop", "cpu", "fp32", 0, 1, n, seconds))
        for w in workers:
            seconds = timed(
                lambda w=w: embed_shard(table, cpu, image_root=folder, batch_size=args.batch_size, num_workers=w)
            )
            rows.append(_row("embed_shard", "cpu", "fp32", w, args.batch_size, n, seconds))
        w = max(workers)
        seconds = timed(lambda: embed_shard(table, cpu, image_root=folder, batch_size=args.batch_size, num_workers=w,
                                            text=False))
        rows.append(_row("embed_shard, images only (--no-text)", "cpu", "fp32", w, args.batch_size, n, seconds))
        # The opt-in speed-ups: draft decoding of large JPEGs, bf16 weights (CPUs with bf16 instructions).
        seconds = timed(lambda: embed_shard(table, cpu, image_root=folder, batch_size=args.batch_size, num_workers=w,
                                            draft_decode=True))
        rows.append(_row("embed_shard, draft decode", "cpu", "fp32", w, args.batch_size, n, seconds))
        half = load_clip(args.model, None, device="cpu", precision="bf16", seed=args.seed)
        embed_shard(warm, half, image_root=folder, batch_size=args.batch_size, num_workers=0)
        for draft in (False, True):
            seconds = timed(lambda draft=draft: embed_shard(table, half, image_root=folder,
                                                            batch_size=args.batch_size, num_workers=w,
                                                            draft_decode=draft))
            rows.append(_row("embed_shard" + (", draft decode" if draft else ""), "cpu", "bf16", w,
                             args.batch_size, n, seconds))

        if torch.cuda.is_available():
            gpu = load_clip(args.model, None, device="cuda", precision="fp16", seed=args.seed)
            embed_shard(warm, gpu, image_root=folder, batch_size=args.batch_size, num_workers=0)
            for w in sorted({max(workers), os.cpu_count() or 1}):
                seconds = timed(
                    lambda w=w: embed_shard(table, gpu, image_root=folder, batch_size=args.batch_size, num_workers=w)
                )
                rows.append(_row("embed_shard", "cuda", "fp16", w, args.batch_size, n, seconds))
            # The batch set by the GPU's memory, over enough rows (the same files again) to fill eight batches.
            batch = gpu_batch_size(gpu, limit=1024)
            many = max(n, 8 * batch)
            big = pa.table({"uid": [str(i) for i in range(many)], "caption": [captions[i % n] for i in range(many)],
                            "image": [names[i % n] for i in range(many)]})
            w = os.cpu_count() or 1
            seconds = timed(lambda: embed_shard(big, gpu, image_root=folder, batch_size=batch, num_workers=w))
            rows.append(_row("embed_shard, batch by GPU memory", "cuda", "fp16", w, batch, many, seconds))
            zeros = torch.zeros((batch, 3, size, size))
            seconds = timed(lambda: [gpu.encode_images(zeros) for _ in range(8)])
            rows.append(_row("image tower alone (no decoding)", "cuda", "fp16", 0, batch, 8 * batch, seconds))

    naive = rows[0]["images_per_s"]
    for row in rows:
        row["speedup_vs_naive"] = round(row["images_per_s"] / naive, 2)
        if row["device"] == "cpu":
            row_flops = flops["image"] + (0 if "images only" in row["method"] else flops["text"])
            row["limit_images_per_s"] = round(gemm[row["precision"]] * 1e9 / row_flops, 2)
            row["share_of_limit"] = round(row["images_per_s"] / row["limit_images_per_s"], 3)
    machine = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        # Other jobs on the machine share the CPUs; the 1-minute load average says how much.
        "load_avg_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    config = {
        "model": args.model,
        "pretrained": None,
        "images": n,
        "jpeg_kb_mean": round(size_kb, 1),
        "image_size": "640x480",
        "batch_size": args.batch_size,
        "quick": args.quick,
        "gflop_per_image": {k: round(v / 1e9, 3) for k, v in flops.items()},
        "gemm_gflops": {k: round(v, 1) for k, v in gemm.items()},
    }
    write_json(RESULTS, {"benchmark": "embed", "machine": machine, "config": config, "results": rows})

    print(
        f"{args.model} (random weights), {n} synthetic 640x480 JPEGs (~{size_kb:.0f} KB), image + caption per row; "
        f"{machine['cpu_count']} CPUs, torch {machine['torch']} ({machine['torch_threads']} threads), "
        f"GPU: {machine['gpu'] or 'none'}, load average before/after {machine['load_avg_1min_before_after']}\n"
    )
    print(f"towers: {config['gflop_per_image']} GFLOP per image; GEMM here {config['gemm_gflops']} GFLOP/s\n")
    print("| method | device | precision | decode workers | batch | images | seconds | images/s | vs naive | "
          "limit images/s | share of limit |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        share = f"{r['share_of_limit']:.0%}" if "share_of_limit" in r else "–"
        print(
            f"| {r['method']} | {r['device']} | {r['precision']} | {r['workers']} | {r['batch_size']} | "
            f"{r['images']} | {r['seconds']:.1f} | {r['images_per_s']:.1f} | {r['speedup_vs_naive']:.2f}x | "
            f"{r.get('limit_images_per_s', '–')} | {share} |"
        )
    print(f"\nwrote {RESULTS.relative_to(REPO)}")


def _row(method: str, device: str, precision: str, workers: int, batch: int, n: int, seconds: float) -> dict:
    return {
        "method": method,
        "device": device,
        "precision": precision,
        "workers": workers,
        "batch_size": batch,
        "images": n,
        "seconds": round(seconds, 3),
        "images_per_s": round(n / seconds, 2),
    }


if __name__ == "__main__":
    main()
