"""Train `sanitize-demo-clip` on generated scenes: the weights the demo ships (sanitize/resources/models).

    python tools/train_demo_clip.py                      # the shipped weights: seed 0, default steps
    python tools/train_demo_clip.py --steps 50 --out /tmp/x.safetensors --metrics /tmp/x.json   # a smoke run

What it does, on one CPU thread (`--threads`), in under 30 minutes on a 2-core machine:
- builds the architecture of sanitize/resources/models/sanitize-demo-clip.json through `load_clip` (random
  weights seeded by `--seed`), the one place models are built;
- each step draws `--batch-size` fresh scenes with `sanitize.demo.sample.plan_scene` / `draw_scene` from the
  stream `training_rng(seed, step)`: people of both genders, children and adults, twelve occupations, objects,
  the two motif stand-ins (each in 20% of scenes). No scene is drawn twice, none comes from the demo sample's
  stream or the evaluation streams, and no near-duplicate variant of the sample is seen;
- half of each batch comes as counterfactual pairs: a scene and its twin drawn from the same generator state,
  differing in one named thing (every figure's gender, a lone figure's age, or one motif). Without them the
  model learns places and colours long before it looks at a figure;
- captions name what is drawn (`sanitize.demo.describe.describe_scene`: random wording and length, some naming
  one thing only, "a photo of a child"); one in five single scenes gets the sample's own web-style caption
  instead (with its motif phrase when a motif is drawn), so the text tower also reads captions like the demo's;
- loss: open_clip's `ClipLoss` between image and caption (the CLIP objective, learned temperature) plus the same
  `ClipLoss` between two augmented views of each image (`--instance-weight`, fixed temperature 0.05). Captions of
  this world repeat ("a photo of a man, in the park"), so the caption loss alone pulls every such image to one
  point and a cosine threshold could not tell a near-duplicate from another scene; the view loss keeps each
  image apart from the others and close to its edits (flip, crop, rescale, brightness, grey, rotation, JPEG:
  the sample's four kinds of near-duplicate among them, applied to training scenes, never to the sample's);
- AdamW with linear warm-up and cosine decay; deterministic: same seed and arguments, same weights (bit for
  bit on the same torch build and CPU);
- writes the weights as safetensors (`--out`) and the metrics, measured on held-out scenes by
  `sanitize.demo.evaluation` after loading the file back with `load_clip`, as JSON (`--metrics`).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from sanitize.clip.models import DEMO_MODEL, load_clip, packaged_weights  # noqa: E402
from sanitize.demo.describe import DRAWN_AGE_SPEC, describe_scene  # noqa: E402
from sanitize.demo.evaluation import (  # noqa: E402
    caption_retrieval_top1,
    held_out_scenes,
    near_duplicate_separation,
    training_rng,
    zero_shot_accuracy,
)
from sanitize.demo.sample import MOTIF_PHRASES, Scene, draw_scene, plan_scene  # noqa: E402

logger = logging.getLogger("train_demo_clip")

DEFAULT_METRICS = REPO / "benchmarks" / "results" / "demo_clip.json"
SCENE_SIZE = 96  # pixels, as make_sample draws them
SAMPLE_CAPTION_SHARE = 0.2
MOTIF_RATE = 0.2
TWIN_SHARE = 0.5  # share of each batch drawn as counterfactual pairs
INSTANCE_TEMPERATURE = 0.05
EVAL_SCENES = 1000


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, train, evaluate, write the weights and the metrics. Returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=packaged_weights(DEMO_MODEL, must_exist=False),
                        help="weights file to write (.safetensors); default: the packaged weights")
    parser.add_argument("--metrics", type=Path, default=DEFAULT_METRICS, help="metrics JSON to write")
    parser.add_argument("--steps", type=int, default=1400, help="optimizer steps")
    parser.add_argument("--seed", type=int, default=0, help="seeds the initial weights and every drawn scene")
    parser.add_argument("--batch-size", type=int, default=128, help="scenes per step")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    parser.add_argument("--warmup", type=int, default=100, help="linear warm-up steps")
    parser.add_argument("--weight-decay", type=float, default=0.1, help="AdamW decay of matrices")
    parser.add_argument("--instance-weight", type=float, default=1.0,
                        help="weight of the view-vs-view ClipLoss (0: the caption loss only)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--log-every", type=int, default=50, help="log the loss every N steps")
    parser.add_argument("--check-every", type=int, default=200,
                        help="log zero-shot gender and age accuracy on 300 held-out scenes every N steps (0: never)")
    parser.add_argument("--evaluate-only", action="store_true",
                        help="do not train: measure the weights in --out and update the held-out numbers in --metrics")
    args = parser.parse_args(argv)
    if args.out.suffix != ".safetensors":
        parser.error("--out must end in .safetensors")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.evaluate_only:
        metrics = json.loads(args.metrics.read_text()) if args.metrics.exists() else {"model": DEMO_MODEL}
        metrics["held_out"] = evaluate(load_clip(DEMO_MODEL, str(args.out), device="cpu"))
        args.metrics.write_text(json.dumps(metrics, indent=2) + "\n")
        logger.info("held-out: %s", json.dumps(metrics["held_out"]))
        return 0

    torch.set_num_threads(args.threads)
    checked = load_clip(DEMO_MODEL, None, device="cpu")
    rng = np.random.default_rng(0)
    Pixels.of(checked).check(checked, [augment(image, rng) for _, image in held_out_scenes(64, seed=8)])
    torch.use_deterministic_algorithms(True)
    started = time.perf_counter()
    model = load_clip(DEMO_MODEL, None, device="cpu", seed=args.seed)
    history = train(model, steps=args.steps, seed=args.seed, batch_size=args.batch_size, lr=args.lr,
                    warmup=args.warmup, weight_decay=args.weight_decay, instance_weight=args.instance_weight,
                    log_every=args.log_every, check_every=args.check_every)
    train_seconds = time.perf_counter() - started
    digest = save_weights(model.network, args.out, {"seed": str(args.seed), "steps": str(args.steps)})
    logger.info("wrote %s (%.1f MB) after %.0f s of training", args.out, args.out.stat().st_size / 1e6,
                train_seconds)

    # Measure the file as the project loads it: load_clip with the checkpoint path.
    trained = load_clip(DEMO_MODEL, str(args.out), device="cpu")
    evaluation = evaluate(trained)
    metrics = {
        "model": DEMO_MODEL,
        "weights": {"path": _shown(args.out), "sha256": digest, "bytes": args.out.stat().st_size},
        "arguments": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                      if k not in ("out", "metrics", "log_every")},
        "command": " ".join(["python tools/train_demo_clip.py", *(argv if argv is not None else sys.argv[1:])]),
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.perf_counter() - started, 1),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],  # the machine's 1/5/15-min load, for the times
        "loss": history,
        "held_out": evaluation,
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "open_clip": _version("open_clip_torch"), "machine": platform.machine()},
    }
    args.metrics.parent.mkdir(parents=True, exist_ok=True)
    args.metrics.write_text(json.dumps(metrics, indent=2) + "\n")
    logger.info("held-out: %s", json.dumps(evaluation))
    return 0


def train(model, *, steps: int, seed: int, batch_size: int, lr: float, warmup: int, weight_decay: float,
          instance_weight: float, log_every: int, check_every: int = 0) -> list[dict[str, float]]:
    """Train `model.network` in place. Returns the logged losses ({"step", "caption", "views", "logit_scale"}, and
    "gender" / "age" zero-shot accuracy on 300 held-out scenes every `check_every` steps)."""
    from open_clip.loss import ClipLoss

    network = model.network
    network.train()
    decay = [p for n, p in network.named_parameters() if p.ndim >= 2 and "logit_scale" not in n]
    rest = [p for n, p in network.named_parameters() if not (p.ndim >= 2 and "logit_scale" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                   {"params": rest, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98), eps=1e-6)
    clip_loss = ClipLoss()
    view_scale = torch.tensor(1.0 / INSTANCE_TEMPERATURE)
    history: list[dict[str, float]] = []
    step_started = time.perf_counter()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, steps, lr, warmup)
        views, view2, tokens = training_batch(model, training_rng(seed, step), batch_size)
        image_features, text_features, logit_scale = network(views, tokens)[:3]
        caption_loss = clip_loss(image_features, text_features, logit_scale)
        loss = caption_loss
        view_loss = torch.zeros(())
        if instance_weight > 0:
            second = network.encode_image(view2, normalize=True)
            view_loss = clip_loss(image_features, second, view_scale)
            loss = caption_loss + instance_weight * view_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():  # CLIP's clamp: a temperature below 0.01 makes the logits unstable
            network.logit_scale.clamp_(0, math.log(100))
        if (step + 1) % log_every == 0 or step + 1 == steps:
            seconds = (time.perf_counter() - step_started) / ((step + 1) % log_every or log_every)
            step_started = time.perf_counter()
            row = {"step": step + 1, "caption": round(caption_loss.item(), 4), "views": round(view_loss.item(), 4),
                   "logit_scale": round(logit_scale.item(), 2)}
            if check_every and (step + 1) % check_every == 0:
                row.update(_check(model))
                network.train()
            history.append(row)
            logger.info("step %d/%d  caption loss %.3f  view loss %.3f  scale %.1f  %.2f s/step", step + 1, steps,
                        row["caption"], row["views"], row["logit_scale"], seconds)
    network.eval()
    return history


def training_batch(model, rng: np.random.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`n` fresh scenes as two augmented views (n, 3, H, W) each and caption tokens (n, context).

    Half the batch comes in counterfactual pairs (`counterfactual`): two scenes drawn from the same generator
    state that differ in one named thing, so the loss cannot be lowered by the place and colours alone.
    """
    pairs = round(TWIN_SHARE * n / 2)
    images, captions = [], []
    for i in range(n - pairs):
        scene = plan_scene(rng, motif_rate=MOTIF_RATE)
        if i < pairs:
            before = copy.deepcopy(rng)
            images.append(draw_scene(rng, scene, SCENE_SIZE))
            twin = counterfactual(scene, rng)
            images.append(draw_scene(before, twin, SCENE_SIZE))
            captions += [describe_scene(scene, rng), describe_scene(twin, rng)]
        else:
            images.append(draw_scene(rng, scene, SCENE_SIZE))
            captions.append(training_caption(scene, rng))
    pixels = Pixels.of(model)
    first = pixels([augment(image, rng) for image in images])
    second = pixels([augment(image, rng) for image in images])
    return first, second, model.tokenize(captions)


@dataclasses.dataclass(frozen=True)
class Pixels:
    """The model's inference transform (resize the shorter side, bicubic; centre crop; scale; normalise) for a
    whole batch at once: `ClipModel.preprocess` image by image costs a fifth of a training step. `check`
    compares the two."""

    size: int
    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def of(cls, model) -> Pixels:
        from torchvision.transforms import CenterCrop, Normalize

        steps = model.preprocess.transforms
        crop = next(t for t in steps if isinstance(t, CenterCrop))
        norm = next(t for t in steps if isinstance(t, Normalize))
        return cls(int(crop.size[0]), torch.tensor(norm.mean).view(3, 1, 1), torch.tensor(norm.std).view(3, 1, 1))

    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        arrays = []
        for image in images:
            w, h = image.size
            short, long = min(w, h), max(w, h)
            scaled = (self.size, int(self.size * long / short))  # torchvision's rounding of the longer side
            image = image.resize(scaled if w <= h else scaled[::-1], Image.Resampling.BICUBIC)
            left, top = round((image.width - self.size) / 2.0), round((image.height - self.size) / 2.0)
            arrays.append(np.asarray(image.crop((left, top, left + self.size, top + self.size)).convert("RGB")))
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255.0)
        return (x - self.mean) / self.std

    def check(self, model, images: list[Image.Image]) -> None:
        """Raise when the batch transform and `model.preprocess` disagree on `images`."""
        expected = torch.stack([model.preprocess(image) for image in images])
        gap = float((self(images) - expected).abs().max())
        if gap > 1e-4:
            raise RuntimeError(f"batch preprocessing differs from the model's transform by {gap}")


def counterfactual(scene: Scene, rng: np.random.Generator) -> Scene:
    """`scene` with one thing changed: every figure's gender, the age of a lone figure without an occupation
    (the sample draws no child at work), or one motif added or removed. Its caption names the change."""
    options = ["motif"]
    if scene.figures:
        options += ["gender", "gender"]
    if len(scene.figures) == 1 and scene.occupation is None:
        options += ["age"]
    kind = options[int(rng.integers(len(options)))]
    if kind == "gender":
        figures = tuple(f[:-1] + ("m" if f.endswith("f") else "f") for f in scene.figures)
        gender = {"female": "male", "male": "female"}.get(scene.caption_gender, scene.caption_gender)
        twin = dataclasses.replace(scene, figures=figures, caption_gender=gender)
    elif kind == "age":
        figure = scene.figures[0]
        twin = dataclasses.replace(scene, figures=(figure[1:] if figure.startswith("c") else "c" + figure,))
    else:
        motif = "sexual" if rng.random() < 0.5 else "violence"
        twin = dataclasses.replace(scene, **{motif: not getattr(scene, motif)})
    return dataclasses.replace(twin, caption=describe_scene(twin))


def training_caption(scene: Scene, rng: np.random.Generator) -> str:
    """Mostly a caption naming what is drawn; sometimes the sample's caption, naming the motif when drawn."""
    if rng.random() >= SAMPLE_CAPTION_SHARE:
        return describe_scene(scene, rng)
    caption = scene.caption
    for motif in ("sexual", "violence"):
        if getattr(scene, motif):
            phrases = MOTIF_PHRASES[motif]
            caption += phrases[int(rng.integers(len(phrases)))]
    return caption


def augment(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A random edit of the kinds a near-duplicate has: flip, crop, rescale, brightness, grey, rotation, JPEG."""
    w, h = image.size
    if rng.random() < 0.5:
        image = ImageOps.mirror(image)
    if rng.random() < 0.8:
        left, top, right, bottom = rng.uniform(0.0, 0.1, size=4) * np.array([w, h, w, h])
        image = image.crop((int(left), int(top), w - int(right), h - int(bottom)))
    if rng.random() < 0.3:
        factor = rng.uniform(0.5, 0.9)
        image = image.resize((max(8, round(image.width * factor)), max(8, round(image.height * factor))),
                             Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
        image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.8, 1.2))
    if rng.random() < 0.25:  # grey copies are common near-duplicates on the web, though this world has none
        image = ImageOps.grayscale(image).convert("RGB")
    if rng.random() < 0.1:
        image = image.rotate(float(rng.uniform(-30, 30)), resample=Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=int(rng.integers(30, 96)))
        image = Image.open(buffer).convert("RGB")
    return image


def _check(model) -> dict[str, float]:
    network = model.network
    network.eval()
    scenes = held_out_scenes(300, seed=9)
    gender = zero_shot_accuracy(model, scenes, "perceived_gender")["accuracy"]
    age = zero_shot_accuracy(model, scenes, DRAWN_AGE_SPEC)["accuracy"]
    logger.info("check: zero-shot gender %.3f, age %.3f", gender, age)
    return {"gender": round(gender, 3), "age": round(age, 3)}


def evaluate(model) -> dict[str, dict[str, float]]:
    """The held-out measures of `sanitize.demo.evaluation` on `EVAL_SCENES` scenes of evaluation stream 0."""
    scenes = held_out_scenes(EVAL_SCENES)
    return {
        "retrieval": caption_retrieval_top1(model, scenes),
        "perceived_gender": zero_shot_accuracy(model, scenes, "perceived_gender"),
        "drawn_age": zero_shot_accuracy(model, scenes, DRAWN_AGE_SPEC),
        "near_duplicates": near_duplicate_separation(model, scenes),
    }


def save_weights(network: torch.nn.Module, path: Path, metadata: dict[str, str]) -> str:
    """Write the state dict as safetensors (no pickle); returns the file's SHA-256."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in network.state_dict().items()}
    save_file(state, str(path), metadata=metadata)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _learning_rate(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.5 * peak * (1 + math.cos(math.pi * progress))


def _shown(path: Path) -> str:
    try:
        return path.resolve().relative_to(REPO).as_posix()
    except ValueError:
        return str(path)


def _version(distribution: str) -> str:
    from importlib.metadata import version

    return version(distribution)


if __name__ == "__main__":
    sys.exit(main())
