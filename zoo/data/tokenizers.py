"""Text tokenizers: the CLIP BPE built offline from open_clip's bundled merges, or a local
Hugging Face tokenizer folder, behind one picklable ``TextTokenizer`` for DataLoader workers.

``TextTokenizer("clip-bpe")`` returns exactly ``open_clip.tokenize``'s ids (BOS, BPE, EOS,
zero padding, EOS kept on truncation) but runs the Rust ``tokenizers`` BPE.
"""

from __future__ import annotations

import gzip
import html
import json
from pathlib import Path
from typing import Any

import torch

from zoo.data.cache import atomic_write_text, cache_root

CLIP_BPE = "clip-bpe"
CLIP_VOCAB_SIZE = 49408
CLIP_BOS, CLIP_EOS = "<|startoftext|>", "<|endoftext|>"
# open_clip / OpenAI CLIP keep merges[1 : 49152 - 256 - 2 + 1] of the bundled file.
_N_MERGES = 49152 - 256 - 2


def _bundled_bpe() -> Path:
    """open_clip's ``bpe_simple_vocab_16e6.txt.gz``, found without importing open_clip
    (its import builds a tokenizer and pulls in timm)."""
    import importlib.util

    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("open_clip_torch is needed for the CLIP BPE merges")
    path = Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise FileNotFoundError(f"CLIP BPE merges not found at {path}")
    return path


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte → printable unicode map (same table as open_clip's)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    bs += range(ord("®"), ord("ÿ") + 1)
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def write_clip_bpe_files(cache_dir: str | Path) -> Path:
    """Write ``vocab.json`` + ``merges.txt`` of the CLIP BPE into ``cache_dir`` (idempotent)."""
    cache_dir = Path(cache_dir)
    vocab_path, merges_path = cache_dir / "vocab.json", cache_dir / "merges.txt"
    if vocab_path.is_file() and merges_path.is_file():
        return cache_dir
    cache_dir.mkdir(parents=True, exist_ok=True)
    with gzip.open(_bundled_bpe(), "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = lines[1 : _N_MERGES + 1]
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges]
    tokens += [CLIP_BOS, CLIP_EOS]
    vocab = {t: i for i, t in enumerate(tokens)}
    assert len(vocab) == CLIP_VOCAB_SIZE, len(vocab)
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "bos_token": CLIP_BOS,
        "eos_token": CLIP_EOS,
        "unk_token": CLIP_EOS,
        "pad_token": CLIP_EOS,
        "model_max_length": 77,
    }
    # vocab.json is written last: its presence marks a complete cache.
    atomic_write_text(cache_dir / "tokenizer_config.json", json.dumps(config, indent=2))
    atomic_write_text(merges_path, "#version: 0.2\n" + "\n".join(merges) + "\n")
    atomic_write_text(vocab_path, json.dumps(vocab, ensure_ascii=False))
    return cache_dir


def clip_bpe_tokenizer(cache_dir: str | Path | None = None) -> Any:
    """The OpenAI CLIP BPE tokenizer (``transformers.CLIPTokenizerFast``), built offline.

    Files go to ``cache_dir`` (default ``$VL_ZOO_CACHE/tokenizers/clip-bpe`` or
    ``~/.cache/vl-zoo/tokenizers/clip-bpe``); vocab size 49408, BOS 49406, EOS 49407.
    """
    from transformers import CLIPTokenizerFast

    cache_dir = Path(cache_dir) if cache_dir else cache_root() / "tokenizers" / CLIP_BPE
    write_clip_bpe_files(cache_dir)
    tok = CLIPTokenizerFast.from_pretrained(str(cache_dir), local_files_only=True)
    return tok


def load_tokenizer(name_or_path: str = CLIP_BPE) -> Any:
    """``"clip-bpe"`` → :func:`clip_bpe_tokenizer`; otherwise a local Hugging Face tokenizer
    folder (never downloaded)."""
    if name_or_path == CLIP_BPE:
        return clip_bpe_tokenizer()
    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer folder not found: {path} (only local folders load)")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def clip_clean(text: str) -> str:
    """open_clip's default text cleaning (ftfy fix, double html unescape, whitespace collapse);
    the Rust normalizer then lowercases, as open_clip does."""
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).lower()


class TextTokenizer:
    """Texts → fixed-length id tensors: ``[BOS] tokens [EOS] 0 0 …``.

    Truncation keeps EOS as the last token (open_clip's rule). Padding is 0, as in open_clip,
    whatever the tokenizer; BOS/EOS fall back to CLS/SEP for BERT-style tokenizers. The
    Hugging Face tokenizer is loaded lazily and dropped on pickling, so each DataLoader
    worker rebuilds its own.
    """

    def __init__(self, name_or_path: str = CLIP_BPE, context_length: int = 77):
        if context_length < 2:
            raise ValueError(f"context_length must be >= 2 (BOS + EOS), got {context_length}")
        self._name_or_path = str(name_or_path)
        self._context_length = context_length
        self._tok: Any = None
        if self._name_or_path != CLIP_BPE and not Path(self._name_or_path).expanduser().is_dir():
            raise FileNotFoundError(f"tokenizer folder not found: {self._name_or_path}")

    @property
    def tokenizer(self) -> Any:
        if self._tok is None:
            self._tok = load_tokenizer(self._name_or_path)
        return self._tok

    @property
    def name_or_path(self) -> str:
        return self._name_or_path

    @property
    def context_length(self) -> int:
        return self._context_length

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    @property
    def bos_token_id(self) -> int | None:
        tok = self.tokenizer
        return tok.bos_token_id if tok.bos_token_id is not None else tok.cls_token_id

    @property
    def eot_token_id(self) -> int | None:
        tok = self.tokenizer
        return tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id

    @property
    def pad_token_id(self) -> int:
        return 0

    def __call__(self, texts: str | list[str]) -> torch.Tensor:
        single = isinstance(texts, str)
        batch = [texts] if single else list(texts)
        if self._name_or_path == CLIP_BPE:
            batch = [clip_clean(t) for t in batch]
        ids = self.tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"]
        bos, eos, length = self.bos_token_id, self.eot_token_id, self._context_length
        out = torch.full((len(batch), length), self.pad_token_id, dtype=torch.long)
        for row, body in zip(out, ids):
            seq = ([bos] if bos is not None else []) + body + ([eos] if eos is not None else [])
            if len(seq) > length:
                seq = seq[:length]
                if eos is not None:
                    seq[-1] = eos
            row[: len(seq)] = torch.tensor(seq, dtype=torch.long)
        return out[0] if single else out

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_tok": None}

    def __repr__(self) -> str:
        return f"TextTokenizer({self._name_or_path!r}, context_length={self._context_length})"
