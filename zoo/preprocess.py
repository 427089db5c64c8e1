"""One preprocessing spec shared by the datamodule, a model folder's ``config.json`` and the
loaded model: image size, resize, crop, mean / std, interpolation, tokenizer, context length.

A datamodule exposes its spec as ``datamodule.preprocess``; ``zoo export`` writes it into
``config.json`` (``preprocess`` and ``tokenizer`` entries, :meth:`PreprocessSpec.to_config`);
``zoo.load`` reads it back (:meth:`PreprocessSpec.from_config`) and evaluates with the same
:meth:`PreprocessSpec.eval_transform` the datamodule's evaluation splits use, so a released
model sees exactly the pixels it was evaluated on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from zoo.data.transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ImageTransform

#: The tokenizer name of the CLIP BPE vocabulary bundled with open_clip (no download).
CLIP_BPE = "clip-bpe"


@dataclass
class PreprocessSpec:
    """How raw inputs become model inputs.

    - ``image_size``: the side of the square crop the model sees;
    - ``resize``: shortest-edge resize before the centre crop at evaluation (``None``: equal
      to ``image_size``, i.e. resize then crop the centre square, as CLIP does; ``256`` with
      ``image_size`` 224 is the ImageNet ``crop_pct = 0.875`` convention);
    - ``mean`` / ``std``: per-channel normalisation (default: OpenAI CLIP's);
    - ``interpolation``: ``bicubic`` (CLIP), ``bilinear`` or ``nearest``;
    - ``tokenizer`` / ``context_length``: the text side (``None`` for image-only models).
    """

    image_size: int = 224
    resize: int | None = None
    mean: tuple[float, float, float] = field(default=OPENAI_CLIP_MEAN)
    std: tuple[float, float, float] = field(default=OPENAI_CLIP_STD)
    interpolation: str = "bicubic"
    tokenizer: str | None = CLIP_BPE
    context_length: int = 77

    def __post_init__(self) -> None:
        self.image_size = int(self.image_size)
        if self.image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {self.image_size}")
        if self.resize is not None and int(self.resize) < self.image_size:
            raise ValueError(
                f"resize ({self.resize}) must be >= image_size ({self.image_size}): the eval "
                "transform resizes the shortest edge, then crops the centre"
            )
        self.mean = tuple(float(x) for x in self.mean)  # type: ignore[assignment]
        self.std = tuple(float(x) for x in self.std)  # type: ignore[assignment]
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("mean and std need one value per RGB channel")

    @property
    def resize_size(self) -> int:
        return int(self.resize) if self.resize is not None else self.image_size

    def eval_transform(self) -> ImageTransform:
        """PIL image → normalised tensor: RGB, shortest-edge resize, centre crop, normalise."""
        from torchvision import transforms as T

        from zoo.data.transforms import ToRGB, build_transform

        if self.resize_size == self.image_size:
            return build_transform(
                "eval", self.image_size, self.mean, self.std, interpolation=self.interpolation
            )
        return T.Compose(
            [
                ToRGB(),
                T.Resize(self.resize_size, interpolation=T.InterpolationMode(self.interpolation)),
                T.CenterCrop(self.image_size),
                T.ToTensor(),
                T.Normalize(mean=self.mean, std=self.std),
            ]
        )

    def transform(self, name: str, **kwargs: Any) -> ImageTransform:
        """The named stack of :data:`zoo.data.transforms.TRANSFORMS` at this size and
        normalisation (``"eval"`` honours ``resize``)."""
        from zoo.data.transforms import build_transform

        if name == "eval" and not kwargs:
            return self.eval_transform()
        return build_transform(
            name, self.image_size, self.mean, self.std, interpolation=self.interpolation, **kwargs
        )

    # --- config.json ------------------------------------------------------------------------
    def to_config(self) -> dict[str, Any]:
        """The ``preprocess`` and ``tokenizer`` entries of a model folder's ``config.json``
        (format version 1: ``resize`` and ``crop`` are always written)."""
        entries: dict[str, Any] = {
            "preprocess": {
                "image_size": self.image_size,
                "resize": self.resize_size,
                "crop": self.image_size,
                "mean": list(self.mean),
                "std": list(self.std),
                "interpolation": self.interpolation,
            }
        }
        if self.tokenizer is not None:
            entries["tokenizer"] = {
                "name_or_path": self.tokenizer,
                "context_length": self.context_length,
            }
        return entries

    @classmethod
    def from_hparams(
        cls, hparams: Mapping[str, Any], image_size: int = 224, context_length: int = 77
    ) -> PreprocessSpec:
        """The spec of a datamodule from its saved hyper-parameters (a checkpoint's
        ``datamodule_hyper_parameters``), the only record of it a checkpoint has.

        A ``preprocess`` entry (a spec or its mapping) wins; otherwise the flat datamodule
        arguments ``image_size``, ``resize``, ``mean``, ``std``, ``interpolation``,
        ``tokenizer`` and ``context_length`` are read, unset ones (missing or ``None``) taking
        the datamodule defaults: OpenAI mean / std, bicubic, the CLIP BPE tokenizer, and
        ``image_size`` / ``context_length`` given here (e.g. the encoder's)."""
        nested = hparams.get("preprocess")
        if isinstance(nested, PreprocessSpec):
            return nested
        if isinstance(nested, Mapping):
            return cls(**nested)

        def get(key: str, default: Any) -> Any:
            value = hparams.get(key)
            return default if value is None else value

        return cls(
            image_size=int(get("image_size", image_size)),
            resize=hparams.get("resize"),
            mean=tuple(get("mean", OPENAI_CLIP_MEAN)),
            std=tuple(get("std", OPENAI_CLIP_STD)),
            interpolation=str(get("interpolation", "bicubic")),
            tokenizer=str(get("tokenizer", CLIP_BPE)),
            context_length=int(get("context_length", context_length)),
        )

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> PreprocessSpec:
        """Read the ``preprocess`` / ``tokenizer`` entries written by :meth:`to_config`."""
        pre = config["preprocess"]
        tok = config.get("tokenizer")  # None or absent: an image-only model
        crop = int(pre.get("crop", pre["image_size"]))
        resize = int(pre.get("resize", crop))
        return cls(
            image_size=crop,
            resize=None if resize == crop else resize,
            mean=tuple(pre["mean"]),
            std=tuple(pre["std"]),
            interpolation=str(pre.get("interpolation", "bicubic")),
            tokenizer=None if tok is None else str(tok["name_or_path"]),
            context_length=77 if tok is None else int(tok["context_length"]),
        )
