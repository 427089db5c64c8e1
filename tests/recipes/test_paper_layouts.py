"""Every paper-scale recipe runs end to end, evaluation included, on a tiny generated copy of
the data layout its header declares (``# Layout under data.root``, parsed by
``zoo.data.layouts``): ``zoo fit --config R --data.root TMP`` with ``fast_dev_run`` and the
recipe's own evaluation callbacks. The layout comes from the header, not from the recipe's
``data:`` section, so a config that does not read what the recipe says it reads fails here.
Recipes are discovered, so a new recipe is covered without editing this file.

Only what cannot run on 2 CPU cores is changed: one CPU process in fp32, and

- pre-training recipes (CLIP, SLIP, CLIP-rocket): batch 2, a 1-block model of width 32 on
  32-pixel images (same architecture family, same heads; a timm ResNet keeps its bottlenecks
  and BatchNorm with one block per stage and 8-64 channels; projection heads 64 -> 32) and one
  prompt template instead of 80 (the 1000 ImageNet class names stay);
- few-shot recipes (a ``coop`` entry: a CoOp dataset folder): the frozen CLIP is the tiny
  model of the declared family that the header's ``clip-weights`` entry writes (e.g. a
  width-8 ResNet with RN50's depths and attention pool, or a one-block ViT-B/16, with
  CLIP's tokenizer and context), loaded through the recipe's own ``clip.path`` / ``format``
  (only the path moves to the copy), at that model's image size (ResNets 32 px, ViT-B 64,
  ViT-L/14 56);
  the dataset has 4 classes (the head is built from the data's class names, so its size
  follows) with the recipe's shot count. Shots, batch sizes (a batch of 32 tiny-CLIP
  images costs less than 16 batches of 2), templates, transforms and the method's
  hyper-parameters stay.

- ViSFT recipes (a ``coco`` entry: a COCO 2017 folder): the copy is generated CLEVR-like
  scenes in COCO's files; the backbone keeps its timm architecture (EVA-G, EVA02-E) at one
  block of width 32 on 28-pixel images, randomly initialised (the user-supplied weights file
  is not generated), the heads at their tiny presets, batch 2. A stage-2 recipe runs through
  untrained heads (``random_heads``): its stage-1 prerequisites (``# after:``) are fitted by
  ``zoo reproduce``, which the tiny pipeline test exercises.

- region-phrase recipes (``regions`` entries: TiMix's PTA data): the pairs, the region
  files (4 images each) and the evaluation table as declared; the model is the tiny CLIP of
  the header's ``clip-weights`` entry loaded through ``init_from`` at 64 px (4×4 patches), the
  patch predictor after block 0, batch 2.

- geo-feature recipes (``geo`` entries: CSP's pre-extracted image features with locations):
  8 images in the recipe's class count and feature width, the location encoder's hidden
  layer 16 and embedding 8 wide, batch 4; the method's hyper-parameters stay.

- CoCu recipes (``curated`` shards: captions rewritten as ``zoo curate`` writes them, plus a
  ``voc`` folder): GroupViT keeps its three stages and both grouping blocks at one block of
  width 32 (4 then 2 groups, patch 8 on 32-pixel images), the text tower and projection MLPs
  as the pre-training recipes; zero-shot segmentation runs on the 32-pixel VOC copy as
  stored instead of at a 448 short side.

A training-free recipe (``trainer.max_epochs: 0``: zero-shot CLIP, Tip-Adapter) runs without
``fast_dev_run``, which would force a training epoch on a module with nothing to train; its
fit is the evaluation, on the whole tiny copy.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cli_helpers import eval_lines
from zoo.cli import main
from zoo.data.layouts import (
    CLIP_WEIGHTS,
    COCO,
    COOP,
    GEO,
    REGIONS,
    FewShotSizes,
    LayoutEntry,
    parse_layout,
    write_recipe_layout,
)
from zoo.recipe_index import is_tiny_recipe

ROOT = Path(__file__).resolve().parents[2]
PAPER_SCALE = sorted(
    p
    for p in (ROOT / "recipes").glob("*/*.yaml")
    if p.name != "metafile.yaml" and not is_tiny_recipe(p)
)
#: Classes of the generated copy of a few-shot dataset (CoCoOp's base / new halves: 2 + 2).
FEWSHOT_CLASSES = 4


def _id(path: Path) -> str:
    return f"{path.parent.name}/{path.stem}"


def _shrink_model(init_args: dict) -> list[str]:
    """CLI overrides that keep the recipe's model class and heads at a CPU-testable size."""
    args: list[str] = []
    # dotted overrides on top of the recipe's encoder preset (expanded when the recipe loads)
    if init_args.get("encoder"):
        p = "--model.init_args.encoder.vision"
        name = _vision_model_name(init_args["encoder"])
        if any(k in name for k in ("vit", "deit", "eva")):
            args += [f"{p}.img_size=32", f"{p}.depth=1", f"{p}.embed_dim=32", f"{p}.num_heads=2"]
        elif name.startswith("resnet"):  # timm ResNet (CLIP-rocket): bottlenecks, BN, 1 per stage
            args.append(
                f'{p}.kwargs={{"layers": [1, 1, 1, 1], "channels": [8, 16, 32, 64], "stem_width": 8}}'
            )
        p = "--model.init_args.encoder.text"
        args += [f"{p}.width=32", f"{p}.layers=1", f"{p}.heads=2"]
        args.append("--model.init_args.encoder.embed_dim=32")
    if "ssl_head" in init_args:
        args += [
            "--model.init_args.ssl_head.hidden_dims=[64]",
            "--model.init_args.ssl_head.out_dim=32",
        ]
    # CLIP-rocket's local, BarLIP and SiamLIP heads (MLPSpec mappings)
    for head in ("local_head", "barlip_head", "siamlip_head", "siamlip_predictor"):
        if isinstance(init_args.get(head), dict):
            args += [
                f"--model.init_args.{head}.hidden_dims=[64]",
                f"--model.init_args.{head}.out_dim=32",
            ]
    # CoCu's GroupViT: three stages with both grouping blocks kept, one block each, width 32
    vision = init_args.get("vision")
    if isinstance(vision, dict) and "num_group_tokens" in vision:
        p = "--model.init_args.vision"
        args += [
            f"{p}.img_size=32",
            f"{p}.patch_size=8",
            f"{p}.embed_dim=32",
            f"{p}.depths=[1, 1, 1]",
            f"{p}.num_heads=2",
            f"{p}.num_group_tokens=[4, 2, 0]",
            f"{p}.num_output_groups=[4, 2]",
            "--model.init_args.text.width=32",
            "--model.init_args.text.layers=1",
            "--model.init_args.text.heads=2",
            "--model.init_args.projector.hidden_dims=[64]",
            "--model.init_args.projector.out_dim=32",
        ]
    return args


def _vision_model_name(encoder: dict) -> str:
    """The timm name of a recipe's vision tower (a preset with overrides, or a full spec)."""
    from zoo.backbones.presets import resolve_preset

    vision = resolve_preset(encoder).get("vision") or {}
    return str(vision.get("model_name", "vit"))


def _pretraining_args(recipe: Path, config: dict, data_root: Path) -> list[str]:
    written = write_recipe_layout(recipe, data_root, num_classes=1000)
    assert written, f"{recipe} declares no layout"
    return [
        "--data.batch_size=2",
        "--data.image_size=32",
        '--data.templates=["a photo of a {}."]',
        *_shrink_model(config["model"]["init_args"]),
        *_shrink_segmentation(config["data"].get("init_args") or {}),
    ]


def _shrink_segmentation(data: dict) -> list[str]:
    """CoCu's zero-shot segmentation data: the 32-px copy evaluated at its own size (a short
    side of 32), not resized to the recipe's 448."""
    return ["--data.segmentation.size=32"] if data.get("segmentation") else []


def _visft_args(recipe: Path, config: dict, data_root: Path) -> list[str]:
    """Write the COCO copy; shrink the backbone (same timm architecture) and the heads."""
    write_recipe_layout(recipe, data_root)
    init = config["model"]["init_args"]
    name = init["backbone"]["model_name"]
    small = f"{{model_name: {name}, img_size: 28, depth: 1, embed_dim: 32, num_heads: 2, checkpoint: null}}"
    args = [f"--model.init_args.backbone={small}", "--data.image_size=28", "--data.batch_size=2"]
    for task in init.get("tasks") or ("detection", "segmentation", "caption"):
        extra = ", num_points: 64" if task == "segmentation" else ""
        args.append(f"--model.init_args.{task}={{preset: tiny{extra}}}")
    if init.get("stage") == 2:
        args += ["--model.init_args.heads_from=null", "--model.init_args.random_heads=true"]
    return args


def _geo_args(recipe: Path, config: dict, data_root: Path) -> list[str]:
    """Write the geo-feature copy (8 images of the recipe's classes); shrink the location
    encoder (the image feature width, the class head and the losses stay)."""
    classes = int(config["model"]["init_args"]["num_classes"])
    write_recipe_layout(recipe, data_root, samples=8, num_classes=classes)
    p = "--model.init_args.location"
    return [f"{p}.hidden_dim=16", f"{p}.out_dim=8", "--data.batch_size=4"]


def _regions_args(
    recipe: Path, config: dict, entries: list[LayoutEntry], data_root: Path
) -> list[str]:
    """TiMix (``regions`` entries): write the pairs, regions, evaluation table and CLIP copy;
    the model is the tiny CLIP of the declared family (``init_from`` pointed at the copy) at
    64 px (4×4 patches, so the mixed window sides 1-3 exist), its predictor after block 0."""
    from zoo.backbones.convert import TINY_CLIP_ARCHS

    write_recipe_layout(recipe, data_root, samples=4, num_classes=10)
    args = [
        "--data.batch_size=2",
        "--data.image_size=64",
        "--model.init_args.encoder.vision.img_size=64",
        "--model.init_args.pruning_loc=0",
    ]
    weights = [e for e in entries if e.format == CLIP_WEIGHTS]
    if weights:
        fmt, arch = weights[0].weights
        assert TINY_CLIP_ARCHS[arch]
        args.append(f"--model.init_args.init_from.path={data_root / Path(weights[0].path).name}")
    else:
        args += _shrink_model(config["model"]["init_args"])
    return args


def _fewshot_args(
    recipe: Path, config: dict, entries: list[LayoutEntry], data_root: Path
) -> list[str]:
    """Write the few-shot layout; point the recipe's ``clip.path`` at the weights copy and
    give the data that model's image size."""
    from zoo.backbones.convert import TINY_CLIP_ARCHS
    from zoo.fewshot.clip_source import detect_source_format

    data = config["data"]["init_args"]
    datasets = [e.dataset for e in entries if e.format == COOP]
    assert data.get("dataset") in datasets, (
        f"{recipe}: data.dataset is {data.get('dataset')!r}, the header declares {datasets}"
    )
    sizes = FewShotSizes(shots=int(data.get("shots", 16)), classes=FEWSHOT_CLASSES)
    write_recipe_layout(recipe, data_root, fewshot=sizes)
    clip = config["model"]["init_args"].get("clip") or {}
    if not clip.get("path"):  # a random-init encoder spec: nothing to point at
        return []
    name = Path(clip["path"]).name
    weights = [e for e in entries if e.format == CLIP_WEIGHTS]
    match = [e for e in weights if Path(e.path).name == name]
    assert match, (
        f"{recipe}: model.init_args.clip.path is {clip['path']}, but the header declares no "
        f"'#   {name}: {CLIP_WEIGHTS} <format> <arch>' entry (declared: "
        f"{[e.path for e in weights]})"
    )
    fmt, arch = match[0].weights
    copy = data_root / name
    declared = clip.get("format", "auto")
    read_as = detect_source_format(str(copy)) if declared == "auto" else declared
    assert read_as == fmt, (
        f"{recipe}: the header declares {name} in {fmt} format, model.init_args.clip reads it "
        f"as {read_as}"
    )
    return [
        f"--model.init_args.clip.path={copy}",
        f"--data.preprocess.image_size={TINY_CLIP_ARCHS[arch]['image_size']}",
    ]


def run_on_declared_layout(recipe: Path, tmp_path: Path, monkeypatch) -> None:
    """``zoo fit`` ``recipe`` with ``fast_dev_run`` (training-free recipes: as they are) on a
    tiny copy of its declared layout (see the module docstring for what is shrunk)."""
    config = yaml.safe_load(recipe.read_text())
    entries = parse_layout(recipe.read_text())
    data_root = tmp_path / "data"
    if any(e.format == COOP for e in entries):
        args = _fewshot_args(recipe, config, entries, data_root)
    elif any(e.format == REGIONS for e in entries):
        args = _regions_args(recipe, config, entries, data_root)
    elif any(e.format == COCO for e in entries):
        args = _visft_args(recipe, config, data_root)
    elif any(e.format == GEO for e in entries):
        args = _geo_args(recipe, config, data_root)
    else:
        args = _pretraining_args(recipe, config, data_root)
    if config["trainer"].get("max_epochs") != 0:
        args.append("--trainer.fast_dev_run=1")
    # else a training-free recipe (zero-shot CLIP, Tip-Adapter): fast_dev_run would force one
    # training epoch on a module with nothing to train; the fit is its evaluation, on the
    # whole (tiny) copy
    monkeypatch.setenv("VL_ZOO_CACHE", str(tmp_path / "cache"))
    main(
        [
            "fit",
            "--config",
            str(recipe),
            "--data.root",
            str(data_root),
            "--data.num_workers=0",
            "--data.pin_memory=false",
            *args,
            "--trainer.accelerator=cpu",
            "--trainer.devices=1",
            "--trainer.num_nodes=1",
            "--trainer.strategy=auto",
            "--trainer.precision=32-true",
            "--trainer.sync_batchnorm=false",
            f"--trainer.default_root_dir={tmp_path / 'run'}",
            f"--trainer.logger.init_args.save_dir={tmp_path / 'run'}",
        ]
    )


@pytest.mark.parametrize("recipe", PAPER_SCALE, ids=_id)
def test_paper_scale_recipe_runs_on_its_declared_layout(recipe, tmp_path, capsys, monkeypatch):
    lines = eval_lines(yaml.safe_load(recipe.read_text()))
    assert lines, f"{recipe} declares no evaluation callback"
    run_on_declared_layout(recipe, tmp_path, monkeypatch)
    out = capsys.readouterr().out
    for name, line in lines.items():
        assert re.search(line, out), f"{name} printed nothing:\n{out[-3000:]}"


# --- checkpoints ------------------------------------------------------------------------------
#: Classes of the few-shot protocol's datasets (CoOp's DATASETS.md / Table 1 of the CoOp paper).
FEWSHOT_CLASS_COUNTS = {
    "imagenet": 1000,
    "caltech101": 100,
    "oxford_pets": 37,
    "stanford_cars": 196,
    "oxford_flowers": 102,
    "food101": 101,
    "fgvc_aircraft": 100,
    "sun397": 397,
    "dtd": 47,
    "eurosat": 10,
    "ucf101": 101,
}
#: An epoch of at most this many optimiser steps is short (minutes on one GPU: CoOp's ImageNet
#: 16-shot epoch is 500 steps); longer ones need a checkpoint within the epoch.
LONG_EPOCH_STEPS = 1000


def fewshot_epoch_steps(config: dict[str, Any]) -> int | None:
    """Training steps per epoch of a few-shot recipe on a registered dataset (classes × shots
    / batch; CoCoOp's base classes: the first ceil(C / 2); episodic data: one per episode),
    ``None`` for other recipes (web-scale pre-training: epochs of hours) or unknown sizes."""
    data = config["data"].get("init_args") or {}
    classes = FEWSHOT_CLASS_COUNTS.get(data.get("dataset"))
    shots = data.get("shots", 16)
    if classes is None or not isinstance(shots, int) or shots <= 0:
        return None
    if data.get("subsample_classes", "all") != "all":
        classes = math.ceil(classes / 2) if data["subsample_classes"] == "base" else classes // 2
    if data.get("episode_way"):  # episodic training (SgVA-CLIP): one step per episode
        return data.get("episodes_per_epoch") or math.ceil(classes / data["episode_way"])
    batch = data.get("batch_size", 32) * config["trainer"].get("accumulate_grad_batches", 1)
    return math.ceil(classes * shots / batch)


def _checkpoints(config: dict) -> list[dict]:
    return [
        c.get("init_args") or {}
        for c in config["trainer"]["callbacks"]
        if c["class_path"].endswith("ModelCheckpoint")
    ]


def _epoch_steps(recipe: Path) -> float:
    """Steps per epoch: 0 for a training-free recipe (``max_epochs: 0``, nothing to resume),
    ``inf`` when unknown (pre-training)."""
    config = yaml.safe_load(recipe.read_text())
    if config["trainer"].get("max_epochs") == 0:
        return 0
    return fewshot_epoch_steps(config) or math.inf


LONG_EPOCHS = [p for p in PAPER_SCALE if _epoch_steps(p) > LONG_EPOCH_STEPS]


@pytest.mark.parametrize("recipe", LONG_EPOCHS, ids=_id)
def test_long_epoch_recipe_checkpoints_within_an_epoch(recipe):
    """A kill in a multi-hour epoch must lose minutes, not the epoch.

    Only recipes with long epochs: pre-training (web-scale epochs of hours) and few-shot
    recipes of more than :data:`LONG_EPOCH_STEPS` optimiser steps an epoch (CoCoOp's batch 1
    on ImageNet: 8,000). A few-shot epoch is K images per class (ImageNet 16-shot: 16,000
    images, 500 steps of 32, minutes on one GPU), so the epoch-end ``last.ckpt`` loses at
    most minutes (:func:`test_short_epoch_recipe_checkpoints_every_epoch`). A within-epoch
    interval must fire within the epoch when the epoch's length is known."""
    config = yaml.safe_load(recipe.read_text())
    checkpoints = _checkpoints(config)
    within = [
        c for c in checkpoints if c.get("every_n_train_steps") or c.get("train_time_interval")
    ]
    assert within and all(c.get("save_last") for c in within), checkpoints
    steps = fewshot_epoch_steps(config)
    if steps is not None:
        every = [c["every_n_train_steps"] for c in within if c.get("every_n_train_steps")]
        assert any(n < steps for n in every) or any(c.get("train_time_interval") for c in within), (
            f"every_n_train_steps {every} never fires within an epoch of {steps} steps"
        )


SHORT_EPOCHS = [p for p in PAPER_SCALE if 0 < _epoch_steps(p) <= LONG_EPOCH_STEPS]


@pytest.mark.parametrize("recipe", SHORT_EPOCHS, ids=_id)
def test_short_epoch_recipe_checkpoints_every_epoch(recipe):
    """A short-epoch (few-shot) recipe writes ``last.ckpt`` at least every epoch, so a kill
    loses at most one epoch (minutes) and ``--ckpt_path last`` resumes."""
    checkpoints = _checkpoints(yaml.safe_load(recipe.read_text()))
    every_epoch = [
        c
        for c in checkpoints
        if c.get("save_last") and c.get("every_n_epochs", 1) == 1 and "every_n_train_steps" not in c
    ]
    assert every_epoch, checkpoints
