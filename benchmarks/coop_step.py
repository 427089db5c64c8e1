"""One CoOp training step at ImageNet shapes: the zoo's ``lightning_modules.coop.CoOp``
against a reference step written as the official code does it.

Shapes (defaults, the issue's): 1,000 ImageNet class names, M = 16 random context vectors,
the CLIP BPE at context 77, batch 32 at 224 px, ViT-B/16 towers (vision width 768, text
width 512, 12 layers each, embedding 512) at random init, fp32. ``--classes`` / ``--width`` /
``--vision-width`` / ``--image-size`` / ``--batch`` shrink it for a CPU run.

Both contenders use the *same weights*: an open_clip ``CLIP`` (QuickGELU, as OpenAI's) is
built at random and converted to the zoo's :class:`~zoo.backbones.DualEncoder` with
:func:`zoo.backbones.convert.dual_encoder_from_openai_state_dict`; the two steps start from
the same context and their logits are compared before timing (``parity``).

- ``official``: ``trainers/coop.py`` (github.com/KaiyangZhou/CoOp @ ff61507) on the
  open_clip model: ``PromptLearner.forward`` builds the prompts with ``torch.cat([prefix,
  ctx, suffix])`` at the full 77 tokens, ``TextEncoder`` adds the positional embedding, runs
  CLIP's text transformer (``nn.MultiheadAttention`` blocks with the causal mask), ``ln_final``
  and pools at ``argmax(ids)``; the image encoder is open_clip's ``visual``; logits
  ``exp(t) · f̂ Ŵᵀ``; cross-entropy; SGD (momentum 0.9, weight decay 5e-4) on ``ctx``.
- ``zoo``: ``CoOp.loss_terms`` (frozen ``DualEncoder`` in a ``FrozenTower``, prompts by one
  ``scatter`` into the frozen embeddings kept up to the longest EOT, the text tower of
  :mod:`zoo.backbones.text` with the pooled-row last layer) + backward + the module's SGD.
- ``zoo_full77`` (ablation): the zoo's step with the frozen prompt embeddings padded back to
  77 tokens, so the gain of stopping at EOT is separated from the rest.

The contenders are timed interleaved (``benchmarks.common.interleave``) and the ratio is the
median of per-round ratios; ``--profile`` adds ``torch.profiler`` tables of the top ops of
one step of each. Run from the repository root::

    python -m benchmarks.coop_step                         # full ImageNet shapes (GPU-sized)
    python -m benchmarks.coop_step --classes 100 --width 256 --vision-width 384 \\
        --image-size 112 --batch 16 --profile              # a reduced CPU run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.common import fmt_ratio, fmt_time, interleave, median, paired_ratio

CONTEXT = 77
N_CTX = 16


def build_models(args: argparse.Namespace) -> tuple[Any, Any]:
    """The open_clip CLIP (the official code's model) and the zoo DualEncoder holding the
    very same weights."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    from zoo.backbones.convert import dual_encoder_from_openai_state_dict

    torch.manual_seed(0)
    ref = CLIP(
        embed_dim=args.embed_dim,
        vision_cfg=CLIPVisionCfg(
            layers=args.layers,
            width=args.vision_width,
            patch_size=16,
            image_size=args.image_size,
            head_width=64,
        ),
        text_cfg=CLIPTextCfg(
            context_length=CONTEXT,
            vocab_size=49408,
            width=args.width,
            heads=max(1, args.width // 64),
            layers=args.layers,
        ),
        quick_gelu=True,
    ).eval()
    ref.requires_grad_(False)
    encoder, _ = dual_encoder_from_openai_state_dict(ref.state_dict(), quick_gelu=True)
    return ref, encoder


class OfficialPromptLearner(nn.Module):
    """``trainers/coop.py`` ``PromptLearner`` (generic context, class token at the end)."""

    def __init__(self, ref: Any, tokenizer: Any, classnames: list[str], ctx: torch.Tensor):
        super().__init__()
        self.n_cls, n_ctx = len(classnames), ctx.shape[0]
        self.ctx = nn.Parameter(ctx.clone())
        prefix = " ".join(["X"] * n_ctx)
        self.tokenized_prompts = tokenizer([f"{prefix} {name}." for name in classnames])
        with torch.no_grad():
            embedding = ref.token_embedding(self.tokenized_prompts)
        self.register_buffer("token_prefix", embedding[:, :1, :])
        self.register_buffer("token_suffix", embedding[:, 1 + n_ctx :, :])

    def forward(self) -> torch.Tensor:
        ctx = self.ctx.unsqueeze(0).expand(self.n_cls, -1, -1)
        return torch.cat([self.token_prefix, ctx, self.token_suffix], dim=1)


def official_text_encoder(ref: Any, prompts: torch.Tensor, tokenized: torch.Tensor) -> torch.Tensor:
    """``trainers/coop.py`` ``TextEncoder.forward`` on open_clip's (batch-first) transformer."""
    x = prompts + ref.positional_embedding
    x = ref.transformer(x, attn_mask=ref.attn_mask)
    x = ref.ln_final(x)
    return x[torch.arange(x.shape[0]), tokenized.argmax(dim=-1)] @ ref.text_projection


def official_logits(ref: Any, learner: OfficialPromptLearner, images: torch.Tensor) -> torch.Tensor:
    """``CustomCLIP.forward``."""
    image_features = ref.visual(images)
    text_features = official_text_encoder(ref, learner(), learner.tokenized_prompts)
    image_features = image_features / image_features.norm(dim=-1, keepdim=True)
    text_features = text_features / text_features.norm(dim=-1, keepdim=True)
    return ref.logit_scale.exp() * image_features @ text_features.t()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--width", type=int, default=512, help="text width (heads = width/64)")
    parser.add_argument("--vision-width", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12, help="layers of each tower")
    parser.add_argument("--embed-dim", type=int, default=512)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--profile", action="store_true", help="torch.profiler top ops")
    parser.add_argument("--json", default=None, help="write the figures to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from lightning_modules.coop import CoOp
    from zoo.data import TextTokenizer
    from zoo.data.lists import builtin_list
    from zoo.freeze import FrozenTower
    from zoo.optim import build_optimizer

    started = time.perf_counter()
    ref, encoder = build_models(args)
    names = builtin_list("imagenet")
    names = [names[i % len(names)] for i in range(args.classes)]
    tokenizer = TextTokenizer("clip-bpe", CONTEXT)
    g = torch.Generator().manual_seed(1)
    images = torch.randn(args.batch, 3, args.image_size, args.image_size, generator=g)
    labels = torch.randint(0, args.classes, (args.batch,), generator=g)
    batch = {"image": images, "label": labels}

    def zoo_module() -> CoOp:
        module = CoOp({"encoder": {"preset": "vit-tiny-digits"}}, n_ctx=N_CTX)
        module.clip = FrozenTower(encoder)  # the converted weights, frozen
        module.configure_classes(names, [], tokenizer)
        return module.train()

    zoo = zoo_module()
    ctx0 = zoo.head.learner.ctx.detach().clone()
    official = OfficialPromptLearner(ref, tokenizer, names, ctx0)
    full = zoo_module()  # ablation: the same prompts at the full 77 tokens
    with torch.no_grad():
        full.head.learner.ctx.copy_(ctx0)
        full.head.learner.token_embeds = encoder.text.token_embedding(official.tokenized_prompts)
    prompt_length = zoo.head.learner.length

    with torch.no_grad():
        parity = (zoo.logits(images) - official_logits(ref, official, images)).abs().max().item()
        parity_full = (zoo.logits(images) - full.logits(images)).abs().max().item()

    def official_optimizer(params) -> torch.optim.Optimizer:  # Dassl build_optimizer("sgd")
        return torch.optim.SGD(params, lr=0.002, momentum=0.9, weight_decay=5e-4)

    opt_official = official_optimizer(official.parameters())
    opt_zoo = build_optimizer(zoo, zoo.optim)
    opt_full = build_optimizer(full, full.optim)

    def official_step() -> None:
        loss = F.cross_entropy(official_logits(ref, official, images), labels)
        opt_official.zero_grad()
        loss.backward()
        opt_official.step()

    def zoo_step(module: CoOp, optimizer: torch.optim.Optimizer):
        def run() -> None:
            loss = module.loss_terms(batch)["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        return run

    def image_tower() -> None:  # the part both steps share: no gradient reaches it
        encoder.encode_image(images)

    contenders = {
        "official": official_step,
        "zoo": zoo_step(zoo, opt_zoo),
        "zoo_full77": zoo_step(full, opt_full),
        "image_tower": image_tower,
    }
    times = interleave(contenders, args.warmup, args.repeats)
    result: dict[str, Any] = {
        "command": " ".join(
            ["python -m benchmarks.coop_step", *(sys.argv[1:] if argv is None else argv)]
        ),
        "shape": {
            "classes": args.classes,
            "text_width": args.width,
            "vision_width": args.vision_width,
            "layers": args.layers,
            "image_size": args.image_size,
            "batch": args.batch,
            "n_ctx": N_CTX,
            "prompt_tokens_zoo": prompt_length,
            "prompt_tokens_official": CONTEXT,
        },
        "parity_max_abs_logit_diff": parity,
        "parity_full77_max_abs_logit_diff": parity_full,
        "seconds": {k: median(v) for k, v in times.items()},
        "ratio_official_over_zoo": paired_ratio(times["official"], times["zoo"]),
        "ratio_official_over_zoo_full77": paired_ratio(times["official"], times["zoo_full77"]),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "load": os.getloadavg(),
        },
    }
    if args.profile:
        result["profile"] = {
            "zoo": _top_ops(contenders["zoo"]),
            "official": _top_ops(contenders["official"]),
        }
    result["total_seconds"] = time.perf_counter() - started
    _print(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


def _top_ops(step, rows: int = 12) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def _print(result: dict[str, Any]) -> None:
    s = result["seconds"]
    shape = result["shape"]
    print(f"CoOp step, {json.dumps(shape)}")
    print("| contender | median step | note |")
    print("|---|---|---|")
    print(f"| official | {fmt_time(s['official'])} | torch.cat prompts at 77 tokens, open_clip |")
    print(
        f"| zoo | {fmt_time(s['zoo'])} | CoOp.loss_terms, prompts up to EOT "
        f"({shape['prompt_tokens_zoo']} tokens) |"
    )
    print(f"| zoo_full77 | {fmt_time(s['zoo_full77'])} | ablation: the zoo step at 77 tokens |")
    print(f"| image tower | {fmt_time(s['image_tower'])} | encode_image alone (in both steps) |")
    print(
        f"ratio official / zoo: {fmt_ratio(result['ratio_official_over_zoo'])}; "
        f"official / zoo_full77: {fmt_ratio(result['ratio_official_over_zoo_full77'])}; "
        f"parity max |Δlogit| {result['parity_max_abs_logit_diff']:.2e}"
    )
    for name, table in result.get("profile", {}).items():
        print(f"\ntop ops, {name} step (self CPU time):\n{table}")
    print(
        f"summary: coop_step_ratio={result['ratio_official_over_zoo']:.3f} "
        f"coop_step_ratio_full77={result['ratio_official_over_zoo_full77']:.3f} "
        f"parity={result['parity_max_abs_logit_diff']:.2e}"
    )


if __name__ == "__main__":
    main()
