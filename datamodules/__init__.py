"""One LightningDataModule per paper, thin over ``zoo.datamodule.ZooDataModule`` and the
datamodules of ``zoo.data`` (image–text, labelled images)."""
