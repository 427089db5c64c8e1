"""Every paper-scale recipe runs end to end, evaluation included, on a tiny generated copy of
the data layout its header declares (``# Layout under data.root``, parsed by
``zoo.data.layouts``): ``zoo fit --config R --data.root TMP`` with ``fast_dev_run`` and the
recipe's own evaluation callbacks. The layout comes from the header, not from the recipe's
``data:`` section, so a config that does not read what the recipe says it reads fails here.
Recipes are discovered, so a new recipe is covered without editing this file.

Only what cannot run on 2 CPU cores is changed: one CPU process in fp32, a 1-block model of
width 32 on 32-pixel images (same architecture family, same heads), batch 2, and one prompt
template instead of 80 (the 1000 ImageNet class names stay).
"""

import re
from pathlib import Path

import pytest
import yaml

from zoo.cli import main
from zoo.data.layouts import write_recipe_layout

ROOT = Path(__file__).resolve().parents[2]
PAPER_SCALE = sorted(
    p for p in (ROOT / "recipes").glob("*/*.yaml") if p.name not in ("metafile.yaml", "tiny.yaml")
)
EVAL_LINES = {
    "ZeroShotEval": r"zero-shot top-1: \d+\.\d\d%",
    "LinearProbeEval": r"linear probe \(\w+\) top-1: \d+\.\d\d%",
    "KNNEval": r"kNN \(k=\d+",
    "RetrievalEval": r"retrieval R@",
}


def _id(path: Path) -> str:
    return f"{path.parent.name}/{path.stem}"


def _shrink_model(init_args: dict) -> list[str]:
    """CLI overrides that keep the recipe's model class and heads at a CPU-testable size."""
    args: list[str] = []
    # dotted overrides on top of the recipe's encoder preset (expanded when the recipe loads)
    if init_args.get("encoder"):
        p = "--model.init_args.encoder.vision"
        args += [f"{p}.img_size=32", f"{p}.depth=1", f"{p}.embed_dim=32", f"{p}.num_heads=2"]
        p = "--model.init_args.encoder.text"
        args += [f"{p}.width=32", f"{p}.layers=1", f"{p}.heads=2"]
        args.append("--model.init_args.encoder.embed_dim=32")
    if "ssl_head" in init_args:
        args += [
            "--model.init_args.ssl_head.hidden_dims=[64]",
            "--model.init_args.ssl_head.out_dim=32",
        ]
    return args


@pytest.mark.parametrize("recipe", PAPER_SCALE, ids=_id)
def test_paper_scale_recipe_runs_on_its_declared_layout(recipe, tmp_path, capsys, monkeypatch):
    config = yaml.safe_load(recipe.read_text())
    callbacks = [c["class_path"].rsplit(".", 1)[-1] for c in config["trainer"]["callbacks"]]
    evals = [name for name in callbacks if name in EVAL_LINES]
    assert evals, f"{recipe} declares no evaluation callback"

    data_root = tmp_path / "data"
    written = write_recipe_layout(recipe, data_root, num_classes=1000)
    assert written, f"{recipe} declares no layout"
    monkeypatch.setenv("VL_ZOO_CACHE", str(tmp_path / "cache"))
    main(
        [
            "fit",
            "--config",
            str(recipe),
            "--data.root",
            str(data_root),
            "--data.batch_size=2",
            "--data.num_workers=0",
            "--data.pin_memory=false",
            "--data.image_size=32",
            '--data.templates=["a photo of a {}."]',
            *_shrink_model(config["model"]["init_args"]),
            "--trainer.accelerator=cpu",
            "--trainer.devices=1",
            "--trainer.num_nodes=1",
            "--trainer.strategy=auto",
            "--trainer.precision=32-true",
            "--trainer.sync_batchnorm=false",
            "--trainer.fast_dev_run=1",
            f"--trainer.default_root_dir={tmp_path / 'run'}",
            f"--trainer.logger.init_args.save_dir={tmp_path / 'run'}",
        ]
    )
    out = capsys.readouterr().out
    for name in evals:
        assert re.search(EVAL_LINES[name], out), f"{name} printed nothing:\n{out[-3000:]}"


@pytest.mark.parametrize("recipe", PAPER_SCALE, ids=_id)
def test_paper_scale_recipe_checkpoints_within_an_epoch(recipe):
    """A kill in a multi-hour epoch must lose minutes, not the epoch."""
    callbacks = yaml.safe_load(recipe.read_text())["trainer"]["callbacks"]
    checkpoints = [
        c.get("init_args", {}) for c in callbacks if c["class_path"].endswith("ModelCheckpoint")
    ]
    within = [
        c for c in checkpoints if c.get("every_n_train_steps") or c.get("train_time_interval")
    ]
    assert within and all(c.get("save_last") for c in within), checkpoints
