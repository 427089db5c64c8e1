"""Evaluation results people can look at: pictures and tables in TensorBoard.

Pure drawing functions (Pillow only, no plotting library) and a small logging API that the
evaluation callbacks (:mod:`zoo.eval.callbacks`) use; other model families (masks, boxes,
reconstructions, attention maps) add their own pictures through the same path:

- :func:`log_image` ``(trainer, tag, image_hwc)``, :func:`log_text` ``(trainer, tag, text)``
  and :func:`log_embedding` ``(trainer, tag, features, labels)`` write to every
  :class:`~lightning.pytorch.loggers.TensorBoardLogger` in ``trainer.loggers`` (its
  ``.experiment`` is a :class:`torch.utils.tensorboard.SummaryWriter`), at
  ``trainer.global_step``, on global rank 0 only. Other loggers are ignored; with no
  TensorBoard logger (or on other ranks) they do nothing and return ``False``.
- :func:`log_eval_visuals` logs the classification pictures of one protocol under
  ``<tag_prefix>_confusion_matrix`` (image), ``<tag_prefix>_predictions`` (image) and
  ``<tag_prefix>_per_class_accuracy`` (markdown text).

Drawing:

- :func:`confusion_matrix` ``(y, pred, num_classes)``: counts, rows = true class, columns =
  predicted class (torchmetrics' multiclass confusion matrix).
- :func:`render_confusion_matrix`: the row-normalised matrix as a uint8 ``(H, W, 3)`` image,
  white (0) to dark blue (1); class names on both axes when there are at most
  ``max_labelled_classes`` (30) classes, row percentages in the cells when they fit.
- :func:`render_prediction_grid`: sample images (un-normalised with the datamodule's
  mean / std, default the OpenAI CLIP statistics) with the true class and the top-k classes
  and probabilities under each; the frame is green when the top-1 class is right, red
  otherwise.
- :func:`per_class_accuracy_table`: a markdown table ``| class | n | accuracy |``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor
from torchmetrics.functional.classification import multiclass_confusion_matrix

from zoo.data.transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

# "Blues"-like ramp: value 0 is white, value 1 is dark blue.
_LOW = np.array([247, 251, 255], dtype=np.float32)
_HIGH = np.array([8, 48, 107], dtype=np.float32)
_GREEN = (46, 160, 67)
_RED = (215, 48, 39)


# --------------------------------------------------------------------------- numbers
def confusion_matrix(y: Tensor, pred: Tensor, num_classes: int) -> Tensor:
    """``(C, C)`` int64 counts: entry ``[i, j]`` is how many samples of true class i were
    predicted as class j."""
    return multiclass_confusion_matrix(
        torch.as_tensor(pred).long().cpu(),
        torch.as_tensor(y).long().cpu(),
        num_classes=num_classes,
        validate_args=False,
    ).long()


def row_normalize(cm: Tensor) -> Tensor:
    """Each row divided by its sum (rows of classes with no samples stay 0); float32."""
    cm = cm.float()
    return cm / cm.sum(dim=1, keepdim=True).clamp_min(1.0)


def per_class_accuracy(y: Tensor, pred: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """``(n, accuracy)`` per class: sample counts (int64) and top-1 accuracy in percent
    (float32, NaN for classes without samples)."""
    cm = confusion_matrix(y, pred, num_classes)
    n = cm.sum(dim=1)
    acc = 100.0 * cm.diagonal().float() / n.float()
    return n, torch.where(n > 0, acc, torch.full_like(acc, float("nan")))


def _escape_md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def per_class_accuracy_table(
    y: Tensor, pred: Tensor, classnames: Sequence[str] | None = None, num_classes: int | None = None
) -> str:
    """Markdown table ``| class | n | accuracy |``, one row per class (accuracy in percent
    with two decimals, ``-`` for classes without samples). Class names default to the
    indices; ``num_classes`` defaults to ``len(classnames)`` or ``max(y, pred) + 1``."""
    if num_classes is None:
        num_classes = len(classnames) if classnames else int(max(int(y.max()), int(pred.max()))) + 1
    names = list(classnames) if classnames else [str(i) for i in range(num_classes)]
    n, acc = per_class_accuracy(y, pred, num_classes)
    lines = ["| class | n | accuracy |", "| --- | ---: | ---: |"]
    for name, count, a in zip(names, n.tolist(), acc.tolist()):
        value = "-" if math.isnan(a) else f"{a:.2f}%"
        lines.append(f"| {_escape_md(name)} | {count} | {value} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- drawing
def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font: Any) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return int(math.ceil(right - left)), int(math.ceil(bottom - top))


def _fit(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> str:
    """``text`` cut (with "...") to at most ``width`` pixels."""
    if _text_size(draw, text, font)[0] <= width:
        return text
    while text and _text_size(draw, text + "...", font)[0] > width:
        text = text[:-1]
    return text + "..."


def _colour(value: float) -> tuple[int, int, int]:
    v = min(max(float(value), 0.0), 1.0)
    return tuple(int(round(c)) for c in _LOW + (_HIGH - _LOW) * v)  # type: ignore[return-value]


def render_confusion_matrix(
    cm: Tensor,
    classnames: Sequence[str] | None = None,
    max_labelled_classes: int = 30,
    cell_size: int | None = None,
    title: str | None = None,
) -> np.ndarray:
    """The row-normalised confusion matrix ``cm (C, C)`` (rows true, columns predicted) as a
    uint8 ``(H, W, 3)`` image. Class names (default: indices) label both axes when
    ``C <= max_labelled_classes``; ``cell_size`` defaults to ``clamp(640 // C, 1, 32)``."""
    num_classes = int(cm.shape[0])
    norm = row_normalize(cm).numpy()
    cell = cell_size or max(1, min(32, 640 // max(num_classes, 1)))
    labelled = num_classes <= max_labelled_classes
    names = [str(c) for c in classnames] if classnames else [str(i) for i in range(num_classes)]
    font = _font()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = _text_size(probe, "Ag", font)[1] + 2
    names = [_fit(probe, n, font, 96) for n in names] if labelled else []
    name_w = max((_text_size(probe, n, font)[0] for n in names), default=0)
    pad = 4
    left = pad + line_h + (name_w + pad if labelled else 0)  # "true" + row names
    top = pad + (line_h if title else 0) + line_h + (name_w + pad if labelled else 0)
    size = cell * num_classes
    width, height = left + size + pad, top + size + pad
    image = Image.new("RGB", (max(width, 64), height), "white")
    draw = ImageDraw.Draw(image)

    # cells: one pixel per class scaled up with nearest neighbour
    ramp = (_LOW + (_HIGH - _LOW) * np.clip(norm, 0.0, 1.0)[..., None]).round().astype(np.uint8)
    cells = Image.fromarray(ramp, "RGB").resize((size, size), Image.Resampling.NEAREST)
    image.paste(cells, (left, top))
    draw.rectangle((left - 1, top - 1, left + size, top + size), outline=(120, 120, 120))

    if title:
        draw.text((pad, pad), title, fill="black", font=font)
    axis_y = pad + (line_h if title else 0)
    draw.text((left, axis_y), "predicted", fill="black", font=font)
    true_label = Image.new("RGB", (max(_text_size(probe, "true", font)[0], 1), line_h), "white")
    ImageDraw.Draw(true_label).text((0, 0), "true", fill="black", font=font)
    image.paste(true_label.rotate(90, expand=True), (pad, top))

    if labelled:
        for i, name in enumerate(names):
            w, h = _text_size(draw, name, font)
            y = top + i * cell + (cell - h) // 2
            draw.text((left - pad - w, y), name, fill="black", font=font)
            col = Image.new("RGB", (w + 1, line_h), "white")
            ImageDraw.Draw(col).text((0, 0), name, fill="black", font=font)
            col = col.rotate(90, expand=True)  # bottom-to-top column labels
            x = left + i * cell + (cell - col.width) // 2
            image.paste(col, (x, top - pad - col.height))
        if cell >= 24:
            for i in range(num_classes):
                for j in range(num_classes):
                    v = norm[i, j]
                    if v <= 0:
                        continue
                    text = f"{100 * v:.0f}"
                    w, h = _text_size(draw, text, font)
                    fill = "white" if v > 0.5 else "black"
                    xy = (left + j * cell + (cell - w) // 2, top + i * cell + (cell - h) // 2)
                    draw.text(xy, text, fill=fill, font=font)
    return np.asarray(image, dtype=np.uint8).copy()


def unnormalize(
    images: Tensor,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Tensor:
    """``(N, C, H, W)`` normalised images back to [0, 1] floats: ``x * std + mean``,
    defaulting to the OpenAI CLIP statistics when ``mean`` / ``std`` are ``None``."""
    images = images.detach().float().cpu()
    m = torch.tensor(OPENAI_CLIP_MEAN if mean is None else tuple(mean), dtype=torch.float32)
    s = torch.tensor(OPENAI_CLIP_STD if std is None else tuple(std), dtype=torch.float32)
    if images.shape[1] != m.numel():  # e.g. grayscale with RGB statistics
        m, s = m.mean().expand(images.shape[1]), s.mean().expand(images.shape[1])
    return (images * s.view(1, -1, 1, 1) + m.view(1, -1, 1, 1)).clamp(0.0, 1.0)


def _to_pil(image: Tensor) -> Image.Image:
    array = (image.mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()).copy()
    if array.shape[2] == 1:
        return Image.fromarray(array[..., 0], "L").convert("RGB")
    return Image.fromarray(array[..., :3], "RGB")


def render_prediction_grid(
    images: Tensor,
    labels: Tensor,
    probs: Tensor,
    classnames: Sequence[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    top_k: int = 3,
    tile_size: int = 112,
    columns: int | None = None,
) -> np.ndarray:
    """Sample predictions as a uint8 ``(H, W, 3)`` image.

    Args:
        images: ``(N, C, H, W)`` normalised images (un-normalised with ``mean`` / ``std``,
            default OpenAI CLIP).
        labels: ``(N,)`` true classes.
        probs: ``(N, num_classes)`` class probabilities (or scores; they are printed as is).
        classnames: names of the classes (default: indices).
        top_k: how many classes to list under each image.
        tile_size: width of a tile in pixels; the image is resized to ``tile_size`` squared.
        columns: tiles per row (default ``ceil(sqrt(N))``).
    """
    n = int(images.shape[0])
    if n == 0:
        raise ValueError("render_prediction_grid needs at least one image")
    num_classes = int(probs.shape[-1])
    names = [str(c) for c in classnames] if classnames else [str(i) for i in range(num_classes)]
    k = min(top_k, num_classes)
    top_p, top_i = probs.float().cpu().topk(k, dim=-1)
    pictures = unnormalize(images, mean, std)
    font = _font()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = _text_size(probe, "Ag", font)[1] + 3
    border, pad = 3, 3
    tile_w = tile_size + 2 * border
    tile_h = tile_size + 2 * border + pad + (k + 1) * line_h + pad
    cols = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = Image.new("RGB", (cols * tile_w + (cols + 1) * pad, rows * tile_h + (rows + 1) * pad))
    grid.paste((255, 255, 255), (0, 0, grid.width, grid.height))
    draw = ImageDraw.Draw(grid)
    text_w = tile_w - 2
    for idx in range(n):
        r, c = divmod(idx, cols)
        x0, y0 = pad + c * (tile_w + pad), pad + r * (tile_h + pad)
        truth = int(labels[idx])
        correct = int(top_i[idx, 0]) == truth
        frame = _GREEN if correct else _RED
        draw.rectangle((x0, y0, x0 + tile_w - 1, y0 + tile_size + 2 * border - 1), fill=frame)
        picture = _to_pil(pictures[idx])
        resample = (
            Image.Resampling.NEAREST if max(picture.size) < tile_size else Image.Resampling.BILINEAR
        )
        grid.paste(picture.resize((tile_size, tile_size), resample), (x0 + border, y0 + border))
        y = y0 + tile_size + 2 * border + pad
        true_name = names[truth] if 0 <= truth < len(names) else str(truth)
        draw.text((x0, y), _fit(draw, f"true: {true_name}", font, text_w), fill="black", font=font)
        for rank in range(k):
            y += line_h
            cls = int(top_i[idx, rank])
            text = _fit(draw, f"{rank + 1}. {names[cls]}", font, text_w - 34)
            colour = (_GREEN if cls == truth else (90, 90, 90)) if rank else frame
            draw.text((x0, y), text, fill=colour, font=font)
            p = f"{float(top_p[idx, rank]):.2f}"
            draw.text((x0 + text_w - _text_size(draw, p, font)[0], y), p, fill=colour, font=font)
    return np.asarray(grid, dtype=np.uint8).copy()


# --------------------------------------------------------------------------- logging
def tensorboard_writers(trainer: Any) -> list[Any]:
    """The ``SummaryWriter`` of every ``TensorBoardLogger`` of ``trainer`` on global rank 0;
    ``[]`` on other ranks or when there is none."""
    from lightning.pytorch.loggers import TensorBoardLogger

    if not getattr(trainer, "is_global_zero", True):
        return []
    loggers = getattr(trainer, "loggers", None) or []
    return [lg.experiment for lg in loggers if isinstance(lg, TensorBoardLogger)]


def _step(trainer: Any, step: int | None) -> int:
    return int(step if step is not None else getattr(trainer, "global_step", 0))


def log_image(
    trainer: Any, tag: str, image_hwc: np.ndarray | Tensor, step: int | None = None
) -> bool:
    """Log a uint8 ``(H, W, 3)`` image to every TensorBoard writer; ``True`` if any."""
    writers = tensorboard_writers(trainer)
    for writer in writers:
        writer.add_image(tag, np.asarray(image_hwc), _step(trainer, step), dataformats="HWC")
    return bool(writers)


def log_text(trainer: Any, tag: str, text: str, step: int | None = None) -> bool:
    """Log (markdown) text to every TensorBoard writer; ``True`` if any."""
    writers = tensorboard_writers(trainer)
    for writer in writers:
        writer.add_text(tag, text, _step(trainer, step))
    return bool(writers)


def log_embedding(
    trainer: Any,
    tag: str,
    features: Tensor,
    labels: Tensor | None = None,
    classnames: Sequence[str] | None = None,
    max_points: int = 10_000,
    step: int | None = None,
) -> bool:
    """Log ``features (N, D)`` for TensorBoard's projector, with the class names (or label
    indices) as metadata; only the first ``max_points`` rows. ``True`` if any writer."""
    writers = tensorboard_writers(trainer)
    if not writers:
        return False
    mat = features[:max_points].detach().float().cpu()
    metadata = None
    if labels is not None:
        ids = labels[:max_points].tolist()
        names = list(classnames) if classnames else None
        metadata = [names[i] if names and 0 <= i < len(names) else str(i) for i in ids]
    for writer in writers:
        writer.add_embedding(mat, metadata=metadata, global_step=_step(trainer, step), tag=tag)
    return True


def log_eval_visuals(
    trainer: Any,
    tag_prefix: str,
    labels: Tensor,
    scores: Tensor,
    classnames: Sequence[str] | None = None,
    images: Tensor | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    top_k: int = 3,
    max_labelled_classes: int = 30,
    step: int | None = None,
) -> list[str]:
    """Log a classification protocol's pictures; returns the tags written (``[]`` without
    a TensorBoard logger or off rank 0, and then nothing is drawn).

    ``scores (N, C)`` are probabilities (or logits: the grid shows their softmax when a row
    does not sum to 1) of all N evaluated samples with true ``labels (N,)``; ``images``
    ``(M, 3, H, W)``, M <= N, are the normalised inputs of the first M samples for the grid.
    Tags: ``<tag_prefix>_confusion_matrix``, ``<tag_prefix>_per_class_accuracy`` and, with
    images, ``<tag_prefix>_predictions``.
    """
    if not tensorboard_writers(trainer):
        return []
    num_classes = int(scores.shape[-1])
    scores = scores.detach().float().cpu()
    labels = labels.detach().long().cpu()
    pred = scores.argmax(dim=-1)
    cm = confusion_matrix(labels, pred, num_classes)
    tags = [f"{tag_prefix}_confusion_matrix", f"{tag_prefix}_per_class_accuracy"]
    log_image(trainer, tags[0], render_confusion_matrix(cm, classnames, max_labelled_classes), step)
    log_text(
        trainer, tags[1], per_class_accuracy_table(labels, pred, classnames, num_classes), step
    )
    if images is not None and len(images):
        m = min(int(images.shape[0]), int(scores.shape[0]))
        probs = scores[:m]
        if not torch.allclose(probs.sum(-1), torch.ones(m), atol=1e-3) or (probs < 0).any():
            probs = probs.softmax(dim=-1)
        grid = render_prediction_grid(images[:m], labels[:m], probs, classnames, mean, std, top_k)
        tags.append(f"{tag_prefix}_predictions")
        log_image(trainer, tags[-1], grid, step)
    return tags
