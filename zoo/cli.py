"""The ``zoo`` command: LightningCLI verbs (fit / validate / test / predict) plus zoo verbs.

``zoo --help``, ``zoo list`` (also ``--models``) and ``zoo info`` never import torch or
Lightning, so they answer at once; the Lightning verbs and ``zoo export`` import them lazily.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

LIGHTNING_VERBS = ("fit", "validate", "test", "predict")

USAGE = """\
usage: zoo <command> [options]

Train and evaluate papers of the vl-zoo model zoo.

Lightning commands (each takes --config RECIPE: a YAML file, or a bundled recipe's name
such as slip/tiny; dotted overrides such as --trainer.max_epochs 5 or --data.root /data;
and --print_config):
  fit         train a recipe, then run its evaluation callbacks
  validate    evaluate a checkpoint (--ckpt_path) with the recipe's protocol
  test        test a checkpoint (--ckpt_path)
  predict     run prediction

Zoo commands:
  list        list papers and their recipes (--models: installed model packages)
  info PAPER  show a paper's reported (and reproduced) numbers from its metafile
  recipes list | show RECIPE | copy (PAPER|RECIPE...|--all) DIR [--force]
              the recipes bundled with vl-zoo; copy writes an editable copy
  reproduce RECIPE --seeds N [--append] [--shots 1 2 4 8 16 --seed-list 1 2 3]
              fit a recipe with N seeds (or shots x seeds), record metrics with provenance
  new SLUG --family contrastive|fewshot|ssl
              scaffold a paper's five parts from templates (placeholders marked ZOO-TODO)
  check SLUG | --all [--no-parse]
              check the paper contract; one line per missing part, exit 1 on failure
  docs        regenerate recipes/<paper>/README.md from the metafiles
  export SOURCE --name NAME --out DIR [--wheel] [--dtype float16] [--trust-pickle]
              a checkpoint / HF CLIP folder / OpenAI state dict → model folder + package
  curate INPUT... --output OUT --teacher CLIP --gallery FILE
              CoCu concept curation of a table or WebDataset shards into new files

Examples:
  zoo fit --config recipes/slip/tiny.yaml
  zoo fit --config recipes/slip/vit_b16_yfcc15m.yaml --data.root /data/yfcc15m
  zoo fit --config slip/tiny          # the bundled recipe, from any directory
  zoo recipes copy slip ./my-recipes  # then: zoo fit --config my-recipes/slip/tiny.yaml
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
    if command == "recipes":
        from zoo.commands import recipes_command

        return recipes_command(rest)
    if command == "export":
        from zoo.commands import export_command

        return export_command(rest)
    if command == "curate":
        from zoo.cocu.rewrite import curate_command

        return curate_command(rest)
    if command == "reproduce":
        from zoo.recipe_args import resolve_reproduce_args
        from zoo.reproduce import reproduce_command

        return reproduce_command(_or_exit(resolve_reproduce_args, rest, "reproduce"))
    if command == "new":
        from zoo.scaffold import new_command

        return new_command(rest)
    if command == "check":
        from zoo.check import check_command

        return check_command(rest)
    if command == "docs":
        import argparse

        from zoo.docs import write_readmes

        argparse.ArgumentParser(
            prog="zoo docs",
            description="Regenerate recipes/<paper>/README.md from the metafiles and the papers "
            "table of the root README (in a source checkout).",
        ).parse_args(rest)  # --help prints this and exits; anything else is refused
        for path in write_readmes():
            print(f"wrote {path}")
        return 0
    if command in LIGHTNING_VERBS:
        from zoo.lightning_cli import run_lightning_cli
        from zoo.recipe_args import resolve_config_args

        rest = _or_exit(resolve_config_args, rest, command)
        run_lightning_cli([command, *rest])
        return 0
    print(f"zoo: unknown command {command!r}\n", file=sys.stderr)
    print(USAGE, end="", file=sys.stderr)
    return 2


def _or_exit(resolve: Callable[[list[str]], list[str]], args: list[str], command: str) -> list[str]:
    """Recipe names in ``args`` resolved to files; an unknown one exits with status 2, as a
    bad option does, with the known recipes in the message."""
    try:
        return resolve(args)
    except FileNotFoundError as err:
        print(f"zoo {command}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
