"""Few-shot adaptation of a frozen CLIP (CoOp, CoCoOp, CLIP-Adapter, Tip-Adapter(-F), SgVA-CLIP).

The pieces every method of the family shares:

- :mod:`zoo.fewshot.clip_source`: the frozen CLIP, from any source (a zoo model package, a
  Hugging Face CLIP folder, an OpenAI / open_clip state dict, or a spec with random weights
  for tests), with the sha256 of its weights;
- :mod:`zoo.fewshot.module`: :class:`~zoo.fewshot.module.FewShotModule`, the LightningModule
  base: a :class:`zoo.freeze.FrozenTower` around the CLIP plus a trainable
  :class:`zoo.backbones.clip_head.ClipHead` built once the class names are known; the model
  protocols the evaluation callbacks use; export as a ``clip_head`` model package.
"""
