"""The released tiny models in checkpoints/: installable, loadable offline by name, small,
and reproducing the zero-shot accuracy stated on their model cards (±0.5 points)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import zoo
from zoo.hub.evaluate import zero_shot_digits

ROOT = Path(__file__).resolve().parents[2]
RELEASED = sorted(p for p in (ROOT / "checkpoints").iterdir() if (p / "pyproject.toml").is_file())


def _config(folder: Path) -> dict:
    (config,) = folder.glob("zoo_model_*/config.json")
    return json.loads(config.read_text())


def test_at_least_two_released_models_under_10_mb():
    assert {p.name for p in RELEASED} >= {"clip-vit-tiny-digits", "slip-vit-tiny-digits"}
    for folder in RELEASED:
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        assert size < 10 * 2**20, (folder.name, size)
        config = _config(folder)
        assert config["metrics"]["zeroshot_top1"]["value"] > 10.0  # above chance (10 classes)
        assert config["provenance"]["commit"] and config["provenance"]["dirty"] is False


@pytest.mark.parametrize("folder", RELEASED, ids=lambda p: p.name)
def test_card_accuracy_reproduces_from_local_dir(folder):
    stated = _config(folder)["metrics"]["zeroshot_top1"]["value"]
    assert stated == pytest.approx(
        zero_shot_digits(zoo.load(f"local-dir:{folder}"))["zeroshot_top1"]["value"], abs=0.5
    )
    card = (folder / "README.md").read_text()
    assert f"{stated}" in card


def test_installed_package_loads_by_name_offline_and_reproduces(tmp_path):
    folder = ROOT / "checkpoints" / "slip-vit-tiny-digits"
    source = tmp_path / "src"
    shutil.copytree(folder, source)  # keep build/ and egg-info out of the repository
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(source),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    code = (
        "import json, zoo\n"
        "from zoo.hub.evaluate import zero_shot_digits\n"
        "assert 'slip-vit-tiny-digits' in zoo.list_models(), zoo.list_models()\n"
        "print(json.dumps(zero_shot_digits(zoo.load('slip-vit-tiny-digits'))))\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(target), str(ROOT)]), HF_HUB_OFFLINE="1")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr[-2000:]
    measured = json.loads(out.stdout.strip().splitlines()[-1])["zeroshot_top1"]["value"]
    stated = _config(folder)["metrics"]["zeroshot_top1"]["value"]
    assert measured == pytest.approx(stated, abs=0.5)
