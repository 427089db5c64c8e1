"""The few-shot entries of a recipe's ``# Layout under data.root`` block (``zoo.data.layouts``):
``<folder>/: coop <dataset>`` writes what :class:`FewShotDataModule` reads for every dataset
of the protocol (split-file datasets, ImageNet's and FGVCAircraft's raw layouts), with the
shots the recipe asks for; ``<file>: clip-weights openai <arch>`` writes a tiny CLIP of the
named family that the recipes' own loader (``model.init_args.clip``) reads; malformed lines
are refused with the syntax; and a CoOp-style zero-shot recipe (``ZeroShotCLIP``, nothing to
train) fits end to end on its declared layout through ``tests/recipes/test_paper_layouts.py``'s
runner, printing its ``fewshot top-1`` line."""

from __future__ import annotations

import os
import re
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch

from tests.cli_helpers import eval_lines
from tests.recipes.test_paper_layouts import run_on_declared_layout
from zoo.backbones.convert import TINY_CLIP_ARCHS, export_openai_state_dict
from zoo.backbones.dual_encoder import LOG_100
from zoo.data.layouts import FewShotSizes, parse_layout, write_recipe_layout
from zoo.fewshot.datasets import STANDARD_DATASETS, get_dataset

HEADER = "# Layout under data.root (test):\n"


def _recipe(tmp_path: Path, *lines: str, body: str = "") -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(HEADER + "".join(f"#   {line}\n" for line in lines) + body)
    return path


# --------------------------------------------------------------------------- coop entries


@pytest.mark.parametrize("dataset", STANDARD_DATASETS)
def test_coop_entry_is_what_the_datamodule_reads(dataset, tmp_path):
    """K training and min(K, 4) validation shots of every class, every test image, the
    classes in label order, for each dataset of the protocol (read by the real datamodule)."""
    from zoo.data.fewshot_datamodule import FewShotDataModule

    folder = get_dataset(dataset).folder
    recipe = _recipe(tmp_path, f"{folder}/: coop {dataset}")
    sizes = FewShotSizes(shots=5, classes=3, test_images=2)
    write_recipe_layout(recipe, tmp_path / "data", fewshot=sizes)
    dm = FewShotDataModule(
        root=str(tmp_path / "data"),
        dataset=dataset,
        shots=5,
        split_cache=str(tmp_path / "cache"),
    )
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.classnames) == 3
    assert [len(dm.build_dataset(s)) for s in ("train", "val", "test")] == [15, 12, 6]
    for split, per_class in (("train", 5), ("val", 4), ("test", 2)):
        labels = dm._load().parts[split].labels
        assert sorted(labels) == sorted(list(range(3)) * per_class), split


def test_coop_imagenet_lists_1000_names_and_the_folders_are_the_classes(tmp_path):
    recipe = _recipe(tmp_path, "imagenet/: coop imagenet")
    write_recipe_layout(recipe, tmp_path, fewshot=FewShotSizes(shots=1, classes=2))
    names = (tmp_path / "imagenet" / "classnames.txt").read_text().splitlines()
    assert len(names) == 1000 and names[1] == "n00000001 imagenet class 1"
    train = tmp_path / "imagenet" / "images" / "train"
    assert sorted(p.name for p in train.iterdir()) == ["n00000000", "n00000001"]
    # one training shot + one held-out validation shot per class, both from images/train
    assert all(len(list(d.iterdir())) == 2 for d in train.iterdir())


def test_coop_takes_every_image_when_shots_is_not_positive(tmp_path):
    recipe = _recipe(tmp_path, "dtd/: coop dtd")
    write_recipe_layout(recipe, tmp_path, fewshot=FewShotSizes(shots=0, classes=2))
    import json

    split = json.loads((tmp_path / "dtd" / "split_zhou_DescribableTextures.json").read_text())
    assert {k: len(v) for k, v in split.items()} == {"train": 4, "val": 4, "test": 4}


# --------------------------------------------------------------------------- clip-weights


@pytest.mark.parametrize(
    ("arch", "file", "model_name", "depths_or_patch"),
    [
        ("rn50", "RN50.pt", "resnet50_clip", (3, 4, 6, 3)),
        ("vit-b16", "ViT-B-16.safetensors", "vit_base_patch16_clip_224", 16),
    ],
)
def test_clip_weights_entry_loads_through_the_recipe_loader(
    arch, file, model_name, depths_or_patch, tmp_path
):
    """The file the recipes' ``clip: {path, format: openai}`` reads: the named family (RN50's
    stage depths with an attention pool, or ViT-B/16's patch size), QuickGELU text on CLIP's
    vocabulary / context, OpenAI's logit scale, and the exact weights written (the load
    exports back to the file's tensors bit for bit)."""
    from zoo.backbones.convert import clip_resnet_attention_pool, load_state_file
    from zoo.fewshot.clip_source import load_clip
    from zoo.hub.security import sha256_file

    recipe = _recipe(tmp_path, f"{file}: clip-weights openai {arch}")
    [path] = write_recipe_layout(recipe, tmp_path)[file]
    loaded = load_clip({"path": str(path), "format": "openai"})
    encoder = loaded.encoder
    assert encoder.spec.vision.model_name == model_name
    size = TINY_CLIP_ARCHS[arch]["image_size"]
    assert (loaded.preprocess.image_size, loaded.preprocess.context_length) == (size, 77)
    assert (encoder.text.spec.vocab_size, encoder.text.spec.act) == (49408, "quick_gelu")
    assert encoder.logit_scale.item() == pytest.approx(LOG_100)
    assert loaded.sha256 == sha256_file(path)
    if arch.startswith("rn"):
        depths = tuple(len(stage) for stage in encoder.visual.stages)
        assert depths == depths_or_patch and clip_resnet_attention_pool(encoder.visual)
    else:
        assert encoder.visual.patch_embed.patch_size == (depths_or_patch,) * 2
    state = load_state_file(path)
    assert {"input_resolution", "context_length", "vocab_size"} <= state.keys()
    exported = export_openai_state_dict(encoder)
    for key, value in exported.items():
        assert torch.equal(value, state[key]), key
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        features = encoder.encode_image(images)
    assert not torch.allclose(features[0], features[1])  # the image reaches the feature


def test_tiny_weights_are_deterministic_in_the_seed(tmp_path):
    from zoo.backbones.convert import tiny_openai_state_dict

    a, b = tiny_openai_state_dict("vit-b32"), tiny_openai_state_dict("vit-b32")
    c = tiny_openai_state_dict("vit-b32", seed=1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["visual.proj"], c["visual.proj"])
    with pytest.raises(ValueError, match="not a multiple of 32"):
        tiny_openai_state_dict("rn50", image_size=48)


# --------------------------------------------------------------------------- the syntax


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("caltech-101/split_zhou_Caltech101.json: coop impath,label,classname", "not a registered"),
        ("caltech101/: coop caltech101", r"data.root/caltech-101/"),
        ("caltech-101: coop caltech101", r"'#   caltech-101/: coop caltech101'"),
        ("caltech-101/101_ObjectCategories: classfolders jpg", "format must be one of"),
        ("shifted_digits/: coop shifted_digits", "generated by the datamodule"),
        ("RN50.pt: clip-weights openai rn51", "arch must be one of"),
        ("RN50.pt: clip-weights hf-clip rn50", "is malformed"),
        ("RN50.pt: clip-weights zoo rn50", "format must be one of"),
        ("RN50.pt: clip-weights openai", "is malformed"),
    ],
)
def test_malformed_fewshot_entries_are_refused_with_the_syntax(line, error):
    with pytest.raises(ValueError, match=error):
        parse_layout(HEADER + f"#   {line}\n")


def test_fewshot_entries_parse_with_their_fields():
    entries = parse_layout(
        HEADER + "#   imagenet/: coop imagenet\n#   RN50.pt: clip-weights openai rn50\n# end\n"
    )
    assert [(e.path, e.format) for e in entries] == [
        ("imagenet/", "coop"),
        ("RN50.pt", "clip-weights"),
    ]
    assert entries[0].dataset == "imagenet" and entries[1].weights == ("openai", "rn50")


# --------------------------------------------------------------------------- a recipe, end to end

ZERO_SHOT_RECIPE = """\
seed_everything: 1
trainer:
  accelerator: gpu
  devices: 1
  num_nodes: 1
  precision: 16-mixed
  max_epochs: 0
  default_root_dir: runs/zsclip
  logger:
    class_path: lightning.pytorch.loggers.TensorBoardLogger
    init_args: {{save_dir: runs/zsclip, name: tensorboard}}
  callbacks:
  - class_path: zoo.eval.ZeroShotEval
    init_args: {{name: fewshot, split: test}}
model:
  class_path: zoo.fewshot.baselines.ZeroShotCLIP
  init_args:
    clip: {{path: /weights/openai/{weights}, format: openai}}
data:
  class_path: zoo.data.fewshot_datamodule.FewShotDataModule
  init_args:
    root: /data/coop
    dataset: {dataset}
    shots: 16
    fewshot_seed: 1
    batch_size: 32
    eval_batch_size: 100
    num_workers: 8
    pin_memory: true
"""


@pytest.mark.parametrize(
    ("dataset", "weights", "arch"),
    [("caltech101", "RN50.pt", "rn50"), ("imagenet", "ViT-B-16.pt", "vit-b16")],
)
def test_a_zero_shot_recipe_runs_on_its_declared_layout(
    dataset, weights, arch, tmp_path, capsys, monkeypatch
):
    """CoOp's zero-shot baseline as a paper-scale recipe (GPU, fp16, 224 px data,
    /data and /weights paths), fitted by the paper-layout runner on its header's layout."""
    folder = get_dataset(dataset).folder
    recipe = _recipe(
        tmp_path,
        f"{folder}/: coop {dataset}",
        f"{weights}: clip-weights openai {arch}",
        body=ZERO_SHOT_RECIPE.format(dataset=dataset, weights=weights),
    )
    import yaml

    lines = eval_lines(yaml.safe_load(recipe.read_text()))
    assert lines == {"ZeroShotEval(fewshot)": r"fewshot top-1: \d+\.\d\d%"}
    run_on_declared_layout(recipe, tmp_path, monkeypatch)
    out = capsys.readouterr().out
    found = re.search(
        r"fewshot top-1: \d+\.\d\d% \(top-5 [\d.]+%\) on (\d+) test images, (\d+)", out
    )
    assert found, out[-3000:]
    # a training-free recipe runs without fast_dev_run: every test image of the 4 classes
    assert found.groups() == ("8", "4")


def test_a_recipe_whose_weights_are_not_declared_fails_naming_the_entry(tmp_path, monkeypatch):
    recipe = _recipe(
        tmp_path,
        "caltech-101/: coop caltech101",
        body=ZERO_SHOT_RECIPE.format(dataset="caltech101", weights="RN50.pt"),
    )
    with pytest.raises(AssertionError, match=r"'#   RN50.pt: clip-weights <format> <arch>'"):
        run_on_declared_layout(recipe, tmp_path, monkeypatch)


def test_a_recipe_reading_another_dataset_than_it_declares_fails(tmp_path, monkeypatch):
    recipe = _recipe(
        tmp_path,
        "caltech-101/: coop caltech101",
        "RN50.pt: clip-weights openai rn50",
        body=ZERO_SHOT_RECIPE.format(dataset="imagenet", weights="RN50.pt"),
    )
    with pytest.raises(AssertionError, match=r"data.dataset is 'imagenet', the header declares"):
        run_on_declared_layout(recipe, tmp_path, monkeypatch)
