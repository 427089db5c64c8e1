"""Model folders (zoo.hub): export from a real `zoo fit` checkpoint, a Hugging Face CLIP folder
and an OpenAI / open_clip state dict, load back by output equality, and refuse tampering."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

import zoo
from zoo.backbones.convert import (
    OPENAI_CLIP_MEAN,
    UntrustedCheckpointError,
    dual_encoder_from_hf_clip,
    dual_encoder_from_openai_state_dict,
)
from zoo.cli import main
from zoo.data.tokenizers import TextTokenizer, clip_bpe_tokenizer
from zoo.data.transforms import build_transform
from zoo.hub import (
    HubOfflineError,
    TamperedWeightsError,
    UnsafeConfigError,
    UnsafePathError,
    export_model,
    load_backbone_into,
)
from zoo.hub.config import REQUIRED_KEYS

CTX, STD = 8, (0.25, 0.25, 0.25)
TEXTS = ["a photo of a 3", "a blurry digit seven"]
METRICS = {"zeroshot_top1": {"value": 87.25, "dataset": "digits test split (540 images)"}}
RECIPE = f"""
seed_everything: 0
trainer:
  accelerator: cpu
  devices: 1
  max_steps: 1
  enable_progress_bar: false
  enable_model_summary: false
model:
  class_path: lightning_modules.slip.SLIP
  init_args:
    encoder:
      vision: {{model_name: vit_tiny_patch16_224, img_size: 16, patch_size: 4, embed_dim: 32,
               depth: 1, num_heads: 2}}
      text: {{vocab_size: 49408, width: 32, layers: 1, heads: 2, context_length: {CTX}}}
      embed_dim: 16
    ssl_head: {{hidden_dims: [32], out_dim: 16}}
data:
  class_path: datamodules.slip.SLIPDataModule
  init_args:
    source: digits
    image_size: 16
    context_length: {CTX}
    std: {list(STD)}
    batch_size: 16
"""


def _images(n: int = 3, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _load_slip(ckpt: Path):
    from lightning_modules.slip import SLIP

    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    hp = {k: v for k, v in state["hyper_parameters"].items() if not k.startswith("_")}
    module = SLIP(**hp)
    module.load_state_dict(state["state_dict"])
    return module.eval()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> dict:
    """A real `zoo fit` (1 step) of a tiny SLIP, its reference module and an fp32 export."""
    root = tmp_path_factory.mktemp("fit")
    recipe = root / "tiny.yaml"
    recipe.write_text(RECIPE)
    from zoo.lightning_cli import run_lightning_cli

    run_lightning_cli(["fit", "--config", str(recipe), "--trainer.default_root_dir", str(root)])
    (ckpt,) = root.glob("**/checkpoints/*.ckpt")
    out = root / "slip-tiny-test"
    code = main(
        ["export", str(ckpt), "--name", "slip-tiny-test", "--out", str(out), "--trust-pickle"]
        + ["--metrics", json.dumps(METRICS)]
    )
    assert code == 0
    return {"ckpt": ckpt, "ref": _load_slip(ckpt), "out": out, "spec_recipe": recipe}


@pytest.fixture(scope="module")
def exported(fitted) -> Path:
    return fitted["out"] / "zoo_model_slip_tiny_test"


def _copy(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(folder, target)
    return target


# --------------------------------------------------------------------------- Lightning source


@torch.no_grad()
def test_lightning_export_loads_with_equal_outputs(fitted, exported) -> None:
    ref = fitted["ref"]
    model = zoo.load(f"local-dir:{fitted['out']}")  # the package tree resolves to its folder
    assert isinstance(model, nn.Module) and model.folder == exported.resolve()
    images = _images()
    assert torch.equal(model.encode_image(images), ref.encoder.encode_image(images))
    tokens = TextTokenizer("clip-bpe", CTX)(TEXTS)
    assert torch.equal(model.encode_text(TEXTS), ref.encoder.encode_text(tokens))
    assert torch.equal(model.tokenizer(TEXTS), tokens)
    trunk = ref.encoder.image_trunk(images)
    assert torch.equal(model.heads["ssl_head"](trunk), ref.ssl_head(trunk))
    assert model.logit_scale.item() == ref.encoder.logit_scale.item()
    # PIL input goes through the stored eval transform (datamodule std, OpenAI mean fallback)
    pil = Image.fromarray((torch.rand(20, 24, 3) * 255).byte().numpy())
    expected = build_transform("eval", 16, OPENAI_CLIP_MEAN, STD)(pil).unsqueeze(0)
    assert torch.equal(model.transform(pil).unsqueeze(0), expected)
    assert torch.equal(model.encode_image(pil), ref.encoder.encode_image(expected))


def test_config_weights_and_card(fitted, exported) -> None:
    config = json.loads((exported / "config.json").read_text())
    assert set(REQUIRED_KEYS) <= set(config)
    assert config["format_version"] == 1 and config["name"] == "slip-tiny-test"
    assert config["paper"] == "slip" and config["zoo_version"] == zoo.__version__
    recipe = fitted["ckpt"].parent.parent / "config.yaml"  # saved by LightningCLI
    assert config["recipe"]["sha256"] == hashlib.sha256(recipe.read_bytes()).hexdigest()
    assert (exported / "recipe.yaml").read_bytes() == recipe.read_bytes()
    assert config["architecture"]["spec"]["text"]["width"] == 32
    assert config["heads"]["ssl_head"]["spec"]["hidden_dims"] == [32]
    assert config["preprocess"]["mean"] == list(OPENAI_CLIP_MEAN)
    assert config["preprocess"]["std"] == list(STD)
    assert config["tokenizer"] == {"name_or_path": "clip-bpe", "context_length": CTX}
    assert config["provenance"]["global_step"] == 1
    assert (
        config["provenance"]["source_sha256"]
        == hashlib.sha256(fitted["ckpt"].read_bytes()).hexdigest()
    )
    weights = exported / "model.safetensors"
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert config["weights"] == {"file": "model.safetensors", "sha256": digest, "dtype": "float32"}
    assert (exported / "model.safetensors.sha256").read_text().split()[0] == digest
    ref = fitted["ref"]
    expected = {f"backbone.{k}" for k in ref.encoder.state_dict()}
    expected |= {f"head.ssl_head.{k}" for k in ref.ssl_head.state_dict()}
    with safe_open(str(weights), "pt") as f:
        assert set(f.keys()) == expected
        assert f.metadata()["zoo_name"] == "slip-tiny-test"
    card = (exported / "README.md").read_text()
    assert "87.25" in card and "digits test split (540 images)" in card
    assert 'zoo.load("slip-tiny-test")' in card and digest in card
    assert (fitted["out"] / "README.md").read_text() == card
    assert "zoo_model_slip_tiny_test:model_dir" in (fitted["out"] / "pyproject.toml").read_text()


@torch.no_grad()
def test_float16_export_is_smaller_and_loads_as_float32(fitted, tmp_path) -> None:
    out = tmp_path / "fp16"
    export_model(fitted["ckpt"], "slip-fp16", out, dtype="float16", trust_pickle=True)
    folder = out / "zoo_model_slip_fp16"
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        assert f.get_tensor("backbone.image_projection").dtype == torch.float16
    fp32 = fitted["out"] / "zoo_model_slip_tiny_test" / "model.safetensors"
    assert (folder / "model.safetensors").stat().st_size < 0.55 * fp32.stat().st_size
    model = zoo.load(f"local-dir:{folder}")
    assert model.encoder.image_projection.dtype == torch.float32
    images = _images()
    torch.testing.assert_close(
        model.encode_image(images), fitted["ref"].encoder.encode_image(images), atol=5e-3, rtol=1e-2
    )
    half = zoo.load(f"local-dir:{folder}", dtype=torch.float16)
    assert half.encoder.image_projection.dtype == torch.float16


def test_lightning_checkpoint_needs_trust_pickle(fitted, tmp_path) -> None:
    with pytest.raises(UntrustedCheckpointError, match=r"pickle.*zoo fit.*--trust-pickle"):
        export_model(fitted["ckpt"], "refused", tmp_path / "refused")
    assert not (tmp_path / "refused").exists()


@torch.no_grad()
def test_slip_backbone_loads_into_fresh_clip(fitted, exported) -> None:
    from lightning_modules.clip import CLIP

    spec = fitted["ref"].hparams["encoder"]
    torch.manual_seed(123)
    clip = CLIP(encoder=spec).eval()
    images, tokens = _images(), TextTokenizer("clip-bpe", CTX)(TEXTS)
    slip = fitted["ref"].encoder
    assert not torch.equal(clip.encoder.encode_image(images), slip.encode_image(images))
    assert load_backbone_into(clip, f"local-dir:{exported}") is clip
    assert torch.equal(clip.encoder.encode_image(images), slip.encode_image(images))
    assert torch.equal(clip.encoder.encode_text(tokens), slip.encode_text(tokens))
    other = CLIP(encoder={**spec, "embed_dim": 8})  # strict: a different backbone is refused
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_backbone_into(other, exported)


# --------------------------------------------------------------------------- converter sources

VOCAB, IMAGE = 100, 32


@torch.no_grad()
def _randomise(model: nn.Module, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        p.copy_(3.0 if name.endswith("logit_scale") else 0.1 * torch.randn(p.shape, generator=gen))
    return model.eval()


def _token_ids(seed: int = 0) -> torch.Tensor:
    ids = torch.randint(1, VOCAB - 1, (2, 16), generator=torch.Generator().manual_seed(seed))
    ids[0, 5], ids[0, 6:] = VOCAB - 1, 0
    ids[1, -1] = VOCAB - 1
    return ids


@torch.no_grad()
def test_hf_clip_folder_roundtrip_with_tokenizer(tmp_path) -> None:
    from transformers import CLIPConfig, CLIPModel

    common = dict(hidden_act="quick_gelu", num_hidden_layers=1, num_attention_heads=2)
    text = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, eos_token_id=VOCAB - 1)
    text |= dict(bos_token_id=VOCAB - 2, pad_token_id=0, max_position_embeddings=16)
    vision = dict(image_size=IMAGE, patch_size=8, hidden_size=32, intermediate_size=64)
    config = CLIPConfig(text_config=text | common, vision_config=vision | common, projection_dim=8)
    hf = _randomise(CLIPModel(config), seed=1)
    src = tmp_path / "hf"
    hf.save_pretrained(src)
    clip_bpe_tokenizer(tmp_path / "bpe").save_pretrained(src)
    pre = {"size": {"shortest_edge": 36}, "crop_size": {"height": IMAGE, "width": IMAGE}}
    pre |= {"image_mean": [0.5] * 3, "image_std": [0.2] * 3, "resample": 2}
    (src / "preprocessor_config.json").write_text(json.dumps(pre))

    assert main(["export", str(src), "--name", "hf-tiny", "--out", str(tmp_path / "out")]) == 0
    model = zoo.load(f"local-dir:{tmp_path / 'out'}")
    direct, _ = dual_encoder_from_hf_clip(src)
    images, ids = _images(2, IMAGE), _token_ids()
    assert torch.equal(model.encode_image(images), direct.encode_image(images))
    assert torch.equal(model.encode_text(ids), direct.encode_text(ids))
    features = hf.get_image_features(pixel_values=images)
    features = getattr(features, "pooler_output", features)
    torch.testing.assert_close(model.encode_image(images), features, atol=1e-5, rtol=0)
    cfg = model.config
    assert cfg["tokenizer"] == {"name_or_path": "tokenizer", "context_length": 16}
    assert (model.folder / "tokenizer" / "tokenizer.json").is_file()
    assert torch.equal(model.tokenizer(TEXTS), TextTokenizer(str(src), 16)(TEXTS))
    assert (cfg["preprocess"]["resize"], cfg["preprocess"]["crop"]) == (36, IMAGE)
    assert cfg["preprocess"]["interpolation"] == "bilinear" and cfg["paper"] == "clip"
    pil = Image.new("RGB", (48, 40), (200, 30, 90))
    assert model.transform(pil).shape == (3, IMAGE, IMAGE)
    assert torch.allclose(model.transform(pil)[0], torch.tensor((200 / 255 - 0.5) / 0.2))


def _open_clip(seed: int):
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(seed)
    model = CLIP(
        embed_dim=8,
        vision_cfg=CLIPVisionCfg(layers=1, width=32, patch_size=8, image_size=IMAGE, head_width=16),
        text_cfg=CLIPTextCfg(context_length=16, vocab_size=VOCAB, width=32, heads=2, layers=1),
        quick_gelu=True,
    )
    return _randomise(model, seed)


@torch.no_grad()
def test_openai_state_dict_roundtrip_and_pickle_refusal(tmp_path) -> None:
    import argparse

    ref = _open_clip(seed=2)
    state = {k: v.contiguous() for k, v in ref.state_dict().items()}
    path = tmp_path / "ViT-tiny.safetensors"
    save_file(state, str(path))
    heads = ["--vision-heads", "2", "--text-heads", "2"]
    out = tmp_path / "out"
    assert main(["export", str(path), "--name", "openai-tiny", "--out", str(out), *heads]) == 0
    model = zoo.load(f"local-dir:{out}")
    direct, _ = dual_encoder_from_openai_state_dict(path, vision_heads=2, text_heads=2)
    images, ids = _images(2, IMAGE, seed=3), _token_ids(1)
    assert torch.equal(model.encode_image(images), direct.encode_image(images))
    assert torch.equal(model.encode_text(ids), direct.encode_text(ids))
    torch.testing.assert_close(
        model.encode_image(images), ref.encode_image(images), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(model.encode_text(ids), ref.encode_text(ids), atol=1e-5, rtol=0)
    assert model.config["tokenizer"] == {"name_or_path": "clip-bpe", "context_length": 16}
    assert model.config["preprocess"]["mean"] == list(OPENAI_CLIP_MEAN)

    pickled = tmp_path / "epoch_1.pt"  # an open_clip training checkpoint: pickled args
    torch.save({"state_dict": state, "args": argparse.Namespace(model="tiny")}, pickled)
    with pytest.raises(SystemExit):  # the CLI reports the refusal as a usage error
        main(["export", str(pickled), "--name", "pickled", "--out", str(tmp_path / "p"), *heads])
    with pytest.raises(UntrustedCheckpointError, match="trust_pickle=True"):
        export_model(pickled, "pickled", tmp_path / "p", vision_heads=2, text_heads=2)
    export_model(
        pickled, "pickled", tmp_path / "p", trust_pickle=True, vision_heads=2, text_heads=2
    )
    again = zoo.load(f"local-dir:{tmp_path / 'p'}")
    assert torch.equal(again.encode_image(images), model.encode_image(images))


# --------------------------------------------------------------------------- security


def test_tampered_weights_are_refused(exported, tmp_path) -> None:
    folder = _copy(exported, tmp_path)
    weights = folder / "model.safetensors"
    good = hashlib.sha256(weights.read_bytes()).hexdigest()
    data = bytearray(weights.read_bytes())
    data[-7] ^= 0x01  # one bit of one weight
    weights.write_bytes(bytes(data))
    bad = hashlib.sha256(bytes(data)).hexdigest()
    with pytest.raises(TamperedWeightsError) as err:
        zoo.load(f"local-dir:{folder}")
    assert (
        "model.safetensors" in str(err.value) and good in str(err.value) and bad in str(err.value)
    )

    # matching config.json but a different digest file: refused as well
    config = json.loads((folder / "config.json").read_text())
    config["weights"]["sha256"] = bad
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(TamperedWeightsError, match=r"model\.safetensors\.sha256 records"):
        zoo.load(f"local-dir:{folder}")
    (folder / "model.safetensors.sha256").unlink()
    with pytest.raises(TamperedWeightsError, match="missing digest file"):
        zoo.load(f"local-dir:{folder}")


@torch.no_grad()
def test_pickle_weights_refused_unless_trusted(exported, tmp_path) -> None:
    folder = _copy(exported, tmp_path)
    state = load_file(str(folder / "model.safetensors"))
    torch.save(state, folder / "model.bin")
    digest = hashlib.sha256((folder / "model.bin").read_bytes()).hexdigest()
    (folder / "model.bin.sha256").write_text(digest)
    config = json.loads((folder / "config.json").read_text())
    config["weights"] |= {"file": "model.bin", "sha256": digest}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UntrustedCheckpointError, match=r"model\.bin is a pickle"):
        zoo.load(f"local-dir:{folder}")
    model = zoo.load(f"local-dir:{folder}", trust_pickle=True)
    reference = zoo.load(f"local-dir:{exported}")
    images = _images()
    assert torch.equal(model.encode_image(images), reference.encode_image(images))


@pytest.mark.parametrize("name", ["../evil", "a/../b", "x..y", "/abs", "Upper", "", "-x", "a b"])
def test_bad_model_names_are_refused(name: str, tmp_path) -> None:
    with pytest.raises(UnsafePathError, match="invalid model name"):
        export_model(tmp_path, name, tmp_path / "out")
    if name and ":" not in name:
        with pytest.raises(UnsafePathError):
            zoo.load(name)


@pytest.mark.parametrize(
    ("key", "value", "error"),
    [
        ("weights.file", "../model.safetensors", UnsafePathError),
        ("weights.file", "/etc/passwd", UnsafePathError),
        ("weights.file", "link.safetensors", UnsafePathError),  # symlink out of the folder
        ("weights.file", "model.exe", UnsafeConfigError),
        ("tokenizer.name_or_path", "../tokenizer", UnsafePathError),
        ("tokenizer.name_or_path", "/tmp", UnsafePathError),
        ("architecture.spec.vision.checkpoint", "/tmp/x.pt", UnsafeConfigError),
        ("architecture.spec.vision.kwargs", {"checkpoint_path": "/x.pt"}, UnsafeConfigError),
    ],
)
def test_config_paths_must_stay_inside(exported, tmp_path, key, value, error) -> None:
    folder = _copy(exported, tmp_path)
    shutil.copy(folder / "model.safetensors", tmp_path / "model.safetensors")
    (folder / "link.safetensors").symlink_to(tmp_path / "model.safetensors")
    config = json.loads((folder / "config.json").read_text())
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
        node = node[part]
    node[leaf] = value
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(error):
        zoo.load(f"local-dir:{folder}")


def test_uris(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="local-dir: path does not exist"):
        zoo.load(f"local-dir:{tmp_path / 'missing'}")
    with pytest.raises(FileNotFoundError, match="not a model folder"):
        zoo.load(f"local-dir:{tmp_path}")
    with pytest.raises(HubOfflineError, match="HF_HUB_OFFLINE"):
        zoo.load("hf-hub:some-org/some-model@v1")
    with pytest.raises(UnsafePathError, match="repo id"):
        zoo.load("hf-hub:../etc")
    with pytest.raises(ValueError, match="unknown model URI"):
        zoo.load("s3:bucket/model")
    with pytest.raises(LookupError, match="no installed zoo model named 'not-installed'"):
        zoo.load("not-installed")


@torch.no_grad()
def test_hf_hub_downloads_safe_files_into_a_plain_folder(fitted, monkeypatch, tmp_path) -> None:
    """The network part is faked: the Hub "serves" the export folder."""
    import huggingface_hub

    calls = []

    def fake_snapshot_download(repo_id, revision, local_dir, allow_patterns):
        calls.append((repo_id, revision, Path(local_dir), allow_patterns))
        shutil.copytree(fitted["out"], local_dir, dirs_exist_ok=True)
        return str(local_dir)

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("VL_ZOO_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    model = zoo.load("hf-hub:some-org/slip-tiny@refs/pr/1")
    ((repo_id, revision, local_dir, patterns),) = calls
    assert (repo_id, revision) == ("some-org/slip-tiny", "refs/pr/1")
    assert local_dir == tmp_path / "hf-hub" / "some-org" / "slip-tiny" / "refs--pr--1"
    assert "*.safetensors" in patterns and not any(
        p.endswith((".bin", ".pt", ".ckpt")) for p in patterns
    )
    images = _images()
    assert torch.equal(model.encode_image(images), fitted["ref"].encoder.encode_image(images))


def test_import_zoo_and_list_models_stay_torch_free() -> None:
    code = (
        "import sys, zoo; names = zoo.list_models(); from zoo.cli import main; "
        "main(['list', '--models']); assert 'torch' not in sys.modules, 'torch imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (
        "export"
        in subprocess.run(
            [sys.executable, "-m", "zoo", "--help"], capture_output=True, text=True
        ).stdout
    )


def test_saving_the_same_weights_twice_gives_the_same_bytes(tmp_path):
    """safetensors writes its metadata in hash-map order; the zoo sorts it, so one model has
    one sha256 (a digest can show that two exports hold the same model)."""
    from zoo.hub.weights import save_weights

    state = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(3)}
    metadata = {f"key{i}": f"value {i}" for i in range(12)}
    digests = set()
    for i in range(8):
        (tmp_path / str(i)).mkdir()
        digests.add(save_weights(tmp_path / str(i) / "model.safetensors", state, metadata))
    assert len(digests) == 1
    from safetensors import safe_open

    with safe_open(str(tmp_path / "0" / "model.safetensors"), "pt") as f:
        assert f.metadata() == metadata
        assert torch.equal(f.get_tensor("w"), state["w"])
