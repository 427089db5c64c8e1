"""The compile switch compiles the named submodules in place and leaves results unchanged."""

import lightning as L
import pytest
import torch

from lightning_modules.clip import CLIP
from tests.papers._tiny import tiny_batch, tiny_encoder_spec
from zoo.callbacks import CompileModules


class _Data(L.LightningDataModule):
    def train_dataloader(self):
        return torch.utils.data.DataLoader([tiny_batch(seed=s) for s in range(2)], batch_size=None)


def _fit(callbacks, tmp_path, model=None, max_steps=2):
    torch.manual_seed(0)
    model = model if model is not None else CLIP(encoder=tiny_encoder_spec())
    trainer = L.Trainer(
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        callbacks=callbacks,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=_Data())
    return model


def test_unknown_module_is_a_clear_error(tmp_path):
    with pytest.raises(AttributeError, match="has no 'encoder.nope'"):
        _fit([CompileModules(modules=["encoder.nope"])], tmp_path)


@pytest.mark.slow  # torch.compile on CPU builds C++ kernels: about a minute
def test_compiled_fit_equals_eager_fit(tmp_path):
    eager = _fit([], tmp_path)
    callback = CompileModules()
    compiled = _fit([callback], tmp_path)
    assert callback.compiled == ["encoder"] and compiled.encoder._compiled_call_impl is not None
    assert eager.state_dict().keys() == compiled.state_dict().keys()  # checkpoints unchanged
    # compare what the models compute (weights in AdamW's zero-gradient directions, such as
    # key biases, legitimately pick up different rounding noise)
    batch = tiny_batch(seed=5)
    eager.eval(), compiled.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            compiled.encoder.encode_image(batch["image"]),
            eager.encoder.encode_image(batch["image"]),
            atol=1e-4,
            rtol=1e-4,
        )
        torch.testing.assert_close(
            compiled.encoder.encode_text(batch["text"]),
            eager.encoder.encode_text(batch["text"]),
            atol=1e-4,
            rtol=1e-4,
        )


@pytest.mark.parametrize("autocast_bf16", [False, True])
def test_compiled_encoder_is_one_graph_without_recompiles(autocast_bf16):
    """Every step must reuse one compiled graph: a context manager re-created inside the
    traced code (the CPU attention-kernel choice) made Dynamo graph-break and recompile on
    every call, 4x slower than eager (benchmarks/README.md)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from tests.papers._tiny import tiny_batch, tiny_encoder_spec
    from zoo.backbones import build_dual_encoder

    torch._dynamo.reset()
    counters.clear()
    encoder = build_dual_encoder(tiny_encoder_spec())
    encoder.compile(backend="eager")  # Dynamo's tracing only: fast, same guards
    batch = tiny_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast_bf16):
        for _ in range(3):
            z_i, z_t, scale = encoder(batch["image"], batch["text"])
            (z_i.sum() + z_t.sum() + scale.sum()).backward()
    assert dict(counters["graph_break"]) == {}
    assert counters["stats"]["unique_graphs"] == 1


def test_compile_switch_reaches_the_methods_papers_call(tmp_path):
    """SLIP trains through ``image_trunk`` / ``encode_text``, never ``encoder.forward``:
    those must run compiled too (before, compiling the encoder left SLIP in eager mode)."""
    import copy

    import torch._dynamo
    from torch._dynamo.utils import counters

    from lightning_modules.slip import SLIP
    from tests.papers._tiny import tiny_head_spec

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = SLIP(encoder=tiny_encoder_spec(), ssl_head=tiny_head_spec())
    _fit([CompileModules(backend="eager")], tmp_path, model=model, max_steps=1)
    compiled = model.encoder._compiled_methods
    assert set(compiled) == {"image_trunk", "encode_text", "encode_text_embeddings"}
    assert counters["stats"]["unique_graphs"] >= 2  # the image trunk and the text tower

    # a deep copy (EMA teachers, benchmarks) runs the compiled code on its own weights
    clone = copy.deepcopy(model.encoder)
    with torch.no_grad():
        clone.image_projection.mul_(2)
        image = tiny_batch()["image"]
        torch.testing.assert_close(clone.encode_image(image), 2 * model.encoder.encode_image(image))
