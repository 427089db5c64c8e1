"""Tip-Adapter and Tip-Adapter-F (Zhang et al., 2022, "Tip-Adapter: Training-free Adaption of
CLIP for Few-shot Classification", ECCV 2022, arXiv 2111.03930; official code
github.com/gaopengcuhk/Tip-Adapter @ d0e2d6f: ``main.py``, ``main_imagenet.py``, ``utils.py``,
``configs/*.yaml``).

One module, ``finetune`` choosing the variant. With f̂ the L2-normalised frozen CLIP image
feature and W the zero-shot text classifier (the dataset's prompt; the 7-template ensemble on
ImageNet, ``utils.clip_classifier``):

    F = normalize(mean over 10 augmentation passes of CLIP(x_train))     (``build_cache_model``)
    L = one-hot(y_train)
    logits = 100 · f̂ Wᵀ + α · exp(−β(1 − f̂ Fᵀ)) L                       (``run_tip_adapter``)

- **Tip-Adapter** (``finetune: false``) trains nothing: the cache is built at fit start from
  the few-shot train split, seen through ``augment_epochs`` passes of the ``"tip"`` transform
  (``RandomResizedCrop(scale 0.5-1)`` + flip; :func:`zoo.fewshot.feature_cache.fewshot_features`,
  cached per pass on disk), then α and β are searched (below). Fit it with
  ``trainer.max_epochs: 0``; the evaluation callbacks then run at fit end.
- **Tip-Adapter-F** (``finetune: true``) makes F learnable: the head's ``keys``, an
  ``nn.Linear(d, N·K, bias=False)`` initialised to F (``run_tip_adapter_F``), trained with
  cross-entropy on the logits above at the initial α, β, on images through the frozen CLIP
  (batch 256, the ``"tip"`` view: :class:`datamodules.tip_adapter.TipAdapterDataModule`);
  AdamW lr 1e-3, eps 1e-4 (torch's default weight decay 0.01 and betas (0.9, 0.999): the
  code passes neither), cosine annealing to 0 over all steps, stepped per batch, no
  warm-up, 20 epochs (``configs/*.yaml``: ``lr``, ``train_epoch``; EuroSAT 100). After the
  last epoch α, β are searched with the learned keys.

The head is :class:`zoo.fewshot.cache_model.TipAdapterHead`; the math, the search and its
exact grid are in :mod:`zoo.fewshot.cache_model`. The CLIP term uses the code's literal 100
(``clip_scale``; ``null`` takes the CLIP's ``exp(logit_scale)``, the same for OpenAI weights).

**α/β search** (``utils.search_hp``, ``search: true``): β over ``search_step[0]`` values up
to ``search_scale[0]``, α over ``search_step[1]`` values up to ``search_scale[1]``, both from
0.1, first best wins. ``search_on: val`` (default) searches on the few-shot validation split,
as ``main.py`` does for 10 of the 11 datasets; ``search_on: test`` reproduces
``main_imagenet.py``, which searches on the test set (and so reports a test-tuned number:
recipes that set it say so). The chosen α, β are logged (``tip/alpha``, ``tip/beta``,
``tip/search_acc``) and stored in the head, so checkpoints and exported models use them.

Differences from the official code, all deliberate:

- model selection: the code evaluates Tip-Adapter-F on the *test* set after every epoch and
  keeps the best epoch's keys (and reports ``max`` of two test accuracies); here the keys of
  the last epoch are kept and only the search looks at data other than train (val by
  default). The test-set epoch selection is not reproduced;
- precision: the code runs CLIP, the cache and the adapter in fp16 on GPU; here the cache
  and the search are float32 (the trainer's ``precision`` applies to the CLIP forward);
- data: CoOp's few-shot sampler and ``min(K, 4)`` validation images per class (the
  datamodule documents it); the code repeats images of small classes and validates on the
  whole val list.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from zoo.fewshot.cache_model import (
    OFFICIAL_CLIP_SCALE,
    CacheSearch,
    TipAdapterHead,
    affinity_product,
    cache_keys_from_passes,
    cache_logits,
    clip_logits,
    search_alpha_beta,
    search_grid,
    tip_logits,
)
from zoo.fewshot.clip_source import CLIPSource
from zoo.fewshot.module import FewShotModule
from zoo.optim import OptimSpec, merge_onto
from zoo.protocols import Tokenizer

# run_tip_adapter_F: torch.optim.AdamW(lr=cfg['lr'] = 0.001, eps=1e-4) with torch's
# defaults (betas (0.9, 0.999), weight decay 0.01) on the keys, CosineAnnealingLR over
# train_epoch * len(train_loader_F) steps (to 0), stepped after every batch.
TIP_ADAPTER_F_OPTIM = OptimSpec(
    optimizer="adamw",
    lr=1e-3,
    eps=1e-4,
    betas=(0.9, 0.999),
    weight_decay=0.01,
    groups="all",
    schedule="warmup_cosine",
    interval="step",
    warmup_epochs=0.0,
    min_lr=0.0,
)


class TipAdapter(FewShotModule):
    """Tip-Adapter (``finetune: false``) or Tip-Adapter-F (``finetune: true``).

    Args:
        clip: the frozen CLIP (:class:`~zoo.fewshot.clip_source.CLIPSource`).
        finetune: train the cache keys (Tip-Adapter-F).
        init_alpha: α before the search (ImageNet's ``configs/imagenet.yaml``: 1.17);
            Tip-Adapter-F trains with it.
        init_beta: β before the search (ImageNet: 1); Tip-Adapter-F trains with it.
        augment_epochs: augmentation passes averaged into the cache keys (the code's 10).
        search: run the α/β grid search (the code's ``search_hp: True``).
        search_scale: the grid's range for β and α (ImageNet: [7, 3]).
        search_step: the grid's steps for β and α (ImageNet: [200, 20]).
        search_on: ``val`` (the protocol) or ``test`` (``main_imagenet.py``: test-tuned).
        clip_scale: the CLIP term's scale (the code's 100); ``None``: ``exp(logit_scale)``.
        affinity_dtype: precision of the affinity product ``f Fᵀ`` in the search and the
            logits: ``float32`` (default) or ``bfloat16`` (faster on CPUs with AMX; the chosen
            α, β can move by a grid step; :func:`zoo.fewshot.cache_model.affinity_product`).
        feature_cache: keep the frozen features on disk (:mod:`zoo.fewshot.feature_cache`).
        optim: Tip-Adapter-F's optimiser (defaults: :data:`TIP_ADAPTER_F_OPTIM`).
    """

    def __init__(
        self,
        clip: CLIPSource | dict[str, Any] | None = None,
        finetune: bool = False,
        init_alpha: float = 1.17,
        init_beta: float = 1.0,
        augment_epochs: int = 10,
        search: bool = True,
        search_scale: tuple[float, float] = (7.0, 3.0),
        search_step: tuple[int, int] = (200, 20),
        search_on: Literal["val", "test"] = "val",
        clip_scale: float | None = OFFICIAL_CLIP_SCALE,
        affinity_dtype: Literal["float32", "bfloat16"] = "float32",
        feature_cache: bool = True,
        optim: OptimSpec = TIP_ADAPTER_F_OPTIM,
    ):
        super().__init__(clip, merge_onto(TIP_ADAPTER_F_OPTIM, optim))
        self.save_hyperparameters()
        if augment_epochs < 1:
            raise ValueError(f"model.augment_epochs must be >= 1, got {augment_epochs}")
        if search_on not in ("val", "test"):
            raise ValueError(f"model.search_on must be 'val' or 'test', got {search_on!r}")
        scale, step = tuple(search_scale), tuple(search_step)
        if len(scale) != 2 or len(step) != 2 or min(step) < 1 or min(scale) <= 0.1:
            raise ValueError(
                "model.search_scale needs two values > 0.1 (β, α) and model.search_step two "
                f"step counts >= 1, got {list(search_scale)} and {list(search_step)}"
            )
        self.finetune, self.search, self.search_on = finetune, search, search_on
        self.init_alpha, self.init_beta = float(init_alpha), float(init_beta)
        self.augment_epochs = int(augment_epochs)
        self.search_scale = (float(scale[0]), float(scale[1]))
        self.search_step = (int(step[0]), int(step[1]))
        self.clip_scale = None if clip_scale is None else float(clip_scale)
        self.affinity_dtype = affinity_dtype
        self.feature_cache = feature_cache
        self.last_search: CacheSearch | None = None
        self._searched_at: int | None = None
        self._num_keys: int | None = None

    # --- the head -----------------------------------------------------------------------------
    @property
    def tip_head(self) -> TipAdapterHead:
        assert isinstance(self.head, TipAdapterHead), "configure_classes() first"
        return self.head

    def build_head(
        self, classnames: list[str], templates: list[str], tokenizer: Tokenizer | None
    ) -> TipAdapterHead:
        num_keys = self._num_keys if self._num_keys is not None else self._train_size()
        head = TipAdapterHead(
            self.encoder.embed_dim, classnames, num_keys, self.clip_scale, self.affinity_dtype
        )
        head.keys.weight.requires_grad_(self.finetune)
        if tokenizer is not None:  # None: rebuilt from a checkpoint, whose state fills it
            if not templates:
                raise ValueError("Tip-Adapter needs prompt templates (data.templates)")
            head.text_weights.copy_(self.zeroshot_weights(classnames, templates, tokenizer))
        head.set_hyperparameters(self.init_alpha, self.init_beta)
        return head

    def _train_size(self) -> int:
        datamodule = self.trainer.datamodule
        build = getattr(datamodule, "build_dataset", None)
        if build is None:
            raise TypeError(
                f"Tip-Adapter builds its cache from a few-shot datamodule's train split "
                f"(build_dataset); {type(datamodule).__name__} has none"
            )
        size = len(build("train", "eval"))
        if size == 0:
            raise ValueError("Tip-Adapter's cache needs training images: the train split is empty")
        return size

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # the cache size is the train split's, not a hyper-parameter: read it from the state
        weight = checkpoint.get("state_dict", {}).get("head.keys.weight")
        if weight is not None:
            self._num_keys = int(weight.shape[0])
        super().on_load_checkpoint(checkpoint)

    # --- the cache and the search ---------------------------------------------------------------
    def _features(self, split: str, transform: str = "eval", aug_pass: int = 0):
        from zoo.fewshot.feature_cache import fewshot_features

        return fewshot_features(
            self,
            self.trainer.datamodule,
            split,
            transform=transform,
            aug_pass=aug_pass,
            cache=self.feature_cache,
        )

    def build_cache(self) -> None:
        """Cache keys from ``augment_epochs`` passes of the ``"tip"`` view over the few-shot
        train split (mean, then L2-normalised), values from its labels."""
        passes, labels = [], None
        for p in range(self.augment_epochs):
            features, pass_labels = self._features("train", "tip", p)
            if labels is not None and not torch.equal(labels, pass_labels):
                raise RuntimeError("augmentation passes disagree on the train labels' order")
            passes.append(features)
            labels = pass_labels
        keys = cache_keys_from_passes(passes).to(self.device)
        self.tip_head.set_cache(keys, labels.to(self.device))
        rank_zero_info(
            f"Tip-Adapter cache: {keys.shape[0]} keys ({len(self.classnames or [])} classes), "
            f"the mean of {self.augment_epochs} augmentation passes"
        )

    @torch.no_grad()
    def search_hyperparameters(self) -> CacheSearch:
        """``search_hp`` on the ``search_on`` split; stores the chosen α, β in the head."""
        head = self.tip_head
        features, labels = self._features(self.search_on)
        f = F.normalize(features.to(self.device), dim=-1)
        labels = labels.to(self.device)
        clip = clip_logits(f, head.text_weights, head.scale(self.encoder))
        result = search_alpha_beta(
            f,
            head.keys.weight.detach(),
            head.key_labels,
            clip,
            labels,
            search_grid(self.search_scale[0], self.search_step[0]),
            search_grid(self.search_scale[1], self.search_step[1]),
            affinity_dtype=self.affinity_dtype,
        )
        zero_shot = (clip.argmax(-1) == labels).float().mean().item() * 100
        right = 0  # the initial α, β (the code prints it before searching), in chunks
        for part, logits, y in zip(f.split(4096), clip.split(4096), labels.split(4096)):
            if self.affinity_dtype == "float32":
                affinity = head.keys(part)
            else:
                affinity = affinity_product(part, head.keys.weight, self.affinity_dtype)
            cache = cache_logits(affinity, head.key_labels, clip.shape[1], head.beta)
            right += int((tip_logits(logits, cache, head.alpha).argmax(-1) == y).sum())
        initial = 100.0 * right / max(1, len(labels))
        head.set_hyperparameters(result.alpha, result.beta)
        self.last_search = result
        self._searched_at = self.global_step
        self._report(result, zero_shot, initial)
        return result

    def _report(self, result: CacheSearch, zero_shot: float, initial: float) -> None:
        metrics = {"tip/alpha": result.alpha, "tip/beta": result.beta}
        metrics["tip/search_acc"] = result.accuracy
        if self.trainer.is_global_zero:
            for logger in self.trainer.loggers:
                logger.log_metrics(metrics, step=self.global_step)
            warning = " (the test set: a test-tuned result)" if self.search_on == "test" else ""
            print(
                f"Tip-Adapter{'-F' if self.finetune else ''} α/β search on {self.search_on}"
                f"{warning}, {result.num_samples} images, {len(result.betas)}×"
                f"{len(result.alphas)} grid: α={result.alpha:.4g}, β={result.beta:.4g}, "
                f"accuracy {result.accuracy:.2f}% (zero-shot {zero_shot:.2f}%, initial α/β "
                f"{initial:.2f}%)",
                flush=True,
            )

    # --- the fit --------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        head = self.tip_head
        if bool(head.ready):  # resumed, or fitted before: the cache (and α, β) are restored
            return
        self.build_cache()
        head.set_hyperparameters(self.init_alpha, self.init_beta)
        if self.search and (not self.finetune or self.trainer.max_epochs == 0):
            self.search_hyperparameters()  # training-free: the model is final now

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        if not self.finetune:
            return None  # nothing trains (fit with trainer.max_epochs: 0)
        return super().training_step(batch, batch_idx)

    def image_features(self, images: Tensor) -> Tensor:
        # nothing before the frozen image tower trains: no activations kept for backward
        with torch.no_grad():
            return self.encoder.encode_image(images)

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        # search after the last epoch, before the evaluation callbacks' on_train_end and
        # before the checkpoint of this epoch is written (the module's hook runs first)
        if self.finetune and self.search and self._last_epoch():
            self.search_hyperparameters()

    def on_train_end(self) -> None:
        # a fit stopped early (EarlyStopping, interruption) still gets its search, but
        # after the evaluation callbacks of this fit have run
        if self.finetune and self.search and self._searched_at != self.global_step:
            self.search_hyperparameters()

    def _last_epoch(self) -> bool:
        """Whether the epoch ending now is the fit's last (max_epochs or max_steps)."""
        trainer = self.trainer
        max_steps = trainer.max_steps
        if max_steps is not None and max_steps >= 0 and trainer.global_step >= max_steps:
            return True
        max_epochs = trainer.max_epochs
        done = trainer.fit_loop.epoch_progress.current.processed
        return max_epochs is not None and max_epochs >= 0 and done >= max_epochs

    # --- the model protocols ----------------------------------------------------------------------
    def class_logits(self, features: Tensor, class_weights: Tensor) -> Tensor:
        """The full cache model on ``features(images, "embed")`` (the frozen CLIP feature):
        ``100 · f̂ Wᵀ + α exp(−β(1 − f̂ Fᵀ)) L``."""
        return self.tip_head.tip_logits(F.normalize(features, dim=-1), class_weights, self.encoder)
