"""LoRA (zoo.lora) inside a real fit: zero-init equality, only LoRA weights train, merge and
unmerge, merged weights loading into a plain timm ViT, adapter-only safetensors round trip,
exact resume; fused-qkv (whole or q/v slices as ViSFT) and a transformers CLIP text model."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import CLIPTextConfig, CLIPTextModel

from tests.unit._component_fit import Digits16, cloned, fit, optimised_ids, tiny_vit
from zoo.lora import (
    ADAPTER_FILE,
    adapter_state_dict,
    apply_lora,
    load_adapter,
    merge,
    merged_state_dict,
    save_adapter,
    unmerge,
)
from zoo.module import ZooModule

STEPS, EVERY, R, ALPHA, D = 8, 4, 4, 8.0, 32
QKV = "base_model.model.blocks.0.attn.qkv"


class LoraClassifier(ZooModule):
    def __init__(self, qv_only: bool = False):
        super().__init__({"lr": 1e-2, "weight_decay": 0.05, "warmup_steps": 2, "min_lr": 1e-4})
        torch.manual_seed(0)
        self.base_state = cloned(tiny_vit().state_dict())  # what the wrapped ViT starts from
        torch.manual_seed(0)
        self.model = apply_lora(
            tiny_vit(), r=R, alpha=ALPHA, dropout=0.1, qv_only=qv_only, modules_to_save=["head"]
        )

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return F.cross_entropy(self.model(batch["image"]), batch["label"])


def images() -> torch.Tensor:
    return Digits16(8).images


def base_key(name: str) -> str | None:
    """The plain timm key of a wrapped base weight (None for LoRA / head copies)."""
    if "lora_" in name or "modules_to_save" in name:
        return None
    return (
        name.removeprefix("base_model.model.")
        .replace(".base_layer.", ".")
        .replace(".original_module.", ".")
    )


@pytest.fixture(scope="module", params=[False, True], ids=["qkv", "qv_only"])
def run(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    model = LoraClassifier(qv_only=request.param)
    before = cloned(model.state_dict())
    trainer = fit(model, root, STEPS, every=EVERY)
    return request.param, model.eval(), before, trainer, root


def test_zero_init_wrapped_model_equals_the_base_model():
    model = LoraClassifier(qv_only=True).eval()
    plain = tiny_vit().eval()
    plain.load_state_dict(model.base_state)
    with torch.no_grad():
        assert torch.equal(model.model(images()), plain(images()))
    b = model.model.get_parameter(f"{QKV}.lora_B.default.weight")
    assert b.shape == (2 * D, R) and not b.any()  # loralib's MergedLinear shape, zero


def test_after_a_fit_only_lora_and_the_head_changed(run):
    qv_only, model, before, trainer, _ = run
    after = model.state_dict()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "modules_to_save" in n for n in trainable)
    assert optimised_ids(trainer) == {id(p) for n, p in model.named_parameters() if n in trainable}
    for name, value in after.items():
        key = base_key(name.removeprefix("model."))
        if key is not None:  # every base weight, bit for bit
            assert torch.equal(value, before[name]), name
            assert torch.equal(value, model.base_state[key]), name
        elif "lora_B" in name or "modules_to_save" in name:
            assert not torch.equal(value, before[name]), f"{name} did not train"


def test_merge_and_unmerge_keep_the_outputs(run):
    _, model, _, _, _ = run
    # a copy: unmerging subtracts the delta again, equal only up to rounding (see zoo.lora.merge)
    net = copy.deepcopy(model.model)
    with torch.no_grad():
        want = net(images())
        merge(net)
        merged = net(images())
        unmerge(net)
        unmerged = net(images())
    torch.testing.assert_close(merged, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(unmerged, want, rtol=1e-5, atol=1e-5)


def test_merged_weights_load_into_a_plain_timm_vit(run):
    qv_only, model, _, _, _ = run
    net = model.model
    sd = merged_state_dict(net)
    plain = tiny_vit().eval()
    plain.load_state_dict(sd, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(plain(images()), net(images()), rtol=1e-5, atol=1e-5)
    # the merged qkv weight by hand: W + (alpha / r) * B A, per slice for qv_only
    w = model.base_state["blocks.0.attn.qkv.weight"]
    a = net.get_parameter(f"{QKV}.lora_A.default.weight").detach()
    b = net.get_parameter(f"{QKV}.lora_B.default.weight").detach()
    merged = sd["blocks.0.attn.qkv.weight"]
    if qv_only:
        torch.testing.assert_close(merged[:D], w[:D] + ALPHA / R * b[:D] @ a[:R])
        assert torch.equal(merged[D : 2 * D], w[D : 2 * D])  # k is not adapted
        torch.testing.assert_close(merged[2 * D :], w[2 * D :] + ALPHA / R * b[D:] @ a[R:])
    else:
        torch.testing.assert_close(merged, w + ALPHA / R * b @ a)
    # the wrapped model itself is untouched by the export
    assert torch.equal(net.get_parameter(f"{QKV}.base_layer.weight"), w)


def test_adapter_only_safetensors_round_trip(run, tmp_path):
    qv_only, model, _, _, _ = run
    path = save_adapter(model.model, tmp_path)
    assert path.name == ADAPTER_FILE
    saved = load_file(str(path))
    assert saved.keys() == adapter_state_dict(model.model).keys()
    assert all("lora_" in k or "modules_to_save" in k or ".head." in k for k in saved)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["r"] == R

    torch.manual_seed(1)  # a fresh wrapper: other LoRA A, zero B, an untrained head
    fresh = LoraClassifier(qv_only=qv_only).eval()
    with torch.no_grad():
        assert not torch.equal(fresh.model(images()), model.model(images()))
        load_adapter(fresh.model, tmp_path)
        assert torch.equal(fresh.model(images()), model.model(images()))


def test_loading_an_adapter_of_other_settings_fails(run, tmp_path):
    qv_only, model, _, _, _ = run
    save_adapter(model.model, tmp_path)
    other = LoraClassifier(qv_only=not qv_only)
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_adapter(other.model, tmp_path)


def test_a_resumed_lora_fit_is_exact(run, tmp_path):
    qv_only, model, _, _, root = run
    resumed = LoraClassifier(qv_only=qv_only)
    fit(resumed, tmp_path, STEPS, ckpt_path=root / f"epoch=0-step={EVERY}.ckpt")
    want, got = model.state_dict(), resumed.state_dict()
    assert want.keys() == got.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name


def test_transformers_clip_text_model_q_and_v_projections(tmp_path):
    config = CLIPTextConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=16,
        bos_token_id=0,
        eos_token_id=1,
    )
    torch.manual_seed(0)
    base = CLIPTextModel(config).eval()
    state = cloned(base.state_dict())
    ids = torch.randint(0, 64, (3, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = base(input_ids=ids).pooler_output
    net = apply_lora(base, r=R, alpha=ALPHA, target_modules=["q_proj", "v_proj"]).eval()
    targets = {n.rsplit(".", 2)[0] for n in adapter_state_dict(net)}  # …q_proj.lora_A.weight
    assert {t.rsplit(".", 1)[1] for t in targets} == {"q_proj", "v_proj"} and len(targets) == 4
    with torch.no_grad():
        assert torch.equal(net(input_ids=ids).pooler_output, want)  # B starts at zero
        for name, p in net.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.1)
        adapted = net(input_ids=ids).pooler_output
        assert not torch.allclose(adapted, want, atol=1e-3)
        merge(net)
        torch.testing.assert_close(net(input_ids=ids).pooler_output, adapted, atol=1e-5, rtol=1e-5)
        unmerge(net)
        torch.testing.assert_close(net(input_ids=ids).pooler_output, adapted, atol=1e-5, rtol=1e-5)

    plain = CLIPTextModel(config).eval()
    plain.load_state_dict(merged_state_dict(net), strict=True)
    save_adapter(net, tmp_path)
    torch.manual_seed(1)
    reloaded = CLIPTextModel(config).eval()
    reloaded.load_state_dict(state)
    reloaded = apply_lora(reloaded, r=R, alpha=ALPHA, target_modules=["q_proj", "v_proj"]).eval()
    load_adapter(reloaded, tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(
            plain(input_ids=ids).pooler_output, adapted, atol=1e-5, rtol=1e-5
        )
        assert torch.equal(reloaded(input_ids=ids).pooler_output, adapted)


def test_merged_lora_vision_encoder_exports_through_the_architecture_registry():
    """A LoRA-tuned zoo VisionEncoder, merged, is a plain ``vision_encoder`` for export: the
    registry's entry rebuilds a module that loads the merged weights strictly and gives the
    wrapped model's features."""
    from zoo.backbones.vision import VisionEncoder, VisionSpec
    from zoo.hub.architectures import architecture_entry, get_architecture

    spec = VisionSpec(
        "vit_tiny_patch16_224", img_size=16, patch_size=4, embed_dim=D, depth=1, num_heads=2
    )
    torch.manual_seed(0)
    net = apply_lora(VisionEncoder(spec), r=R, alpha=ALPHA).eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.1)
    plain = VisionEncoder(spec).eval()
    plain.load_state_dict(merged_state_dict(net), strict=True)
    arch = get_architecture("vision_encoder")
    rebuilt = arch.build(architecture_entry(arch, plain)).eval()
    rebuilt.load_state_dict(plain.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(
            rebuilt.features(images()), net.features(images()), rtol=1e-5, atol=1e-5
        )
