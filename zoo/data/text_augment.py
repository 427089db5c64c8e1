"""Caption augmentation of CLIP-rocket (Fini et al., TMLR 2023), offline.

The official code (``tokenizer.py``, ``SimpleTokenizer.weak_augment`` / ``strong_augment``)
makes one weak and K strong captions per sample:

- **weak** t⁰: with probability ``remove_stopwords_prob`` (0.8; 0.9 in the YFCC ResNet-50
  run) the English stop words are removed (the result is kept only if a word is left);
- **strong** tᵏ: the same stop-word removal, then one EDA operation (Wei & Zou, 2019; the
  ``textaugment.EDA`` package) drawn with weights {identity 0.0, synonym replacement 0.4,
  random swap 0.4, random deletion 0.2}; an empty result keeps the input;
- ``clean_before_augment``: ftfy fix, HTML unescape, whitespace collapse and lower case first
  (:func:`zoo.data.tokenizers.clip_clean`, the same cleaning).

Nothing is downloaded: the stop words are NLTK's English list shipped with the package
(``zoo/data/stopwords_en.txt``, 179 words; the official code loads it through
``nltk.corpus``). Two differences from the official code, both because NLTK's data need a
download:

- stop-word removal splits words and punctuation with a regular expression instead of
  NLTK's Punkt-based ``word_tokenize``; contractions stay whole (``don't``, itself in the
  list), punctuation becomes its own token, and the kept tokens are joined by spaces, as in
  the official code;
- synonym replacement reads its synonyms from ``synonyms_file`` (JSON ``{word: [synonym,
  ...]}``, e.g. exported from WordNet) instead of WordNet. Without that file a word has no
  synonym, so the operation leaves the caption unchanged, exactly as EDA does for a word
  WordNet does not know; set ``synonym_replacement_prob: 0`` to draw only swap and deletion.

Every random draw goes through the ``random.Random`` passed in, so a caption's views are a
function of that generator's seed (the image–text readers seed one per sample from
``(seed, epoch, index)``, and the CLIP-rocket sample builder draws its generator's seed from
that seeded ``random``).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

#: The stop-word list shipped with the package (NLTK's English list).
STOPWORDS_FILE = "stopwords_en.txt"
# Words (with inner apostrophes: "don't", "you're") or single punctuation marks.
_TOKEN = re.compile(r"\w+(?:'\w+)*|[^\w\s]")


@dataclass
class TextAugmentSpec:
    """The caption augmentation's settings; defaults are the official code's
    (``main.py`` arguments of the same names).

    ``eda``: whether strong captions get an EDA operation after stop-word removal (the
    official ``--text-augment``; without it strong captions are only stop-word removed).
    ``identity_prob`` is the official ``--no-text-augment-prob``. ``deletion_p`` (0.1),
    ``swap_n`` (1) and ``synonym_n`` (1) are ``textaugment.EDA``'s defaults, which the
    official code uses. ``stopwords_file``: one word per line (``#`` comments), default the
    shipped list.
    """

    remove_stopwords_prob: float = 0.8
    eda: bool = True
    identity_prob: float = 0.0
    synonym_replacement_prob: float = 0.4
    random_swap_prob: float = 0.4
    random_deletion_prob: float = 0.2
    deletion_p: float = 0.1
    swap_n: int = 1
    synonym_n: int = 1
    clean_before_augment: bool = False
    stopwords_file: str | None = None
    synonyms_file: str | None = None

    def __post_init__(self) -> None:
        probs = {
            "remove_stopwords_prob": self.remove_stopwords_prob,
            "identity_prob": self.identity_prob,
            "synonym_replacement_prob": self.synonym_replacement_prob,
            "random_swap_prob": self.random_swap_prob,
            "random_deletion_prob": self.random_deletion_prob,
            "deletion_p": self.deletion_p,
        }
        for name, value in probs.items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"data.text_augment.{name} must be in [0, 1], got {value}")
        if self.eda and sum(self.weights) <= 0:
            raise ValueError(
                "data.text_augment: the EDA weights (identity_prob, synonym_replacement_prob, "
                "random_swap_prob, random_deletion_prob) are all 0; set one > 0 or eda: false"
            )
        if self.swap_n < 0 or self.synonym_n < 0:
            raise ValueError("data.text_augment.swap_n and synonym_n must be >= 0")

    @property
    def weights(self) -> tuple[float, float, float, float]:
        """(identity, synonym replacement, random swap, random deletion)."""
        return (
            self.identity_prob,
            self.synonym_replacement_prob,
            self.random_swap_prob,
            self.random_deletion_prob,
        )


def _read_word_list(text: str) -> frozenset[str]:
    words = (line.strip().lower() for line in text.splitlines())
    return frozenset(w for w in words if w and not w.startswith("#"))


@lru_cache(maxsize=8)
def load_stopwords(path: str | None = None) -> frozenset[str]:
    """The stop words of ``path`` (one per line, ``#`` comments), default the shipped list."""
    if path is None:
        return _read_word_list(resources.files("zoo.data").joinpath(STOPWORDS_FILE).read_text())
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"data.text_augment.stopwords_file not found: {file}")
    return _read_word_list(file.read_text(encoding="utf-8"))


def load_synonyms(path: str) -> dict[str, list[str]]:
    """A JSON thesaurus ``{word: [synonym, ...]}`` (lower-case words)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"data.text_augment.synonyms_file not found: {file}")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{file}: not valid JSON ({err})") from err
    if not isinstance(data, Mapping) or not all(
        isinstance(v, list) and all(isinstance(s, str) for s in v) for v in data.values()
    ):
        raise ValueError(f"{file}: expected a JSON object mapping each word to a list of strings")
    return {str(k).lower(): list(v) for k, v in data.items()}


def remove_stopwords(text: str, stopwords: frozenset[str]) -> str:
    """The tokens of ``text`` that are not stop words (case-insensitive), joined by spaces;
    punctuation marks are tokens of their own."""
    return " ".join(t for t in _TOKEN.findall(text) if t.lower() not in stopwords)


def random_swap(text: str, rng: random.Random, n: int = 1) -> str:
    """EDA's random swap: ``n`` times, swap two randomly chosen word positions (EDA's
    ``swap_word``: the second position is redrawn while it equals the first, and the swap is
    given up at the fourth draw; a one-word caption stays as it is). The words are always a
    permutation of the input's."""
    words = text.split()
    for _ in range(n):
        if not words:
            break
        first = rng.randint(0, len(words) - 1)
        second, tries = first, 0
        while second == first:
            second = rng.randint(0, len(words) - 1)
            tries += 1
            if tries > 3:
                break
        else:
            words[first], words[second] = words[second], words[first]
    return " ".join(words)


def random_deletion(text: str, rng: random.Random, p: float = 0.1) -> str:
    """EDA's random deletion: each word is dropped with probability ``p``; a one-word
    caption is kept, and when every word is dropped one random word is returned, so at
    least one word always remains."""
    words = text.split()
    if len(words) <= 1:
        return text.strip()
    kept = [w for w in words if rng.uniform(0, 1) > p]
    return " ".join(kept) if kept else rng.choice(words)


def synonym_replacement(
    text: str,
    rng: random.Random,
    synonyms: Mapping[str, Sequence[str]],
    stopwords: frozenset[str],
    n: int = 1,
) -> str:
    """EDA's synonym replacement: over the caption's distinct non-stop words in random
    order, replace every occurrence of a word that has a synonym by one drawn at random,
    until ``n`` words were replaced. Words without synonyms are left as they are."""
    words = text.split()
    candidates = sorted({w for w in words if w not in stopwords})
    rng.shuffle(candidates)
    replaced = 0
    for word in candidates:
        options = sorted(set(synonyms.get(word.lower(), ())) - {word})
        if options:
            rng.shuffle(options)  # EDA shuffles the synonym list before choosing
            choice = rng.choice(options)
            words = [choice if w == word else w for w in words]
            replaced += 1
        if replaced >= n:
            break
    return " ".join(words)


class TextAugmenter:
    """The weak and strong caption augmentations of :class:`TextAugmentSpec` (picklable:
    DataLoader workers)."""

    def __init__(self, spec: TextAugmentSpec | None = None):
        self.spec = spec or TextAugmentSpec()
        self.stopwords = load_stopwords(self.spec.stopwords_file)
        self.synonyms: dict[str, list[str]] = (
            load_synonyms(self.spec.synonyms_file) if self.spec.synonyms_file else {}
        )

    def clean(self, text: str) -> str:
        if not self.spec.clean_before_augment:
            return text
        from zoo.data.tokenizers import clip_clean

        return clip_clean(text)

    def _drop_stopwords(self, text: str, rng: random.Random) -> str:
        if rng.random() < self.spec.remove_stopwords_prob:
            stripped = remove_stopwords(text, self.stopwords)
            return stripped if stripped else text
        return text

    def weak(self, text: str, rng: random.Random) -> str:
        """t⁰: stop words removed with probability ``remove_stopwords_prob``."""
        return self._drop_stopwords(text, rng) if text else text

    def strong(self, text: str, rng: random.Random) -> str:
        """tᵏ: stop-word removal, then one EDA operation (when ``eda``)."""
        if not text:
            return text
        text = self._drop_stopwords(text, rng)
        if not self.spec.eda:
            return text
        ops: list[Callable[[str], str]] = [
            lambda t: t,
            lambda t: synonym_replacement(
                t, rng, self.synonyms, self.stopwords, self.spec.synonym_n
            ),
            lambda t: random_swap(t, rng, self.spec.swap_n),
            lambda t: random_deletion(t, rng, self.spec.deletion_p),
        ]
        out = rng.choices(ops, weights=self.spec.weights, k=1)[0](text)
        return out if out else text

    def views(self, captions: str | Sequence[str], k: int, rng: random.Random) -> list[str]:
        """``[t⁰, t¹, …, tᴷ]``: each view draws one of ``captions`` (the official
        ``caption_sampling``: one caption → every view uses it), the weak view first."""
        pool = [captions] if isinstance(captions, str) else list(captions)
        pool = [self.clean(c) for c in pool] or [""]
        weak = self.weak(rng.choice(pool), rng)
        return [weak, *(self.strong(rng.choice(pool), rng) for _ in range(k))]


__all__ = [
    "STOPWORDS_FILE",
    "TextAugmentSpec",
    "TextAugmenter",
    "load_stopwords",
    "load_synonyms",
    "random_deletion",
    "random_swap",
    "remove_stopwords",
    "synonym_replacement",
]
