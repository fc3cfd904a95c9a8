from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from sanitize.clip.models import load_clip, resolve_weights
from sanitize.errors import ConfigError, DataError

from .conftest import TINY_CONFIG

CAPTIONS = ["a dog on a skateboard", "", "Two CATS, sleeping!", "x" * 500]


def _images(seed: int = 0, n: int = 3) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((n, 3, 64, 64)).astype(np.float32))


def _write_hf_cache(cache: Path, repo_id: str, files: dict[str, bytes]) -> Path:
    """Lay out `files` as a Hugging Face hub cache snapshot of `repo_id`; returns the snapshot folder."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    for name, data in files.items():
        (snapshot / name).write_bytes(data)
    return snapshot


@pytest.fixture
def empty_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point every weight cache (HF, open_clip's URL cache under ~) at empty folders."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path / "hf" / "hub"


def test_tiny_model_embeds_unit_rows(tiny_model):
    assert (tiny_model.dim, tiny_model.device.type, tiny_model.precision) == (32, "cpu", "fp32")
    img = tiny_model.encode_images(_images())
    txt = tiny_model.encode_text(CAPTIONS, batch_size=3)
    assert img.shape == (3, 32) and txt.shape == (4, 32)
    assert img.dtype == txt.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1.0, atol=1e-5)
    assert tiny_model.encode_images(torch.zeros(0, 3, 64, 64)).shape == (0, 32)
    assert tiny_model.encode_text([]).shape == (0, 32)


def test_text_batching_does_not_change_text_embeddings(tiny_model):
    np.testing.assert_allclose(
        tiny_model.encode_text(CAPTIONS, batch_size=1), tiny_model.encode_text(CAPTIONS), atol=1e-6
    )


def test_random_weights_follow_the_seed(tiny_name, tiny_model):
    again = load_clip(tiny_name, "none", device="cpu", seed=0)
    other = load_clip(tiny_name, None, device="cpu", seed=1)
    images = _images()
    assert np.array_equal(again.encode_images(images), tiny_model.encode_images(images))
    assert not np.allclose(other.encode_images(images), tiny_model.encode_images(images))


def test_random_weights_log_a_loud_warning(tiny_name, caplog):
    with caplog.at_level("WARNING", logger="sanitize.clip.models"):
        load_clip(tiny_name, None, device="cpu")
    assert "RANDOM weights" in caplog.text


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_checkpoint_file_round_trip(tiny_name, tiny_model, tmp_path, suffix, monkeypatch):
    path = tmp_path / f"tiny{suffix}"
    state = {k: v.contiguous() for k, v in tiny_model.network.state_dict().items()}
    if suffix == ".pt":
        torch.save(state, path)
    else:
        from safetensors.torch import save_file

        save_file(state, str(path))

        def no_pickle(*args, **kwargs):
            raise AssertionError("a .safetensors checkpoint must load without torch.load (pickle)")

        monkeypatch.setattr(torch, "load", no_pickle)
    loaded = load_clip(tiny_name, str(path), device="cpu", seed=123)  # the seed must not matter
    assert loaded.pretrained == str(path)
    images = _images(1)
    assert np.array_equal(loaded.encode_images(images), tiny_model.encode_images(images))
    assert np.array_equal(loaded.encode_text(CAPTIONS), tiny_model.encode_text(CAPTIONS))


def test_local_dir_and_warm_hf_cache(tiny_model, tmp_path, empty_caches):
    state = {k: v.contiguous() for k, v in tiny_model.network.state_dict().items()}
    from safetensors.torch import save

    files = {
        "open_clip_config.json": json.dumps({"model_cfg": TINY_CONFIG}).encode(),
        "open_clip_model.safetensors": save(state),
    }
    folder = tmp_path / "local"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    _write_hf_cache(empty_caches, "someorg/tiny-clip", files)
    images = _images(2)
    expected = tiny_model.encode_images(images)
    for name in (f"local-dir:{folder}", "hf-hub:someorg/tiny-clip"):
        loaded = load_clip(name, device="cpu")
        assert loaded.dim == 32
        assert loaded.pretrained is not None and Path(loaded.pretrained).is_dir()  # where the weights came from
        assert np.array_equal(loaded.encode_images(images), expected), name
        assert np.array_equal(loaded.encode_text(CAPTIONS), tiny_model.encode_text(CAPTIONS)), name


def test_default_model_without_weights_fails_fast_with_a_how_to(empty_caches):
    start = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        load_clip()  # ViT-B-32 / laion2b_s34b_b79k, nothing cached, no network
    elapsed = time.perf_counter() - start
    assert elapsed < 10, f"took {elapsed:.1f} s"  # open_clip itself retries the hub for tens of seconds
    message = str(info.value)
    assert "laion2b_s34b_b79k" in message
    assert "--pretrained /path" in message and "local-dir:" in message and "HF_HOME" in message


def test_hf_hub_without_cache_fails_fast(empty_caches):
    with pytest.raises(ConfigError, match="not in the Hugging Face cache"):
        load_clip("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K")


def test_cached_tag_resolves_to_the_cached_file_with_the_tags_activation(empty_caches):
    # The openai tag was trained with QuickGELU; ViT-B-32's config says GELU. open_clip only warns.
    snapshot = _write_hf_cache(
        empty_caches, "timm/vit_base_patch32_clip_224.openai", {"open_clip_model.safetensors": b"x"}
    )
    source = resolve_weights("ViT-B-32", "openai")
    assert source.checkpoint == str(snapshot / "open_clip_model.safetensors")
    assert source.quick_gelu is True
    assert source.model_cfg["embed_dim"] == 512
    assert resolve_weights("ViT-B-32-quickgelu", "openai").quick_gelu is False  # already QuickGELU


@pytest.mark.parametrize(
    ("model", "pretrained", "match"),
    [
        ("ViT-B-32", "no_such_tag", "not a tag of ViT-B-32"),
        ("ViT-B-32", "/no/such/weights.pt", "no such checkpoint file"),
        ("ViT-B-32", "/", "a folder, not a file"),
        ("No-Such-Arch", None, "unknown open_clip architecture"),
        ("local-dir:/no/such/folder", None, "open_clip_config.json not found"),
        ("hf-hub:", None, "empty repository"),
    ],
)
def test_bad_model_or_pretrained_is_a_config_error(empty_caches, model, pretrained, match):
    with pytest.raises(ConfigError, match=match):
        load_clip(model, pretrained, device="cpu")


def test_local_dir_without_weights_or_config_key(tmp_path):
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CONFIG}))
    with pytest.raises(ConfigError, match="no .safetensors/.bin/.pth"):
        load_clip(f"local-dir:{tmp_path}")
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"something": 1}))
    with pytest.raises(ConfigError, match="model_cfg"):
        load_clip(f"local-dir:{tmp_path}")


def test_checkpoint_of_another_architecture_is_a_data_error(tiny_name, tmp_path):
    path = tmp_path / "wrong.pt"
    torch.save({"visual.proj": torch.zeros(3, 3)}, path)
    with pytest.raises(DataError, match="cannot load weights"):
        load_clip(tiny_name, str(path), device="cpu")


def test_device_and_precision_options(tiny_name):
    with pytest.raises(ConfigError, match="--precision fp16"):
        load_clip(tiny_name, None, device="cpu", precision="fp16")
    with pytest.raises(ConfigError, match="expected one of"):
        load_clip(tiny_name, None, device="cpu", precision="fp8")
    with pytest.raises(ConfigError, match="--device"):
        load_clip(tiny_name, None, device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            load_clip(tiny_name, None, device="cuda")
        assert load_clip(tiny_name, None).device.type == "cpu"


def test_caption_tokens_match_real_clip_token_ids(tiny_model, shared_data):
    path = shared_data / "coco5k_clipscore" / "val_toke_ids_and_clip_scores.tsv"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    tokens = tiny_model.tokenize([row["caption"] for row in rows]).tolist()
    eot = 49407
    for row, ours in zip(rows, tokens, strict=True):
        golden = json.loads(row["ids_padded"])  # padded with EOT; open_clip pads with 0
        end = golden.index(eot) + 1
        assert ours[:end] == golden[:end], row["caption"]
        assert not any(ours[end:]), row["caption"]
    assert len(rows) == 5000


@pytest.mark.parametrize("kind", ["wrong_shapes", "garbage_header", "huge_declared_size"])
def test_a_crafted_safetensors_checkpoint_is_one_line(tiny_name, tmp_path, kind):
    # Untrusted weights: wrong tensor shapes, a header that is not one, a header declaring more bytes than the
    # file holds. Each is a one-line DataError naming the file; nothing of the declared size is allocated.
    import json
    import struct

    from safetensors.torch import save_file

    path = tmp_path / f"{kind}.safetensors"
    if kind == "wrong_shapes":
        save_file({"visual.conv1.weight": torch.zeros(3, 3)}, str(path))
    elif kind == "garbage_header":
        path.write_bytes(b"\xff" * 8 + b"{}")
    else:
        header = json.dumps({"w": {"dtype": "F32", "shape": [10**6, 10**6], "data_offsets": [0, 4 * 10**12]}})
        path.write_bytes(struct.pack("<Q", len(header)) + header.encode() + b"\0" * 16)
    with pytest.raises(DataError) as info:
        load_clip(tiny_name, str(path), device="cpu")
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("which", ["tiny", "demo"])
def test_text_tower_on_the_batch_length_equals_the_full_context(tiny_name, which):
    # The text tower runs on the batch's longest caption, not the 77-token context: same result as open_clip's
    # own encode_text (causal mask, end-of-text pooling), for short, empty and over-long captions.
    from sanitize.clip.models import _encode_text, packaged_weights

    model = (load_clip(tiny_name, None, device="cpu", seed=0) if which == "tiny"
             else load_clip("sanitize-demo-clip", str(packaged_weights()), device="cpu"))
    batches = [["a dog", "a photo of two people on a beach at sunset", ""], ["word " * 200, "a cat"], [""]]
    for captions in batches:
        tokens = model.tokenize(captions)
        with torch.inference_mode():
            full, trimmed = model.network.encode_text(tokens), _encode_text(model.network, tokens)
        assert torch.allclose(full, trimmed, atol=1e-6), (captions, (full - trimmed).abs().max())


@pytest.mark.parametrize("data", [b"not a checkpoint", b"", b"\x80\x04\x95"])
def test_a_pt_checkpoint_that_is_not_one_is_one_line(tiny_name, tmp_path, data):
    # torch.load(weights_only=True) raises UnpicklingError (or EOFError) for such files: a DataError naming it.
    path = tmp_path / "bad.pt"
    path.write_bytes(data)
    with pytest.raises(DataError) as info:
        load_clip(tiny_name, str(path), device="cpu")
    assert str(path) in str(info.value) and "\n" not in str(info.value)
