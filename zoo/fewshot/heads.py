"""Imports every module of the few-shot family that registers a
:class:`zoo.backbones.clip_head.ClipHead` type, so ``zoo.load`` can rebuild an exported
adapted model (:data:`zoo.backbones.clip_head.HEAD_MODULES` imports this on demand)."""

from zoo.fewshot import baselines, cache_model, prompts, sgva  # noqa: F401  (registration)
