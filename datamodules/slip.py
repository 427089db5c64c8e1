"""SLIP data: each sample is (image, caption, aug1, aug2) — the CLIP view plus two SimCLR views."""

from __future__ import annotations

from zoo.data.image_text_datamodule import ImageTextDataModule


class SLIPDataModule(ImageTextDataModule):
    """Image–text pairs plus two SimCLR views per image (SLIP ``datasets.py``).

    Arguments are those of :class:`zoo.data.image_text_datamodule.ImageTextDataModule`; SLIP
    uses the ``clip`` view for the caption pair and 2 ``ssl`` views (no solarisation unless
    ``solarize_p > 0``).
    """

    default_train_transform = "clip"
    default_view_transform = "ssl"
    default_num_views = 2
