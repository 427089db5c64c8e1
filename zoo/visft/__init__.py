"""ViSFT building blocks: the ViT backbone as a map for dense heads, LoRA routing, hashes.

The paper module is :mod:`lightning_modules.visft`; the heads are in :mod:`zoo.heads`
(``detr``, ``mask2former``, ``captioner``) and their losses in :mod:`zoo.losses`.
"""
