"""Encoder presets as data: literal resolution with overrides, unknown names, and every
recipe's encoder equal to the block it spelled out before presets (captured below)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from zoo.backbones import DualEncoderSpec, TextSpec, VisionSpec
from zoo.backbones.presets import UnknownPresetError, preset_names
from zoo.specs import to_spec

ROOT = Path(__file__).resolve().parents[2]
_TEXT = {"vocab_size": 49408, "width": 512, "layers": 12, "heads": 8, "context_length": 77}
_TINY = {
    "vision": {
        "model_name": "vit_tiny_patch16_224",
        "img_size": 16,
        "patch_size": 4,
        "embed_dim": 64,
        "depth": 2,
        "num_heads": 4,
    },
    "text": {"vocab_size": 49408, "width": 64, "layers": 2, "heads": 4, "context_length": 16},
    "embed_dim": 64,
}
_S16 = {
    "vision": {"model_name": "vit_small_patch16_224", "img_size": 224, "num_heads": 12},
    "text": _TEXT,
    "embed_dim": 512,
}
_B16 = {
    "vision": {"model_name": "vit_base_patch16_224", "img_size": 224},
    "text": _TEXT,
    "embed_dim": 512,
}
_L16 = {
    "vision": {"model_name": "vit_large_patch16_224", "img_size": 224},
    "text": _TEXT,
    "embed_dim": 512,
}
# The encoder blocks of the recipes as written before presets (issue 9).
RECIPE_ENCODERS = {
    "clip/tiny": _TINY,
    "clip/vit_s16_yfcc15m": _S16,
    "clip/vit_b16_cc3m": _B16,
    "clip/vit_b16_cc12m": _B16,
    "clip/vit_b16_yfcc15m": _B16,
    "clip/vit_l16_yfcc15m": _L16,
    "slip/tiny": _TINY,
    "slip/vit_s16_yfcc15m": _S16,
    "slip/vit_b16_cc3m": _B16,
    "slip/vit_b16_cc12m": _B16,
    "slip/vit_b16_yfcc15m": _B16,
    "slip/vit_l16_yfcc15m": _L16,
}


def test_every_recipe_is_covered() -> None:
    """Every CLIP / SLIP recipe that declares a dual encoder to train: the recipes that were
    written with literal encoder blocks before presets existed (papers added later write
    their own blocks or presets; few-shot recipes load a frozen encoder from
    ``model.init_args.clip`` instead)."""
    recipes = {
        f"{p.parent.name}/{p.stem}"
        for p in (ROOT / "recipes").glob("*/*.yaml")
        if p.name != "metafile.yaml"
        and p.parent.name in ("clip", "slip")
        and "encoder" in (yaml.safe_load(p.read_text())["model"].get("init_args") or {})
    }
    assert recipes == set(RECIPE_ENCODERS)


@pytest.mark.parametrize("recipe", sorted(RECIPE_ENCODERS))
def test_recipe_encoder_resolves_to_its_original_block(recipe) -> None:
    config = yaml.safe_load((ROOT / "recipes" / f"{recipe}.yaml").read_text())
    encoder = config["model"]["init_args"]["encoder"]
    assert to_spec(DualEncoderSpec, encoder) == to_spec(DualEncoderSpec, RECIPE_ENCODERS[recipe])


def test_preset_with_overrides_is_an_exact_literal_spec() -> None:
    spec = to_spec(
        DualEncoderSpec,
        {"preset": "vit-b16-clip", "vision": {"drop_path_rate": 0.1}, "embed_dim": 256},
    )
    assert spec == DualEncoderSpec(
        vision=VisionSpec(model_name="vit_base_patch16_224", img_size=224, drop_path_rate=0.1),
        text=TextSpec(vocab_size=49408, width=512, layers=12, heads=8, context_length=77),
        embed_dim=256,
    )


def test_presets_cover_the_paper_scale_encoders() -> None:
    assert set(preset_names()) >= {
        "vit-tiny-digits",
        "vit-s16-clip",
        "vit-b16-clip",
        "vit-l16-clip",
    }
    spec = to_spec(DualEncoderSpec, {"preset": "vit-s16-clip"})
    assert spec.vision.num_heads == 12  # MoCo-v3's ViT-S/16, as SLIP uses
    assert dataclasses.asdict(spec) == dataclasses.asdict(to_spec(DualEncoderSpec, _S16))


def test_unknown_preset_lists_the_known_ones() -> None:
    with pytest.raises(UnknownPresetError, match=r"'vit-b99'; known presets: vit-b16-clip, "):
        to_spec(DualEncoderSpec, {"preset": "vit-b99"})


def test_unknown_override_key_is_named() -> None:
    with pytest.raises(ValueError, match="unknown VisionSpec keys: depthh"):
        to_spec(DualEncoderSpec, {"preset": "vit-b16-clip", "vision": {"depthh": 3}})


def test_the_command_line_expands_presets_and_keeps_dotted_overrides(tmp_path, capsys) -> None:
    """A recipe's ``encoder: {preset: ...}`` reaches jsonargparse as the full mapping: the
    printed config holds the resolved spec, dotted overrides apply on top of the preset, a
    mapping given on the command line may name a preset too, and an unknown name is listed
    against the known ones."""
    from zoo.cli import main

    recipe = {
        "model": {
            "class_path": "lightning_modules.clip.CLIP",
            "init_args": {"encoder": {"preset": "vit-tiny-digits", "embed_dim": 32}},
        },
        "data": {
            "class_path": "datamodules.clip.CLIPDataModule",
            "init_args": {"source": "digits"},
        },
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))

    def printed(*extra: str) -> dict:
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", "--config", str(path), *extra, "--print_config"])
        assert exit_info.value.code in (0, None)
        return yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]["encoder"]

    expected = dataclasses.asdict(to_spec(DualEncoderSpec, {**_TINY, "embed_dim": 32}))
    assert printed() == expected
    deeper = printed("--model.init_args.encoder.vision.depth=3")
    assert deeper == {**expected, "vision": {**expected["vision"], "depth": 3}}
    other = printed("--model.init_args.encoder={preset: vit-s16-clip, text: {layers: 2}}")
    small = to_spec(DualEncoderSpec, {"preset": "vit-s16-clip", "text": {"layers": 2}})
    assert other == dataclasses.asdict(small)
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(path), "--model.init_args.encoder={preset: nope}"])
    assert "known presets: vit-b16-clip" in capsys.readouterr().err


def test_other_specs_presets_are_left_to_them_and_unknown_names_still_fail() -> None:
    """The recipe loader expands ``preset: <encoder preset>`` anywhere; the size presets of
    other specs (the ViSFT heads' ``tiny`` / ``paper``) are left for those specs' own
    resolvers, and no encoder preset file may take such a name."""
    from zoo.backbones.presets import SPEC_PRESET_NAMES, expand_presets

    assert not SPEC_PRESET_NAMES & set(preset_names())

    data = {"encoder": {"preset": "vit-tiny-digits"}, "detection": {"preset": "tiny", "x": 1}}
    out = expand_presets(data)
    assert out["detection"] == {"preset": "tiny", "x": 1}
    assert out["encoder"] == dataclasses.asdict(
        to_spec(DualEncoderSpec, {"preset": "vit-tiny-digits"})
    )
    # a misspelt encoder preset still fails at load, naming the known ones
    with pytest.raises(UnknownPresetError, match="known presets"):
        expand_presets({"encoder": {"preset": "vit-tiny-digit"}})
