"""Frozen-feature extraction shared by every evaluation protocol.

All protocols in :mod:`zoo.eval` (zero-shot, linear probe, kNN, retrieval) score *frozen*
features: the model is put in eval mode (dropout off, BatchNorm running statistics), run
under :func:`torch.inference_mode`, and its per-module train/eval flags are restored
afterwards, so frozen towers that a paper keeps in eval mode stay in eval mode.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm


@contextlib.contextmanager
def eval_mode(module: nn.Module | None) -> Iterator[None]:
    """Put ``module`` (and every submodule) in eval mode, then restore each flag exactly.

    ``module.train(was_training)`` would also switch submodules that were deliberately in
    eval mode (frozen towers) back to training; this restores every submodule's own flag.
    """
    if module is None:
        yield
        return
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def batch_get(batch: Any, key: str) -> Any:
    """``batch[key]`` for dict batches, ``batch.key`` for dataclass / namedtuple batches."""
    if isinstance(batch, Mapping):
        return batch.get(key)
    return getattr(batch, key, None)


def _owner(fn: Callable[..., Any]) -> nn.Module | None:
    """The module a bound method such as ``encoder.encode_image`` belongs to, if any."""
    owner = getattr(fn, "__self__", None)
    return owner if isinstance(owner, nn.Module) else None


def _cat_padded(chunks: list[Tensor], pad_value: int = 0) -> Tensor:
    """Concatenate token batches along dim 0, right-padding the last dim to the longest."""
    length = max(c.shape[-1] for c in chunks)
    return torch.cat([F.pad(c, (0, length - c.shape[-1]), value=pad_value) for c in chunks])


def extract_features(
    fn: Callable[..., Tensor],
    loader: Iterable[Any],
    device: torch.device | str,
    keys: Sequence[str] = ("image",),
    model: nn.Module | None = None,
    max_batches: int | None = None,
    desc: str = "features",
    progress: bool = True,
    stats: dict[str, int] | None = None,
    on_batch: Callable[[Any], None] | None = None,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Run ``fn(*[batch[k] for k in keys])`` over ``loader`` and gather the outputs.

    Args:
        fn: the feature function, e.g. ``lambda x: module.features(x, kind="trunk")``.
        loader: yields dict (or attribute) batches with ``keys`` and optionally ``"label"``
            and ``"text"``.
        device: where ``fn`` runs (``pl_module.device`` in callbacks).
        keys: batch entries passed positionally to ``fn``.
        model: module put in eval mode during extraction (flags restored afterwards);
            defaults to the owner of ``fn`` when ``fn`` is a bound method of a module.
        max_batches: stop after this many batches (``fast_dev_run`` smoke tests).
        desc: progress-bar label; the tqdm bar is disabled when stderr is not a TTY.
        progress: ``False`` hides the bar (ranks other than 0 under FSDP).
        stats: when given, ``stats["dropped"]`` is increased by the number of bad samples
            the loader dropped (evaluation datasets drop bad images, see
            :func:`zoo.data.collate_samples`; streamed shards report them as ``skipped``).
        on_batch: called with every batch that is encoded, in order (e.g. to keep a few
            input images for pictures of the predictions, :mod:`zoo.eval.visuals`).

    Returns:
        ``(features, labels, texts)``: features ``(N, D)`` float32 on CPU; labels ``(N,)``
        or ``None`` when batches carry no ``"label"``; caption tokens ``(N, L)`` (or
        ``(N, K, L)`` for K captions per image), right-padded with 0, or ``None``.
    """
    model = model if model is not None else _owner(fn)
    feats: list[Tensor] = []
    labels: list[Tensor] = []
    texts: list[Tensor] = []
    with eval_mode(model), torch.inference_mode():
        # disable=None: tqdm turns itself off when the output is not a TTY (CI logs).
        bar = tqdm(loader, desc=desc, disable=None if progress else True, leave=False)
        for i, batch in enumerate(bar):
            if max_batches is not None and i >= max_batches:
                break
            if stats is not None:
                stats["dropped"] = stats.get("dropped", 0) + sum(
                    int(batch_get(batch, k) or 0) for k in ("dropped", "skipped")
                )
            if batch_get(batch, keys[0]) is None:  # every sample of the batch was dropped
                continue
            if on_batch is not None:
                on_batch(batch)
            inputs = [batch_get(batch, k).to(device, non_blocking=True) for k in keys]
            feats.append(fn(*inputs).float().cpu())
            label = batch_get(batch, "label")
            if label is not None:
                labels.append(torch.as_tensor(label).cpu())
            text = batch_get(batch, "text")
            if isinstance(text, Tensor):
                texts.append(text.cpu())
    if not feats:
        raise ValueError("extract_features: the loader yielded no batches")
    # Concatenating outside inference mode returns ordinary (non-inference) tensors.
    features = torch.cat(feats)
    out_labels = torch.cat(labels).long() if len(labels) == len(feats) else None
    out_texts = _cat_padded(texts) if len(texts) == len(feats) else None
    return features, out_labels, out_texts


def encode_batched(
    fn: Callable[[Tensor], Tensor],
    inputs: Tensor,
    device: torch.device | str,
    batch_size: int = 256,
    model: nn.Module | None = None,
) -> Tensor:
    """``fn`` over ``inputs (M, …)`` in batches of ``batch_size``: ``(M, D)`` float32 on CPU.
    ``model`` (default: the owner of ``fn``) is in eval mode meanwhile."""
    chunks: list[Tensor] = []
    with eval_mode(model if model is not None else _owner(fn)), torch.inference_mode():
        for part in torch.split(inputs, batch_size):
            chunks.append(fn(part.to(device)).float().cpu())
    return torch.cat(chunks)


def encode_text_batched(
    encoder: nn.Module,
    tokens: Tensor,
    device: torch.device | str,
    batch_size: int = 256,
    model: nn.Module | None = None,
) -> Tensor:
    """``encoder.encode_text`` over ``tokens (M, L)`` in batches: ``(M, D)`` float32 on CPU."""
    return encode_batched(
        encoder.encode_text, tokens, device, batch_size, model if model is not None else encoder
    )
