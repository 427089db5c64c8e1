"""Parameter-group rules, chosen per recipe by ``OptimSpec.groups``, and per-module lr
multipliers on top (``OptimSpec.lr_mult``).

Every group is a dict ``{"params", "weight_decay", "lr_scale", "name"}``; the optimiser
starts each group at ``spec.lr * lr_scale`` and the schedule multiplies that group's own
initial lr (:mod:`zoo.optim.schedules`), so the ratios between groups hold at every step.
Frozen parameters are in no group.

Rules work on each parameter's *true* name and dimensionality: under FSDP
(``use_orig_params=True``) every parameter is a flat 1-D view of its shard by the time the
optimiser is built, and wrappers insert ``_fsdp_wrapped_module.`` / ``_orig_mod.`` into the
names. ``ZooModule.setup`` records the true ``ndim`` before wrapping (``ndims``) and names
are read with the wrapper segments removed (:func:`clean_name`), so every rule groups a
sharded model as it groups the plain one. timm's grouping functions read
``named_parameters()`` of what they are given; they get a stand-in (:class:`_TrueShapes`)
that lists meta tensors of the true ndim under the true names.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping

import torch
from timm.optim import param_groups_layer_decay, param_groups_weight_decay
from torch import nn

from zoo.optim.spec import GROUP_RULE_NAMES, OptimSpec

# Segments that wrappers insert into parameter / module names: FSDP, activation
# checkpointing, torch.compile's OptimizedModule.
_WRAPPER_SEGMENT = re.compile(
    r"(^|\.)(_fsdp_wrapped_module|_checkpoint_wrapped_module|_orig_mod)(?=\.|$)"
)
# Names of parameters outside the layer-decayed trunk, as the trunk's group matcher sees
# them: no timm matcher pattern starts with "~", so they fall in timm's last (head) layer.
_OUTSIDE = "~."

Entry = tuple[str, nn.Parameter, int]  # (true name, parameter, true ndim)
Rule = Callable[[nn.Module, list[Entry], OptimSpec], list[dict]]


def clean_name(name: str) -> str:
    """A parameter or module name without wrapper segments (FSDP, checkpointing, compile)."""
    return _WRAPPER_SEGMENT.sub("", name).lstrip(".")


def named_entries(model: nn.Module, ndims: Mapping[nn.Parameter, int] | None = None) -> list[Entry]:
    """Every parameter (frozen ones too) in ``named_parameters`` order, with its true name
    and ndim; rules skip the frozen ones (timm's layer decay still counts their layers)."""
    ndims = ndims or {}
    return [(clean_name(n), p, ndims.get(p, p.ndim)) for n, p in model.named_parameters()]


def is_no_decay(
    name: str, param: torch.Tensor, keywords: Iterable[str], ndim: int | None = None
) -> bool:
    """SLIP's rule: no weight decay for 1-D parameters (biases, norm gains, the logit scale)
    and names containing a keyword. ``ndim`` overrides ``param.ndim`` (see :func:`param_groups`)."""
    return (param.ndim if ndim is None else ndim) < 2 or any(k in name for k in keywords)


def _group(name: str, params: list, weight_decay: float, lr_scale: float = 1.0) -> dict:
    return {"params": params, "weight_decay": weight_decay, "lr_scale": lr_scale, "name": name}


def _under(name: str, prefix: str) -> bool:
    return not prefix or name == prefix or name.startswith(prefix + ".")


# --- rules: (model, entries, spec) -> groups -----------------------------------------------
def slip_rule(model: nn.Module, entries: list[Entry], spec: OptimSpec) -> list[dict]:
    """SLIP ``main.py``: ``p.ndim < 2 or 'bias' in n or 'ln' in n or 'bn' in n`` → no decay.
    It decays ``pos_embed`` / ``cls_token`` (3-D); CLIP and SLIP keep exactly these groups."""
    decay, no_decay = [], []
    for name, p, ndim in entries:
        if p.requires_grad:
            no = is_no_decay(name, p, spec.no_decay_keywords, ndim)
            (no_decay if no else decay).append(p)
    return [_group("decay", decay, spec.weight_decay), _group("no_decay", no_decay, 0.0)]


def all_rule(model: nn.Module, entries: list[Entry], spec: OptimSpec) -> list[dict]:
    """Every trainable parameter decays: ``torch.optim``'s default, and Dassl's (CoOp)
    ``build_optimizer``, which passes ``model.parameters()`` with one weight decay."""
    return [_group("decay", [p for _, p, _ in entries if p.requires_grad], spec.weight_decay)]


class _TrueShapes:
    """What timm's grouping functions read of a model (``named_parameters()`` and, for layer
    decay, ``group_matcher()``), with meta tensors of each parameter's true ndim (and its
    ``requires_grad``), so a flattened FSDP shard is grouped as the original parameter."""

    def __init__(self, entries: list[Entry], matcher_of: nn.Module | None = None):
        self.real: dict[int, nn.Parameter] = {}
        self.items: list[tuple[str, torch.Tensor]] = []
        for name, p, ndim in entries:
            stand_in = torch.empty((1,) * ndim, device="meta").requires_grad_(p.requires_grad)
            self.real[id(stand_in)] = p
            self.items.append((name, stand_in))
        self.matcher_of = matcher_of

    def named_parameters(self):
        return iter(self.items)

    def group_matcher(self, coarse: bool = False):
        return self.matcher_of.group_matcher(coarse=coarse)

    def groups(self, timm_groups: list[dict], prefix: str = "") -> list[dict]:
        """timm's groups with the real parameters back in, named and with ``lr_scale``.
        Names are unique (Lightning's LearningRateMonitor requires it): layers that share a
        scale (``layer_decay: 1.0``) get ``#2``, ``#3``, … in timm's layer order."""
        out, seen = [], set()
        for g in timm_groups:
            scale = float(g.get("lr_scale", 1.0))
            kind = "decay" if g["weight_decay"] else "no_decay"
            base = f"{prefix}x{scale:.6g}/{kind}" if prefix else kind
            name, n = base, 1
            while name in seen:
                n += 1
                name = f"{base}#{n}"
            seen.add(name)
            params = [self.real[id(t)] for t in g["params"]]
            out.append(_group(name, params, float(g["weight_decay"]), scale))
        return out


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Every submodule's ``no_weight_decay()`` names as full (wrapper-free) parameter names
    (timm's ViT declares ``pos_embed``, ``cls_token``, ``dist_token``, ``reg_token``)."""
    names: set[str] = set()
    for path, module in model.named_modules():
        # An FSDP wrapper forwards the method to the module it wraps: both clean to the
        # same path, so the set holds each name once.
        nwd = getattr(module, "no_weight_decay", None)
        if callable(nwd):
            path = clean_name(path)
            names.update(f"{path}.{n}" if path else n for n in nwd())
    return names


def timm_rule(model: nn.Module, entries: list[Entry], spec: OptimSpec) -> list[dict]:
    """``timm.optim.param_groups_weight_decay``: no decay for 1-D parameters, ``*.bias`` and
    the ``no_weight_decay()`` names of the model and of every submodule that declares them
    (timm's ``create_optimizer_v2`` asks the top model; here timm models sit inside)."""
    view = _TrueShapes(entries)
    nwd = no_weight_decay_names(model)
    return view.groups(param_groups_weight_decay(view, spec.weight_decay, no_weight_decay_list=nwd))


def _submodule(model: nn.Module, path: str) -> nn.Module:
    """The module at ``path`` (a wrapper-free name); under FSDP the innermost match."""
    found = [m for n, m in model.named_modules() if clean_name(n) == path]
    if not found:
        raise ValueError(f"optim.layer_decay_module {path!r}: no such submodule")
    return found[-1]


def layer_decay_rule(model: nn.Module, entries: list[Entry], spec: OptimSpec) -> list[dict]:
    """``timm.optim.param_groups_layer_decay`` (BEiT ``optim_factory``, MAE ``lr_decay``) with
    the timm model at ``spec.layer_decay_module`` (the whole model when unset) as the trunk.

    Layer ids follow the trunk's ``group_matcher``: for a ViT of depth L the stem
    (``patch_embed``, ``cls_token``, ``pos_embed``) is 0, block j is j + 1 (timm also puts the
    final ``norm`` with the last block) and everything outside the trunk (the head, other
    towers) is the last layer L + 1, as timm treats a model's own head; layer i trains at
    ``layer_decay ** (L + 1 - i)``, BEiT's and MAE's scales. Weight decay: none for 1-D
    parameters and ``no_weight_decay()`` names (of the trunk and of any other submodule).
    """
    path = spec.layer_decay_module or ""
    trunk = _submodule(model, path) if path else model
    if not callable(getattr(trunk, "group_matcher", None)):
        raise ValueError(
            "optim.groups 'layer_decay' needs a timm model with group_matcher() at "
            f"optim.layer_decay_module ({path or 'the model itself'!r})"
        )

    def as_trunk_sees(name: str) -> str:
        if not path:
            return name
        return name[len(path) + 1 :] if _under(name, path) else _OUTSIDE + name

    view = _TrueShapes([(as_trunk_sees(n), p, d) for n, p, d in entries], matcher_of=trunk)
    nwd = {as_trunk_sees(n) for n in no_weight_decay_names(model)}
    groups = param_groups_layer_decay(
        view, spec.weight_decay, no_weight_decay_list=nwd, layer_decay=spec.layer_decay
    )
    return view.groups(groups, prefix="layer_decay:")


GROUP_RULES: dict[str, Rule] = {
    "slip": slip_rule,
    "timm": timm_rule,
    "layer_decay": layer_decay_rule,
    "all": all_rule,
}
assert tuple(GROUP_RULES) == GROUP_RULE_NAMES


def apply_lr_mult(
    groups: list[dict], names: Mapping[nn.Parameter, str], lr_mult: Mapping[str, float] | None
) -> list[dict]:
    """Split off the parameters under each ``lr_mult`` module prefix into their own groups,
    ``lr_scale`` multiplied (the longest matching prefix wins), after their source group.
    A prefix that matches no trainable parameter is an error: a typo would do nothing."""
    if not lr_mult:
        return groups
    longest_first = sorted(lr_mult, key=len, reverse=True)
    used: set[str] = set()
    out = []
    for g in groups:
        split: dict[str | None, list] = {None: []}
        for p in g["params"]:
            prefix = next((q for q in longest_first if _under(names[p], q)), None)
            split.setdefault(prefix, []).append(p)
        out.append({**g, "params": split[None]})
        for prefix, mult in lr_mult.items():  # recipe order
            if prefix in split:
                used.add(prefix)
                out.append(
                    {
                        **g,
                        "params": split[prefix],
                        "lr_scale": g["lr_scale"] * mult,
                        "name": f"{g['name']}:{prefix}",
                    }
                )
    unused = sorted(set(lr_mult) - used)
    if unused:
        raise ValueError(f"optim.lr_mult: no trainable parameter under {', '.join(unused)}")
    return out


def param_groups(
    model: nn.Module, spec: OptimSpec, ndims: Mapping[nn.Parameter, int] | None = None
) -> list[dict]:
    """The trainable parameters of ``model`` in groups, by ``spec.groups`` then
    ``spec.lr_mult``. ``ndims`` gives parameters' true dimensionality where ``param.ndim`` no
    longer shows it (FSDP, see the module docstring). Groups may be empty (the ``slip`` rule
    always returns ``decay`` then ``no_decay``); the optimiser drops those.
    """
    entries = named_entries(model, ndims)
    groups = GROUP_RULES[spec.groups](model, entries, spec)
    return apply_lr_mult(groups, {p: n for n, p, _ in entries}, spec.lr_mult)
