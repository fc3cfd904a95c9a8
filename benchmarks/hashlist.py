"""Benchmark the hashlist stage: screening images against lists of 1M hashes, exact and PDQ.

    python benchmarks/hashlist.py [--images 2000] [--list-size 1000000] [--size 256] [--queries 1000]

Draws `images` JPEGs with Pillow (size × size, random gradients and shapes) into a files-layout manifest with an
img2dataset-style ``sha256`` column, writes lists of `list-size` random hashes (plus a few true ones, so matches
are found), and times the stage on the local engine, each case in a fresh run folder (reading and checking the
lists is timed apart; the rows/s are for screening: reading, hashing, matching and writing the stage's files):

- exact, bytes read: sha256 and md5 lists, every image file read and hashed;
- exact, sha256 column: a sha256 list matched against the manifest's column (no image is read);
- PDQ: a PDQ list, every image decoded and hashed in its eight dihedral variants, searched with the index the
  stage picks for a 1M-hash list (`sanitize.hashlist.MultiIndexPdq`, distance ≤ 31).

It also times three exact Hamming indexes on the same 1M-hash list (`--queries` PDQ queries, radius 31): FAISS's
exhaustive `IndexBinaryFlat`, FAISS's multi-index hashing (`IndexBinaryMultiHash`, 16 tables of 16 bits, one bit
flipped per probe: exact for distances ≤ 31 by the pigeonhole principle) and this package's numpy multi-index
hashing (`MultiIndexPdq`, the same scheme). Prints tables and writes benchmarks/results/hashlist.json with the
machine it ran on.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from sanitize.hashlist import PDQ_DISTANCE, pdq_hashes
from sanitize.io.atomic import write_json
from sanitize.io.manifest import open_manifest
from sanitize.io.runfolder import RunFolder
from sanitize.pipeline.stage import run_stage
from sanitize.pipeline.stages.hashlist import HashlistConfig, HashlistStage, load_lists

RESULTS = Path(__file__).resolve().parent / "results" / "hashlist.json"
SHARDS = 4
TRUE_HITS = 20


def draw(rng: np.random.Generator, size: int) -> bytes:
    """One JPEG: a two-colour gradient with random rectangles and ellipses (enough detail for PDQ quality ≥ 50)."""
    a, b = rng.integers(0, 256, (2, 3))
    t = np.linspace(0, 1, size)[None, :, None]
    pixels = (a * (1 - t) + b * t).repeat(size, axis=0).astype(np.uint8)
    image = Image.fromarray(pixels)
    pen = ImageDraw.Draw(image)
    for _ in range(24):
        x0, y0 = rng.integers(0, size - 20, 2)
        x1, y1 = x0 + rng.integers(8, size // 3), y0 + rng.integers(8, size // 3)
        shape = pen.rectangle if rng.random() < 0.5 else pen.ellipse
        shape([int(x0), int(y0), int(x1), int(y1)], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


def make_images(root: Path, n: int, size: int, seed: int = 0) -> tuple[Path, list[bytes]]:
    """`n` images under root/images and a manifest of SHARDS shards (uid, caption, image, sha256)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    blobs = []
    for i in range(n):
        data = draw(rng, size)
        (root / "images" / f"{i:06d}.jpg").write_bytes(data)
        blobs.append(data)
    bounds = np.linspace(0, n, SHARDS + 1).astype(int)
    (root / "in").mkdir()
    for s in range(SHARDS):
        ids = range(bounds[s], bounds[s + 1])
        pq.write_table(pa.table({
            "uid": [f"r{i:06d}" for i in ids], "caption": ["generated"] * len(ids),
            "image": [str(root / "images" / f"{i:06d}.jpg") for i in ids],
            "sha256": [hashlib.sha256(blobs[i]).hexdigest() for i in ids]}), root / "in" / f"{s:05d}.parquet")
    return root / "in", blobs


def write_list(path: Path, codes: np.ndarray) -> Path:
    """One hex hash per line."""
    path.write_text("\n".join(c.tobytes().hex() for c in codes) + "\n")
    return path


def make_lists(root: Path, blobs: list[bytes], size: int, seed: int = 1) -> dict[str, str]:
    """Lists of `size` random hashes each, with the true hashes of TRUE_HITS images among them."""
    rng = np.random.default_rng(seed)
    true = blobs[:: max(1, len(blobs) // TRUE_HITS)][:TRUE_HITS]
    out = {}
    for kind, width, digest in (("sha256", 32, hashlib.sha256), ("md5", 16, hashlib.md5)):
        codes = rng.integers(0, 256, (size, width), dtype=np.uint8)
        codes[: len(true)] = [np.frombuffer(digest(b).digest(), np.uint8) for b in true]
        out[kind] = f"{kind}:{write_list(root / f'{kind}_list.txt', codes)}"
    codes = rng.integers(0, 256, (size, 32), dtype=np.uint8)
    codes[: len(true)] = [pdq_hashes(np.asarray(Image.open(io.BytesIO(b)).convert("RGB")), dihedral=False)[0][0]
                          for b in true]
    out["pdq"] = f"pdq:{write_list(root / 'pdq_list.txt', codes)}"
    return out


def screen(root: Path, manifest: Path, name: str, lists: tuple[str, ...]) -> dict:
    """Time the stage from scratch in a new run folder (list reading included)."""
    run = RunFolder.create(root / f"run-{name}", open_manifest(manifest))
    stage = HashlistStage(HashlistConfig(lists=lists))
    started = time.perf_counter()
    stage.prepare(0)
    read = time.perf_counter() - started
    result = run_stage(stage, run).to_dict()
    return {"read_lists_seconds": read, "seconds": time.perf_counter() - started - read, "rows": result["rows_in"],
            "matched": result["rows_in"] - result["kept"]}


def index_speeds(list_size: int, queries: int, seed: int = 2) -> list[dict]:
    """Queries/s of FAISS's IndexBinaryFlat and IndexBinaryMultiHash (16 × 16 bits, nflip 1) and of this package's
    MultiIndexPdq on `list_size` random hashes, radius PDQ_DISTANCE; all find the same pairs (checked)."""
    import faiss

    from sanitize.hashlist import HashList, MultiIndexPdq

    class Ours:
        """MultiIndexPdq behind FAISS's add / range_search calls."""

        def add(self, codes: np.ndarray) -> None:
            self.index = MultiIndexPdq(HashList("bench", "pdq", codes, None, ""))

        def range_search(self, q: np.ndarray, radius: int) -> tuple[np.ndarray, None, np.ndarray]:
            matches = self.index.search(q)
            counts = np.bincount([m.query for m in matches], minlength=len(q))
            return np.concatenate([[0], np.cumsum(counts)]), None, np.array([m.entry for m in matches])

    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 256, (list_size, 32), dtype=np.uint8)
    q = rng.integers(0, 256, (queries, 32), dtype=np.uint8)
    bits = np.unpackbits(codes[:queries // 10], axis=1)
    for i in range(len(bits)):  # a tenth of the queries lie within 0 … 40 bits of a list hash
        bits[i, rng.choice(256, size=i % 41, replace=False)] ^= 1
    q[: len(bits)] = np.packbits(bits, axis=1)
    rows, found = [], []
    for name, build in (("FAISS IndexBinaryFlat (exhaustive)", lambda: faiss.IndexBinaryFlat(256)),
                        ("FAISS IndexBinaryMultiHash 16×16 bits, nflip 1",
                         lambda: faiss.IndexBinaryMultiHash(256, 16, 16)),
                        ("sanitize MultiIndexPdq (numpy, 16×16 bits, 1-bit probes)", Ours)):
        t = time.perf_counter()
        index = build()
        index.add(codes)
        if isinstance(index, faiss.IndexBinaryMultiHash):
            index.nflip = 1
        built = time.perf_counter() - t
        t = time.perf_counter()
        lims, _, ids = index.range_search(q, PDQ_DISTANCE + 1)
        seconds = time.perf_counter() - t
        found.append({(i, int(j)) for i in range(queries) for j in ids[lims[i]:lims[i + 1]]})
        rows.append({"index": name, "build_seconds": round(built, 2), "search_seconds": round(seconds, 2),
                     "queries_per_second": round(queries / seconds), "pairs_found": len(found[-1])})
    assert found[0] == found[1] == found[2], "the indexes disagree"
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--list-size", type=int, default=1_000_000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--queries", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        manifest, blobs = make_images(root, args.images, args.size)
        lists = make_lists(root, blobs, args.list_size)
        generate = time.perf_counter() - t
        t = time.perf_counter()
        load_lists(HashlistConfig(lists=(lists["pdq"],)))
        parse = time.perf_counter() - t
        cases = [("exact: sha256 + md5 of the bytes", "exact", (lists["sha256"], lists["md5"])),
                 ("exact: img2dataset sha256 column (no bytes read)", "column", (lists["sha256"],)),
                 ("PDQ, 8 dihedral variants, multi-index hashing", "pdq", (lists["pdq"],))]
        runs = []
        for label, name, chosen in cases:
            r = screen(root, manifest, name, chosen)
            runs.append({"case": label, "read_lists_seconds": round(r["read_lists_seconds"], 2),
                         "seconds": round(r["seconds"], 2), "rows_per_second": round(r["rows"] / r["seconds"]),
                         "matched": r["matched"]})
    indexes = index_speeds(args.list_size, args.queries)
    out = {"images": args.images, "image_size": args.size, "list_size": args.list_size,
           "true_hits_per_list": TRUE_HITS, "generate_seconds": round(generate, 1),
           "parse_1m_pdq_list_seconds": round(parse, 2), "runs": runs, "indexes": indexes,
           "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                       "python": platform.python_version(), "load_average": list(os.getloadavg())}}
    write_json(RESULTS, out)
    print(f"hashlist stage, {args.images:,} JPEGs of {args.size}×{args.size}, lists of {args.list_size:,} hashes, "
          f"{os.cpu_count()} CPUs (reading one {args.list_size:,}-hash list: {parse:.2f} s)\n")
    print("| case | reading lists s | screening s | rows/s | matched |")
    print("|---|---:|---:|---:|---:|")
    for r in runs:
        print(f"| {r['case']} | {r['read_lists_seconds']:.2f} | {r['seconds']:.2f} | {r['rows_per_second']:,} | "
              f"{r['matched']} |")
    print(f"\nHamming range search, radius {PDQ_DISTANCE}, {args.queries:,} queries, {args.list_size:,} hashes\n")
    print("| index | build s | search s | queries/s | pairs |")
    print("|---|---:|---:|---:|---:|")
    for r in indexes:
        print(f"| {r['index']} | {r['build_seconds']:.2f} | {r['search_seconds']:.2f} | "
              f"{r['queries_per_second']:,} | {r['pairs_found']} |")


if __name__ == "__main__":
    main()
