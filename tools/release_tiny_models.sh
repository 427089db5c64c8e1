#!/usr/bin/env bash
# Train, export and evaluate the released tiny models (checkpoints/<paper>-vit-tiny-digits).
# Run from the repository root on a clean checkout; the model cards record the commit.
set -euo pipefail
out=${1:-checkpoints}
work=$(mktemp -d)
for paper in clip slip; do
  name="$paper-vit-tiny-digits"
  root="runs/release/$paper"
  python -m zoo fit --config "recipes/$paper/tiny.yaml" --seed_everything 0 \
    --trainer.default_root_dir "$root" --trainer.logger.init_args.save_dir "$root"
  ckpt=$(ls -t "$root"/tensorboard/version_*/checkpoints/last.ckpt | head -n 1)
  # the card's number is measured on the exported (float16-stored) weights, as zoo.load gives them
  python -m zoo export "$ckpt" --name "$name" --out "$work/$name" --dtype float16 \
    --recipe "recipes/$paper/tiny.yaml" --trust-pickle
  python -m zoo.hub.evaluate "local-dir:$work/$name" --out "$work/$name.metrics.json"
  python -m zoo export "$ckpt" --name "$name" --out "$out/$name" --dtype float16 \
    --recipe "recipes/$paper/tiny.yaml" --metrics "$work/$name.metrics.json" --trust-pickle --overwrite
done
