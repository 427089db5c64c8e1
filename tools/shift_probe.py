"""How much of a frozen dual encoder survives a shift of the digits: the measurement behind
the few-shot family's tiny setting (``zoo.fewshot.shifted_digits``).

For a zoo model package and a shifted-digits copy (written with the real generator, read
with the real CoOp split reader), on the test split: zero-shot top-1 with the dataset's
prompt, the mean pairwise cosine of the L2-normalised image embeddings (near 1: the features
collapse to one direction), and nearest-class-mean top-1 from every training image and from
K shots per class (the protocol's sampler, few-shot seed 1)::

    python tools/shift_probe.py checkpoints/slip-vit-tiny-digits --rotation 30 --noise 0.05
    python tools/shift_probe.py checkpoints/clip-vit-tiny-digits --rotation 30 --noise 0.05 --invert
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

import zoo
from zoo.data.embedded import CLASSNAMES
from zoo.fewshot.shifted_digits import IMAGE_DIR, SPLIT_FILE, ShiftedDigits
from zoo.fewshot.splits import read_split, sample_indices

PROMPT = "a photo of the number {}."


def _embed(model, folder: Path, items) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.stack(
        [model.transform(Image.open(folder / IMAGE_DIR / p).convert("RGB")) for p, _, _ in items]
    )
    with torch.no_grad():
        features = model.encode_image(images).float()
    return F.normalize(features, dim=-1), torch.tensor([y for _, y, _ in items])


def _ncm(train: torch.Tensor, y_train: torch.Tensor, test: torch.Tensor) -> torch.Tensor:
    means = torch.stack([train[y_train == c].mean(0) for c in range(len(CLASSNAMES))])
    return (test @ F.normalize(means, dim=-1).t()).argmax(1)


def probe(package: str, rotation: float, noise: float, invert: bool, shots: int) -> dict:
    with tempfile.TemporaryDirectory() as root:
        copy = ShiftedDigits(root=root, rotation=rotation, noise=noise, invert=invert)
        folder = copy.write()
        split = read_split(folder / SPLIT_FILE, folder / IMAGE_DIR)
        model = zoo.load(f"local-dir:{package}")
        model.eval()
        train, y_train = _embed(model, folder, split.train)
        test, y_test = _embed(model, folder, split.test)
        few = sample_indices(split, shots, seed=1).train
        with torch.no_grad():
            text = model.encode_text([PROMPT.format(c) for c in CLASSNAMES]).float()
        zero_shot = (test @ F.normalize(text, dim=-1).t()).argmax(1)

        def top1(pred: torch.Tensor) -> float:
            return round(100.0 * (pred == y_test).float().mean().item(), 2)

        return {
            "package": package,
            "rotation": rotation,
            "noise": noise,
            "invert": invert,
            "zero_shot_top1": top1(zero_shot),
            "mean_pairwise_cosine": round((test @ test.t()).mean().item(), 4),
            "ncm_all_train_top1": top1(_ncm(train, y_train, test)),
            f"ncm_{shots}_shot_top1": top1(_ncm(train[few], y_train[few], test)),
        }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", help="a zoo model package folder")
    parser.add_argument("--rotation", type=float, default=30.0)
    parser.add_argument("--noise", type=float, default=0.05)
    parser.add_argument("--invert", action="store_true")
    parser.add_argument("--shots", type=int, default=4)
    args = parser.parse_args(argv)
    result = probe(args.package, args.rotation, args.noise, args.invert, args.shots)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
