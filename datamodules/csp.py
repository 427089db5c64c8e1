"""CSP data: pre-extracted image features with (lon, lat) and labels, in the official layout."""

from __future__ import annotations

from zoo.data.geo_datamodule import GeoFeatureDataModule


class CSPDataModule(GeoFeatureDataModule):
    """CSP's data (official code ``main/datasets.py``): a split is a ``.npy`` of frozen image
    features plus the iNat annotation / locations JSON pair (or a ``lon,lat,label`` CSV), and
    evaluation splits may carry the image classifier's probabilities. The tiny setting writes
    the synthetic geo world (:class:`zoo.data.geo_world.SyntheticGeoWorld`) in that layout.

    Arguments are those of :class:`zoo.data.geo_datamodule.GeoFeatureDataModule`; the
    pre-training stage reads every training image (labels hidden), the fine-tuning stage the
    ``labelled_fraction`` subset (5 % in the run scripts, ``stratified-fix``).
    """
