"""CoCu curation throughput (anchors/s) and peak memory as the index grows.

For N index images (random unit embeddings, dim 512; every image's caption holds 0-3 of 2,000
concepts) it curates ``--anchors`` anchors with L = 8:

- ``zoo``: :func:`zoo.cocu.curation.curate`: one kNN search per batch of anchors (faiss
  ``IndexFlatIP`` when importable, else the blocked torch top-k) and the scores of the whole
  batch computed on padded tensors;
- ``reference``: the official code's loop (``rewrite/curation.py`` ``cocu``): one faiss
  search per anchor, then Python loops over the archive's concepts and the neighbours'
  concept strings (substring membership, as the official code).

Each (implementation, N) runs in a fresh subprocess; peak memory is that process's maximum
resident set (``ru_maxrss``) minus its resident set after the index was built, i.e. what the
curation itself adds. Run: ``python benchmarks/cocu_curation.py [--sizes 10000 50000 200000]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DIM, CONCEPTS, L = 512, 2000, 8
#: The repository root, put on the subprocesses' path so `zoo` imports without an install.
ROOT = Path(__file__).resolve().parents[1]


def _data(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    emb = np.abs(rng.standard_normal((n, DIM), dtype=np.float32))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    names = [f"concept{i}" for i in range(CONCEPTS)]
    counts = rng.integers(0, 4, size=n)
    ids = rng.integers(0, CONCEPTS, size=int(counts.sum()))
    offsets = np.concatenate([[0], np.cumsum(counts)])
    concepts_of = [sorted({names[j] for j in ids[offsets[i] : offsets[i + 1]]}) for i in range(n)]
    concept_emb = np.abs(rng.standard_normal((CONCEPTS, DIM), dtype=np.float32))
    concept_emb /= np.linalg.norm(concept_emb, axis=1, keepdims=True)
    return emb, names, concepts_of, concept_emb


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def run_one(impl: str, n: int, anchors: int) -> dict:
    emb, names, concepts_of, concept_emb = _data(n)
    if impl == "zoo":
        from zoo.cocu.curation import ConceptTable, CurationConfig, NeighbourIndex, curate

        table = ConceptTable.from_lists(concepts_of, names)
        index = NeighbourIndex(emb)
        base = _rss_mb()
        start = time.perf_counter()
        for _ in curate(emb[:anchors], index, table, concept_emb, CurationConfig(size=L)):
            pass
        backend = index.backend
    else:
        import faiss

        index = faiss.IndexFlatIP(DIM)
        index.add(emb)
        semantics = [", ".join(c) for c in concepts_of]
        concept_idx = {name: i for i, name in enumerate(names)}
        base = _rss_mb()
        start = time.perf_counter()
        for a in range(anchors):
            _reference_cocu(a, index, emb, semantics, concept_idx, concept_emb)
        backend = "faiss, per anchor"
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "impl": impl,
        "n": n,
        "anchors": anchors,
        "seconds": seconds,
        "anchors_per_s": anchors / seconds,
        "added_peak_mb": max(peak - base, 0.0),
        "backend": backend,
    }


def _reference_cocu(a, index, emb, semantics, concept_idx, concept_emb):
    """The official per-anchor loop (faithful to rewrite/curation.py, k-means off)."""
    img_emb = emb[[a]]
    _, idx = index.search(img_emb, L)
    l_sem = [semantics[i] for i in idx[0]]
    l_emb = emb[idx.squeeze(), :]
    archive = list({c for s in l_sem if s for c in s.split(", ")})
    if not archive:
        return {}
    glob, loc, max_prob = np.zeros(len(archive)), np.zeros(len(archive)), 0.0
    for k, concept in enumerate(archive):
        t = concept_emb[concept_idx[concept]]
        r = [j for j, s in enumerate(l_sem) if concept in s]
        sim = t @ np.concatenate([l_emb[r], img_emb]).T
        glob[k], loc[k] = sim[-1], sim[-1] / np.average(sim)
        max_prob = max(sim.max(), max_prob)
    probs = glob / max_prob + loc
    return dict(sorted(zip(archive, probs), key=lambda kv: -kv[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 200_000])
    parser.add_argument("--anchors", type=int, default=2000)
    parser.add_argument("--one", nargs=2, metavar=("IMPL", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one[0], int(args.one[1]), args.anchors)))
        return
    print(f"{'N':>8} {'impl':>10} {'anchors/s':>10} {'added peak MB':>14}  backend")
    for n in args.sizes:
        rows = {}
        for impl in ("reference", "zoo"):
            out = subprocess.run(
                [sys.executable, __file__, "--one", impl, str(n), "--anchors", str(args.anchors)],
                capture_output=True,
                text=True,
                check=True,
                env={
                    **os.environ,
                    "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
                },
            )
            rows[impl] = row = json.loads(out.stdout.strip().splitlines()[-1])
            print(
                f"{n:>8} {impl:>10} {row['anchors_per_s']:>10.1f} {row['added_peak_mb']:>14.1f}"
                f"  {row['backend']}"
            )
        ratio = rows["zoo"]["anchors_per_s"] / rows["reference"]["anchors_per_s"]
        print(f"{n:>8} {'speed-up':>10} {ratio:>10.2f}x")


if __name__ == "__main__":
    main()
