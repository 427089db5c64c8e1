"""One LightningModule per paper, each named after its paper; recipes name them by class_path."""
