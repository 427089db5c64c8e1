"""The ``zoo`` command: LightningCLI verbs (fit / validate / test / predict) plus zoo verbs.

``zoo --help``, ``zoo list`` (also ``--models``) and ``zoo info`` never import torch or
Lightning, so they answer at once; the Lightning verbs and ``zoo export`` import them lazily.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

LIGHTNING_VERBS = ("fit", "validate", "test", "predict")

USAGE = """\
usage: zoo <command> [options]

Train and evaluate papers of the vl-zoo model zoo.

Lightning commands (each takes --config RECIPE.yaml, dotted overrides such as
--trainer.max_epochs 5 or --data.root /data, and --print_config):
  fit         train a recipe, then run its evaluation callbacks
  validate    evaluate a checkpoint (--ckpt_path) with the recipe's protocol
  test        test a checkpoint (--ckpt_path)
  predict     run prediction

Zoo commands:
  list        list papers and their recipes (--models: installed model packages)
  info PAPER  show a paper's reported (and reproduced) numbers from its metafile
  reproduce RECIPE --seeds N [--append]
              fit a recipe with N seeds, record metrics with provenance
  docs        regenerate recipes/<paper>/README.md from the metafiles
  export SOURCE --name NAME --out DIR [--wheel] [--dtype float16] [--trust-pickle]
              a checkpoint / HF CLIP folder / OpenAI state dict → model folder + package

Examples:
  zoo fit --config recipes/slip/tiny.yaml
  zoo fit --config recipes/slip/vit_b16_yfcc15m.yaml --data.root /data/yfcc15m
  zoo info slip
  zoo export runs/slip-tiny/.../last.ckpt --trust-pickle --name slip-tiny --out checkpoints/slip-tiny
Run `zoo fit --help` for every option of a command.
"""


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0
    if args[0] in ("-V", "--version"):
        from zoo import __version__

        print(f"vl-zoo {__version__}")
        return 0
    command, rest = args[0], args[1:]
    if command == "list":
        from zoo.commands import list_command

        return list_command(rest)
    if command == "info":
        from zoo.commands import info_command

        return info_command(rest)
    if command == "export":
        from zoo.commands import export_command

        return export_command(rest)
    if command == "reproduce":
        from zoo.reproduce import reproduce_command

        return reproduce_command(rest)
    if command == "docs":
        from zoo.docs import write_readmes

        for path in write_readmes():
            print(f"wrote {path}")
        return 0
    if command in LIGHTNING_VERBS:
        from zoo.lightning_cli import run_lightning_cli

        run_lightning_cli(args)
        return 0
    print(f"zoo: unknown command {command!r}\n", file=sys.stderr)
    print(USAGE, end="", file=sys.stderr)
    return 2
