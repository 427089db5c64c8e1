"""``ZooModel``: a loaded model folder with its preprocessing and tokenizer attached."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

from zoo.backbones import DualEncoder, DualEncoderSpec, build_dual_encoder
from zoo.data.tokenizers import TextTokenizer
from zoo.data.transforms import ImageTransform, ToRGB, build_transform
from zoo.hub.config import CLIP_BPE, read_config
from zoo.hub.heads import build_head
from zoo.hub.security import safe_child
from zoo.hub.weights import as_dtype, load_weights, split_state
from zoo.specs import to_spec


def eval_transform(preprocess: Mapping[str, Any]) -> ImageTransform:
    """PIL image → normalised tensor: resize (shortest edge), centre crop, normalise."""
    resize, crop = int(preprocess["resize"]), int(preprocess["crop"])
    mean, std = tuple(preprocess["mean"]), tuple(preprocess["std"])
    interpolation = str(preprocess["interpolation"])
    if resize == crop:
        return build_transform("eval", crop, mean, std, interpolation=interpolation)
    from torchvision import transforms as T

    mode = T.InterpolationMode(interpolation)
    return T.Compose(
        [
            ToRGB(),
            T.Resize(resize, interpolation=mode),
            T.CenterCrop(crop),
            T.ToTensor(),
            T.Normalize(mean=mean, std=std),
        ]
    )


def folder_tokenizer(folder: Path | None, entry: Mapping[str, Any]) -> TextTokenizer:
    """The stored tokenizer: ``clip-bpe`` or a folder inside the model folder."""
    name = entry["name_or_path"]
    if name != CLIP_BPE:
        if folder is None:
            raise ValueError(f"tokenizer {name!r} is relative to a model folder; none given")
        name = str(safe_child(folder, name, "tokenizer.name_or_path"))
    return TextTokenizer(name, int(entry["context_length"]))


class ZooModel(nn.Module):
    """A dual encoder (``encoder``), its extra heads (``heads``), the ``config`` it came from,
    its eval ``transform`` (PIL → tensor) and ``tokenizer`` (texts → ids).

    ``encode_image`` takes a tensor batch or PIL images; ``encode_text`` takes token ids or
    strings. ``logit_scale`` is the log-temperature t (the scale is ``exp(t)``).
    """

    def __init__(
        self,
        encoder: DualEncoder,
        heads: Mapping[str, nn.Module],
        config: Mapping[str, Any],
        folder: Path | None = None,
    ):
        super().__init__()
        self.encoder = encoder
        self.heads = nn.ModuleDict(dict(heads))
        self.config = dict(config)
        self.folder = folder
        self.transform = eval_transform(config["preprocess"])
        self.tokenizer = folder_tokenizer(folder, config["tokenizer"])

    @property
    def name(self) -> str:
        return str(self.config["name"])

    @property
    def logit_scale(self) -> nn.Parameter:
        return self.encoder.logit_scale

    def image_tensor(self, images: Tensor | Image.Image | Sequence[Image.Image]) -> Tensor:
        """A batch on the model's device and dtype; PIL images go through ``transform``."""
        if isinstance(images, Image.Image):
            images = [images]
        if not isinstance(images, Tensor):
            images = torch.stack([self.transform(img) for img in images])
        ref = self.encoder.logit_scale
        return images.to(device=ref.device, dtype=ref.dtype)

    def text_tokens(self, texts: Tensor | str | Sequence[str]) -> Tensor:
        """Token ids on the model's device; strings go through ``tokenizer``."""
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, Tensor):
            texts = self.tokenizer(list(texts))
        return texts.to(self.encoder.logit_scale.device)

    def encode_image(self, images: Any, normalize: bool = False) -> Tensor:
        return self.encoder.encode_image(self.image_tensor(images), normalize=normalize)

    def encode_text(self, texts: Any, normalize: bool = False) -> Tensor:
        return self.encoder.encode_text(self.text_tokens(texts), normalize=normalize)

    def forward(self, images: Any, texts: Any) -> tuple[Tensor, Tensor, Tensor]:
        """Normalised image and text embeddings and the scale exp(t)."""
        return self.encoder(self.image_tensor(images), self.text_tokens(texts))


def load_model_folder(
    folder: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str = torch.float32,
    trust_pickle: bool = False,
) -> ZooModel:
    """Build the model a folder describes and load its verified weights (strict), then cast
    it to ``dtype`` (whatever dtype the weights are stored in) on ``device``."""
    folder = Path(folder).resolve()
    config = read_config(folder)
    backbone_state, head_states = split_state(load_weights(folder, config, trust_pickle))
    encoder = build_dual_encoder(to_spec(DualEncoderSpec, config["architecture"]["spec"]))
    encoder.load_state_dict(backbone_state, strict=True)
    heads = {name: build_head(entry) for name, entry in config["heads"].items()}
    if set(head_states) != set(heads):
        raise ValueError(
            f"heads in the weights {sorted(head_states)} differ from config.json {sorted(heads)}"
        )
    for name, head in heads.items():
        head.load_state_dict(head_states[name], strict=True)
    model = ZooModel(encoder, heads, config, folder)
    return model.to(device=device, dtype=as_dtype(dtype)).eval()
