"""Evaluation protocols as Lightning callbacks.

Each callback runs one protocol on the datamodule's labelled evaluation splits
(``datamodule.eval_dataloader("train" | "test")``): the train split fits the linear probe /
kNN memory bank, the test split is scored. When it runs:

- at the end of ``fit`` (in ``on_train_end``: Lightning's ``on_fit_end`` runs after the
  strategy teardown has moved the model to CPU and unwrapped DDP, so evaluating there
  would run on CPU);
- in ``trainer.validate`` (``on_validation_epoch_end`` with ``trainer.state.fn ==
  "validate"``, never during the sanity check or fit's own validation) and in
  ``trainer.test`` (``on_test_epoch_end``);
- every ``every_n_epochs`` training epochs when > 0 (the end-of-fit run is skipped when the
  last epoch was just evaluated).

What each callback asks of the module and the datamodule is a protocol of
:mod:`zoo.protocols`, never a submodule: image ``features(images, kind)`` (every callback),
``class_weights(classnames, templates)`` (zero-shot), ``text_features(tokens)``
(retrieval); the datamodule's ``eval_dataloader(split)`` (every callback), ``classnames`` /
``templates`` and a tokenizer (``tokenizer`` or ``preprocess``) for zero-shot. A module or
datamodule that lacks one is skipped with a warning naming the missing method, at fit start
("will be skipped") and at each evaluation; so is a protocol method that raises
:class:`zoo.protocols.ProtocolUnavailable`.

Only global rank 0 computes; the other ranks wait at ``trainer.strategy.barrier()`` and
receive the results by broadcast. Under FSDP every rank gathers the full parameters and runs
the same passes (``zoo.eval.sharding``); rank 0's results are published. Metrics ``eval/<protocol>_<metric>`` (percent) go to
``trainer.loggers`` (``log_metrics(..., step=trainer.global_step)``), ``self.results`` and
``trainer.callback_metrics``, and one summary line is printed. Train/eval flags of every
submodule are restored afterwards. With ``fast_dev_run=n`` only n batches per split are
used (a smoke test of the code path, not a measurement).

Pictures and tables go through :mod:`zoo.eval.visuals` to the TensorBoard loggers in
``trainer.loggers`` only, from global rank 0 only, at ``trainer.global_step``: ZeroShotEval's
confusion matrix, prediction grid and per-class accuracy (``log_images``, on by default)
and the projector embeddings of LinearProbeEval / KNNEval (``log_embeddings``, off by
default). Without such a logger nothing is drawn; a failure while drawing only warns.
Metrics and summary lines do not depend on them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from zoo.eval.features import batch_get, encode_batched, eval_mode, extract_features
from zoo.eval.knn import knn_accuracy
from zoo.eval.linear_probe import DEFAULT_CS, linear_probe
from zoo.eval.retrieval import matched_recall_from_similarity, retrieval_recall
from zoo.eval.sharding import gathered_parameters, parameter_sharding
from zoo.eval.visuals import log_embedding, log_eval_visuals, tensorboard_writers
from zoo.eval.zeroshot import topk_accuracy, zeroshot_logits
from zoo.preprocess import PreprocessSpec
from zoo.protocols import (
    CheckedEvalData,
    ClassLogits,
    ClassNames,
    ClassPrompts,
    EvalData,
    FeatureKind,
    ImageFeatures,
    ProtocolUnavailable,
    TextFeatures,
    ZeroShotClassifier,
    data_tokenizer,
    why_not,
)

Feature = FeatureKind


class EvalCallback(Callback):
    """Shared scheduling, rank-0 execution, feature extraction and reporting.

    Subclasses implement :meth:`evaluate`, returning ``(metrics, summary_line)`` with
    metric names without the ``eval/`` prefix, or ``None`` to skip (a warning says why), and
    list the model protocols they call in ``model_protocols``.
    """

    #: The :mod:`zoo.protocols` model protocols :meth:`evaluate` calls.
    model_protocols: tuple[type, ...] = (ImageFeatures,)
    #: The :mod:`zoo.protocols` datamodule protocols :meth:`evaluate` calls.
    data_protocols: tuple[type, ...] = (EvalData,)

    def __init__(self, every_n_epochs: int = 0) -> None:
        super().__init__()
        if every_n_epochs < 0:
            raise ValueError(f"every_n_epochs must be >= 0, got {every_n_epochs}")
        self.every_n_epochs = every_n_epochs
        self.results: dict[str, float] = {}
        self._last_fit_step: int | None = None
        self._train_started = True  # reset by on_fit_start

    # ---------------------------------------------------------------- protocol
    def evaluate(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, datamodule: Any
    ) -> tuple[dict[str, float], str] | None:
        """Run the protocol on rank 0; ``(metrics, summary line)`` or ``None`` to skip."""
        raise NotImplementedError

    def required_splits(self) -> dict[str, dict[str, bool]]:
        """The splits this protocol reads and what it needs of each, e.g.
        ``{"test": {"labels": True}}``; checked at fit start (:meth:`check_data`)."""
        return {}

    def unavailable(self, pl_module: Any, datamodule: Any) -> str | None:
        """Why this callback cannot run with this module and datamodule (a missing protocol
        method, named), or ``None``."""
        if datamodule is None:
            return "the trainer has no datamodule (pass `datamodule=` to fit / validate / test)"
        reasons = [why_not(datamodule, p, "the datamodule") for p in self.data_protocols]
        reasons += [why_not(pl_module, p, "the module") for p in self.model_protocols]
        found = [r for r in reasons if r is not None]
        return "; ".join(found) if found else None

    def check_data(self, trainer: pl.Trainer) -> None:
        """Fail before the first training step if this protocol could not run at the end:
        each required split is opened and checked by the datamodule
        (``check_eval_split``, :class:`zoo.protocols.CheckedEvalData`), naming the file and
        the problem. A datamodule without ``check_eval_split`` is not checked ahead."""
        datamodule = trainer.datamodule
        if not isinstance(datamodule, CheckedEvalData):
            return
        for split, needs in self.required_splits().items():
            datamodule.check_eval_split(split, who=type(self).__name__, **needs)

    # ---------------------------------------------------------------- hooks
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_fit_step = None
        self._train_started = False
        why = self.unavailable(pl_module, trainer.datamodule)
        if why is not None:  # say so now, not after hours of training
            rank_zero_warn(f"{type(self).__name__} will be skipped: {why}")
            return
        self.check_data(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.every_n_epochs > 0 and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self.run(trainer, pl_module)
            self._last_fit_step = trainer.global_step

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._train_started = True

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._last_fit_step != trainer.global_step:
            self.run(trainer, pl_module)
            self._last_fit_step = trainer.global_step

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A training-free method (zero-shot CLIP, Tip-Adapter) fits with max_epochs=0:
        # Lightning then skips the training loop and its on_train_end, so evaluate here.
        if not self._train_started and not trainer.interrupted:
            self.run(trainer, pl_module)
            self._last_fit_step = trainer.global_step

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING and not trainer.sanity_checking:
            self.run(trainer, pl_module)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.run(trainer, pl_module)

    # ---------------------------------------------------------------- machinery
    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """Evaluate on rank 0 (every rank under FSDP), synchronise, publish; returns the
        ``eval/…`` metrics."""
        results: dict[str, float] = {}
        sharding = parameter_sharding(trainer)
        if sharding == "unsupported":
            self._skip(
                f"the parameters are sharded by {type(trainer.strategy).__name__} in a way "
                "the evaluation callbacks cannot gather (FSDP2 / DeepSpeed ZeRO-3); evaluate "
                "the saved checkpoint on one device or with DDP: `zoo test --config RECIPE --ckpt_path CKPT`"
            )
        elif sharding == "fsdp" or trainer.is_global_zero:
            datamodule = trainer.datamodule
            why = self.unavailable(pl_module, datamodule)
            if why is not None:
                self._skip(why)
            else:
                try:
                    with gathered_parameters(trainer, sharding), eval_mode(pl_module):
                        out = self.evaluate(trainer, pl_module, datamodule)
                except ProtocolUnavailable as err:
                    out = self._skip(str(err))
                if out is not None:
                    metrics, summary = out
                    results = {f"eval/{k}": float(v) for k, v in metrics.items()}
                    if trainer.is_global_zero:
                        print(summary, flush=True)
        trainer.strategy.barrier(f"zoo.eval.{type(self).__name__}")
        results = trainer.strategy.broadcast(results, src=0)
        if results:
            self._publish(trainer, results)
        return results

    def _publish(self, trainer: pl.Trainer, results: dict[str, float]) -> None:
        self.results = dict(results)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(results, step=trainer.global_step)
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in results.items()})

    @staticmethod
    def _max_batches(trainer: pl.Trainer) -> int | None:
        return int(trainer.fast_dev_run) or None

    @staticmethod
    def _encoding(trainer: pl.Trainer) -> AbstractContextManager[Any]:
        """The trainer's precision context (autocast / true-half dtype) for protocol calls."""
        return trainer.precision_plugin.forward_context()

    def _image_features(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        split: str,
        feature: Feature,
        on_batch: Callable[[Any], None] | None = None,
        loader: Iterable[Any] | None = None,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """``(features, labels, caption tokens)`` of a split: ``pl_module.features(images,
        kind=feature)`` (:class:`zoo.protocols.ImageFeatures`). ``on_batch`` sees every
        encoded batch (``extract_features``). ``loader`` replaces the datamodule's
        ``eval_dataloader(split)`` (``split`` then only names it in messages)."""
        features = pl_module.features  # type: ignore[attr-defined]
        if loader is None:
            loader = trainer.datamodule.eval_dataloader(split)
        convert = trainer.precision_plugin.convert_input
        stats: dict[str, int] = {}
        with self._encoding(trainer):
            out = extract_features(
                lambda images: features(convert(images), kind=feature),
                loader,
                pl_module.device,
                model=pl_module,
                max_batches=self._max_batches(trainer),
                desc=f"{type(self).__name__} {split}",
                progress=trainer.is_global_zero,
                stats=stats,
                on_batch=on_batch,
            )
        if stats.get("dropped") and trainer.is_global_zero:
            print(
                f"{type(self).__name__}: {stats['dropped']} bad {split} images dropped "
                "(neither scored nor replaced; see the zoo.data warnings)",
                flush=True,
            )
        return out

    def _fit_and_score_features(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
        """Labelled features of ``self.train_split`` (to fit on) and ``self.test_split``
        (to score), or ``None`` when either split has no labels."""
        xtr, ytr, _ = self._image_features(trainer, pl_module, self.train_split, self.feature)
        xte, yte, _ = self._image_features(trainer, pl_module, self.test_split, self.feature)
        if ytr is None or yte is None:
            return None
        return xtr, ytr, xte, yte

    def _skip(self, why: str) -> None:
        rank_zero_warn(f"{type(self).__name__} skipped: {why}")
        return None

    def _log_visuals(self, log: Callable[[], Any]) -> None:
        """Run ``log`` (pictures / tables for TensorBoard, :mod:`zoo.eval.visuals`); a
        failure there warns and never breaks the evaluation."""
        try:
            log()
        except Exception as err:  # visuals are best effort
            rank_zero_warn(f"{type(self).__name__}: visuals not logged: {err!r}")

    def _log_embeddings(
        self, trainer: pl.Trainer, datamodule: Any, tag: str, features: Tensor, labels: Tensor
    ) -> None:
        """Features of the scored split for TensorBoard's projector (rank 0, best effort)."""
        classnames = _classnames(datamodule)
        self._log_visuals(lambda: log_embedding(trainer, tag, features, labels, classnames))


def _keep_images(out: list[Tensor], limit: int) -> Callable[[Any], None]:
    """An ``extract_features`` ``on_batch`` hook appending the first ``limit`` input images
    of the pass (in feature order) to ``out``."""

    def keep(batch: Any) -> None:
        have = sum(len(t) for t in out)
        images = batch_get(batch, "image")
        if have < limit and isinstance(images, Tensor):
            out.append(images[: limit - have].detach().cpu())

    return keep


def _topk_summary(label: str, acc: dict[str, float]) -> str:
    """``"<label> top-1: 73.45% (top-5 98.10%)"`` from ``{"top1": …, "top5": …}``."""
    (first, value), *rest = acc.items()
    extra = ", ".join(f"top-{n[3:]} {v:.2f}%" for n, v in rest)
    return f"{label} top-{first[3:]}: {value:.2f}%" + (f" ({extra})" if extra else "")


def _classnames(datamodule: Any) -> list[str] | None:
    """The datamodule's class names (:class:`zoo.protocols.ClassNames`), if it has any."""
    names = datamodule.classnames if isinstance(datamodule, ClassNames) else None
    return list(names) if names else None


def _num_classes(datamodule: Any, *labels: Tensor) -> int:
    names = _classnames(datamodule)
    return len(names) if names else int(max(int(y.max()) for y in labels)) + 1


def _normalisation(datamodule: Any) -> tuple[Any, Any]:
    """``(mean, std)`` the split was normalised with, to un-normalise pictures: the
    datamodule's ``preprocess`` spec, else its ``mean`` / ``std`` (``None``: OpenAI's)."""
    spec = getattr(datamodule, "preprocess", None)
    if isinstance(spec, PreprocessSpec):
        return spec.mean, spec.std
    return getattr(datamodule, "mean", None), getattr(datamodule, "std", None)


class ZeroShotEval(EvalCallback):
    """Zero-shot top-k accuracy: images against the module's class weights (CLIP / SLIP).

    Logs ``eval/zeroshot_top{k}``. Asks the module for ``features(images, "embed")`` and
    ``class_weights(classnames, templates, tokenizer=…, batch_size=text_batch_size)``
    (:mod:`zoo.protocols`; a dual encoder's is the template-ensembled text classifier) and
    scores ``100 · cos`` (CLIP's scale; it changes the softmax of the pictures, not the
    accuracy). Needs ``datamodule.classnames`` and ``.templates``, and passes its tokenizer
    (``datamodule.tokenizer`` or one built from ``datamodule.preprocess``). A module that
    answers :class:`zoo.protocols.ClassLogits` scores the images itself
    (``class_logits(features, class_weights)``: a few-shot cache model adds its cache term).

    ``name`` prefixes the metrics (``eval/{name}_top1``): an adapted classifier (CoOp's
    learned prompts, an adapter) is evaluated by this same callback, under ``fewshot``.

    With ``log_images=True`` (default) and a ``TensorBoardLogger``, rank 0 also logs
    (:func:`zoo.eval.visuals.log_eval_visuals`) the row-normalised confusion matrix
    (``eval/zeroshot_confusion_matrix``, image), the per-class accuracy
    (``eval/zeroshot_per_class_accuracy``, markdown table) and, when ``grid_size > 0``, the
    first ``grid_size`` images of the split with their true class and top-3 predictions
    (``eval/zeroshot_predictions``, image; un-normalised with ``datamodule.mean`` / ``std``,
    default the OpenAI CLIP statistics). The grid's images are kept from the same pass
    that embeds the split, so there is no extra forward pass. Metrics are unchanged.
    """

    def __init__(
        self,
        top_k: Sequence[int] = (1, 5),
        split: str = "test",
        text_batch_size: int = 256,
        every_n_epochs: int = 0,
        log_images: bool = True,
        grid_size: int = 16,
        name: str = "zeroshot",
    ) -> None:
        super().__init__(every_n_epochs)
        if grid_size < 0:
            raise ValueError(f"grid_size must be >= 0, got {grid_size}")
        if not name.isidentifier():
            raise ValueError(f"name must be an identifier (a metric prefix), got {name!r}")
        self.name = name
        self.top_k = tuple(top_k)
        self.split = split
        self.text_batch_size = text_batch_size
        self.log_images = log_images
        self.grid_size = grid_size

    def required_splits(self) -> dict[str, dict[str, bool]]:
        return {self.split: {"labels": True}}

    model_protocols = (ImageFeatures, ZeroShotClassifier)

    def check_data(self, trainer: pl.Trainer) -> None:
        datamodule = trainer.datamodule
        if isinstance(datamodule, CheckedEvalData):
            for attr in ("classnames", "templates"):
                if not getattr(datamodule, attr, None):
                    raise ValueError(
                        f"ZeroShotEval needs data.{attr} (a list, a file, or builtin:…), "
                        "but the datamodule has none"
                    )
        super().check_data(trainer)

    def evaluate(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, datamodule: Any
    ) -> tuple[dict[str, float], str] | None:
        if not isinstance(datamodule, ClassPrompts):
            return self._skip(why_not(datamodule, ClassPrompts, "the datamodule"))
        classnames, templates = datamodule.classnames, datamodule.templates
        if not classnames or not templates:
            return self._skip("the datamodule has no classnames / templates")
        visuals = self.log_images and bool(tensorboard_writers(trainer))
        samples: list[Tensor] = []
        keep = _keep_images(samples, self.grid_size) if visuals and self.grid_size else None
        x, y, _ = self._image_features(trainer, pl_module, self.split, "embed", on_batch=keep)
        if y is None:
            return self._skip(f"the {self.split} split has no labels")
        with self._encoding(trainer), torch.inference_mode():
            classifier = pl_module.class_weights(  # type: ignore[attr-defined]
                classnames,
                templates,
                tokenizer=data_tokenizer(datamodule),
                batch_size=self.text_batch_size,
            )
        classifier = classifier.detach().float().cpu()
        if classifier.shape != (len(classnames), x.shape[1]):  # a bug: fail, do not skip
            raise ValueError(
                f"{type(pl_module).__name__}.class_weights returned shape "
                f"{tuple(classifier.shape)}, expected ({len(classnames)}, {x.shape[1]}): one "
                "row per class name, in the space of features(images, kind='embed')"
            )
        logits = self._logits(trainer, pl_module, x, classifier)
        acc = topk_accuracy(logits, y, self.top_k)
        if visuals:
            self._log_visuals(
                lambda: log_eval_visuals(
                    trainer,
                    f"eval/{self.name}",
                    y,
                    logits.softmax(dim=-1),
                    classnames,
                    images=torch.cat(samples) if samples else None,
                    mean=_normalisation(datamodule)[0],
                    std=_normalisation(datamodule)[1],
                )
            )
        label = "zero-shot" if self.name == "zeroshot" else self.name
        summary = _topk_summary(label, acc) + (
            f" on {len(y)} {self.split} images, {len(classnames)} classes"
        )
        return {f"{self.name}_{k}": v for k, v in acc.items()}, summary

    def _logits(self, trainer: pl.Trainer, pl_module: Any, x: Tensor, classifier: Tensor) -> Tensor:
        """``(N, C)`` float32 CPU logits: the module's ``class_logits`` when it has them
        (on its device, in chunks), else ``100 · cos``."""
        if not isinstance(pl_module, ClassLogits):
            return zeroshot_logits(x, classifier)
        device = pl_module.device
        weights = classifier.to(device)
        with self._encoding(trainer), torch.inference_mode():
            chunks = [
                pl_module.class_logits(part.to(device), weights).float().cpu()
                for part in x.split(4096)
            ]
        return torch.cat(chunks)


class LinearProbeEval(EvalCallback):
    """CLIP linear probe (L-BFGS logistic regression, C picked on a validation split).

    Logs ``eval/linear_probe_top1`` and the chosen ``eval/linear_probe_C``; features are the
    pre-projection trunk (``feature="trunk"``) or the projected embedding (``"embed"``).
    With ``log_embeddings=True`` (default off) and a ``TensorBoardLogger``, rank 0 also
    writes the scored split's features for TensorBoard's projector under the tag
    ``eval/linear_probe_embeddings`` (class names as metadata, at most 10,000 points).
    ``val_split`` picks C on that split instead of ``val_fraction`` of the train features
    (the few-shot protocol: C chosen on the K-shot validation split, as CoOp's ``lpclip``).
    """

    def __init__(
        self,
        feature: Feature = "trunk",
        Cs: Sequence[float] = DEFAULT_CS,
        val_fraction: float = 0.2,
        max_iter: int = 1000,
        standardize: bool = False,
        seed: int = 0,
        train_split: str = "train",
        test_split: str = "test",
        every_n_epochs: int = 0,
        log_embeddings: bool = False,
        val_split: str | None = None,
    ) -> None:
        super().__init__(every_n_epochs)
        self.val_split = val_split
        self.feature = feature
        self.Cs = tuple(float(c) for c in Cs)
        self.val_fraction = val_fraction
        self.max_iter = max_iter
        self.standardize = standardize
        self.seed = seed
        self.train_split = train_split
        self.test_split = test_split
        self.log_embeddings = log_embeddings

    def required_splits(self) -> dict[str, dict[str, bool]]:
        splits = {self.train_split: {"labels": True}, self.test_split: {"labels": True}}
        if self.val_split:
            splits[self.val_split] = {"labels": True}
        return splits

    def evaluate(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, datamodule: Any
    ) -> tuple[dict[str, float], str] | None:
        pair = self._fit_and_score_features(trainer, pl_module)
        if pair is None:
            return self._skip("the evaluation splits have no labels")
        xtr, ytr, xte, yte = pair
        if ytr.unique().numel() < 2:
            return self._skip("fewer than 2 classes in the train features")
        xva = yva = None
        if self.val_split:
            xva, yva, _ = self._image_features(trainer, pl_module, self.val_split, self.feature)
            if yva is None:
                return self._skip(f"the {self.val_split} split has no labels")
        res = linear_probe(
            xtr,
            ytr,
            xte,
            yte,
            self.Cs,
            self.val_fraction,
            self.seed,
            self.max_iter,
            self.standardize,
            val_x=xva,
            val_y=yva,
        )
        if self.log_embeddings:
            self._log_embeddings(trainer, datamodule, "eval/linear_probe_embeddings", xte, yte)
        summary = (
            f"linear probe ({self.feature}) top-1: {res['top1']:.2f}% (C={res['C']:g}) "
            f"on {len(yte)} {self.test_split} images, fitted on {len(ytr)}"
        )
        return {"linear_probe_top1": res["top1"], "linear_probe_C": res["C"]}, summary


class KNNEval(EvalCallback):
    """Weighted kNN accuracy (InstDisc / DINO: k neighbours, votes exp(cos / T)).

    Logs ``eval/knn_top{k}`` for ``top_k``. ``log_embeddings=True`` (default off) writes
    the scored split's features for TensorBoard's projector (``eval/knn_embeddings``), as
    :class:`LinearProbeEval` does.
    """

    def __init__(
        self,
        k: int = 20,
        temperature: float = 0.07,
        feature: Feature = "trunk",
        top_k: Sequence[int] = (1, 5),
        train_split: str = "train",
        test_split: str = "test",
        every_n_epochs: int = 0,
        log_embeddings: bool = False,
    ) -> None:
        super().__init__(every_n_epochs)
        self.k = k
        self.temperature = temperature
        self.feature = feature
        self.top_k = tuple(top_k)
        self.train_split = train_split
        self.test_split = test_split
        self.log_embeddings = log_embeddings

    def required_splits(self) -> dict[str, dict[str, bool]]:
        return {self.train_split: {"labels": True}, self.test_split: {"labels": True}}

    def evaluate(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, datamodule: Any
    ) -> tuple[dict[str, float], str] | None:
        pair = self._fit_and_score_features(trainer, pl_module)
        if pair is None:
            return self._skip("the evaluation splits have no labels")
        xtr, ytr, xte, yte = pair
        num_classes = _num_classes(datamodule, ytr, yte)
        acc = knn_accuracy(xtr, ytr, xte, yte, num_classes, self.k, self.temperature, self.top_k)
        if self.log_embeddings:
            self._log_embeddings(trainer, datamodule, "eval/knn_embeddings", xte, yte)
        label = f"kNN (k={self.k}, T={self.temperature:g}, {self.feature})"
        summary = _topk_summary(label, acc) + (
            f" on {len(yte)} {self.test_split} images, {len(ytr)} in the memory bank"
        )
        return {f"knn_{n}": v for n, v in acc.items()}, summary


class RetrievalEval(EvalCallback):
    """Image→text and text→image recall R@k on the captions of an evaluation split.

    Captions come from the batches' ``"text"`` tokens (tokenised by the datamodule):
    ``(B, L)`` (one caption per image) or ``(B, K, L)`` (K captions per image). Asks the
    module for ``features(images, "embed")`` and ``text_features(tokens)``
    (:mod:`zoo.protocols`). Logs ``eval/retrieval_i2t_r{k}`` and
    ``eval/retrieval_t2i_r{k}``. Each row of the split counts as a distinct image.

    ``match``: also log ``eval/retrieval_{i2t,t2i}_match_r{k}``, where a hit is any item that
    fits the query, from the datamodule's ``caption_relevance(split)`` (generated data that
    knows it, e.g. digit mosaics whose captions name one tile: many mosaics fit "a seven in
    the top left", and pair recall cannot tell a right look-alike from a wrong image).
    """

    def __init__(
        self,
        split: str = "test",
        ks: Sequence[int] = (1, 5, 10),
        text_batch_size: int = 256,
        every_n_epochs: int = 0,
        match: bool = False,
    ) -> None:
        super().__init__(every_n_epochs)
        self.split = split
        self.ks = tuple(ks)
        self.text_batch_size = text_batch_size
        self.match = match

    model_protocols = (ImageFeatures, TextFeatures)

    def required_splits(self) -> dict[str, dict[str, bool]]:
        return {self.split: {"labels": False, "captions": True}}

    def check_data(self, trainer: pl.Trainer) -> None:
        super().check_data(trainer)
        if self.match:  # fail at fit start, not after training, when no relevance exists
            self._datamodule_relevance(trainer.datamodule)

    def evaluate(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, datamodule: Any
    ) -> tuple[dict[str, float], str] | None:
        image, _, tokens = self._image_features(trainer, pl_module, self.split, "embed")
        if tokens is None:
            return self._skip(f"the {self.split} batches carry no 'text' tokens")
        per_image = tokens.shape[1] if tokens.dim() == 3 else 1
        tokens = tokens.reshape(-1, tokens.shape[-1])
        text_to_image = torch.arange(image.shape[0]).repeat_interleave(per_image)
        with self._encoding(trainer):
            text = encode_batched(
                pl_module.text_features,  # type: ignore[attr-defined]
                tokens,
                pl_module.device,
                self.text_batch_size,
                model=pl_module,
            )
        rec = retrieval_recall(image, text, text_to_image, self.ks)
        ks = "/".join(str(k) for k in self.ks)
        i2t = "/".join(f"{rec[f'i2t_r{k}']:.2f}" for k in self.ks)
        t2i = "/".join(f"{rec[f't2i_r{k}']:.2f}" for k in self.ks)
        summary = (
            f"retrieval R@{ks}: image→text {i2t}%, text→image {t2i}% "
            f"on {image.shape[0]} {self.split} images, {text.shape[0]} captions"
        )
        metrics = {f"retrieval_{n}": v for n, v in rec.items()}
        if self.match:
            relevance = self._relevance(
                datamodule, image.shape[0], text.shape[0], self._max_batches(trainer) is not None
            )
            image_n = F.normalize(image.float(), dim=-1)
            text_n = F.normalize(text.float(), dim=-1)
            matched = matched_recall_from_similarity(image_n @ text_n.T, relevance, self.ks)
            metrics |= {f"retrieval_{n.replace('_r', '_match_r')}": v for n, v in matched.items()}
            summary += "; by match: image→text " + "/".join(
                f"{matched[f'i2t_r{k}']:.2f}" for k in self.ks
            )
            summary += "%, text→image " + "/".join(f"{matched[f't2i_r{k}']:.2f}" for k in self.ks)
            summary += "%"
        return metrics, summary

    def _relevance(self, datamodule: Any, n_images: int, n_texts: int, limited: bool) -> Tensor:
        """The datamodule's relevance, cut to the first batches when only those were encoded
        (``fast_dev_run``: the loader is in order, so they are its first rows)."""
        relevance = self._datamodule_relevance(datamodule)
        if limited and relevance.shape[0] >= n_texts and relevance.shape[1] >= n_images:
            relevance = relevance[:n_texts, :n_images]
        if tuple(relevance.shape) != (n_texts, n_images):
            raise ValueError(
                f"caption_relevance({self.split!r}) has shape {tuple(relevance.shape)}, but "
                f"{n_texts} captions and {n_images} images were encoded (bad images dropped?)"
            )
        return relevance

    def _datamodule_relevance(self, datamodule: Any) -> Tensor:
        relevance = getattr(datamodule, "caption_relevance", lambda split: None)(self.split)
        if relevance is None:
            raise ValueError(
                f"RetrievalEval(match=True) needs a datamodule that knows which images fit "
                f"which caption (caption_relevance); {type(datamodule).__name__} does not for "
                f"the {self.split!r} split: drop match"
            )
        return relevance
