"""Evaluate a loaded model package on the embedded digits test split (zero-shot top-1).

This is how the released tiny models' model cards get their number, and how the test
checks that an installed package reproduces it: the same code path, on the exported
weights as loaded by ``zoo.load``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader

from zoo.data import build_digits, collate_samples
from zoo.eval.features import extract_features
from zoo.eval.zeroshot import zeroshot_accuracy


def zero_shot_digits(model: Any, seed: int = 0, batch_size: int = 256) -> dict[str, dict[str, Any]]:
    """Zero-shot top-1 (%) of a ``ZooModel`` on the held-out 30% digits split, using the
    model's own preprocessing, tokenizer and the digits prompt templates."""
    size = int(model.config["preprocess"]["image_size"])
    digits = build_digits(size=size, fmt="csv", seed=seed)
    dataset = digits.dataset("test", image_transform=model.transform, tokenizer=model.tokenizer)
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate_samples)
    device = next(model.parameters()).device
    # through the model protocols (zoo.protocols), as the zero-shot callback does in training
    feats, labels, _ = extract_features(
        lambda images: model.features(images, "embed"), loader, device, model=model
    )
    with torch.inference_mode():
        classifier = model.class_weights(digits.classnames, digits.templates)
    acc = zeroshot_accuracy(feats, labels, classifier, top_k=(1,))
    dataset_name = (
        f"sklearn digits {size}px, held-out 30% split (seed {seed}, {len(labels)} images)"
    )
    return {"zeroshot_top1": {"value": round(float(acc["top1"]), 2), "dataset": dataset_name}}


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    import zoo

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a model name or URI for zoo.load (e.g. local-dir:PATH)")
    parser.add_argument("--out", help="write the metrics JSON here (for `zoo export --metrics`)")
    args = parser.parse_args(argv)
    metrics = zero_shot_digits(zoo.load(args.model))
    text = json.dumps(metrics, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
