"""Recipe names on a command line → recipe files, before the command parses its arguments.

``zoo fit --config slip/tiny`` (or ``slip/tiny.yaml``, ``recipes/slip/tiny.yaml``) works from
any directory once vl-zoo is installed: a value that is not an existing file is looked up
among the known recipes (:func:`zoo.recipe_index.resolve_recipe`). A real file always wins,
and inline YAML given to ``--config`` passes through untouched. Imports no torch.
"""

from __future__ import annotations

from collections.abc import Sequence

from zoo.recipe_index import looks_like_recipe, resolve_recipe

#: LightningCLI's option for a config file (``-c`` is its short form).
CONFIG_OPTIONS = ("--config", "-c")

#: ``zoo reproduce`` options that take a value (the value is never the recipe).
REPRODUCE_VALUE_OPTIONS = ("--seeds", "--scale", "--out", "--from-record")


def _resolve(value: str) -> str:
    return str(resolve_recipe(value)) if looks_like_recipe(value) else value


def resolve_config_args(args: Sequence[str]) -> list[str]:
    """Every ``--config X`` / ``--config=X`` / ``-c X`` with ``X`` resolved to a file.

    Raises :class:`zoo.recipe_index.RecipeNotFoundError` (listing the known recipes) when
    ``X`` looks like a recipe but matches nothing."""
    out: list[str] = []
    args = list(args)
    i = 0
    while i < len(args):
        arg = args[i]
        option, eq, value = arg.partition("=")
        if option in CONFIG_OPTIONS and eq:
            out.append(f"{option}={_resolve(value)}")
        elif arg in CONFIG_OPTIONS and i + 1 < len(args):
            out += [arg, _resolve(args[i + 1])]
            i += 1
        else:
            out.append(arg)
        i += 1
    return out


def resolve_reproduce_args(args: Sequence[str]) -> list[str]:
    """``zoo reproduce RECIPE ...`` with the positional ``RECIPE`` resolved to a file.

    Only the first positional before ``--`` is the recipe; values of options and the ``zoo
    fit`` overrides after ``--`` are left alone (the ``--config`` rule covers those)."""
    args = list(args)
    split = args.index("--") if "--" in args else len(args)
    skip_next = False
    for i, arg in enumerate(args[:split]):
        if skip_next:
            skip_next = False
            continue
        if arg.startswith("-"):
            skip_next = arg in REPRODUCE_VALUE_OPTIONS
            continue
        if arg.isdigit():  # a value of --seed-list / --shots; a recipe name is never a number
            continue
        if "=" in arg:  # a value of --per-shot (K:KEY=VALUE); a recipe name has no '='
            continue
        args[i] = str(resolve_recipe(arg))
        break
    return args[:split] + resolve_config_args(args[split:])
