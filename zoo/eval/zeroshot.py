"""Zero-shot classification with prompt-ensembled text classifiers.

Protocol (CLIP, Radford et al. 2021, §3.1.4; SLIP, Mu et al. 2022, "Evaluation"): every
class name c is inserted into every template t ("a photo of a {}."), each prompt is encoded
and L2-normalised, the T prompt embeddings of a class are averaged and the mean is
renormalised:

    w_c = normalize( (1/T) Σ_t normalize(f_T(t(c))) )

An image is classified by ``argmax_c  s · <normalize(f_I(x)), w_c>`` (s = 100, as in CLIP).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from zoo.eval.features import encode_batched
from zoo.protocols import Template


def _fill(template: Template, classname: str) -> str:
    return template(classname) if callable(template) else template.format(classname)


def template_ensemble(
    encode_text: Callable[[Tensor], Tensor],
    tokenizer: Callable[[list[str]], Tensor],
    classnames: Sequence[str],
    templates: Sequence[Template],
    device: torch.device | str,
    batch_size: int = 256,
    model: nn.Module | None = None,
) -> Tensor:
    """Class weights ``(C, D)`` (float32, CPU, unit rows) by the CLIP / SLIP template ensemble.

    All C·T prompts (class-major: prompt ``c·T + t`` is template t of class c) are tokenised
    once and passed to ``encode_text`` (tokens → text embeddings, e.g. a module's
    ``text_features``) in batches of ``batch_size``; templates are ``"{}"`` format strings or
    callables ``classname -> prompt``. ``model`` (default: the owner of ``encode_text``) is
    put in eval mode.
    """
    if not classnames or not templates:
        raise ValueError("zeroshot_classifier needs at least one class name and one template")
    prompts = [_fill(t, c) for c in classnames for t in templates]
    tokens = torch.as_tensor(tokenizer(prompts)).long()
    z = encode_batched(encode_text, tokens, device, batch_size, model=model)
    z = F.normalize(z, dim=-1).view(len(classnames), len(templates), -1)
    return F.normalize(z.mean(dim=1), dim=-1)


def zeroshot_classifier(
    encoder: nn.Module,
    tokenizer: Callable[[list[str]], Tensor],
    classnames: Sequence[str],
    templates: Sequence[Template],
    device: torch.device | str,
    batch_size: int = 256,
    model: nn.Module | None = None,
) -> Tensor:
    """:func:`template_ensemble` of ``encoder.encode_text`` (``model`` default ``encoder``)."""
    return template_ensemble(
        encoder.encode_text,
        tokenizer,
        classnames,
        templates,
        device,
        batch_size,
        model if model is not None else encoder,
    )


def zeroshot_logits(image_features: Tensor, classifier: Tensor, scale: float = 100.0) -> Tensor:
    """``scale · normalize(image_features) @ classifier.T``: ``(N, C)`` cosine logits."""
    image = F.normalize(image_features.float(), dim=-1)
    return scale * image @ classifier.to(image).T


def topk_accuracy(
    scores: Tensor, labels: Tensor, top_k: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """Top-k accuracies in percent, ``{"top1": …, "top5": …}``, via torchmetrics.

    ``MulticlassAccuracy(average="micro")`` is the fraction of samples whose label is among
    the k highest scores; k is capped at the number of classes (so top-5 over 3 classes is
    100 %), the key keeps the requested k.
    """
    num_classes = scores.shape[-1]
    out: dict[str, float] = {}
    for k in top_k:
        metric = MulticlassAccuracy(
            num_classes=num_classes, top_k=min(k, num_classes), average="micro"
        )
        out[f"top{k}"] = 100.0 * float(metric(scores.float(), labels.long()))
    return out


def zeroshot_accuracy(
    image_features: Tensor,
    labels: Tensor,
    classifier: Tensor,
    top_k: Sequence[int] = (1, 5),
    scale: float = 100.0,
) -> dict[str, float]:
    """Zero-shot top-k accuracy (percent) of ``image_features (N, D)`` against ``classifier``."""
    return topk_accuracy(zeroshot_logits(image_features, classifier, scale), labels, top_k)
