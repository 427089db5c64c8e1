"""The Lightning side of the ``zoo`` command: one LightningCLI in subclass mode.

Recipes name a ``ZooModule`` subclass under ``model:`` and a ``ZooDataModule`` subclass
under ``data:`` by ``class_path``. jsonargparse checks every key and type before anything is
built, so a typo fails at once and names the key; abbreviated options are refused too
(``--trainer.max_epoch`` is an error, not ``--trainer.max_epochs``).

``fit`` also gets the fault handling of :mod:`zoo.callbacks` and :mod:`zoo.preflight`: a non-finite loss guard and
per-step seeding (added unless the recipe lists them), pre-flight checks of the log and
checkpoint directories (writable, disk not too full) before any step, and
``--ckpt_path last`` resolved across the logger's version directories.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _fill_dataclass_defaults(cfg) -> None:
    """Give ``model`` / ``data`` constructor parameters whose default is a dataclass instance
    (a paper's ``optim: OptimSpec = SLIP_OPTIM``) that default when the recipe leaves them
    out. In subclass mode jsonargparse 4.x parses such a parameter as ``None`` when it is
    absent (it merges a partial mapping onto the default correctly), so the constructor
    would get ``None`` and ``--print_config`` would hide the paper's values."""
    import dataclasses
    import importlib
    import inspect

    from jsonargparse import Namespace

    for key in ("model", "data"):
        node = cfg.get(key) if isinstance(cfg, Namespace) else None
        if not isinstance(node, Namespace) or not isinstance(node.get("class_path"), str):
            continue
        init_args = node.get("init_args")
        module_name, _, name = node.class_path.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), name)
            params = inspect.signature(cls.__init__).parameters
        except (ImportError, AttributeError, ValueError, TypeError):
            continue  # jsonargparse reports a bad class_path itself
        for pname, param in params.items():
            default = param.default
            if not dataclasses.is_dataclass(default) or isinstance(default, type):
                continue
            if init_args is None:
                init_args = node["init_args"] = Namespace()
            if init_args.get(pname) is None:
                init_args[pname] = Namespace(**dataclasses.asdict(default))


#: The jsonargparse parser mode of the zoo's command line: YAML with encoder presets expanded.
PARSER_MODE = "yaml_zoo_presets"


def load_with_presets(text: str):
    """jsonargparse's YAML loader, then :func:`zoo.backbones.presets.expand_presets`: a
    recipe's ``encoder: {preset: vit-b16-clip, ...}`` (or the same mapping given as a
    command-line value) reaches the parser as the full encoder mapping."""
    from jsonargparse._loaders_dumpers import yaml_load

    from zoo.backbones.presets import expand_presets

    return expand_presets(yaml_load(text))


def _register_loader() -> None:
    import yaml
    from jsonargparse import set_loader

    set_loader(PARSER_MODE, load_with_presets, exceptions=(yaml.YAMLError,))


def _cli_class():
    from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

    class ZooArgumentParser(LightningArgumentParser):
        def _parse_common(self, cfg, *args, **kwargs):
            _fill_dataclass_defaults(cfg)
            return super()._parse_common(cfg, *args, **kwargs)

    class ZooCLI(LightningCLI):
        argument_parser = ZooArgumentParser

        def add_arguments_to_parser(self, parser) -> None:
            parser.set_defaults({"trainer.default_root_dir": "runs"})

        def instantiate_classes(self) -> None:
            try:
                super().instantiate_classes()
            except (ValueError, FileNotFoundError) as err:
                # jsonargparse reports a constructor's FileNotFoundError inside a long
                # "does not validate against any of the Union subtypes" message; surface it.
                found = re.findall(r"(?m)^\s*(?:- )?(.*\bnot found: .*)$", str(err))
                if not found:
                    raise
                self.parser.error(found[0])
            if self.subcommand == "fit":
                from zoo.preflight import add_fit_callbacks

                add_fit_callbacks(self.trainer)

        def before_fit(self) -> None:
            from zoo.preflight import preflight

            self._resolve_last_checkpoint()
            preflight(self.trainer, self.model)

        def before_validate(self) -> None:
            self._resolve_last_checkpoint()

        def before_test(self) -> None:
            self._resolve_last_checkpoint()

        def _resolve_last_checkpoint(self) -> None:
            """``--ckpt_path last``: Lightning looks only in this run's own (new, empty)
            logger version folder and would silently start from scratch; look in all."""
            import logging

            from zoo.preflight import find_last_checkpoint

            config = self.config_init[self.subcommand]
            if config.get("ckpt_path") != "last":
                return
            found = find_last_checkpoint(self.trainer)
            log = logging.getLogger("zoo")
            if found is None:
                fresh = "training from scratch" if self.subcommand == "fit" else "fresh weights"
                log.warning("--ckpt_path last: no last checkpoint found; %s", fresh)
            else:
                log.warning("--ckpt_path last: resuming from %s", found)
            config["ckpt_path"] = None if found is None else str(found)

    return ZooCLI


def _cli_kwargs(cli_cls) -> dict:
    """The LightningCLI arguments of the ``zoo`` command (shared by :func:`run_lightning_cli`
    and :func:`build_parser`, so ``zoo check`` parses exactly as ``zoo fit`` does)."""
    from zoo.datamodule import ZooDataModule
    from zoo.module import ZooModule

    return {
        "model_class": ZooModule,
        "datamodule_class": ZooDataModule,
        "subclass_mode_model": True,
        "subclass_mode_data": True,
        "auto_configure_optimizers": False,
        "save_config_kwargs": {"overwrite": True},
        "seed_everything_default": 0,
        "parser_kwargs": _parser_kwargs(cli_cls),
        "parser_class": cli_cls.argument_parser,
    }


def run_lightning_cli(args: Sequence[str]):
    """Run ``fit`` / ``validate`` / ``test`` / ``predict`` with LightningCLI; returns the CLI."""
    import sys
    import warnings

    # A datamodule without validation data returns no val loader; that is intended.
    warnings.filterwarnings("ignore", message=r"Total length of .* across ranks is zero")
    _register_loader()
    cli_cls = _cli_class()
    argv = list(args)
    # From the console, LightningCLI reads sys.argv itself (passing both only warns).
    return cli_cls(**_cli_kwargs(cli_cls), args=None if argv == sys.argv[1:] else argv)


class _ParserBuilt(Exception):
    """Carries the parser out of LightningCLI's constructor before it parses anything."""


def build_parser():
    """The parser of the ``zoo`` Lightning verbs, built without parsing or running anything.

    ``zoo check`` parses every recipe with one parser: building it costs about as much as
    parsing a recipe. ``parser.parse_args(["fit", "--config", RECIPE, "--print_config"])``
    then does what ``zoo fit --config RECIPE --print_config`` does (every key and type
    checked, nothing instantiated) and exits.
    """
    _register_loader()
    cli_cls = _cli_class()

    class ParserOnly(cli_cls):  # type: ignore[misc, valid-type]
        def parse_arguments(self, parser, args) -> None:
            raise _ParserBuilt(parser)

    try:
        ParserOnly(**_cli_kwargs(cli_cls), args=[])
    except _ParserBuilt as built:
        return built.args[0]
    raise RuntimeError("LightningCLI did not call parse_arguments")  # pragma: no cover


def _parser_kwargs(cli_cls) -> dict:
    """LightningCLI's ``parser_kwargs``: a flat dict reaches only the main parser, so the
    subcommand parsers (where ``--trainer.*`` options live) get theirs keyed by name.
    ``allow_abbrev=False``: argparse would otherwise take a typo that is a prefix of an
    option (``--trainer.max_epoch``) as that option (``max_epochs``)."""
    common = {"default_env": False, "allow_abbrev": False, "parser_mode": PARSER_MODE}
    return {"prog": "zoo", **common} | {verb: dict(common) for verb in cli_cls.subcommands()}
