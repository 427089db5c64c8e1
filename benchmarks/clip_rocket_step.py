"""One CLIP-rocket (CL2L) training step: the zoo's batched K² local pairing against the
official code's loop over view pairs (issue 13, "Speed").

Contenders share the *same module* (weights, heads, scales) and the *same batch*; only the
CL2L loss differs:

- ``zoo``: :func:`zoo.losses.clip_rocket.cl2l_loss`: the anchors of both directions stacked
  and the K² (anchor view, candidate view) logit matrices computed in ONE ``torch.bmm``,
  then one label-smoothed cross-entropy over all ``2·K²·B`` rows;
- ``official``: :func:`official_cl2l_loss`, the loss as github.com/facebookresearch/clip-rocket
  @ ebd9e58 ``losses.py`` (``CL2LLoss.forward``) computes it: per direction, a Python list
  of ``s′ · ĥ @ ĥ_allᵀ`` matrices built in a loop over the views, one cross-entropy per
  matrix, summed and divided by K², then the same combination. (Its loop re-evaluates the
  running mean after every outer iteration; the final value is the one over all K² pairs,
  which is what is computed here, once.)

Before timing, the two losses and all parameter gradients are compared (``allclose``).
Timing interleaves the contenders (``benchmarks.common.interleave``); the ratio is the
median of per-round ratios (``official / zoo``: above 1 means the zoo is faster).

Two measurements per shape: the whole step (towers + heads + loss, forward + backward) and
the loss alone (forward + backward from fixed embeddings, where the pairing is everything).

Shapes (``--shape``): ``tiny`` = recipes/clip_rocket/tiny.yaml (ViT patch 4 / width 64 /
depth 2 on 16 px, text width 64 × 2 layers, context 16, local heads 256, batch 256);
``base`` = ViT-B/16 at 224 px with the CLIP text transformer (width 512, 12 layers, 77
tokens), 256-d embedding, local heads 4096, batch ``--batch`` (default 8 on CPU) for the
step and 4096 rows (the paper's global batch) for the loss alone. K = 2. Run from the
repository root::

    python -m benchmarks.clip_rocket_step --shape tiny --repeats 10
    python -m benchmarks.clip_rocket_step --shape base --repeats 3
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from benchmarks.common import interleave, paired_ratio
from zoo.losses.clip_rocket import cl2l_loss
from zoo.losses.contrastive import clip_infonce

SHAPES = {
    "tiny": dict(
        encoder={"preset": "vit-tiny-digits"},
        local=[256, 256],
        image=16,
        context=16,
        batch=256,
        loss_rows=256,
        embed=64,
    ),
    "base": dict(
        encoder={
            "preset": "vit-b16-clip",
            "embed_dim": 256,
        },
        local=[4096, 4096],
        image=224,
        context=77,
        batch=8,
        loss_rows=4096,
        embed=256,
    ),
}


def official_cl2l_loss(z_i, z_t, u_i, u_t, scale, local_scale, label_smoothing, reduction):
    """CL2L as the official ``CL2LLoss.forward`` computes it (one process: the gathered
    features are the local ones): lists of per-pair logit matrices, one cross-entropy each."""
    k = u_i.shape[0]
    h_i = [F.normalize(h, dim=-1) for h in u_i.unbind(0)]
    h_t = [F.normalize(h, dim=-1) for h in u_t.unbind(0)]
    labels = torch.arange(z_i.shape[0], device=z_i.device)
    image_logits, text_logits = [], []
    for i in range(k):
        image_logits += [local_scale * h @ h_t[i].t() for h in h_i]
        text_logits += [local_scale * h @ h_i[i].t() for h in h_t]
    image_local = sum(
        F.cross_entropy(m, labels, label_smoothing=label_smoothing) for m in image_logits
    ) / len(image_logits)
    text_local = sum(
        F.cross_entropy(m, labels, label_smoothing=label_smoothing) for m in text_logits
    ) / len(text_logits)
    global_term = clip_infonce(z_i, z_t, scale)
    loss = (global_term + k * (image_local + text_local) / 2) / (1 + k)
    return {"loss": loss * (2 if reduction == "sum" else 1)}


def _batch(shape: dict, batch: int, k: int = 2) -> dict:
    g = torch.Generator().manual_seed(0)
    context, size = shape["context"], shape["image"]

    def tokens() -> torch.Tensor:
        t = torch.randint(1, 49000, (batch, context), generator=g)
        t[:, 0], t[:, context // 2] = 49406, 49407  # BOS, EOT (largest id), then padding
        t[:, context // 2 + 1 :] = 0
        return t

    return {
        "image": torch.randn(batch, 3, size, size, generator=g),
        "text": tokens(),
        "views": [torch.randn(batch, 3, size, size, generator=g) for _ in range(k)],
        "text_views": [tokens() for _ in range(k)],
    }


def _model(shape: dict):
    from lightning_modules.clip_rocket import CLIPRocket

    torch.manual_seed(0)
    return CLIPRocket(
        encoder=shape["encoder"],
        local_head={"hidden_dims": shape["local"], "out_dim": shape["embed"]},
        loss_reduction="sum",
    )


class _Loss(torch.nn.Module):
    """A CL2L loss function in the place of the module's ``cl2l_loss`` (ε 0.1, sum)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, z_i, z_t, u_i, u_t, scale, local_scale) -> dict:
        return self.fn(z_i, z_t, u_i, u_t, scale, local_scale, 0.1, "sum")


def _step(model, batch: dict, loss_fn) -> torch.Tensor:
    model.cl2l_loss = _Loss(loss_fn)
    loss = model.loss_terms(batch)["loss"]
    loss.backward()
    return loss.detach()


def _grads(model) -> list[torch.Tensor]:
    out = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    assert out, "no gradient"
    model.zero_grad(set_to_none=True)
    return out


def run(shape_name: str, repeats: int, batch: int | None) -> None:
    shape = SHAPES[shape_name]
    model = _model(shape)
    data = _batch(shape, batch or shape["batch"])
    contenders = {"zoo": cl2l_loss, "official": official_cl2l_loss}

    # parity: same loss, same gradients
    losses, grads = {}, {}
    for name, fn in contenders.items():
        losses[name] = _step(model, data, fn)
        grads[name] = _grads(model)
    assert torch.allclose(losses["zoo"], losses["official"], rtol=1e-5, atol=1e-6), losses
    # fp32 sums in another order differ in the last bits; a bias followed by BatchNorm has a
    # true gradient of 0, so each difference is compared with the largest gradient norm
    scale = max(b.norm() for b in grads["official"]).item()
    worst = max((a - b).norm().item() for a, b in zip(grads["zoo"], grads["official"])) / scale
    assert worst < 1e-5, f"gradients differ: worst difference {worst:.2e} of the largest norm"
    print(
        f"[{shape_name}] parity: loss {losses['zoo'].item():.6f} (both), gradients within "
        f"{worst:.1e} of the largest gradient norm"
    )

    def step(fn):
        def call():
            _step(model, data, fn)
            model.zero_grad(set_to_none=True)

        return call

    times = interleave({n: step(fn) for n, fn in contenders.items()}, warmup=1, repeats=repeats)
    ratio = paired_ratio(times["official"], times["zoo"])
    zoo_ms = 1e3 * sorted(times["zoo"])[len(times["zoo"]) // 2]
    print(f"[{shape_name}] step: zoo {zoo_ms:.1f} ms, official / zoo = {ratio:.3f}")

    # the loss alone, from fixed embeddings (the pairing is all of it)
    g = torch.Generator().manual_seed(1)
    rows, dim = shape["loss_rows"], shape["embed"]
    leaves = [
        torch.randn(*s, generator=g).requires_grad_()
        for s in ((rows, dim), (rows, dim), (2, rows, dim), (2, rows, dim))
    ]

    def loss_only(fn):
        def call():
            out = fn(*leaves, 14.0, 10.0, 0.1, "sum")["loss"]
            torch.autograd.grad(out, leaves)

        return call

    times = interleave(
        {n: loss_only(fn) for n, fn in contenders.items()}, warmup=1, repeats=repeats
    )
    ratio = paired_ratio(times["official"], times["zoo"])
    zoo_ms = 1e3 * sorted(times["zoo"])[len(times["zoo"]) // 2]
    print(
        f"[{shape_name}] loss alone ({rows} rows): zoo {zoo_ms:.1f} ms, official / zoo = {ratio:.3f}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--batch", type=int, default=None)
    args = parser.parse_args(argv)
    run(args.shape, args.repeats, args.batch)


if __name__ == "__main__":
    main()
