"""What the evaluation callbacks ask of a model and of a datamodule.

The callbacks in :mod:`zoo.eval.callbacks` never reach into a module's submodules: they ask
the module through these protocols, so a dual encoder, a prompt learner on a frozen CLIP, an
adapter or a vision-only self-supervised model is evaluated by the same code.

Model protocols (``typing.Protocol``, runtime-checkable):

- :class:`ImageFeatures`: ``features(images, kind)`` → ``(B, D)``. ``kind="embed"`` is the
  space compared with :meth:`ZeroShotClassifier.class_weights` and
  :meth:`TextFeatures.text_features` (zero-shot, retrieval); ``kind="trunk"`` is the pooled
  feature before any projection, the one linear probes and kNN read by default (CLIP,
  Radford et al. 2021, App. A.3, probes the pre-projection feature). A model with a single
  feature space answers it for both kinds;
- :class:`ZeroShotClassifier`: ``class_weights(classnames, templates)`` → ``(C, D)`` in the
  ``"embed"`` space; images are scored by cosine similarity against its rows. A dual encoder
  answers with the prompt-ensembled text classifier; a prompt learner (CoOp) with its learned
  prompts; an adapter with its fused classifier;
- :class:`TextFeatures`: ``text_features(tokens)`` → ``(M, D)`` for tokenised captions;
- :class:`Detector`, :class:`InstanceSegmenter`, :class:`CaptionGenerator`: ``detect`` /
  ``segment`` / ``caption(images)``, the task heads' predictions scored by the in-domain
  metrics of :mod:`zoo.eval.visft`;
- :class:`ClassLogits` (optional): ``class_logits(features, class_weights)`` → ``(B, C)``,
  for a classifier whose scores are not a plain cosine against ``class_weights`` (a cache
  model adds ``α·A·L`` to it, Tip-Adapter). Without it, images are scored by
  ``100 · cos(features, class_weights)``.

A protocol method that cannot answer in the situation at hand (a kind of feature the model
does not have, no tokenizer) raises :class:`ProtocolUnavailable`; the callback then skips
with that message. A module that lacks a method is skipped with a message naming it
(:func:`missing_members`).

Datamodule protocols: :class:`EvalData` (``eval_dataloader(split)``, needed by every
callback of :mod:`zoo.eval.callbacks`), :class:`CheckedEvalData` (``check_eval_split``:
optional, lets the callbacks fail before training), :class:`ClassPrompts` (``classnames``,
``templates``: zero-shot) and the tokenizer, from ``datamodule.tokenizer`` or the
datamodule's :class:`zoo.preprocess.PreprocessSpec` (:func:`data_tokenizer`). The callbacks
of :mod:`zoo.eval.visft` ask instead for :class:`TaskEvalData` (``task_dataloader(task,
split)``: in-domain task metrics) and :class:`QuestionData` (``question_dataloader(split,
question)``: out-of-domain question probes).

:class:`DualEncoderProtocols` implements the model protocols for a module holding a
:class:`zoo.backbones.DualEncoder` at ``self.encoder`` (CLIP, SLIP).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Generic, Literal, Protocol, runtime_checkable

import torch
from torch import Tensor

FeatureKind = Literal["embed", "trunk"]
FEATURE_KINDS: tuple[str, ...] = ("embed", "trunk")

#: A zero-shot template: a ``"{}"`` format string or a callable ``classname -> prompt``.
Template = str | Callable[[str], str]
#: Texts → ``(N, L)`` token ids (e.g. :class:`zoo.data.TextTokenizer`).
Tokenizer = Callable[[list[str]], Tensor]


class ProtocolUnavailable(RuntimeError):
    """Raised by a protocol method that cannot answer here; the evaluation callback that
    asked skips with this message instead of crashing."""


# --------------------------------------------------------------------------- model side
@runtime_checkable
class ImageFeatures(Protocol):
    """Image features for linear probe, kNN, zero-shot and retrieval."""

    def features(self, images: Tensor, kind: FeatureKind = "embed") -> Tensor:
        """``(B, D)`` features of a batch of model-ready images (on the module's device)."""
        ...


@runtime_checkable
class ZeroShotClassifier(Protocol):
    """Zero-shot classifier weights, compared by cosine with ``features(kind="embed")``."""

    def class_weights(
        self,
        classnames: Sequence[str],
        templates: Sequence[Template],
        *,
        tokenizer: Tokenizer | None = None,
        batch_size: int = 256,
    ) -> Tensor:
        """``(C, D)`` class weights. ``tokenizer`` is the datamodule's (``None`` when it has
        none) and ``batch_size`` the text batch size; a module that does not tokenise (a
        fixed or learned classifier) ignores both."""
        ...


@runtime_checkable
class TextFeatures(Protocol):
    """Caption features for retrieval, in the ``"embed"`` space of :class:`ImageFeatures`."""

    def text_features(self, tokens: Tensor) -> Tensor:
        """``(M, D)`` features of ``(M, L)`` token ids (on the module's device)."""
        ...


@runtime_checkable
class ClassLogits(Protocol):
    """Optional: the full class logits from ``features(images, "embed")`` and the
    ``class_weights`` of the same classes, when they are more than a cosine."""

    def class_logits(self, features: Tensor, class_weights: Tensor) -> Tensor:
        """``(B, C)`` logits (on the features' device)."""
        ...


@runtime_checkable
class Detector(Protocol):
    """Boxes for the in-domain detection metrics (:class:`zoo.eval.visft.DetectionEval`)."""

    def detect(self, images: Tensor) -> list[dict[str, Tensor]]:
        """One dict per image: ``"boxes"`` ``(N, 4)`` x1 y1 x2 y2 in input pixels,
        ``"scores"`` ``(N,)``, ``"labels"`` ``(N,)`` int64 (contiguous class ids)."""
        ...


@runtime_checkable
class InstanceSegmenter(Protocol):
    """Instance masks for the in-domain segmentation metrics
    (:class:`zoo.eval.visft.SegmentationEval`)."""

    def segment(self, images: Tensor) -> list[dict[str, Tensor]]:
        """One dict per image: ``"masks"`` ``(N, H, W)`` bool at the input size,
        ``"scores"`` ``(N,)``, ``"labels"`` ``(N,)`` int64."""
        ...


@runtime_checkable
class CaptionGenerator(Protocol):
    """Decoded captions for the caption metrics (:class:`zoo.eval.visft.CaptionEval`)."""

    def caption(self, images: Tensor) -> list[str]:
        """One caption per image."""
        ...


# ---------------------------------------------------------------------- datamodule side
@runtime_checkable
class EvalData(Protocol):
    """Labelled evaluation splits: batches are dicts with ``"image"`` and optionally
    ``"label"`` and ``"text"`` (caption tokens)."""

    def eval_dataloader(self, split: str) -> Iterable[Any]: ...


@runtime_checkable
class CheckedEvalData(Protocol):
    """Optional: lets a callback fail before the first training step when its split could
    not be evaluated at the end (not configured, no labels, no captions …)."""

    def check_eval_split(
        self, split: str, who: str, labels: bool = True, captions: bool = False
    ) -> None: ...


@runtime_checkable
class ClassNames(Protocol):
    """Class names, in label order (``None`` or empty when the data has none): kNN's class
    count and the names in pictures."""

    classnames: Sequence[str] | None


@runtime_checkable
class ClassPrompts(ClassNames, Protocol):
    """Class names and zero-shot templates (``None`` or empty when the data has none)."""

    templates: Sequence[Template] | None


def data_tokenizer(datamodule: Any) -> Tokenizer | None:
    """The datamodule's tokenizer: ``datamodule.tokenizer`` when it is callable, else one
    built from ``datamodule.preprocess`` (a :class:`zoo.preprocess.PreprocessSpec` naming a
    tokenizer), else ``None``."""
    tokenizer = getattr(datamodule, "tokenizer", None)
    if callable(tokenizer):
        return tokenizer
    from zoo.preprocess import PreprocessSpec

    spec = getattr(datamodule, "preprocess", None)
    if isinstance(spec, PreprocessSpec) and spec.tokenizer is not None:
        from zoo.data import TextTokenizer

        return TextTokenizer(spec.tokenizer, spec.context_length)
    return None


@runtime_checkable
class TaskEvalData(Protocol):
    """Deterministic batches of a supervised task ("detection", "segmentation",
    "caption") in its training format, plus ``"image_id"`` and, for captions, the raw
    references ``"captions"`` (``list[list[str]]``)."""

    def task_dataloader(self, task: str, split: str) -> Iterable[Any]: ...


@runtime_checkable
class QuestionData(Protocol):
    """Out-of-domain probe questions: batches ``{"image", "label"}`` of the images of a
    split that have the question; ``question_splits`` = (probe-fit split, probe-test split)."""

    question_splits: tuple[str, str]

    def question_dataloader(self, split: str, question: str) -> Iterable[Any]: ...


# ------------------------------------------------------------------------------ messages
def _declared(protocol: type) -> dict[str, Any]:
    """The public methods and attributes a protocol declares, its bases' first, in order
    (attributes map to ``None``)."""
    out: dict[str, Any] = {}
    for cls in reversed(protocol.__mro__):
        if cls not in (Protocol, Generic, object):
            out.update({n: v for n, v in vars(cls).items() if callable(v) and n[0] != "_"})
            out.update({n: None for n in vars(cls).get("__annotations__", {}) if n not in out})
    return out


def _call_form(protocol: type, name: str) -> str:
    """``class_weights(classnames, templates)``: a member as it is written in messages."""
    member = _declared(protocol)[name]
    if not callable(member):
        return name
    params = inspect.signature(member).parameters.values()
    shown = [
        p.name
        for p in params
        if p.name != "self" and p.kind == p.POSITIONAL_OR_KEYWORD and p.default is p.empty
    ]
    return f"{name}({', '.join(shown)})"


def missing_members(obj: Any, protocol: type) -> list[str]:
    """The members of ``protocol`` that ``obj`` lacks, written as calls, e.g.
    ``["class_weights(classnames, templates)"]``; empty when ``obj`` satisfies it."""
    out = []
    for name, declared in _declared(protocol).items():
        value = getattr(obj, name, None)
        if value is None or (declared is not None and not callable(value)):
            out.append(_call_form(protocol, name))
    return out


def why_not(obj: Any, protocol: type, what: str) -> str | None:
    """A sentence saying why ``obj`` (called ``what``: "the module", "the datamodule") does
    not satisfy ``protocol``, naming the missing members; ``None`` when it does."""
    missing = missing_members(obj, protocol)
    if not missing:
        return None
    names = " and ".join(f"`{m}`" for m in missing)
    return (
        f"{what} ({type(obj).__name__}) does not implement {names} "
        f"(protocol zoo.protocols.{protocol.__name__})"
    )


# --------------------------------------------------------------------------------- mixin
def _device(module: Any) -> torch.device:
    device = getattr(module, "device", None)
    if isinstance(device, torch.device):
        return device
    return next(module.parameters()).device


class DualEncoderProtocols:
    """The model protocols for a module with a :class:`zoo.backbones.DualEncoder` (or any
    encoder with ``image_trunk`` / ``encode_image`` / ``encode_text``) at ``self.encoder``.

    - ``features(images, "embed")`` = ``encoder.encode_image`` (projected, unnormalised);
      ``features(images, "trunk")`` = ``encoder.image_trunk`` (pooled, before projection);
    - ``text_features(tokens)`` = ``encoder.encode_text``;
    - ``class_weights`` = the CLIP / SLIP prompt ensemble
      (:func:`zoo.eval.zeroshot.template_ensemble`): every template × class name tokenised,
      encoded by ``text_features``, L2-normalised, averaged per class and renormalised
      (CLIP, Radford et al. 2021, §3.1.4; SLIP ``main.py`` ``validate_zeroshot``).

    Put it before the LightningModule base (``class CLIP(DualEncoderProtocols, ZooModule)``);
    it adds methods only, no state.
    """

    encoder: Any

    def features(self, images: Tensor, kind: FeatureKind = "embed") -> Tensor:
        if kind == "embed":
            return self.encoder.encode_image(images)
        if kind == "trunk":
            return self.encoder.image_trunk(images)
        raise ValueError(f"unknown feature kind {kind!r}; expected one of {FEATURE_KINDS}")

    def text_features(self, tokens: Tensor) -> Tensor:
        return self.encoder.encode_text(tokens)

    def class_weights(
        self,
        classnames: Sequence[str],
        templates: Sequence[Template],
        *,
        tokenizer: Tokenizer | None = None,
        batch_size: int = 256,
    ) -> Tensor:
        """``(C, D)`` float32 CPU unit rows; needs the datamodule's ``tokenizer``."""
        if tokenizer is None:
            raise ProtocolUnavailable(
                f"{type(self).__name__}.class_weights tokenises the templates, but the "
                "datamodule has no tokenizer (neither `tokenizer` nor `preprocess.tokenizer`)"
            )
        from zoo.eval.zeroshot import template_ensemble  # zoo.eval imports this module

        return template_ensemble(
            self.text_features,
            tokenizer,
            classnames,
            templates,
            _device(self),
            batch_size,
            model=self,  # type: ignore[arg-type]
        )
