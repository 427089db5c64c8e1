"""Model packages: `zoo export --wheel` → pip install → `zoo.load(NAME)` offline in a fresh
process, with the same outputs; `pip install EXPORT_DIR` (the source tree) works too."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

import zoo
from zoo.cli import main

NAME = "tiny-openai.v1"
PACKAGE = "zoo_model_tiny_openai_v1"
IMAGE = 32


def _tiny_openai_state() -> dict[str, torch.Tensor]:
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(0)
    model = CLIP(
        embed_dim=8,
        vision_cfg=CLIPVisionCfg(layers=1, width=32, patch_size=8, image_size=IMAGE, head_width=16),
        text_cfg=CLIPTextCfg(context_length=16, vocab_size=100, width=32, heads=2, layers=1),
        quick_gelu=True,
    )
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def _pip_install(target: Path, what: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--no-deps",
        "--no-index",
        "--no-build-isolation",
    ]
    cmd += ["--disable-pip-version-check", "-q", "--target", str(target), str(what)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


_CHILD = """
import sys, torch, zoo
from safetensors.torch import load_file
assert zoo.list_models() == [{name!r}], zoo.list_models()
model = zoo.load({name!r})
expected = load_file({expected!r})
with torch.no_grad():
    assert torch.equal(model.encode_image(expected["images"]), expected["image_features"])
    assert torch.equal(model.encode_text(expected["ids"]), expected["text_features"])
assert model.config["weights"]["dtype"] == "float16"
assert model.encoder.image_projection.dtype == torch.float32
assert model.folder.parent.name == "site" and model.folder.name == {package!r}
print("OK", model.name)
"""


def test_wheel_installs_and_loads_offline_in_a_fresh_process(tmp_path: Path) -> None:
    source = tmp_path / "ViT-tiny.safetensors"
    save_file(_tiny_openai_state(), str(source))
    out = tmp_path / "export"
    args = ["export", str(source), "--name", NAME, "--out", str(out), "--dtype", "float16"]
    assert main([*args, "--vision-heads", "2", "--text-heads", "2", "--wheel"]) == 0
    (wheel,) = (out / "dist").glob("*.whl")
    assert wheel.name.startswith(f"{PACKAGE}-1.0.0-py3-none-any")
    assert not list(out.glob("*.egg-info")) and not (out / "build").exists()

    # Expected values from the export folder, saved for the child process.
    model = zoo.load(f"local-dir:{out}")
    images = torch.randn(2, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(1))
    ids = torch.zeros(2, 16, dtype=torch.long)
    ids[:, :4] = torch.tensor([98, 5, 17, 99])
    with torch.no_grad():
        expected = {
            "images": images,
            "ids": ids,
            "image_features": model.encode_image(images),
            "text_features": model.encode_text(ids),
        }
    save_file(expected, str(tmp_path / "expected.safetensors"))

    site = tmp_path / "site"
    _pip_install(site, wheel)
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"}
    code = _CHILD.format(
        name=NAME, package=PACKAGE, expected=str(tmp_path / "expected.safetensors")
    )
    child = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert child.returncode == 0, child.stdout + child.stderr
    assert f"OK {NAME}" in child.stdout
    list_code = (
        "import sys; from zoo.cli import main; main(['list', '--models']); "
        "assert 'torch' not in sys.modules, 'zoo list --models imported torch'"
    )
    listed = subprocess.run(
        [sys.executable, "-c", list_code],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert listed.returncode == 0, listed.stderr
    assert NAME in listed.stdout and "clip" in listed.stdout and str(site) in listed.stdout

    # `pip install ./checkpoints/<name>`: the export folder itself is a package source tree.
    tree = tmp_path / "tree"
    _pip_install(tree, out)
    entry_points = next(tree.glob("*.dist-info/entry_points.txt")).read_text()
    assert "[zoo.models]" in entry_points and f"{NAME} = {PACKAGE}:model_dir" in entry_points
    installed = tree / PACKAGE / "model.safetensors"
    assert installed.read_bytes() == (out / PACKAGE / "model.safetensors").read_bytes()
