"""``ZooModel``: a loaded model folder with its preprocessing and tokenizer attached.

The model is built by its architecture (:mod:`zoo.hub.architectures`); ``ZooModel`` offers
the protocol methods that architecture lists (``features``, ``encode_image``,
``encode_text``, ``logits``, ``class_weights``) and turns PIL images and strings into tensors
with the stored :class:`~zoo.preprocess.PreprocessSpec` and tokenizer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

from zoo.data.tokenizers import TextTokenizer
from zoo.hub.architectures import Architecture, get_architecture
from zoo.hub.config import CLIP_BPE, read_config
from zoo.hub.heads import build_head
from zoo.hub.security import safe_child
from zoo.hub.weights import as_dtype, load_weights, split_state
from zoo.preprocess import PreprocessSpec


def folder_tokenizer(folder: Path | None, entry: Mapping[str, Any] | None) -> TextTokenizer | None:
    """The stored tokenizer: ``clip-bpe`` or a folder inside the model folder (``None`` for
    image-only models)."""
    if entry is None:
        return None
    name = entry["name_or_path"]
    if name != CLIP_BPE:
        if folder is None:
            raise ValueError(f"tokenizer {name!r} is relative to a model folder; none given")
        name = str(safe_child(folder, name, "tokenizer.name_or_path"))
    return TextTokenizer(name, int(entry["context_length"]))


class ZooModel(nn.Module):
    """A loaded model: the module its architecture built (``encoder``; a
    :class:`~zoo.backbones.DualEncoder` for CLIP / SLIP), its extra heads (``heads``), the
    ``config`` it came from, its ``preprocess`` spec, eval ``transform`` (PIL → tensor) and
    ``tokenizer`` (texts → ids; ``None`` for image-only models).

    Image arguments take a tensor batch or PIL images, text arguments token ids or strings.
    A protocol method the architecture does not offer raises ``TypeError`` naming the ones it
    does (``model.protocols``).
    """

    def __init__(
        self,
        encoder: nn.Module,
        heads: Mapping[str, nn.Module],
        config: Mapping[str, Any],
        folder: Path | None = None,
    ):
        super().__init__()
        self.encoder = encoder
        self.heads = nn.ModuleDict(dict(heads))
        self.config = dict(config)
        self.folder = folder
        self.preprocess = PreprocessSpec.from_config(config)
        self.transform = self.preprocess.eval_transform()
        self.tokenizer = folder_tokenizer(folder, config.get("tokenizer"))

    @property
    def name(self) -> str:
        return str(self.config["name"])

    @property
    def architecture(self) -> Architecture:
        return get_architecture(self.config["architecture"]["type"])

    @property
    def protocols(self) -> tuple[str, ...]:
        return self.architecture.protocols

    def _require(self, method: str) -> None:
        if method not in self.protocols:
            raise TypeError(
                f"{self.name} ({self.architecture.name}) has no {method}(); it offers "
                f"{', '.join(self.protocols)}"
            )

    @property
    def logit_scale(self) -> nn.Parameter:
        return self.encoder.logit_scale

    def _reference(self) -> Tensor:
        return next(self.encoder.parameters())

    def image_tensor(self, images: Tensor | Image.Image | Sequence[Image.Image]) -> Tensor:
        """A batch on the model's device and dtype; PIL images go through ``transform``."""
        if isinstance(images, Image.Image):
            images = [images]
        if not isinstance(images, Tensor):
            images = torch.stack([self.transform(img) for img in images])
        ref = self._reference()
        return images.to(device=ref.device, dtype=ref.dtype)

    def text_tokens(self, texts: Tensor | str | Sequence[str]) -> Tensor:
        """Token ids on the model's device; strings go through ``tokenizer``."""
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, Tensor):
            if self.tokenizer is None:
                raise TypeError(f"{self.name} has no tokenizer; pass token ids")
            texts = self.tokenizer(list(texts))
        return texts.to(self._reference().device)

    def features(self, images: Any, kind: str = "embed") -> Tensor:
        """Image features (the :class:`zoo.protocols.ImageFeatures` protocol): ``"embed"``,
        the space zero-shot and retrieval compare in, or ``"trunk"``, the pooled feature
        before the projection (dual encoders; a single-space model answers both)."""
        self._require("features")
        x = self.image_tensor(images)
        if kind == "trunk" and hasattr(self.encoder, "image_trunk"):
            return self.encoder.image_trunk(x)
        if kind not in ("embed", "trunk"):
            raise ValueError(f"unknown feature kind {kind!r}; expected 'embed' or 'trunk'")
        return self.encoder.features(x)

    def text_features(self, tokens: Any) -> Tensor:
        """Caption features (:class:`zoo.protocols.TextFeatures`), unnormalised."""
        self._require("encode_text")
        return self.encoder.encode_text(self.text_tokens(tokens))

    def encode_image(self, images: Any, normalize: bool = False) -> Tensor:
        self._require("encode_image")
        return self.encoder.encode_image(self.image_tensor(images), normalize=normalize)

    def encode_text(self, texts: Any, normalize: bool = False) -> Tensor:
        self._require("encode_text")
        return self.encoder.encode_text(self.text_tokens(texts), normalize=normalize)

    def logits(self, images: Any, texts: Any = None, **kwargs: Any) -> Tensor:
        """Class logits (``clip_head``) or next-token logits over [image, ``texts``] (``vlm``)."""
        self._require("logits")
        if texts is None:
            return self.encoder.logits(self.image_tensor(images), **kwargs)
        return self.encoder.logits(self.image_tensor(images), self.text_tokens(texts), **kwargs)

    def class_weights(
        self,
        classnames: Sequence[str] | None = None,
        templates: Sequence[Any] | None = None,
        *,
        tokenizer: Any = None,
        batch_size: int = 256,
    ) -> Tensor:
        """(C, D) zero-shot classifier in the ``"embed"`` space
        (:class:`zoo.protocols.ZeroShotClassifier`): a ``clip_head`` model's own classifier
        (its head's; ``classnames``, when given, must match its class count), or a dual
        encoder's template ensemble of ``classnames`` × ``templates`` tokenised with
        ``tokenizer`` (default: the model's own)."""
        self._require("class_weights")
        if hasattr(self.encoder, "class_weights"):
            weights = self.encoder.class_weights()
            if classnames is not None and len(classnames) != weights.shape[0]:
                raise ValueError(
                    f"{self.name} classifies {weights.shape[0]} classes, got "
                    f"{len(classnames)} classnames"
                )
            return weights
        if classnames is None or not templates:
            raise ValueError(f"{self.name}: zero-shot weights need classnames and templates")
        from zoo.eval.zeroshot import template_ensemble

        tokenizer = tokenizer or self.tokenizer
        if tokenizer is None:
            raise TypeError(f"{self.name} has no tokenizer; pass one")
        return template_ensemble(
            self.encoder.encode_text,
            tokenizer,
            classnames,
            templates,
            self._reference().device,
            batch_size,
            model=self,
        )

    def forward(self, images: Any, texts: Any = None) -> Any:
        """Dual encoders: normalised image and text embeddings and the scale exp(t); other
        architectures: their module's forward on the converted inputs."""
        if texts is None:
            return self.encoder(self.image_tensor(images))
        return self.encoder(self.image_tensor(images), self.text_tokens(texts))


def load_model_folder(
    folder: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str = torch.float32,
    trust_pickle: bool = False,
    base: Any = None,
) -> ZooModel:
    """Build the model a folder describes and load its verified weights (strict), then cast
    it to ``dtype`` (whatever dtype the weights are stored in) on ``device``.

    An adapter package (``lora_adapter``, :mod:`zoo.hub.adapter`) needs ``base``: the model
    its adapter was trained on (a :class:`ZooModel`, a model folder, or a name / URI), whose
    weights must hash to the digest the adapter records; the loaded model is that base with
    the adapter merged. Other packages refuse ``base``."""
    folder = Path(folder).resolve()
    config = read_config(folder)
    arch = get_architecture(config["architecture"]["type"])
    if arch.attach is None and base is not None:
        raise ValueError(
            f"{config['name']} is a {arch.name!r} package, not an adapter: it takes no base="
        )
    if arch.attach is not None and base is None:  # attach raises its 'needs a base' error
        arch.attach(config["architecture"], {}, None, trust_pickle, config["name"])
    backbone_state, head_states = split_state(load_weights(folder, config, trust_pickle))
    if arch.attach is not None:
        encoder = arch.attach(
            config["architecture"], backbone_state, base, trust_pickle, config["name"]
        )
    else:
        encoder = arch.build(config["architecture"])
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
