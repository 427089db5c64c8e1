"""Batching of the zoo's sample dicts (every format yields the same keys)."""

from __future__ import annotations

from typing import Any

import torch

from zoo.data.samples import DROPPED


def collate_samples(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack a list of sample dicts into a batch.

    ``image`` (B, 3, H, W), ``text`` (B, L), ``label`` (B,) long, ``views`` a list with one
    (B, 3, H, W) tensor per view, ``caption`` a list of str, and ``skipped`` the batch's
    total of replaced bad files as a 0-dim long tensor (log it, sum it across ranks).
    Other keys are kept as lists.

    Evaluation datasets drop bad samples instead of replacing them: their markers
    (``{"dropped": source}``) are removed here and counted in ``dropped`` (0-dim long); a
    batch whose samples were all dropped holds only ``dropped``.
    """
    if not samples:
        raise ValueError("collate_samples got an empty list")
    kept = [s for s in samples if DROPPED not in s]
    dropped = torch.tensor(len(samples) - len(kept), dtype=torch.long)
    if not kept:
        return {DROPPED: dropped}
    samples = kept
    batch: dict[str, Any] = {
        "image": torch.stack([s["image"] for s in samples]),
        "text": torch.stack([s["text"] for s in samples]),
        "label": torch.tensor([int(s.get("label", -1)) for s in samples], dtype=torch.long),
        "skipped": torch.tensor(sum(int(s.get("skipped", 0)) for s in samples), dtype=torch.long),
    }
    if dropped:
        batch[DROPPED] = dropped
    if "views" in samples[0]:
        n_views = len(samples[0]["views"])
        batch["views"] = [torch.stack([s["views"][k] for s in samples]) for k in range(n_views)]
    for key in samples[0]:
        if key not in batch and key != "views":
            batch[key] = [s[key] for s in samples]
    return batch
