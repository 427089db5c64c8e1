"""CLIP data: image–caption pairs with the CLIP view only (RandomResizedCrop, scale 0.5–1)."""

from __future__ import annotations

from zoo.data.image_text_datamodule import ImageTextDataModule


class CLIPDataModule(ImageTextDataModule):
    """Image–text pairs from CSV/JSONL, WebDataset, HF datasets or the embedded digits.

    Arguments are those of :class:`zoo.data.image_text_datamodule.ImageTextDataModule`; CLIP
    uses the ``clip`` train view and no extra views.
    """

    default_train_transform = "clip"
    default_num_views = 0
