"""Caption metrics with several references per image: corpus BLEU-4 and CIDEr-D.

Both functions take one hypothesis string per image and that image's list of reference
strings, and run :func:`zoo.heads.captioner.tokenize_caption` on each side. That
tokenisation lower-cases and strips punctuation, standing in for coco-caption's
PTBTokenizer, so raw COCO references and decoded hypotheses can be passed as they are.

**BLEU-4** (Papineni et al., 2002). This is corpus BLEU: clipped n-gram counts for
n = 1..4 are summed over the corpus, the four precisions get equal weights, no smoothing
is applied, and the brevity penalty uses the reference length closest to each hypothesis.
It comes from ``torchmetrics.text.BLEUScore``; torchmetrics is already a dependency, while
sacrebleu and nltk are not. One detail differs from nltk's ``corpus_bleu`` (used by the
official ViSFT / tutorial evaluation) and from pycocoevalcap: when two references are
equally close in length, those two take the shorter one, but torchmetrics takes the first
in list order. We pass each image's references sorted by length, so the first is also the
shorter and the numbers agree.

ViSFT's own validation BLEU-4 (``caption_dataset.format_for_prediction``) scores the
argmax of the *teacher-forced* logits, and its references are vocabulary-encoded (rare
words become ``<unk>``). We score free-running decoded captions against the raw
references, as the standard COCO protocol does. The official number is therefore
optimistic next to ours.

**CIDEr-D** (Vedantam et al., 2015), with the formula of pycocoevalcap's
``cider/cider_scorer.py`` (salaniz/pycocoevalcap, commit ad63453):

- Each caption is a TF-IDF vector per n = 1..4. The weight of n-gram ``g`` is
  ``count(g) · (log N − log max(1, df(g)))``, where ``N`` is the number of images and
  ``df(g)`` is the number of images whose references contain ``g``.
- The similarity to each reference and each n is ``Σ_g min(v_hyp, v_ref) · v_ref`` (the
  clipping) divided by ``‖v_hyp‖‖v_ref‖``. A zero norm leaves the numerator, which is 0
  then. The result is multiplied by ``exp(−δ² / (2σ²))`` with ``σ = 6``, where ``δ`` is
  the hypothesis length minus the reference length. pycocoevalcap measures these lengths
  in bigrams, so ``δ`` equals the difference in words except for empty captions; we do
  the same.
- An image's score is the mean over n, summed over its references, divided by the number
  of references and multiplied by 10. The corpus score is the mean over images.

We wrote it here rather than depend on pycocoevalcap: that wheel is ~100 MB of Java jars
(METEOR, SPICE, the PTB tokenizer), and CIDEr-D itself is a few lines of n-gram counting.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from zoo.heads.captioner import tokenize_caption

_Ngram = tuple[str, ...]


def _check(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if isinstance(hypotheses, str):
        raise ValueError("hypotheses must be a list of strings, one per image, not a string")
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} reference lists")
    if not hypotheses:
        raise ValueError("no captions to score")
    for i, refs in enumerate(references):
        if isinstance(refs, str) or len(refs) == 0:
            raise ValueError(f"image {i}: references must be a non-empty list of strings")


def corpus_bleu4(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU-4 in [0, 1] of one hypothesis per image against its references."""
    from torchmetrics.text import BLEUScore

    _check(hypotheses, references)
    preds = [" ".join(tokenize_caption(h)) for h in hypotheses]
    target = [
        sorted((" ".join(tokenize_caption(r)) for r in refs), key=lambda s: len(s.split()))
        for refs in references
    ]
    return float(BLEUScore(n_gram=4, smooth=False)(preds, target))


def _ngrams(words: list[str], n: int) -> Counter[_Ngram]:
    return Counter(
        tuple(words[i : i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1)
    )


def cider_d(
    hypotheses: Sequence[str],
    references: Sequence[Sequence[str]],
    *,
    n: int = 4,
    sigma: float = 6.0,
) -> tuple[float, list[float]]:
    """CIDEr-D ``(corpus mean, per-image scores)``; the IDF comes from these references."""
    _check(hypotheses, references)
    hyp_counts = [_ngrams(tokenize_caption(h), n) for h in hypotheses]
    ref_counts = [[_ngrams(tokenize_caption(r), n) for r in refs] for refs in references]
    doc_freq: Counter[_Ngram] = Counter()
    for refs in ref_counts:
        doc_freq.update(set().union(*refs))
    log_images = math.log(len(ref_counts))

    def tfidf(counts: Counter[_Ngram]) -> tuple[list[dict[_Ngram, float]], list[float], int]:
        vec: list[dict[_Ngram, float]] = [{} for _ in range(n)]
        for gram, tf in counts.items():
            vec[len(gram) - 1][gram] = tf * (log_images - math.log(max(1.0, doc_freq[gram])))
        norms = [math.sqrt(sum(v * v for v in vk.values())) for vk in vec]
        bigrams = sum(tf for gram, tf in counts.items() if len(gram) == 2)
        return vec, norms, bigrams

    def similarity(hyp: tuple, ref: tuple) -> float:
        (h_vec, h_norm, h_len), (r_vec, r_norm, r_len) = hyp, ref
        penalty = math.exp(-((h_len - r_len) ** 2) / (2 * sigma**2))
        total = 0.0
        for k in range(n):
            dot = sum(
                min(v, r_vec[k].get(g, 0.0)) * r_vec[k].get(g, 0.0) for g, v in h_vec[k].items()
            )
            if h_norm[k] != 0 and r_norm[k] != 0:
                dot /= h_norm[k] * r_norm[k]
            total += dot * penalty
        return total / n  # the mean over n-gram orders

    scores = []
    for hyp, refs in zip(hyp_counts, ref_counts):
        h = tfidf(hyp)
        scores.append(10.0 * sum(similarity(h, tfidf(r)) for r in refs) / len(refs))
    return sum(scores) / len(scores), scores


def caption_scores(
    hypotheses: Sequence[str], references: Sequence[Sequence[str]]
) -> dict[str, float]:
    """``{"bleu4": …, "cider_d": …}`` for the caption head's in-domain evaluation."""
    return {
        "bleu4": corpus_bleu4(hypotheses, references),
        "cider_d": cider_d(hypotheses, references)[0],
    }
