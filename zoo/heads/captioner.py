"""Show, Attend and Tell captioner (Xu et al., 2015): ViSFT's caption head, with its vocabulary.

ViSFT trains this head on a frozen ViT in stage 1. In stage 2 the head is frozen, and its
loss trains the backbone's LoRA weights. The facts below come from the official code
(TencentARC/ViSFT, commit f7448a74: ``mmf/models/visft/caption_decoder.py``,
``visft_heads.py`` and ``visft.py``). That code is a port of
sgrvinod/a-PyTorch-Tutorial-to-Image-Captioning (``models.py``, ``train.py``, ``utils.py``).

Architecture (for each step ``t``; ``a_i`` are the ``P`` pooled feature vectors of one image):

- **Encoder.** ``AdaptiveAvgPool2d`` to ``encoded_size × encoded_size``: 14×14 at paper
  scale, from the 16×16 EVA token map. No projection follows, so the attention reads the
  backbone's ``C`` channels directly.
- **Initial state** (Xu et al., §3.1.2). ``h_0 = init_h(mean_i a_i)`` and
  ``c_0 = init_c(mean_i a_i)``.
- **Soft attention** (Xu et al., Eqs. 4–6).
  ``e_ti = full_att(ReLU(encoder_att(a_i) + decoder_att(h_{t−1})))``,
  ``α_t = softmax_i(e_t)`` and ``ẑ_t = Σ_i α_ti a_i``.
- **Gate** (Xu et al., §4.2.1). ``ẑ_t ← σ(f_beta(h_{t−1})) ⊙ ẑ_t``. The paper's β is a
  scalar, but the official code gates each channel (``f_beta: decoder_dim → C``). We follow
  the code.
- **Decoder.** ``h_t = LSTMCell([E y_t ; ẑ_t], (h_{t−1}, c_{t−1}))`` and
  ``logits_t = fc(dropout(h_t))``. Attention, embedding and decoder dims are all 384, with
  dropout 0.5 and a 9,490-word vocabulary. ``embedding`` and ``fc.weight`` start
  ~U(−0.1, 0.1) and ``fc.bias`` starts at 0, as the official ``init_weights`` does.
  ``cell="gru"`` swaps in a ``GRUCell`` (no ``c`` state, no ``init_c``). This is the
  variant named in the card's CPU reproduction; LSTM, the official cell, is the default.

The submodule names match the official ``DecoderWithAttention`` (``attention.encoder_att``,
``decode_step``, ``init_h``, ``f_beta``, ``fc``, ...). After dropping the
``caption_decoder.`` prefix, a stage-1 caption checkpoint from the official code therefore
loads by name.

**Teacher forcing, vectorised over the batch.** The official loop sorts the batch by
length and shrinks it at each step (``batch_size_t``). We instead run every row for
``T = max(lengths) − 1`` steps, and the returned ``mask`` marks each row's real steps. The
recurrence is per row, so a row's logits at its real steps are the same either way (a
test checks them against single-row runs). We prefer the mask because outputs stay in
input order (no ``sort_ind`` to undo), every step has the same shapes (no per-step
slicing, friendlier to ``torch.compile``) and the loss already needs the mask. The cost
is computing a few padded steps that are thrown away. α is zeroed at padded steps, as the
official code's zero-filled ``alphas`` buffer is.

**Loss** (:func:`caption_loss`, official ``visft.py``, ``caption_loss_calculation``).
``L = CE + alpha_c · mean_{b,i} (1 − Σ_t α_bti)²`` with ``alpha_c = 1``. CE is averaged
over every real target token of the batch (the official ``pack_padded_sequence`` removes
the padding). The regulariser sums α over each caption's real steps, then averages over
pixels and images. Xu et al.'s Eq. 14 writes ``λ Σ_i (1 − Σ_t α_ti)²`` next to a summed
negative log-likelihood. Both the official ViSFT code and the tutorial it ports take the
mean instead, so this module uses the mean.

**Vocabulary** (:class:`CaptionVocab`, tutorial ``utils.create_input_files``). The map has
``<pad>`` = 0, then the kept words from 1 in order of first appearance, then ``<unk>``,
``<start>`` and ``<end>``. A word is kept if it occurs **more than** ``min_word_freq`` times.
The official threshold is 5, which gives the 9,490-entry COCO map. Captions are encoded as
``<start> w_1 … w_n <end>`` with ``n ≤ max_length`` (50 in the official data). The
official preprocessing drops longer captions; :meth:`CaptionVocab.encode` truncates them
instead, because a reader has to return something for each record.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

PAD, UNK, START, END = "<pad>", "<unk>", "<start>", "<end>"
SPECIAL_TOKENS = (PAD, UNK, START, END)
_VOCAB_FORMAT = "zoo.caption_vocab"
_WORD = re.compile(r"[^\W_]+")  # runs of letters / digits (any script); punctuation splits


def tokenize_caption(text: str) -> list[str]:
    """Lower-cased words with punctuation removed: ``"A man's red-hat."`` →
    ``["a", "mans", "red", "hat"]``.

    This stands in for the tokens of the Karpathy split and for coco-caption's
    PTBTokenizer, both of which lower-case and strip punctuation. Apostrophes join their
    word instead of splitting it.
    """
    return _WORD.findall(text.lower().replace("'", "").replace("\u2019", ""))


@dataclass(frozen=True)
class CaptionVocab:
    """Word ↔ index map of a captioner, shipped as JSON next to its weights.

    ``word_map`` uses the official layout (see the module docstring) and must hold all four
    special tokens. ``max_length`` is the most words a caption may have; the encoded
    sequence adds ``<start>`` and ``<end>``.
    """

    word_map: dict[str, int]
    max_length: int = 50

    def __post_init__(self) -> None:
        missing = [t for t in SPECIAL_TOKENS if t not in self.word_map]
        if missing:
            raise ValueError(f"caption vocabulary lacks the special tokens {missing}")
        if sorted(self.word_map.values()) != list(range(len(self.word_map))):
            raise ValueError("caption vocabulary indices must be 0..N-1, each used once")
        if self.word_map[PAD] != 0:
            raise ValueError(f"{PAD} must be index 0 (collation pads with 0)")
        if self.max_length < 1:
            raise ValueError(f"max_length must be ≥ 1, got {self.max_length}")

    @cached_property
    def words(self) -> list[str]:
        """Index → word."""
        return sorted(self.word_map, key=self.word_map.__getitem__)

    @classmethod
    def from_captions(
        cls, captions: Iterable[str], min_word_freq: int = 5, max_length: int = 50
    ) -> CaptionVocab:
        """Keep the words seen more than ``min_word_freq`` times, counted over all captions
        (as the official code does, long captions included)."""
        counts: Counter[str] = Counter()
        for caption in captions:
            counts.update(tokenize_caption(caption))
        kept = [w for w, c in counts.items() if c > min_word_freq and w not in SPECIAL_TOKENS]
        word_map = {w: i + 1 for i, w in enumerate(kept)}
        for token in (UNK, START, END):
            word_map[token] = len(word_map) + 1
        word_map[PAD] = 0
        return cls(word_map, max_length=max_length)

    def __len__(self) -> int:
        return len(self.word_map)

    @property
    def pad_id(self) -> int:
        return self.word_map[PAD]

    @property
    def unk_id(self) -> int:
        return self.word_map[UNK]

    @property
    def start_id(self) -> int:
        return self.word_map[START]

    @property
    def end_id(self) -> int:
        return self.word_map[END]

    def encode(self, caption: str) -> list[int]:
        """``<start> w_1 … w_n <end>``, unpadded, truncated to ``max_length`` words."""
        unk = self.unk_id
        words = tokenize_caption(caption)[: self.max_length]
        return [self.start_id, *(self.word_map.get(w, unk) for w in words), self.end_id]

    def encode_batch(
        self, captions: Sequence[str], pad_to: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tokens (N, L), lengths (N,))``, padded with ``<pad>``. ``L`` is the longest
        caption, or ``pad_to`` if given (``max_length + 2`` for the official fixed-width
        records). ``lengths`` counts ``<start>`` and ``<end>``, like the official ``caplen``."""
        encoded = [self.encode(c) for c in captions]
        width = max((len(e) for e in encoded), default=2) if pad_to is None else pad_to
        if any(len(e) > width for e in encoded):
            raise ValueError(f"pad_to={pad_to} is shorter than an encoded caption")
        tokens = torch.full((len(encoded), width), self.pad_id, dtype=torch.long)
        for row, ids in enumerate(encoded):  # data preparation, not a training hot path
            tokens[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return tokens, torch.tensor([len(e) for e in encoded], dtype=torch.long)

    def decode(self, ids: Iterable[int]) -> str:
        """Words up to the first ``<end>``, skipping ``<start>`` and ``<pad>``. An
        ``<unk>`` stays in the output as ``<unk>``."""
        words = self.words
        out: list[str] = []
        for i in ids:
            i = int(i)
            if i == self.end_id:
                break
            if i in (self.start_id, self.pad_id):
                continue
            if not 0 <= i < len(words):
                raise ValueError(f"token id {i} is outside the vocabulary of {len(words)}")
            out.append(words[i])
        return " ".join(out)

    def decode_batch(self, ids: torch.Tensor) -> list[str]:
        return [self.decode(row) for row in ids.tolist()]

    def save(self, path: str | Path) -> None:
        payload = {"format": _VOCAB_FORMAT, "max_length": self.max_length}
        payload["word_map"] = self.word_map
        Path(path).write_text(json.dumps(payload, ensure_ascii=False, indent=1))

    @classmethod
    def load(cls, path: str | Path) -> CaptionVocab:
        """Read a file written by :meth:`save`. A bare official ``WORDMAP_*.json`` (a
        ``{word: index}`` dict) also loads, with ``max_length`` 50."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: cannot read a caption vocabulary ({err})") from err
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
        if data.get("format") == _VOCAB_FORMAT:
            if not isinstance(data.get("word_map"), dict):
                raise ValueError(f"{path}: key 'word_map' is missing or not an object")
            word_map, max_length = data["word_map"], data.get("max_length", 50)
        else:
            word_map, max_length = data, 50
        try:
            return cls({str(k): int(v) for k, v in word_map.items()}, max_length=int(max_length))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: {err}") from err


@dataclass
class CaptionHeadSpec:
    """Show-Attend-Tell head. The defaults are the ViSFT paper-scale values
    (``visft_heads.py``: 14×14 pooling; attention, embedding and decoder dims 384;
    vocabulary 9,490; dropout 0.5; ``visft.py``: ``alpha_c = 1.0``). The decode limit of 50
    words is the tutorial's ``eval.py``."""

    vocab_size: int = 9490
    encoded_size: int = 14
    attention_dim: int = 384
    embed_dim: int = 384
    decoder_dim: int = 384
    dropout: float = 0.5
    cell: Literal["lstm", "gru"] = "lstm"
    alpha_c: float = 1.0
    max_decode_length: int = 50

    @classmethod
    def tiny(cls, vocab_size: int, **overrides: object) -> CaptionHeadSpec:
        """CPU-sized preset: 4×4 pooling and 32-d attention, embedding and decoder. The
        card's CPU reproduction uses a GRU; pass ``cell="gru"`` to match it."""
        small = cls(
            vocab_size=vocab_size,
            encoded_size=4,
            attention_dim=32,
            embed_dim=32,
            decoder_dim=32,
            max_decode_length=20,
        )
        return replace(small, **overrides)


class CaptionForward(NamedTuple):
    """What teacher forcing returns. The fields line up with :func:`caption_loss`'s
    arguments, so ``caption_loss(*out)`` works.

    ``logits (B, T, V)``, ``targets (B, T)`` (``tokens[:, 1:T+1]``), ``alphas (B, T, P)``
    (0 at padded steps) and ``mask (B, T)`` (True on real steps), where
    ``T = max(lengths) − 1``.
    """

    logits: torch.Tensor
    targets: torch.Tensor
    alphas: torch.Tensor
    mask: torch.Tensor


class SoftAttention(nn.Module):
    """Additive attention over pixels (Xu et al., Eqs. 4–5). Official ``Attention``."""

    def __init__(self, encoder_dim: int, decoder_dim: int, attention_dim: int) -> None:
        super().__init__()
        self.encoder_att = nn.Linear(encoder_dim, attention_dim)
        self.decoder_att = nn.Linear(decoder_dim, attention_dim)
        self.full_att = nn.Linear(attention_dim, 1)

    def forward(
        self, encoded: torch.Tensor, encoded_att: torch.Tensor, hidden: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``encoded (B, P, C)``, ``encoded_att = encoder_att(encoded)`` (computed once per
        caption, not once per step) and ``hidden (B, D)`` → ``(ẑ (B, C), α (B, P))``."""
        scores = self.full_att(F.relu(encoded_att + self.decoder_att(hidden)[:, None])).squeeze(2)
        alpha = scores.softmax(dim=1)
        return torch.bmm(alpha[:, None], encoded).squeeze(1), alpha


class ShowAttendTellHead(nn.Module):
    """Attention-RNN captioner on a feature map ``(B, in_channels, H, W)``."""

    def __init__(self, in_channels: int, spec: CaptionHeadSpec | None = None) -> None:
        super().__init__()
        spec = spec or CaptionHeadSpec()
        if spec.cell not in ("lstm", "gru"):
            raise ValueError(f"CaptionHeadSpec.cell must be 'lstm' or 'gru', got {spec.cell!r}")
        self.spec = spec
        self.in_channels = in_channels
        c, d = in_channels, spec.decoder_dim
        self.pool = nn.AdaptiveAvgPool2d(spec.encoded_size)
        self.attention = SoftAttention(c, d, spec.attention_dim)
        self.embedding = nn.Embedding(spec.vocab_size, spec.embed_dim)
        cell = nn.LSTMCell if spec.cell == "lstm" else nn.GRUCell
        self.decode_step = cell(spec.embed_dim + c, d)
        self.init_h = nn.Linear(c, d)
        self.init_c = nn.Linear(c, d) if spec.cell == "lstm" else None
        self.f_beta = nn.Linear(d, c)
        self.dropout = nn.Dropout(spec.dropout)
        self.fc = nn.Linear(d, spec.vocab_size)
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        nn.init.uniform_(self.fc.weight, -0.1, 0.1)
        nn.init.zeros_(self.fc.bias)

    def encode(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` → pooled pixels ``(B, P, C)``, ``P = encoded_size²``."""
        if features.ndim != 4 or features.shape[1] != self.in_channels:
            raise ValueError(
                f"ShowAttendTellHead expects features (B, {self.in_channels}, H, W), "
                f"got {tuple(features.shape)}"
            )
        return self.pool(features).flatten(2).transpose(1, 2)

    def _initial_state(self, encoded: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        mean = encoded.mean(dim=1)
        return self.init_h(mean), (self.init_c(mean) if self.init_c is not None else None)

    def _step(
        self,
        embedded: torch.Tensor,
        encoded: torch.Tensor,
        encoded_att: torch.Tensor,
        h: torch.Tensor,
        c: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """One decoder step from ``h_{t−1}``: attend, gate, update the cell → ``(h_t, c_t, α_t)``."""
        context, alpha = self.attention(encoded, encoded_att, h)
        context = torch.sigmoid(self.f_beta(h)) * context
        x = torch.cat([embedded, context], dim=1)
        if c is None:
            return self.decode_step(x, h), None, alpha
        h, c = self.decode_step(x, (h, c))
        return h, c, alpha

    def forward(
        self, features: torch.Tensor, tokens: torch.Tensor, lengths: torch.Tensor
    ) -> CaptionForward:
        """Teacher-forced decoding. ``tokens (B, L)`` are ``<start> … <end> <pad>…`` and
        ``lengths (B,)`` counts ``<start>`` and ``<end>`` (the official ``caplen``). Step
        ``t`` reads ``tokens[:, t]`` and predicts ``tokens[:, t+1]``."""
        lengths = lengths.reshape(-1)
        if tokens.ndim != 2 or lengths.numel() != tokens.shape[0]:
            raise ValueError(
                f"tokens must be (B, L) with one length per row; got tokens "
                f"{tuple(tokens.shape)} and lengths {tuple(lengths.shape)}"
            )
        if bool((lengths < 2).any()) or bool((lengths > tokens.shape[1]).any()):
            raise ValueError(
                f"caption lengths must count <start> and <end> (≥ 2) and fit in "
                f"{tokens.shape[1]} tokens; got {lengths.tolist()}"
            )
        encoded = self.encode(features)
        if encoded.shape[0] != tokens.shape[0]:
            raise ValueError(f"{encoded.shape[0]} feature maps for {tokens.shape[0]} captions")
        decode_lengths = lengths - 1  # no step reads <end>
        steps = int(decode_lengths.max())
        embedded = self.embedding(tokens[:, :steps])
        encoded_att = self.attention.encoder_att(encoded)
        h, c = self._initial_state(encoded)
        hiddens, alphas = [], []
        for t in range(steps):  # the recurrence is sequential in time and batched over rows
            h, c, alpha = self._step(embedded[:, t], encoded, encoded_att, h, c)
            hiddens.append(h)
            alphas.append(alpha)
        mask = torch.arange(steps, device=tokens.device) < decode_lengths[:, None]
        logits = self.fc(self.dropout(torch.stack(hiddens, dim=1)))
        alpha = torch.stack(alphas, dim=1) * mask[..., None]
        return CaptionForward(logits, tokens[:, 1 : steps + 1], alpha, mask)

    @torch.no_grad()
    def generate(
        self,
        features: torch.Tensor,
        *,
        start_id: int,
        end_id: int,
        pad_id: int = 0,
        max_length: int | None = None,
    ) -> torch.Tensor:
        """Greedy decoding, batched (the tutorial's ``eval.py`` at beam size 1).

        Returns ``(B, S)`` token ids after ``<start>``. Each row ends with its ``<end>``,
        then ``<pad>``. Decoding stops once every row has emitted ``<end>``, or after
        ``max_length`` words plus ``<end>`` (default ``spec.max_decode_length``). Call it in
        eval mode: dropout acts on ``h`` before ``fc``, just as in :meth:`forward`.
        """
        max_length = self.spec.max_decode_length if max_length is None else max_length
        encoded = self.encode(features)
        encoded_att = self.attention.encoder_att(encoded)
        h, c = self._initial_state(encoded)
        batch = encoded.shape[0]
        previous = torch.full((batch,), start_id, dtype=torch.long, device=encoded.device)
        finished = torch.zeros(batch, dtype=torch.bool, device=encoded.device)
        out = []
        for _ in range(max_length + 1):
            h, c, _ = self._step(self.embedding(previous), encoded, encoded_att, h, c)
            word = self.fc(self.dropout(h)).argmax(dim=1)
            word = word.masked_fill(finished, pad_id)
            out.append(word)
            finished = finished | (word == end_id)
            previous = word
            if bool(finished.all()):
                break
        return torch.stack(out, dim=1)


def caption_loss_terms(
    logits: torch.Tensor, targets: torch.Tensor, alphas: torch.Tensor, mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The two unweighted terms. ``ce`` is the mean token cross-entropy over ``mask``;
    padded positions are ignored, so their logits cannot change it. ``attention`` is
    ``mean_{b,i} (1 − Σ_{t real} α_bti)²``."""
    if logits.shape[:2] != targets.shape or mask.shape != targets.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)}, targets {tuple(targets.shape)} and mask "
            f"{tuple(mask.shape)} must share (B, T)"
        )
    if alphas.shape[:2] != mask.shape:
        raise ValueError(f"alphas {tuple(alphas.shape)} must be (B, T, P) with mask's (B, T)")
    if not bool(mask.any()):
        raise ValueError("caption loss on a batch with no real target token")
    ignored = targets.masked_fill(~mask, -100)
    ce = F.cross_entropy(logits.flatten(0, 1), ignored.flatten(), ignore_index=-100)
    coverage = (alphas * mask[..., None]).sum(dim=1)
    return {"ce": ce, "attention": ((1.0 - coverage) ** 2).mean()}


def caption_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    alphas: torch.Tensor,
    mask: torch.Tensor,
    alpha_c: float = 1.0,
) -> torch.Tensor:
    """``CE + alpha_c · mean((1 − Σ_t α_t)²)``, as in the official ``visft.py``; see the
    module docstring."""
    terms = caption_loss_terms(logits, targets, alphas, mask)
    return terms["ce"] + alpha_c * terms["attention"]
