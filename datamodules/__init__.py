"""One LightningDataModule per paper, thin over ``zoo.data`` / ``zoo.datamodule``."""
