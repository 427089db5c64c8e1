"""Parameter-group rules against named parameters: SLIP's rule, timm's weight-decay rule
(``no_weight_decay()``), timm's layer decay (BEiT / MAE scales), ``all``, per-module lr
multipliers, the FSDP case (flattened shards, wrapped names) and the groups' lrs in a fit.

The model: a timm ViT (img 16, patch 4, dim 32, depth 2) at ``backbone``, a linear ``head``,
a 0-D ``logit_scale`` and a frozen ``frozen`` layer; every expected list is written by hand.
"""

import math

import lightning as L
import pytest
import timm
import torch
from torch import nn

from zoo.module import ZooModule
from zoo.optim import OptimSpec, build_optimizer, param_groups


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.backbone = timm.create_model(
            "vit_tiny_patch16_224",
            pretrained=False,
            img_size=16,
            patch_size=4,
            embed_dim=32,
            depth=2,
            num_heads=2,
            num_classes=0,
        )
        self.head = nn.Linear(32, 3)
        self.logit_scale = nn.Parameter(torch.zeros(()))
        self.frozen = nn.Linear(3, 3)
        self.frozen.requires_grad_(False)


B, B0, B1 = "backbone.", "backbone.blocks.0.", "backbone.blocks.1."
_BLOCK_MATRICES = ["attn.qkv.weight", "attn.proj.weight", "mlp.fc1.weight", "mlp.fc2.weight"]
_BLOCK_VECTORS = [
    "norm1.weight",
    "norm1.bias",
    "attn.qkv.bias",
    "attn.proj.bias",
    "norm2.weight",
    "norm2.bias",
    "mlp.fc1.bias",
    "mlp.fc2.bias",
]
BLOCK0_MATRICES = [B0 + n for n in _BLOCK_MATRICES]
BLOCK1_MATRICES = [B1 + n for n in _BLOCK_MATRICES]
BLOCK0_VECTORS = [B0 + n for n in _BLOCK_VECTORS]
BLOCK1_VECTORS = [B1 + n for n in _BLOCK_VECTORS]


def _described(model: nn.Module, groups: list[dict]) -> list[tuple[str, float, float, list[str]]]:
    names = {id(p): n for n, p in model.named_parameters()}
    return [
        (g["name"], g["weight_decay"], g["lr_scale"], [names[id(p)] for p in g["params"]])
        for g in groups
    ]


def test_slip_rule_decays_pos_embed_and_cls_token():
    model = _Net()
    groups = param_groups(model, OptimSpec(weight_decay=0.05))
    assert _described(model, groups) == [
        (
            "decay",
            0.05,
            1.0,
            [
                B + "cls_token",
                B + "pos_embed",
                B + "patch_embed.proj.weight",
                *BLOCK0_MATRICES,
                *BLOCK1_MATRICES,
                "head.weight",
            ],
        ),
        (
            "no_decay",
            0.0,
            1.0,
            [
                "logit_scale",
                B + "patch_embed.proj.bias",
                *BLOCK0_VECTORS,
                *BLOCK1_VECTORS,
                B + "norm.weight",
                B + "norm.bias",
                "head.bias",
            ],
        ),
    ]


def test_timm_rule_honours_no_weight_decay():
    """timm's ViT declares pos_embed / cls_token in no_weight_decay(): undecayed here,
    unlike SLIP's rule; 1-D parameters and biases too (timm's order: no_decay first)."""
    model = _Net()
    assert model.backbone.no_weight_decay() >= {"pos_embed", "cls_token"}
    groups = param_groups(model, OptimSpec(groups="timm", weight_decay=0.05))
    assert _described(model, groups) == [
        (
            "no_decay",
            0.0,
            1.0,
            [
                "logit_scale",
                B + "cls_token",
                B + "pos_embed",
                B + "patch_embed.proj.bias",
                *BLOCK0_VECTORS,
                *BLOCK1_VECTORS,
                B + "norm.weight",
                B + "norm.bias",
                "head.bias",
            ],
        ),
        (
            "decay",
            0.05,
            1.0,
            [B + "patch_embed.proj.weight", *BLOCK0_MATRICES, *BLOCK1_MATRICES, "head.weight"],
        ),
    ]


# Layer decay 0.75 on a depth L = 2 ViT: layer i of the stem (0), block 0 (1), block 1 (2)
# and the head outside the trunk (3) trains at 0.75 ** (L + 1 - i) (BEiT / MAE).
STEM, BLOCK0, BLOCK1, TOP = 0.75**3, 0.75**2, 0.75**1, 1.0


def test_layer_decay_scales_on_the_named_trunk():
    model = _Net()
    spec = OptimSpec(
        groups="layer_decay", layer_decay=0.75, layer_decay_module="backbone", weight_decay=0.05
    )
    groups = param_groups(model, spec)
    assert (STEM, BLOCK0, BLOCK1) == (0.421875, 0.5625, 0.75)
    assert _described(model, groups) == [
        ("layer_decay:x1/no_decay", 0.0, TOP, ["logit_scale", "head.bias"]),
        (
            "layer_decay:x0.421875/no_decay",
            0.0,
            STEM,
            [B + "cls_token", B + "pos_embed", B + "patch_embed.proj.bias"],
        ),
        ("layer_decay:x0.421875/decay", 0.05, STEM, [B + "patch_embed.proj.weight"]),
        ("layer_decay:x0.5625/no_decay", 0.0, BLOCK0, BLOCK0_VECTORS),
        ("layer_decay:x0.5625/decay", 0.05, BLOCK0, BLOCK0_MATRICES),
        # timm's ViT group_matcher puts the final norm with the last block
        (
            "layer_decay:x0.75/no_decay",
            0.0,
            BLOCK1,
            [*BLOCK1_VECTORS, B + "norm.weight", B + "norm.bias"],
        ),
        ("layer_decay:x0.75/decay", 0.05, BLOCK1, BLOCK1_MATRICES),
        ("layer_decay:x1/decay", 0.05, TOP, ["head.weight"]),
    ]


def test_layer_decay_on_a_whole_timm_classifier_matches_the_named_trunk():
    """With no layer_decay_module the model itself is the trunk: a timm ViT with its own
    head gets the same scales as the trunk + outside head above."""
    torch.manual_seed(0)
    vit = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=16,
        patch_size=4,
        embed_dim=32,
        depth=2,
        num_heads=2,
        num_classes=3,
    )
    groups = param_groups(vit, OptimSpec(groups="layer_decay", weight_decay=0.05))
    scales = {n: s for _, _, s, names in _described(vit, groups) for n in names}
    assert scales["pos_embed"] == STEM and scales["patch_embed.proj.weight"] == STEM
    assert scales["blocks.0.attn.qkv.weight"] == BLOCK0
    assert scales["blocks.1.mlp.fc2.bias"] == BLOCK1 and scales["norm.weight"] == BLOCK1
    assert scales["head.weight"] == TOP and scales["head.bias"] == TOP
    assert len(scales) == 32  # every parameter, once


def test_group_names_stay_unique_when_layers_share_a_scale():
    """layer_decay 1.0: every layer at scale 1; LearningRateMonitor needs distinct names."""
    model = _Net()
    spec = OptimSpec(groups="layer_decay", layer_decay=1.0, layer_decay_module="backbone")
    names = [g["name"] for g in param_groups(model, spec)]
    assert names == [
        "layer_decay:x1/no_decay",
        "layer_decay:x1/no_decay#2",
        "layer_decay:x1/decay",
        "layer_decay:x1/no_decay#3",
        "layer_decay:x1/decay#2",
        "layer_decay:x1/no_decay#4",
        "layer_decay:x1/decay#3",
        "layer_decay:x1/decay#4",
    ]


def test_all_rule_decays_every_trainable_parameter():
    model = _Net()
    (group,) = param_groups(model, OptimSpec(groups="all", weight_decay=5e-4))
    names = _described(model, [group])[0][3]
    assert group["weight_decay"] == 5e-4 and group["lr_scale"] == 1.0
    assert len(names) == 33 and "frozen.weight" not in names and "frozen.bias" not in names
    assert names[:3] == ["logit_scale", B + "cls_token", B + "pos_embed"]


def test_lr_multipliers_split_groups_on_top_of_any_rule():
    model = _Net()
    spec = OptimSpec(weight_decay=0.05, lr_mult={"head": 10.0, "backbone.blocks.1": 2.0})
    decay, decay_head, decay_b1, no_decay, no_decay_head, no_decay_b1 = _described(
        model, param_groups(model, spec)
    )
    assert decay[:3] == ("decay", 0.05, 1.0)
    stem = [B + "cls_token", B + "pos_embed", B + "patch_embed.proj.weight"]
    assert decay[3] == [*stem, *BLOCK0_MATRICES]
    assert decay_head == ("decay:head", 0.05, 10.0, ["head.weight"])
    assert decay_b1 == ("decay:backbone.blocks.1", 0.05, 2.0, BLOCK1_MATRICES)
    assert no_decay_head == ("no_decay:head", 0.0, 10.0, ["head.bias"])
    assert no_decay_b1 == ("no_decay:backbone.blocks.1", 0.0, 2.0, BLOCK1_VECTORS)
    assert no_decay[:3] == ("no_decay", 0.0, 1.0)

    # on layer decay the multiplier scales the layer's own scale: block 1 at 0.75 × 2
    spec = OptimSpec(
        groups="layer_decay", layer_decay_module="backbone", lr_mult={"backbone.blocks.1": 2.0}
    )
    scales = {
        n: s for _, _, s, names in _described(model, param_groups(model, spec)) for n in names
    }
    assert scales[B1 + "attn.qkv.weight"] == 1.5 and scales[B + "norm.bias"] == 0.75
    assert scales[B0 + "attn.qkv.weight"] == BLOCK0 and scales["head.weight"] == 1.0


def test_longest_prefix_wins_and_prefixes_stop_at_module_boundaries():
    model = nn.Module()
    model.head = nn.Linear(2, 2)
    model.head2 = nn.Linear(2, 2)
    model.body = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    spec = OptimSpec(groups="all", lr_mult={"body": 0.5, "body.1": 3.0, "head": 10.0})
    assert [(g["name"], g["lr_scale"], len(g["params"])) for g in param_groups(model, spec)] == [
        ("decay", 1.0, 2),  # head2.weight, head2.bias: "head" is not a prefix of "head2"
        ("decay:body", 0.5, 2),
        ("decay:body.1", 3.0, 2),  # not 0.5 × 3
        ("decay:head", 10.0, 2),
    ]


def test_misnamed_prefixes_and_modules_are_errors():
    model = _Net()
    with pytest.raises(ValueError, match="no trainable parameter under haed"):
        param_groups(model, OptimSpec(lr_mult={"haed": 10.0}))
    with pytest.raises(ValueError, match="no trainable parameter under frozen"):
        param_groups(model, OptimSpec(lr_mult={"frozen": 10.0}))
    with pytest.raises(ValueError, match="'backbone.trunk': no such submodule"):
        param_groups(model, OptimSpec(groups="layer_decay", layer_decay_module="backbone.trunk"))
    with pytest.raises(ValueError, match="group_matcher"):
        param_groups(model, OptimSpec(groups="layer_decay", layer_decay_module="head"))
    with pytest.raises(ValueError, match="optim.groups 'lyer_decay' is not one of"):
        OptimSpec(groups="lyer_decay")


@pytest.mark.parametrize(
    "spec",
    [
        OptimSpec(weight_decay=0.05, lr_mult={"head": 10.0}),
        OptimSpec(groups="timm", weight_decay=0.05, lr_mult={"head": 10.0}),
        OptimSpec(groups="layer_decay", layer_decay_module="backbone", lr_mult={"head": 10.0}),
    ],
    ids=["slip", "timm", "layer_decay"],
)
def test_rules_group_flattened_wrapped_parameters_as_the_originals(spec):
    """Under FSDP (use_orig_params) every parameter is a flat 1-D shard when the optimiser
    is built and the names carry ``_fsdp_wrapped_module.``; with the ndims ZooModule.setup
    records before wrapping, every rule gives the plain model's groups."""
    plain = _Net()
    expected = _described(plain, param_groups(plain, spec))

    wrapped = nn.Module()
    wrapped.add_module("_fsdp_wrapped_module", _Net())
    true_ndims = {p: p.ndim for p in wrapped.parameters()}
    for p in wrapped.parameters():
        p.data = p.data.reshape(-1)  # what FSDP does to the original parameters
    prefix = len("_fsdp_wrapped_module.")
    got = [
        (name, wd, scale, [n[prefix:] for n in names])
        for name, wd, scale, names in _described(wrapped, param_groups(wrapped, spec, true_ndims))
    ]
    assert got == expected
    # without the recorded shapes every matrix would lose its weight decay
    flat = _described(wrapped, param_groups(wrapped, spec))
    assert sum(len(names) for _, wd, _, names in flat if wd > 0) == 0


# --- the groups' learning rates in a real fit ---------------------------------------------


class _Recorder(L.Callback):
    def __init__(self):
        self.lrs: list[list[float]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.lrs.append([g["lr"] for g in optimizer.param_groups])


class _TwoPart(ZooModule):
    def __init__(self, spec: OptimSpec):
        super().__init__(spec)
        self.body = nn.Linear(2, 2, bias=False)
        self.head = nn.Linear(2, 2, bias=False)

    def training_step(self, batch, batch_idx):
        return self.head(self.body(batch)).pow(2).sum()


def test_multiplied_groups_follow_the_schedule_at_their_own_scale(tmp_path):
    """Peak 1.0, warm-up from 0.1 over one epoch of 4 steps, cosine to 0 over the next 4;
    the head (10×) is at 10 × the body's lr at every step."""
    spec = OptimSpec(
        lr=1.0, warmup_start_lr=0.1, min_lr=0.0, weight_decay=0.0, lr_mult={"head": 10.0}
    )
    recorder = _Recorder()
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[recorder],
        default_root_dir=tmp_path,
    )
    module = _TwoPart(spec)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(torch.ones(4, 2)))
    assert [g["name"] for g in trainer.optimizers[0].param_groups] == ["decay", "decay:head"]
    body = [
        0.1,
        0.4,
        0.7,
        1.0,
        1.0,
        0.5 * (1 + math.cos(math.pi / 4)),
        0.5,
        0.5 * (1 + math.cos(3 * math.pi / 4)),
    ]
    assert [lr[0] for lr in recorder.lrs] == pytest.approx(body, rel=1e-12)
    assert [lr[1] for lr in recorder.lrs] == pytest.approx([10 * x for x in body], rel=1e-12)


def test_optimizer_starts_each_group_at_its_scaled_lr():
    model = _Net()
    spec = OptimSpec(lr=1e-3, groups="layer_decay", layer_decay_module="backbone")
    optimizer = build_optimizer(model, spec)
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs["layer_decay:x0.421875/decay"] == pytest.approx(1e-3 * 0.421875, rel=1e-15)
    assert lrs["layer_decay:x0.75/decay"] == pytest.approx(7.5e-4, rel=1e-15)
    assert lrs["layer_decay:x1/decay"] == 1e-3  # exactly the spec's lr at scale 1


def test_clip_and_slip_optimizers_keep_todays_two_groups():
    """CLIP / SLIP: exactly the decay / no_decay groups (literal names in tests/papers/_tiny),
    each starting at exactly the paper's lr, in named_parameters order."""
    from lightning_modules.clip import CLIP
    from lightning_modules.slip import SLIP
    from tests.papers._tiny import (
        TINY_ENCODER_DECAY,
        TINY_ENCODER_NO_DECAY,
        tiny_encoder_spec,
        tiny_head_spec,
    )

    for module, lr, wd in (
        (CLIP(encoder=tiny_encoder_spec()), 5e-4, 0.5),
        (SLIP(encoder=tiny_encoder_spec(), ssl_head=tiny_head_spec()), 3e-3, 0.1),
    ):
        optimizer = build_optimizer(module, module.optim)
        assert type(optimizer) is torch.optim.AdamW
        assert [(g["name"], g["lr"], g["weight_decay"]) for g in optimizer.param_groups] == [
            ("decay", lr, wd),
            ("no_decay", lr, 0.0),
        ]
        names = {id(p): n for n, p in module.named_parameters()}
        decay, no_decay = ([names[id(p)] for p in g["params"]] for g in optimizer.param_groups)
        order = [n for n, _ in module.named_parameters()]
        assert decay == sorted(decay, key=order.index)  # named_parameters order, as before
        assert [n for n in decay if n.startswith("encoder.")] == sorted(
            TINY_ENCODER_DECAY, key=order.index
        )
        assert [n for n in no_decay if n.startswith("encoder.")] == sorted(
            TINY_ENCODER_NO_DECAY, key=order.index
        )
