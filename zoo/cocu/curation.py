r"""CoCu's concept curation (Xing et al., "Rewrite Caption Semantics", NeurIPS 2023, §3).

For an anchor image a with CLIP embedding :math:`v_a` (all embeddings L2-normalised):

1. **Concepts of a caption**: its word n-grams (n ≤ 4, lower-cased) found in a gallery of
   concept names and their plurals (:func:`extract_concepts`, :func:`build_gallery`).
2. **Vision-driven expansion**: the L nearest images :math:`N(a)` in a kNN index of image
   embeddings (inner product; L = 8 in the paper's configs, the ``_8`` of their names); the
   concept archive :math:`A` is the union of their captions' concepts (:func:`knn_search`).
3. **Text-to-vision-guided ranking**: with :math:`t_c` the CLIP text embedding of
   ``"a photo of a {c}"`` and :math:`R_c \subseteq N(a)` the retrieved images whose captions
   contain c, :math:`S_c = \{t_c\cdot v_n : n \in R_c\} \cup \{t_c\cdot v_a\}` and
   :math:`M = \max_{c\in A}\max S_c`:

   .. math:: \mathrm{score}_c = \underbrace{t_c\cdot v_a / M}_{\text{global}}
             + \underbrace{t_c\cdot v_a / \operatorname{mean}(S_c)}_{\text{local}}

   and the archive is sorted by score, descending (:func:`score_anchors`).
4. **Cluster-guided sampling** (optional, off by default as in the official curation and
   training, "as it slows down curation and pre-training"): k-means over the archive's
   concept embeddings with :math:`\lceil |A|/2 \rceil` clusters (:func:`cluster_archive`);
   training then samples 3 clusters by softmax(mean cluster score) and one concept per cluster
   by softmax(score) (:func:`sample_concepts`).

The official code (``rewrite/curation.py`` of xing0047/CoCu) scores one anchor at a time with
a per-anchor faiss search and Python loops. Here anchors are processed in batches: one kNN
search per batch (faiss ``IndexFlatIP`` when importable, else a torch top-k over index blocks),
and the archive of every anchor of the batch is scored at once on padded tensors
(batch × archive size × L). Memory is linear in the number of images N: the largest tensors
are ``batch_size × block_size`` (the torch search) and ``batch_size × |A|max × dim``; no N × N
matrix is ever formed.

Membership of a concept in a neighbour's caption (``membership``):

- ``"exact"`` (default): c is one of the neighbour's extracted concepts (set membership, what
  the paper describes);
- ``"substring"``: the official code's test ``concept in semantics``, where ``semantics`` is
  the comma-joined string of the neighbour's concepts, so "dog" also matches a neighbour whose
  only concept is "hotdog". Gallery concepts contain no comma, so this equals "c is a
  substring of one of the neighbour's concepts", which is how it is computed here.

The anchor is retrieved as its own nearest neighbour when it is in the index (the official
default, ``--data c3 --index_data c3``); ``exclude_self`` drops it instead (not in the code).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

Membership = Literal["exact", "substring"]
Backend = Literal["auto", "faiss", "torch"]

#: The prompt the official code embeds each concept with.
CONCEPT_PROMPT = "a photo of a {}"
#: Longest n-gram looked up in the gallery (official: ``everygrams(..., max_len=4)``).
MAX_NGRAM = 4

# --- gallery and concept extraction -------------------------------------------------------

#: Irregular plurals. The official code pluralises with TextBlob (not a dependency here);
#: this table plus the suffix rules of :func:`pluralize` cover common English nouns.
_IRREGULAR_PLURALS = {
    "man": "men",
    "woman": "women",
    "child": "children",
    "person": "people",
    "mouse": "mice",
    "goose": "geese",
    "foot": "feet",
    "tooth": "teeth",
    "ox": "oxen",
    "leaf": "leaves",
    "knife": "knives",
    "wife": "wives",
    "life": "lives",
    "wolf": "wolves",
    "shelf": "shelves",
    "loaf": "loaves",
    "thief": "thieves",
    "half": "halves",
    "calf": "calves",
    "potato": "potatoes",
    "tomato": "tomatoes",
    "hero": "heroes",
    "cactus": "cacti",
}
_UNCOUNTED = {"sheep", "fish", "deer", "series", "species", "aircraft", "moose", "bison"}


def pluralize(word: str) -> str:
    """English plural of one word by a small rule set (the official code uses TextBlob's
    ``Word.pluralize``, which is not a dependency of the zoo): irregular forms from a table,
    uncountable nouns unchanged, consonant + y → ies, s / x / z / ch / sh → +es, else +s."""
    w = word.lower()
    if w in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[w]
    if w in _UNCOUNTED or not w.isalpha():
        return w
    if w.endswith("y") and len(w) > 1 and w[-2] not in "aeiou":
        return w[:-1] + "ies"
    if w.endswith(("s", "x", "z", "ch", "sh")):
        return w + "es"
    return w + "s"


def build_gallery(concepts: Iterable[str], plurals: bool = True) -> list[str]:
    """The concept gallery: names lower-cased, de-duplicated in first-seen order, then (with
    ``plurals``) each name with its last word pluralised appended when new (as the official
    code extends ``gallery.json``)."""
    gallery = dict.fromkeys(c.strip().lower() for c in concepts if c.strip())
    if plurals:
        for concept in list(gallery):
            words = concept.split(" ")
            words[-1] = pluralize(words[-1])
            gallery.setdefault(" ".join(words), None)
    return list(gallery)


def concept_precision(
    archives: Sequence[Mapping[str, float]], present: Sequence[Iterable[str]], k: int
) -> float:
    """Percentage of the top-``k`` concepts of each archive (by score) that are in the image,
    for data whose true concepts are known (the generated mosaics): ``present[i]`` holds image
    i's concept names, singular; a curated plural counts as its singular (``pluralize``).
    The chance level is the mean number of present concepts over the gallery size."""
    if len(archives) != len(present):
        raise ValueError(f"{len(archives)} archives for {len(present)} images")
    hits = total = 0
    for archive, names in zip(archives, present):
        truth = {n.lower() for n in names}
        truth |= {pluralize(n) for n in truth}
        top = sorted(archive, key=archive.__getitem__, reverse=True)[:k]
        hits += sum(c in truth for c in top)
        total += len(top)
    return 100.0 * hits / total if total else float("nan")


def load_gallery(path: str) -> list[str]:
    """A gallery file: a JSON list of names, or CoCu's ``gallery.json`` (a mapping from a
    category to its list of names, flattened in order), or a text file with one name a line."""
    import json
    from pathlib import Path

    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"concept gallery not found: {file}")
    text = file.read_text()
    if file.suffix != ".json":
        return [line.strip() for line in text.splitlines() if line.strip()]
    data = json.loads(text)
    if isinstance(data, Mapping):
        return [name for names in data.values() for name in names]
    if isinstance(data, list):
        return [str(name) for name in data]
    raise ValueError(f"{file}: expected a JSON list or a mapping of lists of concept names")


_TOKEN = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*|[^\sa-z0-9]")


def tokenize_words(caption: str) -> list[str]:
    """Lower-cased word tokens with punctuation as separate tokens (a stand-in for NLTK's
    ``word_tokenize``, which needs a downloaded model: words keep inner hyphens and
    apostrophes, every other symbol is its own token)."""
    return _TOKEN.findall(caption.lower())


def extract_concepts(
    caption: str, gallery: Mapping[str, object] | set[str], max_n: int = MAX_NGRAM
) -> list[str]:
    """The caption's n-grams (1 ≤ n ≤ ``max_n``) that are gallery concepts, each once, in
    order of their first word, shorter first (the order of NLTK's ``everygrams``)."""
    words = tokenize_words(caption)
    found: dict[str, None] = {}
    for start in range(len(words)):
        for n in range(1, max_n + 1):
            if start + n > len(words):
                break
            gram = " ".join(words[start : start + n])
            if gram in gallery:
                found.setdefault(gram, None)
    return list(found)


# --- concepts per image as a compressed sparse row table ----------------------------------


@dataclass
class ConceptTable:
    """The concepts of N captions as CSR arrays over a gallery: image i has the concept ids
    ``ids[offsets[i]:offsets[i + 1]]`` (into ``names``)."""

    names: list[str]
    offsets: np.ndarray  # (N + 1,) int64
    ids: np.ndarray  # (nnz,) int64

    @classmethod
    def from_lists(cls, concepts: Sequence[Sequence[str]], names: Sequence[str]) -> ConceptTable:
        index = {name: i for i, name in enumerate(names)}
        lengths = np.fromiter((len(c) for c in concepts), dtype=np.int64, count=len(concepts))
        offsets = np.zeros(len(concepts) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        try:
            ids = np.fromiter(
                (index[c] for cs in concepts for c in cs), dtype=np.int64, count=int(offsets[-1])
            )
        except KeyError as err:
            raise KeyError(f"concept {err.args[0]!r} is not in the gallery") from None
        return cls(list(names), offsets, ids)

    @classmethod
    def from_captions(
        cls, captions: Iterable[str], gallery: Sequence[str], max_n: int = MAX_NGRAM
    ) -> ConceptTable:
        lookup = dict.fromkeys(gallery)
        return cls.from_lists([extract_concepts(c, lookup, max_n) for c in captions], gallery)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def concepts(self, i: int) -> list[str]:
        return [self.names[j] for j in self.ids[self.offsets[i] : self.offsets[i + 1]]]

    def substring_closure(self) -> ConceptTable:
        """Each image's concepts extended by every gallery concept that is a substring of one
        of them: exact membership in this table is the official code's substring test
        (``concept in ", ".join(concepts)``; gallery names have no comma)."""
        index = {name: i for i, name in enumerate(self.names)}
        inside: list[list[int]] = []
        for name in self.names:  # every substring of each name that is itself a concept
            subs = {
                index[name[a:b]]
                for a in range(len(name))
                for b in range(a + 1, len(name) + 1)
                if name[a:b] in index
            }
            inside.append(sorted(subs))
        lists = [
            sorted({s for c in self.ids[self.offsets[i] : self.offsets[i + 1]] for s in inside[c]})
            for i in range(len(self))
        ]
        return ConceptTable.from_lists([[self.names[j] for j in ls] for ls in lists], self.names)


# --- kNN search ----------------------------------------------------------------------------


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


class NeighbourIndex:
    """Inner-product kNN over image embeddings (rows L2-normalised by the caller).

    ``backend="faiss"``: a ``faiss.IndexFlatIP`` (exact; the official code builds an autofaiss
    index over CLIP embeddings); ``"torch"``: exact top-k computed block by block over the
    index (``block_size`` rows at a time, a running top-k merged per block), so one search of
    B queries holds B × ``block_size`` scores, never B × N or N × N; ``"auto"``: faiss when
    importable. Ties may order differently between the two backends.
    """

    def __init__(
        self,
        embeddings: np.ndarray | torch.Tensor,
        backend: Backend = "auto",
        block_size: int = 65536,
    ):
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        emb = torch.as_tensor(np.asarray(embeddings, dtype=np.float32))
        if emb.ndim != 2:
            raise ValueError(f"index embeddings must be (N, D), got shape {tuple(emb.shape)}")
        self.embeddings = emb
        self.block_size = block_size
        if backend == "auto":
            backend = "faiss" if faiss_available() else "torch"
        if backend == "faiss":
            import faiss

            self._faiss = faiss.IndexFlatIP(emb.shape[1])
            self._faiss.add(np.ascontiguousarray(emb.numpy()))
        elif backend != "torch":
            raise ValueError(f"unknown kNN backend {backend!r}; expected auto, faiss or torch")
        self.backend = backend

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    def search(
        self, queries: np.ndarray | torch.Tensor, k: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scores, ids)``, each (B, k), best first."""
        q = torch.as_tensor(np.asarray(queries, dtype=np.float32))
        k = min(k, len(self))
        if self.backend == "faiss":
            scores, ids = self._faiss.search(np.ascontiguousarray(q.numpy()), k)
            return torch.from_numpy(scores), torch.from_numpy(ids).long()
        best_s = torch.full((q.shape[0], 0), -math.inf)
        best_i = torch.zeros((q.shape[0], 0), dtype=torch.long)
        for start in range(0, len(self), self.block_size):
            block = self.embeddings[start : start + self.block_size]
            s, i = (q @ block.T).topk(min(k, block.shape[0]), dim=1)
            # merge this block's top-k with the running one (candidates: at most 2k per row)
            all_s, all_i = torch.cat([best_s, s], 1), torch.cat([best_i, i + start], 1)
            best_s, pos = all_s.topk(min(k, all_s.shape[1]), dim=1)
            best_i = all_i.gather(1, pos)
        return best_s, best_i


# --- scoring -------------------------------------------------------------------------------


@dataclass
class ScoredBatch:
    """Curated archives of a batch of anchors, padded: ``concepts[b, j]`` is the id of anchor
    b's j-th concept (by descending score; -1 past ``lengths[b]``) and ``scores[b, j]`` its
    score; ``global_scores`` / ``local_scores`` are the two terms."""

    concepts: torch.Tensor  # (B, A) long
    scores: torch.Tensor  # (B, A)
    global_scores: torch.Tensor
    local_scores: torch.Tensor
    lengths: torch.Tensor  # (B,) long

    def archives(self, names: Sequence[str]) -> list[dict[str, float]]:
        """One ``{concept: score}`` dict per anchor, sorted by score (descending)."""
        ids, scores, lengths = self.concepts.tolist(), self.scores.tolist(), self.lengths.tolist()
        return [
            {names[c]: float(s) for c, s in zip(ids[b][:n], scores[b][:n])}
            for b, n in enumerate(lengths)
        ]


def score_anchors(
    anchors: torch.Tensor,
    neighbours: torch.Tensor,
    index_embeddings: torch.Tensor,
    table: ConceptTable,
    concept_embeddings: torch.Tensor,
    member_table: ConceptTable | None = None,
) -> ScoredBatch:
    """CoCu's ranking for a batch of anchors (the equations of the module docstring).

    ``anchors`` (B, D) and ``index_embeddings`` (N, D): L2-normalised image embeddings;
    ``neighbours`` (B, L): ids into the index (``-1`` = no neighbour); ``table``: the index
    images' concepts (the archive is the union over the neighbours); ``member_table``: the
    concepts membership is tested against (default ``table``; its
    :meth:`ConceptTable.substring_closure` gives the official substring test);
    ``concept_embeddings`` (C, D): L2-normalised text embeddings of the gallery prompts.
    Vectorised over the batch: the archives are padded to the longest one.
    """
    member_table = table if member_table is None else member_table
    bsz, num_l = neighbours.shape
    num_c = len(table.names)
    nb = neighbours.numpy().astype(np.int64)
    valid = nb >= 0
    # (anchor, concept) pairs of the neighbours' captions → the archive of each anchor
    b_idx, c_idx = _pairs(nb, valid, table)
    keys = np.unique(b_idx * num_c + c_idx)  # sorted by anchor, then concept id
    arch_b, arch_c = keys // num_c, keys % num_c
    lengths = np.bincount(arch_b, minlength=bsz)
    if len(keys) == 0:  # no neighbour has a concept: every archive is empty
        empty = torch.zeros((bsz, 0))
        return ScoredBatch(empty.long(), empty, empty, empty, torch.from_numpy(lengths))
    width = int(lengths.max())
    starts = np.zeros(bsz, dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    slot = np.arange(len(keys)) - starts[arch_b]
    concepts = torch.full((bsz, width), -1, dtype=torch.long)
    concepts[arch_b, slot] = torch.from_numpy(arch_c)
    present = concepts >= 0
    # R_c: membership of each archive concept in each neighbour's caption, (B, A, L)
    member = torch.zeros((bsz, width, num_l), dtype=torch.bool)
    mb, mc, ml = _pairs(nb, valid, member_table, with_slot=True)
    found = np.searchsorted(keys, mb * num_c + mc)
    found = np.minimum(found, len(keys) - 1)
    hit = keys[found] == mb * num_c + mc
    member[mb[hit], slot[found[hit]], ml[hit]] = True
    # similarities t_c · v_n (neighbours) and t_c · v_a (the anchor)
    t = concept_embeddings[concepts.clamp(min=0)]  # (B, A, D)
    v_n = index_embeddings[torch.from_numpy(nb).clamp(min=0)]  # (B, L, D)
    sim_n = torch.einsum("bad,bld->bal", t, v_n)
    sim_a = torch.einsum("bad,bd->ba", t, anchors)
    count = member.sum(-1) + 1
    mean = (sim_n * member).sum(-1).add(sim_a) / count
    max_s = torch.where(member, sim_n, -math.inf).amax(-1).maximum(sim_a) if num_l else sim_a
    big_m = torch.where(present, max_s, -math.inf).amax(-1, keepdim=True)  # M per anchor
    global_s = sim_a / big_m
    local_s = sim_a / mean
    score = torch.where(present, global_s + local_s, -math.inf)
    order = score.argsort(dim=1, descending=True, stable=True)
    take = lambda x: x.gather(1, order)  # noqa: E731
    return ScoredBatch(
        concepts=torch.where(take(present), take(concepts), -1),
        scores=take(torch.where(present, score, 0.0)),
        global_scores=take(torch.where(present, global_s, 0.0)),
        local_scores=take(torch.where(present, local_s, 0.0)),
        lengths=torch.from_numpy(lengths),
    )


def _pairs(nb: np.ndarray, valid: np.ndarray, table: ConceptTable, with_slot: bool = False):
    """(anchor, concept[, neighbour slot]) for every concept of every valid neighbour."""
    b, l_slot = np.nonzero(valid)
    items = nb[b, l_slot]
    counts = table.offsets[items + 1] - table.offsets[items]
    rep_b, rep_l = np.repeat(b, counts), np.repeat(l_slot, counts)
    # positions inside table.ids of every (neighbour, concept) pair
    first = np.repeat(table.offsets[items] - np.cumsum(counts) + counts, counts)
    pos = first + np.arange(int(counts.sum()))
    ids = table.ids[pos]
    return (rep_b, ids, rep_l) if with_slot else (rep_b, ids)


# --- the whole pass --------------------------------------------------------------------------


@dataclass
class CurationConfig:
    """Parameters of one curation pass.

    - ``size``: L, images retrieved per anchor (official ``--size 8``);
    - ``membership``: ``"exact"`` (default, the paper) or ``"substring"`` (the official code);
    - ``batch_size``: anchors scored per batch; ``block_size``: index rows per block of the
      torch kNN search; ``backend``: ``auto`` / ``faiss`` / ``torch``;
    - ``exclude_self``: drop the anchor from its own neighbours (the official code keeps it);
    - ``enable_kmeans``: also write the k-means clustered archive (official default off);
    - ``max_n``: longest gallery n-gram; ``prompt``: the concept prompt.
    """

    size: int = 8
    membership: Membership = "exact"
    batch_size: int = 1024
    block_size: int = 65536
    backend: Backend = "auto"
    exclude_self: bool = False
    enable_kmeans: bool = False
    max_n: int = MAX_NGRAM
    prompt: str = CONCEPT_PROMPT

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"curation size (L) must be >= 1, got {self.size}")
        if self.batch_size < 1:
            raise ValueError(f"curation batch_size must be >= 1, got {self.batch_size}")
        if self.membership not in ("exact", "substring"):
            raise ValueError(f"membership must be 'exact' or 'substring', got {self.membership!r}")


def curate(
    anchors: np.ndarray | torch.Tensor,
    index: NeighbourIndex,
    table: ConceptTable,
    concept_embeddings: np.ndarray | torch.Tensor,
    config: CurationConfig | None = None,
    anchor_ids: np.ndarray | None = None,
    progress: bool = False,
) -> Iterator[tuple[dict[str, float], dict[str, dict[str, float]]]]:
    """``(scored archive, k-means archive)`` for every anchor, in order, batch by batch.

    ``anchors`` (N_a, D) and the index's embeddings are L2-normalised image embeddings;
    ``table`` holds the index images' concepts; ``concept_embeddings`` (C, D) the gallery's
    normalised prompt embeddings in ``table.names`` order. ``anchor_ids`` (N_a,): each
    anchor's row in the index, needed by ``exclude_self``.
    """
    config = config or CurationConfig()
    anchors_t = torch.as_tensor(np.asarray(anchors, dtype=np.float32))
    concept_t = torch.as_tensor(np.asarray(concept_embeddings, dtype=np.float32))
    if concept_t.shape[0] != len(table.names):
        raise ValueError(
            f"{concept_t.shape[0]} concept embeddings for a gallery of {len(table.names)} names"
        )
    members = table.substring_closure() if config.membership == "substring" else table
    extra = 1 if config.exclude_self else 0
    bar = _progress(len(anchors_t), progress)
    for start in range(0, len(anchors_t), config.batch_size):
        q = anchors_t[start : start + config.batch_size]
        _, nb = index.search(q, config.size + extra)
        if config.exclude_self:
            if anchor_ids is None:
                raise ValueError("exclude_self needs anchor_ids (each anchor's row in the index)")
            own = torch.as_tensor(anchor_ids[start : start + len(q)]).view(-1, 1)
            keep = nb != own
            # the first `size` neighbours that are not the anchor itself
            rank = keep.long().cumsum(1)
            nb = torch.where(keep & (rank <= config.size), nb, -1)
            nb = nb.gather(1, (nb < 0).long().argsort(dim=1, stable=True))[:, : config.size]
        batch = score_anchors(q, nb, index.embeddings, table, concept_t, members)
        archives = batch.archives(table.names)
        for archive, ids, n in zip(archives, batch.concepts, batch.lengths.tolist()):
            kmeans = (
                cluster_archive(archive, concept_t[ids[:n]].numpy()) if config.enable_kmeans else {}
            )
            yield archive, kmeans
        bar.update(len(q))
    bar.close()


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="img", desc="curate", disable=not enabled)


# --- cluster-guided sampling ---------------------------------------------------------------


def cluster_archive(
    archive: Mapping[str, float], embeddings: np.ndarray, seed: int = 0
) -> dict[str, dict[str, float]]:
    """The official k-means archive: with more than 2 concepts, scikit-learn ``KMeans``
    (⌈|A|/2⌉ clusters, ``random_state=0``, ``n_init=5``, ``max_iter=100``) over the concept
    embeddings (rows in ``archive`` order) → ``{cluster label: {concept: score}}``; else
    ``{}``."""
    if len(archive) <= 2:
        return {}
    from sklearn.cluster import KMeans

    labels = (
        KMeans(n_clusters=math.ceil(len(archive) / 2), random_state=seed, n_init=5, max_iter=100)
        .fit(embeddings)
        .labels_
    )
    clusters: dict[str, dict[str, float]] = {str(label): {} for label in labels}
    for label, (concept, score) in zip(labels, archive.items()):
        clusters[str(label)][concept] = score
    return clusters


def sample_concepts(
    scored: Mapping[str, float],
    kmeans: Mapping[str, Mapping[str, float]] | None = None,
    k: int = 3,
    kmeans_sampling: bool = False,
    rng: np.random.Generator | None = None,
) -> list[str]:
    """The concepts a training sample uses (``WordAugTokenizeWrapper``).

    Default (``kmeans_sampling=False``, the official default): the first ``k`` keys of the
    scored archive, i.e. the top-k by score. With ``kmeans_sampling`` and more than one
    cluster: ``k`` clusters drawn with replacement with probability softmax(mean score of the
    cluster), then one concept of each drawn with probability softmax(score). Two bugs of the
    official branch are fixed here: ``torch.tensor(dict.values())`` (a dict view is not a
    sequence; the scores are listed first) and ``nouns.append(random.choices(...))``, which
    appended one-element lists instead of names. With one cluster or fewer it falls back to
    the top-k.
    """
    if kmeans_sampling and kmeans and len(kmeans) > 1:
        rng = rng or np.random.default_rng()
        clusters = list(kmeans.values())
        means = np.array([sum(c.values()) / len(c) for c in clusters], dtype=np.float64)
        picked = rng.choice(len(clusters), size=k, replace=True, p=_softmax(means))
        out = []
        for i in picked:
            names = list(clusters[i])
            scores = np.array(list(clusters[i].values()), dtype=np.float64)
            out.append(names[rng.choice(len(names), p=_softmax(scores))])
        return out
    return list(scored)[:k]


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


# --- the caption field ---------------------------------------------------------------------


def rewrite_caption(
    caption: str, scored: Mapping[str, float], kmeans: Mapping[str, Mapping[str, float]]
) -> str:
    """The official output format of the caption field: ``caption \\n json(scored) \\n
    json(kmeans)`` (newlines inside the caption become spaces so the three lines survive)."""
    import json

    flat = " ".join(caption.splitlines())
    return f"{flat}\n{json.dumps(dict(scored))}\n{json.dumps(dict(kmeans))}"


def parse_rewritten(text: str) -> tuple[str, dict[str, float], dict[str, dict[str, float]]]:
    """``(caption, scored archive, k-means archive)`` of a rewritten caption field."""
    import json

    parts = text.split("\n")
    if len(parts) != 3:
        raise ValueError(
            "a CoCu caption field has 3 lines (caption, scored archive JSON, k-means JSON); "
            f"got {len(parts)}: {text[:80]!r}"
        )
    caption, scored, kmeans = parts
    return caption, json.loads(scored), json.loads(kmeans)
