"""CoOp's learnable prompts and the CoOp / CoCoOp heads on a frozen CLIP.

CoOp (Zhou et al., "Learning to Prompt for Vision-Language Models", IJCV 2022) replaces the
hand-written template of zero-shot CLIP by M learnable context vectors in token-embedding
space. The prompt of class c is

    t_c = [SOS] [V]_1 … [V]_M [CLASS_c] [.] [EOS]                    (CoOp §3.2, Eq. 2)

and its text feature ``w_c = normalize(g(t_c))``, g the frozen CLIP text transformer run on
embeddings (:meth:`zoo.backbones.DualEncoder.encode_text_embeddings`); the classifier is
``p(y = c | x) = softmax_c(s · f̂ · w_c)`` with s = exp(CLIP's logit scale). The facts below
follow the official code (github.com/KaiyangZhou/CoOp @ ff61507, ``trainers/coop.py`` and
``trainers/cocoop.py``, class ``PromptLearner``):

- **Layout.** The prompt text ``"<prefix> <name>."`` is tokenised once; ``<prefix>`` is the
  init phrase, or ``"X X … X"`` (M placeholders) for a random init. The token embeddings of
  every position except the M context slots are frozen buffers; the slots are filled with
  ``ctx`` at every forward pass. ``class_token_position``: ``end`` (the layout above),
  ``middle`` (``[SOS] V_1…V_{M/2} [CLASS] V_{M/2+1}…V_M [.] [EOS]``, ``M // 2`` before the
  name) or ``front`` (``[SOS] [CLASS] V_1…V_M [.] [EOS]``); the EOT position, where the
  tower pools, stays that of the tokenised prompt (the highest token id, as CLIP;
  :meth:`zoo.backbones.CLIPTextTower.eot_index`).
- **Context.** Unified (one ``(M, width)`` set shared by every class) or class-specific
  (``class_specific``, CoOp's CSC: ``(C, M, width)``).
- **Init.** N(0, ``init_std``²) with ``init_std`` 0.02, or the token embeddings of a phrase
  (``ctx_init="a photo of a"``): M is then the phrase's length, one token per word as the
  official code assumes (a phrase whose words split into several BPE tokens is refused,
  since the official code would then initialise from the wrong tokens).
- **CoCoOp** (Zhou et al., "Conditional Prompt Learning for Vision-Language Models", CVPR
  2022, §3): a meta-net π = ``Linear(d, d/16) → ReLU → Linear(d/16, width)`` maps the
  *normalised* image feature f̂ (the official code normalises before the meta-net) to a shift
  added to every context vector, ``v_m(x) = v_m + π(x)`` (Eq. 3); each image thus gets its
  own classifier. :meth:`PromptLearner.prompts` takes the shifts of a whole batch at once and
  the text tower runs on all ``B × C`` prompts in one pass (the official code loops over the
  images).

Differences from the official code, all of them without effect on the results:

- the frozen part of each prompt is stored up to its EOT token only (``length`` = the
  longest prompt's EOT position + 1, not CLIP's 77): the text tower is causal and pools at
  EOT, so the positions after it never reach the feature, and dropping them saves most of
  the text tower's work (an ImageNet prompt of M = 16 is about 25 tokens);
- the context slots are filled by one ``scatter`` for every layout (the official code builds
  the ``middle`` / ``front`` prompts class by class with ``torch.cat``);
- with ``class_specific`` and ``ctx_init``, every class starts from the phrase (the official
  code ignores CSC when ``CTX_INIT`` is set and learns one unified context);
- the frozen prompt buffers are saved with the context, so an exported model needs no
  tokenizer to rebuild its classifier (``zoo.load``: a learner built with ``tokenizer=None``
  takes them from the state dict). A learner built from class names keeps the prompts of
  its own names when a state dict loads into it, as the official ``load_model`` drops the
  stored ``token_prefix`` / ``token_suffix``: a context trained on the base classes is
  evaluated on the new ones by loading it into a learner built for the new names.

Heads (:class:`zoo.backbones.clip_head.ClipHead` types, so ``zoo export`` / ``zoo.load``
round-trip an adapted model): :class:`CoOpHead` (``coop``) and :class:`CoCoOpHead`
(``cocoop``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.backbones import DualEncoder
from zoo.backbones.clip_head import ClipHead, register_clip_head
from zoo.protocols import ProtocolUnavailable, Tokenizer

ClassTokenPosition = Literal["end", "middle", "front"]
CLASS_TOKEN_POSITIONS: tuple[str, ...] = ("end", "middle", "front")
#: The official code's placeholder word for a randomly initialised context slot.
PLACEHOLDER = "X"
#: The frozen prompt buffers (saved with the context; on load kept or taken from the state
#: dict, see :meth:`PromptLearner._load_from_state_dict`).
LAYOUT_BUFFERS = ("token_embeds", "eot_index", "ctx_pos")


@dataclass
class PromptLayout:
    """The frozen part of the prompts of C class names.

    - ``token_embeds`` (C, L, width): token embeddings of the final layout; the context slots
      hold the placeholder (or init phrase) embeddings and are overwritten by ``ctx``;
    - ``eot_index`` (C,): the position the text tower pools at;
    - ``ctx_pos`` (C, M): the position of context vector m in the prompt of class c;
    - ``token_ids`` (C, L): the ids behind ``token_embeds`` (for inspection and tests).
    """

    token_embeds: Tensor
    eot_index: Tensor
    ctx_pos: Tensor
    token_ids: Tensor | None = None


def _clean(name: str) -> str:
    return name.replace("_", " ")  # as the official code does before writing the prompts


def context_words(ctx_init: str) -> int:
    """M for an init phrase: its number of words (the official rule)."""
    words = _clean(ctx_init).split()
    if not words:
        raise ValueError("ctx_init is empty: give a phrase such as 'a photo of a', or None")
    return len(words)


def _body_lengths(tokenizer: Tokenizer, encoder: DualEncoder, texts: list[str]) -> Tensor:
    """Tokens between SOS and EOT of each text on its own."""
    return encoder.text.eot_index(tokenizer(texts)) - 1


def build_layout(
    classnames: Sequence[str],
    tokenizer: Tokenizer,
    encoder: DualEncoder,
    n_ctx: int,
    prefix: str,
    class_token_position: ClassTokenPosition = "end",
) -> PromptLayout:
    """Tokenise ``"<prefix> <name>."`` for every class and place the name per
    ``class_token_position`` (module docstring). Vectorised over classes."""
    if class_token_position not in CLASS_TOKEN_POSITIONS:
        raise ValueError(
            f"class_token_position must be one of {CLASS_TOKEN_POSITIONS}, "
            f"got {class_token_position!r}"
        )
    names = [_clean(str(c)) for c in classnames]
    text = encoder.text
    device = text.token_embedding.weight.device
    tokens = tokenizer([f"{prefix} {name}." for name in names]).to(device)
    eot = text.eot_index(tokens)
    # The name's tokens counted on their own, as the official code does (``name_lens``): in
    # CLIP's BPE a name ending in punctuation merges with the "." ("kite (bird of prey)."
    # ends in one ")." token), and the official middle / front layouts then move that token.
    name_len = _body_lengths(tokenizer, encoder, names).to(device)
    dot_len = int(_body_lengths(tokenizer, encoder, ["."])[0])
    # SOS, context, name, ".", EOT: what the prompt needs, whatever the tokenizer kept
    needed = 1 + n_ctx + name_len + dot_len + 1
    limit = min(tokens.shape[1], encoder.context_length)
    too_long = ((needed > limit) & (eot >= limit - 1)).nonzero().flatten().tolist()
    if too_long:
        c = too_long[0]
        raise ValueError(
            f"the prompt of class {names[c]!r} ({len(too_long)} of {len(names)} classes) needs "
            f"{int(needed[c])} tokens with its {n_ctx} context tokens, more than the text "
            f"tower's context length {limit}: use fewer context tokens (n_ctx)"
        )
    prefix_len = int(_body_lengths(tokenizer, encoder, [prefix])[0])
    if prefix_len != n_ctx:
        raise ValueError(
            f"the context prefix {prefix!r} is {prefix_len} tokens, but the prompt learner has "
            f"{n_ctx} context vectors: an init phrase must be one token per word"
        )
    bad = (1 + n_ctx + name_len > eot).nonzero().flatten().tolist()
    if bad:
        raise ValueError(
            f"the prompt of class {names[bad[0]]!r} ({len(bad)} of {len(names)} classes) has "
            "fewer tokens after its context than the name has on its own"
        )
    length = int(eot.max()) + 1
    tokens = tokens[:, :length]
    # Final position p of class c takes the token at source position src[c, p] of the
    # tokenised "<prefix> <name>." (SOS at 0, context 1..M, name M+1..M+n, then "." EOT).
    num = len(names)
    p = torch.arange(length, device=device).expand(num, length)
    n = name_len[:, None]
    k = torch.arange(n_ctx, device=device).expand(num, n_ctx)
    if class_token_position == "end":
        src, ctx_pos = p, 1 + k
    elif class_token_position == "front":
        is_name = (p >= 1) & (p <= n)
        is_ctx = (p > n) & (p <= n + n_ctx)
        src = torch.where(is_name, p + n_ctx, torch.where(is_ctx, p - n, p))
        ctx_pos = 1 + n + k
    else:  # middle: M // 2 context vectors before the name, the rest after it
        half = n_ctx // 2
        is_name = (p > half) & (p <= half + n)
        is_ctx2 = (p > half + n) & (p <= n_ctx + n)
        src = torch.where(is_name, p - half + n_ctx, torch.where(is_ctx2, p - n, p))
        ctx_pos = torch.where(k < half, 1 + k, 1 + k + n)
    token_ids = tokens.gather(1, src)
    with torch.no_grad():
        token_embeds = text.token_embedding(token_ids).detach()
    return PromptLayout(token_embeds, eot, ctx_pos, token_ids)


class PromptLearner(nn.Module):
    """CoOp's learnable context (``ctx``) and the frozen prompts of ``classnames``.

    Args:
        classnames: class names in label order (``_`` becomes a space, as in the official
            code).
        tokenizer: the CLIP tokenizer; ``None`` rebuilds from a checkpoint: ``ctx`` and the
            prompt buffers are zeros of the right shapes that the state dict fills (the
            buffers' length follows the state dict).
        encoder: the frozen CLIP (token embeddings, EOT rule, widths); may be ``None`` with
            ``tokenizer=None`` when ``width`` (and ``length``) are given (``zoo.load``).
        n_ctx: M, the number of context vectors (ignored when ``ctx_init`` is set: M is the
            phrase's number of words).
        ctx_init: initialise the context from this phrase's token embeddings; ``None``:
            N(0, ``init_std``²).
        class_specific: one context per class (CSC) instead of one shared context.
        class_token_position: ``end``, ``middle`` or ``front``.
        width: token-embedding width, for a rebuild without encoder / tokenizer.
        length: prompt length, for a rebuild without encoder / tokenizer.
    """

    def __init__(
        self,
        classnames: list[str],
        tokenizer: Tokenizer | None,
        encoder: DualEncoder | None,
        n_ctx: int = 16,
        ctx_init: str | None = None,
        class_specific: bool = False,
        class_token_position: ClassTokenPosition = "end",
        init_std: float = 0.02,
        *,
        width: int | None = None,
        length: int | None = None,
    ):
        super().__init__()
        if class_token_position not in CLASS_TOKEN_POSITIONS:
            raise ValueError(
                f"class_token_position must be one of {CLASS_TOKEN_POSITIONS}, "
                f"got {class_token_position!r}"
            )
        if not classnames:
            raise ValueError("PromptLearner needs at least one class name")
        self.classnames = [str(c) for c in classnames]
        self.n_ctx = context_words(ctx_init) if ctx_init else int(n_ctx)
        if self.n_ctx < 1:
            raise ValueError(f"n_ctx must be >= 1, got {self.n_ctx}")
        self.ctx_init = ctx_init
        self.class_specific = bool(class_specific)
        self.class_token_position: ClassTokenPosition = class_token_position
        num = len(self.classnames)
        if tokenizer is None:
            if encoder is None and width is None:
                raise ValueError("PromptLearner without an encoder needs `width`")
            self.width = int(width if width is not None else encoder.text_width)  # type: ignore[union-attr]
            length = int(length if length is not None else encoder.context_length)  # type: ignore[union-attr]
            shape = (
                (num, self.n_ctx, self.width) if self.class_specific else (self.n_ctx, self.width)
            )
            self.ctx = nn.Parameter(torch.zeros(shape))
            self.register_buffer("token_embeds", torch.zeros(num, length, self.width))
            self.register_buffer("eot_index", torch.zeros(num, dtype=torch.long))
            self.register_buffer("ctx_pos", torch.zeros(num, self.n_ctx, dtype=torch.long))
            self.token_ids = None
            self.layout_from_tokenizer = False  # the state dict fills the prompts
            return
        if encoder is None:
            raise ValueError("PromptLearner with a tokenizer needs the encoder (token embeddings)")
        self.width = int(encoder.text_width)
        layout = build_layout(
            self.classnames,
            tokenizer,
            encoder,
            self.n_ctx,
            self.prefix,
            class_token_position,
        )
        self.register_buffer("token_embeds", layout.token_embeds)
        self.register_buffer("eot_index", layout.eot_index)
        self.register_buffer("ctx_pos", layout.ctx_pos)
        self.token_ids = layout.token_ids  # not state: the ids behind token_embeds
        self.layout_from_tokenizer = True  # the prompts of *these* names: never overwritten
        self.ctx = nn.Parameter(self._initial_ctx(tokenizer, encoder, init_std))

    @property
    def prefix(self) -> str:
        """The text written where the context goes: the init phrase or ``X X … X``."""
        return _clean(self.ctx_init) if self.ctx_init else " ".join([PLACEHOLDER] * self.n_ctx)

    @property
    def length(self) -> int:
        return int(self.token_embeds.shape[1])

    def _initial_ctx(self, tokenizer: Tokenizer, encoder: DualEncoder, init_std: float) -> Tensor:
        num = len(self.classnames)
        embedding = encoder.text.token_embedding
        if self.ctx_init:
            ids = tokenizer([self.prefix]).to(embedding.weight.device)
            with torch.no_grad():
                ctx = embedding(ids)[0, 1 : 1 + self.n_ctx].detach().clone()
            return ctx.expand(num, -1, -1).clone() if self.class_specific else ctx
        shape = (num, self.n_ctx, self.width) if self.class_specific else (self.n_ctx, self.width)
        ctx = torch.empty(shape, dtype=embedding.weight.dtype, device=embedding.weight.device)
        nn.init.normal_(ctx, std=init_std)
        return ctx

    # --- prompts ------------------------------------------------------------------------------
    def layout(self) -> PromptLayout:
        """This learner's own classes' frozen prompt part."""
        return PromptLayout(self.token_embeds, self.eot_index, self.ctx_pos)

    def layout_for(
        self, classnames: Sequence[str], tokenizer: Tokenizer | None, encoder: DualEncoder
    ) -> PromptLayout:
        """The frozen prompt part for other class names, to use with this context (CoOp's
        and CoCoOp's evaluation on new classes). A class-specific context has no vector for
        an unseen class: :class:`~zoo.protocols.ProtocolUnavailable`."""
        if self.class_specific:
            raise ProtocolUnavailable(
                "a class-specific context (CSC) has no context vectors for classes it was not "
                "trained on"
            )
        if tokenizer is None:
            raise ProtocolUnavailable(
                "writing prompts for new class names needs the datamodule's tokenizer"
            )
        return build_layout(
            list(classnames), tokenizer, encoder, self.n_ctx, self.prefix, self.class_token_position
        )

    def prompts(
        self, ctx_shift: Tensor | None = None, layout: PromptLayout | None = None
    ) -> Tensor:
        """Token embeddings of the prompts, (C, L, width); with ``ctx_shift`` (B, width)
        (CoCoOp's π(x), added to every context vector) (B, C, L, width)."""
        layout = layout or self.layout()
        base, pos = layout.token_embeds, layout.ctx_pos
        num, length, width = base.shape
        ctx = self.ctx.to(base.dtype)
        if ctx_shift is None:
            ctx = ctx if ctx.dim() == 3 else ctx.unsqueeze(0).expand(num, -1, -1)
            return base.scatter(1, pos.unsqueeze(-1).expand(-1, -1, width), ctx)
        shift = ctx_shift.to(base.dtype)
        batch = shift.shape[0]
        if ctx.dim() == 3:  # class-specific: (B, C, M, W)
            ctx = ctx.unsqueeze(0) + shift[:, None, None, :]
        else:  # unified: one shifted context per image, shared by the classes
            ctx = (ctx.unsqueeze(0) + shift[:, None, :]).unsqueeze(1).expand(-1, num, -1, -1)
        index = pos[None, :, :, None].expand(batch, -1, -1, width)
        return base.unsqueeze(0).expand(batch, -1, -1, -1).scatter(2, index, ctx)

    def text_features(
        self,
        encoder: DualEncoder,
        ctx_shift: Tensor | None = None,
        layout: PromptLayout | None = None,
    ) -> Tensor:
        """L2-normalised text features of the prompts: (C, D), or (B, C, D) with
        ``ctx_shift``; the frozen text tower runs once on all of them."""
        layout = layout or self.layout()
        prompts = self.prompts(ctx_shift, layout)
        if prompts.dim() == 3:
            return encoder.encode_text_embeddings(prompts, layout.eot_index, normalize=True)
        batch, num = prompts.shape[:2]
        z = encoder.encode_text_embeddings(
            prompts.flatten(0, 1), layout.eot_index.repeat(batch), normalize=True
        )
        return z.view(batch, num, -1)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # type: ignore[override]
        # Prompts written from the class names (a tokenizer was given) stay those of these
        # names, whatever the checkpoint holds: a context trained on other classes (CoCoOp's
        # base-to-new evaluation) then meets the current names, as the official load_model
        # drops the stored token_prefix / token_suffix. A learner rebuilt without a tokenizer
        # takes the stored prompts, and their length (unknown before: prompts end at EOT).
        for name in LAYOUT_BUFFERS:
            key, current = prefix + name, getattr(self, name)
            stored = state_dict.get(key)
            if not isinstance(stored, Tensor):
                continue
            if self.layout_from_tokenizer:
                state_dict[key] = current
            elif stored.shape != current.shape and stored.shape[:1] == current.shape[:1]:
                setattr(self, name, current.new_zeros(stored.shape))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def config(self) -> dict[str, Any]:
        """What :meth:`from_config` needs to allocate the same shapes."""
        return {
            "classnames": list(self.classnames),
            "n_ctx": self.n_ctx,
            "class_specific": self.class_specific,
            "class_token_position": self.class_token_position,
            "width": self.width,
            "length": self.length,
        }

    @classmethod
    def from_config(cls, entry: dict[str, Any]) -> PromptLearner:
        return cls(
            list(entry["classnames"]),
            None,
            None,
            n_ctx=int(entry["n_ctx"]),
            class_specific=bool(entry.get("class_specific", False)),
            class_token_position=entry.get("class_token_position", "end"),
            width=int(entry["width"]),
            length=int(entry["length"]),
        )


def cosine_logits(encoder: DualEncoder, image_features: Tensor, weights: Tensor) -> Tensor:
    """``s · f̂ Wᵀ`` (W unit rows), s = exp(CLIP's logit scale)."""
    f = F.normalize(image_features, dim=-1)
    return encoder.logit_scale.exp() * f @ weights.to(f.dtype).t()


@register_clip_head
class CoOpHead(ClipHead):
    """CoOp: the text tower on the learned prompts is the classifier,
    ``logits = s · f̂ Wᵀ`` with ``W = learner.text_features(encoder)``."""

    type_name = "coop"

    def __init__(self, learner: PromptLearner):
        super().__init__(learner.classnames)
        self.learner = learner

    def to_config(self) -> dict[str, Any]:
        return self.learner.config()

    @classmethod
    def from_config(cls, entry: dict[str, Any]) -> CoOpHead:
        return cls(PromptLearner.from_config(entry))

    def class_weights(self, encoder: DualEncoder) -> Tensor:
        return self.learner.text_features(encoder)

    def logits(self, encoder: DualEncoder, image_features: Tensor) -> Tensor:
        return cosine_logits(encoder, image_features, self.class_weights(encoder))


def meta_net(embed_dim: int, width: int) -> nn.Sequential:
    """CoCoOp's π: ``Linear(d, d // 16) → ReLU → Linear(d // 16, width)`` (official layer
    names ``linear1`` / ``relu`` / ``linear2``; PyTorch's default init, as there)."""
    hidden = embed_dim // 16
    if hidden < 1:
        raise ValueError(f"CoCoOp's meta-net needs an embedding width >= 16, got {embed_dim}")
    return nn.Sequential(
        OrderedDict(
            [
                ("linear1", nn.Linear(embed_dim, hidden)),
                ("relu", nn.ReLU(inplace=True)),
                ("linear2", nn.Linear(hidden, width)),
            ]
        )
    )


@register_clip_head
class CoCoOpHead(ClipHead):
    """CoCoOp: per image, the context is shifted by π(f̂) and the text tower builds that
    image's classifier; ``logits[b] = s · f̂_b W(x_b)ᵀ``. All ``B × C`` prompts go through the
    text tower together, in chunks of at most ``max_prompts`` prompts (whole images per
    chunk) so that a large evaluation batch fits in memory.

    :meth:`class_weights` is the classifier of the *unshifted* context (π(x) = 0), a summary
    of the learned prompts, not the classifier any image is scored with; use :meth:`logits`
    (or :meth:`logits_for` with another class list's layout), which the few-shot module's
    ``class_logits`` protocol does.
    """

    type_name = "cocoop"

    def __init__(self, learner: PromptLearner, embed_dim: int, max_prompts: int = 8192):
        super().__init__(learner.classnames)
        self.learner = learner
        self.embed_dim = int(embed_dim)
        self.max_prompts = int(max_prompts)
        self.meta_net = meta_net(self.embed_dim, learner.width)

    def to_config(self) -> dict[str, Any]:
        return {**self.learner.config(), "embed_dim": self.embed_dim}

    @classmethod
    def from_config(cls, entry: dict[str, Any]) -> CoCoOpHead:
        entry = dict(entry)
        embed_dim = int(entry.pop("embed_dim"))
        return cls(PromptLearner.from_config(entry), embed_dim)

    def class_weights(self, encoder: DualEncoder) -> Tensor:
        return self.learner.text_features(encoder)

    def logits(self, encoder: DualEncoder, image_features: Tensor) -> Tensor:
        return self.logits_for(encoder, image_features, None)

    def logits_for(
        self, encoder: DualEncoder, image_features: Tensor, layout: PromptLayout | None
    ) -> Tensor:
        """(B, C) logits against the prompts of ``layout`` (``None``: the head's classes)."""
        layout = layout or self.learner.layout()
        f = F.normalize(image_features, dim=-1)
        scale = encoder.logit_scale.exp()
        per_chunk = max(1, self.max_prompts // layout.token_embeds.shape[0])
        out = []
        for part in f.split(per_chunk):  # chunks of images, not single images
            shift = self.meta_net(part.to(self.meta_net.linear1.weight.dtype))
            w = self.learner.text_features(encoder, shift, layout)  # (b, C, D)
            # s·f̂ first, as CoOpHead: a zero shift then gives CoOp's logits to the last bits
            scaled = (scale * part).to(w.dtype)
            out.append(torch.einsum("bd,bcd->bc", scaled, w))
        return torch.cat(out)
