"""CLIP model construction: every open_clip model is built here, and nowhere else.

`load_clip(model, pretrained)` accepts what open_clip accepts — a built-in name with a pretrained tag, a
built-in name with a local checkpoint file, `local-dir:PATH` and `hf-hub:ORG/REPO` — but resolves the weights
itself first, from local files and the caches only. open_clip, asked for a tag it has to download, retries the
hub for tens of seconds before it gives up; here a missing weight file is a `ConfigError` within a second,
before any data is read, and the message says how to supply the weights.

The returned `ClipModel` embeds preprocessed image batches and caption lists into L2-normalised float32
arrays.
"""

from __future__ import annotations

import json
import logging
import os
import pickle  # only for its exception type: checkpoints load with torch.load(weights_only=True)
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError

from sanitize.clip.defaults import DEFAULT_MODEL, DEFAULT_PRETRAINED, DEMO_MODEL
from sanitize.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

# Architectures shipped as data (e.g. `sanitize-demo-clip`, the demo's small model), registered with open_clip.
PACKAGED_CONFIGS = Path(__file__).parent.parent / "resources" / "models"
PRECISIONS = ("fp32", "fp16", "bf16")

# File names open_clip's hub repos use for their weights, safetensors first (no pickle).
_HUB_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
_HUB_CONFIG_FILE = "open_clip_config.json"
_LOCAL_DIR = "local-dir:"
_HF_HUB = "hf-hub:"

_HOW_TO_SUPPLY = (
    "supply weights offline: a checkpoint file (--pretrained /path/to/open_clip_pytorch_model.bin), "
    "a folder with open_clip_config.json and weights (--model local-dir:/path), "
    "or a Hugging Face cache that already holds them (HF_HOME / HF_HUB_CACHE); "
    "--pretrained none gives random weights (for tests only)"
)


@dataclass(frozen=True)
class WeightSource:
    """Where the weights of a model come from, resolved without network access.

    `open_clip_name` and `checkpoint` are what open_clip is called with (`checkpoint` is None for random
    weights and for `local-dir:` folders, where open_clip finds the file itself); `weights` names the file or
    folder the weights come from, None for random weights; `model_cfg` is the architecture (for `embed_dim`);
    `preprocess` holds the tag's mean/std/interpolation/resize overrides; `quick_gelu` is the activation the
    weights expect.
    """

    open_clip_name: str
    checkpoint: str | None
    weights: str | None
    model_cfg: dict[str, Any]
    preprocess: dict[str, Any] = field(default_factory=dict)
    quick_gelu: bool = False


class ClipModel:
    """An open_clip model in eval mode on one device, with its val transform and tokenizer.

    `preprocess(PIL RGB image) -> Tensor (3, H, W)` is open_clip's inference transform; it is a plain
    picklable object, so DataLoader workers can run it. `encode_images` and `encode_text` return float32
    arrays of shape (n, dim) whose rows have unit L2 norm. Built by `load_clip`, not directly.
    """

    def __init__(
        self,
        *,
        name: str,
        pretrained: str | None,
        dim: int,
        device: torch.device,
        precision: str,
        seed: int = 0,
        network: torch.nn.Module,
        preprocess: Callable[[Any], torch.Tensor],
        tokenizer: Callable[[Sequence[str]], torch.Tensor],
        input_size: int | None = None,
    ) -> None:
        self.name = name
        self.pretrained = pretrained
        self.dim = dim
        self.device = device
        self.precision = precision
        self.seed = seed
        self.preprocess = preprocess
        self.network = network
        self.tokenizer = tokenizer
        self.input_size = input_size  # the image tower's input side in pixels (None: not known)

    def __repr__(self) -> str:
        return (
            f"ClipModel(name={self.name!r}, pretrained={self.pretrained!r}, dim={self.dim}, "
            f"device={str(self.device)!r}, precision={self.precision!r})"
        )

    def _autocast(self):
        if self.precision == "fp32" or self.device.type == "cpu":  # a CPU's bf16 model holds bf16 weights itself
            return nullcontext()
        dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def encode_images(self, images: torch.Tensor) -> np.ndarray:
        """Embed a preprocessed batch (n, 3, H, W) → float32 (n, dim), rows L2-normalised."""
        if images.shape[0] == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        with torch.inference_mode(), self._autocast():
            features = self.network.encode_image(images.to(self.device, dtype=self._input_dtype, non_blocking=True))
        return _unit_rows(features)

    @property
    def _input_dtype(self) -> torch.dtype:
        """What the image tower reads: bfloat16 for a CPU bf16 model (its weights are bf16), else float32."""
        return torch.bfloat16 if self.precision == "bf16" and self.device.type == "cpu" else torch.float32

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Token ids (n, context_length), int64, as the model's text tower reads them."""
        return self.tokenizer(list(texts))

    def encode_text(self, texts: Sequence[str], *, batch_size: int = 256) -> np.ndarray:
        """Embed captions → float32 (n, dim), rows L2-normalised. Longer captions are cut at the context."""
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        texts = list(texts)
        parts = [np.zeros((0, self.dim), dtype=np.float32)]
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenize(texts[start : start + batch_size]).to(self.device)
            with torch.inference_mode(), self._autocast():
                parts.append(_unit_rows(_encode_text(self.network, tokens)))
        return np.concatenate(parts)


def _encode_text(network: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """`network.encode_text(tokens)`, on the batch's own length when that gives the same result.

    Captions are padded to the context (77 tokens for CLIP) but are usually a fifth of it. In open_clip's CLIP with
    a causal text mask and pooling at the end-of-text token, a position never attends to later ones, so the
    padding after the batch's longest caption changes no output: the tower runs on tokens[:, :L] (L = the last
    non-pad position + 1), with the positional embedding and mask cut to L, and gives the full run's result up to
    float rounding (tested). Any other text tower (bidirectional, pooled at the last position, Hugging Face) runs
    as it is.
    """
    import open_clip

    if not (type(network) is open_clip.model.CLIP and getattr(network, "attn_mask", None) is not None
            and network.text_pool_type in ("argmax", "eos")):
        return network.encode_text(tokens)
    used = (tokens != 0).any(dim=0).nonzero()
    length = int(used.max()) + 1 if len(used) else 1
    if length >= tokens.shape[1]:
        return network.encode_text(tokens)
    tokens = tokens[:, :length]
    cast_dtype = network.transformer.get_cast_dtype()
    x = network.token_embedding(tokens).to(cast_dtype) + network.positional_embedding[:length].to(cast_dtype)
    x = network.ln_final(network.transformer(x, attn_mask=network.attn_mask[:length, :length]))
    x = open_clip.transformer.text_global_pool(x, tokens, network.text_pool_type,
                                               eos_token_id=getattr(network, "text_eos_id", None))
    if network.text_projection is not None:
        x = network.text_projection(x) if isinstance(network.text_projection, torch.nn.Linear) else (
            x @ network.text_projection)
    return x


def packaged_weights(model: str = DEMO_MODEL, *, must_exist: bool = True) -> Path:
    """The weights file shipped with the package for the packaged architecture `model`:
    ``PACKAGED_CONFIGS/<model>.safetensors``, to pass to `load_clip(model, str(path))` like any checkpoint.

    Raises ConfigError when `must_exist` and the package holds no such file.
    """
    path = PACKAGED_CONFIGS / f"{model}.safetensors"
    if must_exist and not path.is_file():
        shipped = ", ".join(p.stem for p in sorted(PACKAGED_CONFIGS.glob("*.safetensors"))) or "none"
        raise ConfigError(f"no packaged weights for {model} (expected {path}; packaged: {shipped})")
    return path


def _unit_rows(features: torch.Tensor) -> np.ndarray:
    # Normalise in float32: fp16 sums of squares overflow for large activations.
    return F.normalize(features.float(), dim=-1).cpu().numpy()


def load_clip(
    model: str = DEFAULT_MODEL,
    pretrained: str | None = DEFAULT_PRETRAINED,
    *,
    device: str | torch.device | None = None,
    precision: str | None = None,
    seed: int = 0,
) -> ClipModel:
    """Build a CLIP model for inference.

    `model`: an open_clip architecture name (`ViT-B-32`), `local-dir:PATH` (a folder with
    open_clip_config.json and a weights file) or `hf-hub:ORG/REPO` (read from the Hugging Face cache, never
    downloaded).
    `pretrained`: a tag of that architecture (`laion2b_s34b_b79k`, looked up in the local caches), a path to a
    checkpoint file (a `.safetensors` file is read without pickle; `packaged_weights()` is the demo model's), or
    None / "none" for random weights (real compute cost, meaningless embeddings). Ignored
    for `local-dir:` and `hf-hub:` models, whose `ClipModel.pretrained` is the folder the weights came from
    (for hf-hub, the cached snapshot, whose name holds the revision).
    `device`: "cpu", "cuda", "cuda:1", ...; default CUDA when available, else CPU.
    `precision`: "fp32", "fp16" or "bf16"; default fp16 on CUDA, fp32 on CPU. On CUDA the half precisions are
    autocast; a CPU runs fp32 or bf16 (the weights converted to bf16: faster where the CPU has bf16 instructions).
    `seed`: the random initialisation when there are no weights (same seed, same model); unused otherwise.

    Raises ConfigError, in seconds and without network access, when the weights are not on this
    machine (the message says how to supply them), for an unknown architecture, tag or device. Raises
    DataError when a checkpoint file exists but cannot be loaded into the architecture.
    """
    import open_clip  # heavy import (torchvision); keep `import sanitize.clip.models` cheap

    open_clip.add_model_config(PACKAGED_CONFIGS)
    torch_device = _resolve_device(device)
    precision = _resolve_precision(precision, torch_device)
    if isinstance(pretrained, str) and pretrained.strip().lower() in ("", "none"):
        pretrained = None
    source = resolve_weights(model, pretrained)
    if source.weights is None:
        logger.warning(
            "model %s has RANDOM weights (pretrained=None): embeddings are meaningless for filtering; "
            "use this only for tests and benchmarks",
            model,
        )
    try:
        # Random weights are a random choice too: seed them, and leave the global RNG as it was.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            network, _, preprocess = open_clip.create_model_and_transforms(
                source.open_clip_name,
                pretrained=source.checkpoint,
                device=torch_device,
                force_quick_gelu=source.quick_gelu,
                image_mean=source.preprocess.get("mean"),
                image_std=source.preprocess.get("std"),
                image_interpolation=source.preprocess.get("interpolation"),
                image_resize_mode=source.preprocess.get("resize_mode"),
                weights_only=True,
            )
    except (RuntimeError, KeyError, ValueError, OSError, EOFError, pickle.UnpicklingError, SafetensorError) as exc:
        # (torch.load with weights_only raises UnpicklingError for a file that is no checkpoint, or one that would
        # need code to load)
        if source.weights is None:
            raise
        # torch's load_state_dict error spans lines ("Error(s) in loading state_dict for CLIP:", then each key):
        # one line, cut, so the user sees which keys or shapes are wrong.
        detail = " ".join(str(exc).split()) or type(exc).__name__
        detail = detail if len(detail) <= 300 else detail[:297] + "..."
        raise DataError(f"cannot load weights {source.weights} into {model}: {detail}") from exc
    network.eval()
    if precision == "bf16" and torch_device.type == "cpu":
        # Weights in bf16, not autocast (which would cast every weight on every call): about 2x the speed of fp32
        # on CPUs with bf16 instructions (AVX-512 BF16, AMX); embeddings at cosine >= 0.9999 of fp32 (README).
        network = network.to(torch.bfloat16)
    tokenizer = open_clip.get_tokenizer(source.open_clip_name)
    logger.info(
        "loaded %s (pretrained=%s) on %s, %s, dim %d",
        model,
        pretrained,
        torch_device,
        precision,
        source.model_cfg["embed_dim"],
    )
    return ClipModel(
        name=model,
        pretrained=source.weights if model.startswith((_LOCAL_DIR, _HF_HUB)) else pretrained,
        dim=int(source.model_cfg["embed_dim"]),
        device=torch_device,
        precision=precision,
        seed=seed,
        network=network,
        preprocess=preprocess,
        tokenizer=tokenizer,
        input_size=_input_size(network),
    )


def _input_size(network: torch.nn.Module) -> int | None:
    """The larger side of the image tower's input (open_clip's `visual.image_size`), None when it has none."""
    size = getattr(getattr(network, "visual", None), "image_size", None)
    if isinstance(size, int):
        return size
    if isinstance(size, (tuple, list)) and size:
        return int(max(size))
    return None


def resolve_weights(model: str, pretrained: str | None) -> WeightSource:
    """Find the architecture and weight file for `model` / `pretrained` on this machine, without network.

    Raises ConfigError for an unknown architecture or tag, a missing path, or weights that are in no cache.
    """
    if model.startswith(_LOCAL_DIR):
        return _resolve_local_dir(Path(model[len(_LOCAL_DIR) :]).expanduser(), model)
    if model.startswith(_HF_HUB):
        return _resolve_hf_hub(model[len(_HF_HUB) :].strip("/"), model)
    return _resolve_builtin(model, pretrained)


def _resolve_builtin(model: str, pretrained: str | None) -> WeightSource:
    import open_clip

    name = model.replace("/", "-")  # open_clip accepts OpenAI's "ViT-B/32" spelling too
    model_cfg = open_clip.get_model_config(name)
    if model_cfg is None:
        raise ConfigError(
            f"--model {model}: unknown open_clip architecture (see open_clip.list_models(); "
            f"or use local-dir:PATH / hf-hub:ORG/REPO)"
        )
    if pretrained is None:
        return WeightSource(name, None, None, model_cfg)
    tag_cfg = open_clip.get_pretrained_cfg(name, pretrained)
    if tag_cfg:
        preprocess = {k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag_cfg}
        # open_clip only warns when a tag trained with QuickGELU is loaded into a GELU config (e.g. ViT-B-32 +
        # openai); the embeddings are then wrong. Build the activation the weights expect.
        quick_gelu = bool(tag_cfg.get("quick_gelu", False)) and not model_cfg.get("quick_gelu", False)
        checkpoint = _cached_tag_weights(tag_cfg)
        if checkpoint is None:
            raise ConfigError(
                f"weights for {model} / {pretrained} are not on this machine and will not be downloaded; "
                + _HOW_TO_SUPPLY
            )
        return WeightSource(name, checkpoint, checkpoint, model_cfg, preprocess, quick_gelu)
    path = Path(pretrained).expanduser()
    if path.is_file():
        return WeightSource(name, str(path), str(path), model_cfg)
    if path.is_dir():
        raise ConfigError(f"--pretrained {pretrained}: a folder, not a file (for a folder use --model local-dir:PATH)")
    if os.sep in pretrained or path.suffix:
        raise ConfigError(f"--pretrained {pretrained}: no such checkpoint file")
    tags = open_clip.list_pretrained_tags_by_model(name)
    known = ", ".join(tags[:6]) + (f", … ({len(tags)} in all)" if len(tags) > 6 else "") if tags else "none"
    raise ConfigError(
        f"--pretrained {pretrained}: not a file and not a tag of {name} (known: {known}); "
        f"--pretrained none gives random weights"
    )


def _cached_tag_weights(tag_cfg: dict[str, Any]) -> str | None:
    """The local file of a pretrained tag: the tag's own `file`, the HF cache, or open_clip's URL cache."""
    if tag_cfg.get("file"):
        return tag_cfg["file"] if Path(tag_cfg["file"]).is_file() else None
    hub = tag_cfg.get("hf_hub", "")
    if hub:
        # Split as open_clip does: "org/repo/" means the repo's default weight file, "org/repo/f" file f.
        repo_id, filename = os.path.split(hub)
        names = [filename] if filename else list(_HUB_WEIGHT_FILES)
        if filename.endswith((".bin", ".pth")):
            names.insert(0, filename[:-4] + ".safetensors")
        for name in names:
            found = _hf_cached(repo_id, name)
            if found:
                return found
    url = tag_cfg.get("url", "")
    if url:
        # open_clip's own download cache for URL weights (openai, early LAION); it checks the SHA256 on load.
        candidate = Path("~/.cache/clip").expanduser() / os.path.basename(url)
        if candidate.is_file():
            return str(candidate)
    return None


def _resolve_hf_hub(repo_id: str, model: str) -> WeightSource:
    if not repo_id:
        raise ConfigError(f"--model {model}: empty repository after hf-hub:")
    config = _hf_cached(repo_id, _HUB_CONFIG_FILE)
    weights = next((found for f in _HUB_WEIGHT_FILES if (found := _hf_cached(repo_id, f))), None)
    if config is None or weights is None:
        missing = _HUB_CONFIG_FILE if config is None else " / ".join(_HUB_WEIGHT_FILES)
        raise ConfigError(
            f"--model {model}: {missing} not in the Hugging Face cache ({_hf_cache_dir()}) and will not be "
            f"downloaded; " + _HOW_TO_SUPPLY
        )
    # A cached snapshot is a folder holding the config and weights: load it as a local dir, so that neither
    # the model nor the tokenizer goes back to the hub.
    snapshot = Path(config).parent
    if Path(weights).parent != snapshot:
        raise ConfigError(f"--model {model}: cached config and weights are from different revisions")
    return _resolve_local_dir(snapshot, model)


def _resolve_local_dir(folder: Path, model: str) -> WeightSource:
    config_path = folder / _HUB_CONFIG_FILE
    if not config_path.is_file():
        raise ConfigError(f"--model {model}: {config_path} not found (local-dir: needs {_HUB_CONFIG_FILE})")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        model_cfg = config["model_cfg"]
        model_cfg["embed_dim"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{config_path}: not an open_clip config with model_cfg.embed_dim ({exc})") from exc
    weights = [p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".pth")]
    if not weights:
        raise ConfigError(f"--model {model}: no .safetensors/.bin/.pth file in {folder}; " + _HOW_TO_SUPPLY)
    # open_clip picks the weight file in the folder itself.
    return WeightSource(f"{_LOCAL_DIR}{folder}", None, str(folder), model_cfg)


def _hf_cache_dir() -> Path:
    # Read the environment at call time: huggingface_hub freezes its constants at import, which is too early
    # for a caller (or a test) that sets HF_HOME afterwards.
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "huggingface"
    )
    return Path(home).expanduser() / "hub"


def _hf_cached(repo_id: str, filename: str) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(repo_id, filename, cache_dir=_hf_cache_dir())
    return found if isinstance(found, str) else None


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"--device {device}: not a torch device ({exc})") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine")
    if resolved.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {device}: only cpu and cuda are supported")
    return resolved


def _resolve_precision(precision: str | None, device: torch.device) -> str:
    if precision is None:
        return "fp16" if device.type == "cuda" else "fp32"
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision {precision}: expected one of {', '.join(PRECISIONS)}")
    if device.type == "cpu" and precision == "fp16":
        raise ConfigError(f"--precision {precision}: CPUs run fp32 or bf16 (fp16 is for GPUs)")
    return precision
