"""ViSFT (Jiang et al., 2024, "Supervised Fine-tuning *in turn* Improves Visual Foundation
Models", arXiv 2401.10222; official code github.com/TencentARC/ViSFT @ f7448a74, built on mmf:
``mmf/models/visft/visft.py``, ``visft_heads.py``, ``eva_vit_g.py``,
``projects/visft/configs/stage{1,2}/eva_g/*.yaml``).

A vision foundation model (EVA-ViT-G, EVA02-E) is fine-tuned through *frozen* task heads, so
that what the in-domain tasks teach lands in the backbone, then measured out of domain.

**Stage 1** (``stage: 1``, "train compatible heads"): the backbone is frozen (the official
``lr_backbone = 0``: LoRA not even built) and each head is trained on its own task
(``tasks: [detection]`` / ``[segmentation]`` / ``[caption]``, one recipe each). Only head
parameters are in the optimiser; the backbone sits in a :class:`~zoo.freeze.FrozenTower`
that :class:`~zoo.freeze.FrozenTowerCheck` proves bit-identical.

- detection: DETR head (:mod:`zoo.heads.detr`), ``L = 1·CE(eos 0.1) + 5·L1 + 2·GIoU`` with
  Hungarian matching at the same costs, plus the same terms on every decoder layer;
- segmentation: Mask2Former-lite head (:mod:`zoo.heads.mask2former`),
  ``L = 2·CE(eos 0.1) + 5·BCE + 5·Dice`` on 12,544 points (oversample 3, importance 0.75),
  plus auxiliary terms for every decoder layer;
- caption: Show-Attend-Tell (:mod:`zoo.heads.captioner`), ``L = CE + 1.0·mean((1 − Σ_t α_t)²)``.

**Stage 2** (``stage: 2``, SFT through LoRA): the heads come from the stage-1 checkpoints
(``heads_from``) and are frozen (``requires_grad=False``; they stay in train mode, so their
dropout acts as in the official code, where ``model.train()`` reaches them). The backbone gets
LoRA on the q and v thirds of every fused qkv (``r = 64``, ``alpha = 1``: loralib's default,
scaling 1/64; B starts at 0, so stage 2 starts exactly at the stage-1 model). Each step
trains on ONE task, drawn by the datamodule with caption 0.4 / segmentation 0.3 /
detection 0.3, and back-propagates that task's loss through its frozen head. The only
optimiser group is the LoRA matrices (lr 1e-5, AdamW, weight decay 1e-4). ``patch_embed``
keeps ``requires_grad=True`` as in the official code (gradient checkpointing needs an input
that requires grad) but is left out of the optimiser, so it never changes
(``patch_embed_requires_grad``).

Ablations of the small reproduction: ``finetune: full`` trains every backbone weight instead
of LoRA; ``random_heads: true`` runs stage 2 through untrained (randomly initialised,
frozen) heads.

Base model (``base``): instead of a ``backbone`` spec (random or ``checkpoint`` weights), the
image tower of a pretrained dual encoder (:class:`~zoo.fewshot.clip_source.CLIPSource`: a zoo
package, a ``zoo fit`` checkpoint such as the CLIP-style pre-training of the small
reproduction, a Hugging Face or OpenAI CLIP). Its text tower, projections and logit scale are
kept frozen beside it (``text_side``), so the module answers ``text_features`` and
``features(kind="embed")`` is the joint-space image embedding: zero-shot caption retrieval
(:class:`~zoo.eval.visft.CaptionRetrievalEval`) before and after stage 2.

Export: :meth:`export_model` gives a ``vision_encoder`` with the LoRA deltas merged
(``W + (alpha/r)·BA``), loadable by ``timm.create_model(same args)``; :meth:`save_adapter`
writes the adapter alone (peft's files). ``zoo export CKPT --adapter-only`` writes the adapter
alone as a ``lora_adapter`` model package (the LoRA matrices, the base ``vision_encoder``
entry, the LoRA spec and the base weights' sha256); ``zoo.load(ADAPTER, base=BASE)`` merges
it into a base whose weights hash to that digest and refuses any other.

Evaluation (:mod:`zoo.eval.visft`): the module answers ``features`` (the backbone's pooled
feature: the out-of-domain probes), ``detect``, ``segment`` and ``caption`` (in-domain
metrics of each head).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torchvision.ops import box_convert

from zoo.backbones.vision import VisionSpec
from zoo.fewshot.clip_source import CLIPSource
from zoo.freeze import FrozenTower
from zoo.lora import LoraSpec, apply_lora_spec, merged_state_dict, save_adapter
from zoo.module import ZooModule
from zoo.optim import OptimSpec, merge_onto
from zoo.protocols import FeatureKind
from zoo.specs import to_spec
from zoo.visft.backbone import (
    build_backbone,
    feature_map,
    lora_parameters,
    pooled_features,
    route_qkv_through_module,
    state_sha256,
    unwrap,
)

TASKS = ("detection", "segmentation", "caption")
Task = Literal["detection", "segmentation", "caption"]

#: Stage 2 of the official config: AdamW, the LoRA group at lr 1e-5, weight decay 1e-4,
#: warm-up 2,000 steps then cosine to 0.1 × lr (``lr_ratio``), one group.
VISFT_STAGE2_OPTIM = OptimSpec(
    optimizer="adamw",
    lr=1e-5,
    weight_decay=1e-4,
    betas=(0.9, 0.999),
    eps=1e-8,
    groups="all",
    warmup_epochs=0.0,
    warmup_steps=2000,
    warmup_start_lr=0.0,
    min_lr=1e-6,
)

#: Stage 1 (detection / segmentation heads): AdamW lr 5e-5, eps 1e-8, weight decay 1e-4,
#: warm-up 2,000 steps + cosine to 0.1 × lr; the caption head uses lr 4e-4 (its recipe says so).
VISFT_STAGE1_OPTIM = dataclasses.replace(VISFT_STAGE2_OPTIM, lr=5e-5, min_lr=5e-6)

#: Checkpoint key of what the heads were built for.
VISFT_KEY = "visft"


class ViSFT(ZooModule):
    """The ViSFT model: a timm ViT backbone and up to three task heads (module docstring).

    Args:
        backbone: the ViT (:class:`~zoo.backbones.vision.VisionSpec`; ``checkpoint`` a local
            weights file); unset with ``base``.
        base: a pretrained dual encoder whose image tower is the backbone and whose frozen
            text tower answers caption retrieval (:class:`~zoo.fewshot.clip_source.CLIPSource`;
            a ``zoo fit`` checkpoint needs ``trust_pickle: true``).
        stage: 1 (heads on the frozen backbone) or 2 (LoRA through the frozen heads).
        tasks: the heads to build; ``None`` = the datamodule's ``tasks``.
        detection: the DETR head's spec (a mapping with ``preset: tiny | paper`` and
            overrides; unset: tiny); its class count comes from the data.
        segmentation: the Mask2Former head's spec (the same form, plus ``num_points``).
        caption: the captioner's spec (the same form); its vocabulary comes from the data.
        heads_from: stage 2: the stage-1 checkpoint of each task (``{task: path}``), or one
            checkpoint holding several heads.
        random_heads: stage 2 without ``heads_from``: heads stay randomly initialised (ablation).
        finetune: stage 2: ``lora`` (the paper) or ``full`` (ablation: every backbone weight).
        lora: rank, alpha and targets of the LoRA (ViSFT: r 64, alpha 1, q and v of ``qkv``).
        patch_embed_requires_grad: stage 2: keep ``patch_embed`` requiring grad (official;
            it is never in the optimiser either way).
        optim: the optimiser (defaults: the stage's official settings).
    """

    def __init__(
        self,
        backbone: VisionSpec | dict[str, Any] | None = None,
        stage: Literal[1, 2] = 1,
        tasks: list[Task] | None = None,
        detection: dict[str, Any] | None = None,
        segmentation: dict[str, Any] | None = None,
        caption: dict[str, Any] | None = None,
        heads_from: dict[str, str] | str | None = None,
        random_heads: bool = False,
        finetune: Literal["lora", "full"] = "lora",
        lora: LoraSpec | dict[str, Any] | None = None,
        patch_embed_requires_grad: bool = True,
        optim: OptimSpec | dict[str, Any] | None = None,
        base: CLIPSource | dict[str, Any] | None = None,
    ):
        default = VISFT_STAGE1_OPTIM if stage == 1 else VISFT_STAGE2_OPTIM
        super().__init__(merge_onto(default, optim))
        self.save_hyperparameters()
        if stage not in (1, 2):
            raise ValueError(f"model.stage must be 1 or 2, got {stage!r}")
        if tasks is not None:
            _check_tasks(tasks, "model.tasks")
        if stage == 1 and (heads_from or random_heads):
            raise ValueError("model.heads_from / model.random_heads are stage-2 options")
        if stage == 2 and not heads_from and not random_heads:
            raise ValueError(
                "stage 2 trains through the stage-1 heads: set model.heads_from (the stage-1 "
                "checkpoints) or, for the untrained-heads ablation, model.random_heads: true"
            )
        self.stage = stage
        self.finetune = finetune
        self.head_specs = {"detection": detection, "segmentation": segmentation, "caption": caption}
        self.lora_spec = to_spec(
            LoraSpec,
            lora if lora is not None else {"r": 64, "alpha": 1.0, "qv_only": True},
        )
        self.text_side: nn.Module | None = None
        if base is not None:
            if backbone is not None:
                raise ValueError(
                    "set model.backbone or model.base, not both: the base's image tower is "
                    "the backbone"
                )
            vit, self.backbone_spec, text_side = _base_towers(base)
            self.text_side = FrozenTower(text_side, no_grad=True)
        elif backbone is None:
            raise ValueError(
                "model.backbone (a ViT spec) or model.base (a pretrained model) is needed"
            )
        else:
            self.backbone_spec = to_spec(VisionSpec, backbone)
            vit = build_backbone(self.backbone_spec)
        self.base_sha256 = state_sha256(vit)
        self.grid_input = int(self.backbone_spec.img_size)
        if stage == 1:
            self.backbone: nn.Module = FrozenTower(vit, no_grad=True)
        elif finetune == "full":
            self.backbone = vit
        else:
            route_qkv_through_module(vit)
            self.backbone = apply_lora_spec(vit, self.lora_spec)
            if patch_embed_requires_grad:
                vit.patch_embed.requires_grad_(True)
        self.tasks: list[str] = list(tasks) if tasks is not None else []
        self.heads = nn.ModuleDict()
        self.criteria = nn.ModuleDict()
        self.num_classes: dict[str, int] = {}
        self.vocab: Any = None

    # --- the backbone -----------------------------------------------------------------------
    @property
    def vit(self) -> nn.Module:
        """The timm model (inside the frozen tower / the peft wrapper)."""
        if isinstance(self.backbone, FrozenTower):
            return self.backbone.module
        return unwrap(self.backbone)

    def feature_map(self, images: Tensor) -> Tensor:
        if isinstance(self.backbone, FrozenTower):
            with torch.no_grad():
                return feature_map(self.vit, images)
        return feature_map(self.vit, images)

    # --- heads -------------------------------------------------------------------------------
    def configure_heads(
        self,
        tasks: list[str],
        num_classes: Mapping[str, int],
        vocab: Any,
        load_stage1: bool = True,
    ) -> None:
        """Build the heads of ``tasks`` (once), sized by the data; in stage 2 load them from
        the stage-1 checkpoints (``load_stage1``) and freeze them."""
        if self.heads:
            return
        _check_tasks(tasks, "tasks")
        self.tasks = list(tasks)
        width = int(self.vit.num_features)
        for task in self.tasks:
            head, criterion = self._build_head(task, width, num_classes, vocab)
            self.heads[task] = head
            self.criteria[task] = criterion
        if self.stage == 2:
            if load_stage1:
                self._load_stage1_heads()
            self.heads.requires_grad_(False)
        self.heads.to(self.device)
        self.criteria.to(self.device)

    def _build_head(
        self, task: str, width: int, num_classes: Mapping[str, int], vocab: Any
    ) -> tuple[nn.Module, nn.Module]:
        spec = dict(self.head_specs.get(task) or {"preset": "tiny"})
        spec.setdefault("preset", "paper")
        if task == "detection":
            from zoo.heads.detr import DETRHead, DETRHeadSpec
            from zoo.losses.detr import SetCriterion, detr_weight_dict

            self.num_classes[task] = int(_required(num_classes, task))
            head_spec = to_spec(DETRHeadSpec, {**spec, "num_classes": self.num_classes[task]})
            weights = detr_weight_dict(head_spec.num_decoder_layers)
            criterion = SetCriterion(head_spec.num_classes, eos_coef=0.1, weight_dict=weights)
            return DETRHead(width, head_spec), criterion
        if task == "segmentation":
            from zoo.heads.mask2former import Mask2FormerHeadSpec, Mask2FormerLiteHead
            from zoo.losses.mask2former import MaskSetCriterion, mask2former_weight_dict

            num_points = int(spec.pop("num_points", 12544))
            self.num_classes[task] = int(_required(num_classes, task))
            head_spec = to_spec(
                Mask2FormerHeadSpec, {**spec, "num_classes": self.num_classes[task]}
            )
            criterion = MaskSetCriterion(
                head_spec.num_classes,
                weight_dict=mask2former_weight_dict(head_spec.decoder_layers),
                eos_coef=0.1,
                num_points=num_points,
            )
            return Mask2FormerLiteHead(width, head_spec), criterion
        from zoo.heads.captioner import CaptionHeadSpec, ShowAttendTellHead

        if vocab is None:
            raise ValueError("the caption head needs the datamodule's caption vocabulary")
        self.vocab = vocab
        preset = spec.pop("preset", "paper")
        if preset == "tiny":
            head_spec = CaptionHeadSpec.tiny(len(vocab), **spec)
        elif preset == "paper":
            head_spec = CaptionHeadSpec(**{**spec, "vocab_size": len(vocab)})
        else:
            raise ValueError(f"unknown caption head preset {preset!r}; choose tiny or paper")
        return ShowAttendTellHead(width, head_spec), nn.Identity()

    def _load_stage1_heads(self) -> None:
        source = self.hparams.heads_from
        if not source:
            return  # random_heads: the ablation
        paths = source if isinstance(source, Mapping) else {t: source for t in self.tasks}
        missing = [t for t in self.tasks if t not in paths]
        if missing:
            raise ValueError(f"model.heads_from has no stage-1 checkpoint for {missing}")
        for task in self.tasks:
            path = Path(paths[task]).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"stage-1 checkpoint for {task} not found: {path}")
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)
            stored = checkpoint.get(VISFT_KEY) or {}
            if stored.get("backbone_sha256") not in (None, self.base_sha256):
                raise ValueError(
                    f"{path}: its {task} head was trained on another backbone "
                    f"(sha256 {str(stored.get('backbone_sha256'))[:12]}…, this one "
                    f"{self.base_sha256[:12]}…); stage 2 must start from the same weights"
                )
            prefix = f"heads.{task}."
            state = {
                k[len(prefix) :]: v
                for k, v in checkpoint["state_dict"].items()
                if k.startswith(prefix)
            }
            if not state:
                raise ValueError(f"{path} holds no {task} head (no '{prefix}*' weights)")
            self.heads[task].load_state_dict(state, strict=True)

    # --- Lightning --------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if not self.heads:
            datamodule = self.trainer.datamodule
            tasks = self.tasks or list(getattr(datamodule, "tasks", None) or [])
            if not tasks:
                raise ValueError("ViSFT needs model.tasks or the datamodule's tasks")
            data_tasks = set(getattr(datamodule, "tasks", tasks))
            if set(tasks) - data_tasks:
                raise ValueError(
                    f"model.tasks {tasks} are not all trained by the data ({sorted(data_tasks)})"
                )
            self.configure_heads(
                tasks,
                getattr(datamodule, "num_classes", {}) or {},
                getattr(datamodule, "vocab", None),
            )
        super().setup(stage)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[VISFT_KEY] = {
            "tasks": list(self.tasks),
            "num_classes": dict(self.num_classes),
            "vocab": self.vocab.word_map if self.vocab is not None else None,
            "backbone_sha256": self.base_sha256,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        stored = checkpoint.get(VISFT_KEY)
        if stored is None:
            raise KeyError(f"checkpoint has no {VISFT_KEY!r} entry (not a ViSFT checkpoint)")
        # a module rebuilt from hyper-parameters (zoo export) may hold a fresh random
        # backbone until the state dict loads: the weights the run started from are recorded
        self.base_sha256 = stored.get("backbone_sha256") or self.base_sha256
        if not self.heads:
            vocab = None
            if stored.get("vocab") is not None:
                from zoo.heads.captioner import CaptionVocab

                vocab = CaptionVocab(stored["vocab"])
            # the state dict about to load holds the heads
            self.configure_heads(stored["tasks"], stored["num_classes"], vocab, load_stage1=False)

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """What the optimiser gets: the heads (stage 1), the LoRA matrices (stage 2) or every
        backbone weight except ``patch_embed`` (stage 2, ``finetune: full``)."""
        if self.stage == 1:
            return [(f"heads.{n}", p) for n, p in self.heads.named_parameters() if p.requires_grad]
        if self.finetune == "full":
            return [
                (f"backbone.{n}", p)
                for n, p in self.backbone.named_parameters()
                if not n.startswith("patch_embed.")
            ]
        return [(f"backbone.{n}", p) for n, p in lora_parameters(self.backbone)]

    def optimizer_target(self) -> nn.Module:
        return _Selected(self.trainable_parameters())

    def task_loss(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """The loss of the batch's ONE task (``batch["task"]``) and its logged terms."""
        task = batch["task"]
        if task not in self.heads:
            raise ValueError(f"a {task!r} batch reached a model with heads {list(self.heads)}")
        features = self.feature_map(batch["image"])
        if task == "caption":
            from zoo.heads.captioner import caption_loss_terms

            out = self.heads[task](features, batch["tokens"], batch["lengths"])
            terms = caption_loss_terms(out.logits, out.targets, out.alphas, out.mask)
            alpha_c = self.heads[task].spec.alpha_c
            return {"loss": terms["ce"] + alpha_c * terms["attention"], **terms}
        outputs = self.heads[task](features)
        if task == "detection":
            targets = [{"labels": y, "boxes": b} for y, b in zip(batch["labels"], batch["boxes"])]
        else:
            targets = [
                {"labels": y, "masks": m.float()} for y, m in zip(batch["labels"], batch["masks"])
            ]
        losses = self.criteria[task](outputs, targets)
        main = {k: v for k, v in losses.items() if k.count("_") == 1 and not k[-1].isdigit()}
        return {"loss": losses["loss"], **{k: v for k, v in main.items() if k != "loss"}}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        terms = self.task_loss(batch)
        task = batch["task"]
        logged = {"loss": terms["loss"], **{f"{task}_{k}": v for k, v in terms.items()}}
        self.log_losses(logged, batch_size=len(batch["image"]))
        return terms["loss"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        terms = self.task_loss(batch)
        self.log_losses(
            {f"{batch['task']}_loss": terms["loss"]},
            prefix=self.eval_prefix,
            batch_size=len(batch["image"]),
            on_epoch=True,
            sync_dist=True,
        )

    # --- protocols (zoo.protocols, zoo.eval.visft) -------------------------------------------
    def features(self, images: Tensor, kind: FeatureKind = "embed") -> Tensor:
        """The backbone's pooled feature (``trunk``); ``embed`` is the same without a base
        text tower, and its joint-space image embedding (pooled × the base's image
        projection) with one."""
        pooled = pooled_features(self.vit, images)
        if kind == "embed" and self.text_side is not None:
            return pooled @ self.text_side.module.image_projection
        return pooled

    def text_features(self, tokens: Tensor) -> Tensor:
        """The base's frozen text embedding (only with ``model.base``)."""
        if self.text_side is None:
            raise AttributeError("text_features needs a base model with a text tower (model.base)")
        return self.text_side(tokens)

    def detect(self, images: Tensor) -> list[dict[str, Tensor]]:
        """DETR's ``PostProcess``: per query the best real class and its probability, boxes
        as xyxy in input pixels."""
        outputs = self.heads["detection"](self.feature_map(images))
        probs = outputs["pred_logits"].softmax(-1)[..., :-1]
        scores, labels = probs.max(-1)
        h, w = images.shape[-2:]
        scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=images.device)
        boxes = box_convert(outputs["pred_boxes"].float(), "cxcywh", "xyxy") * scale
        return [{"boxes": b, "scores": s, "labels": y} for b, s, y in zip(boxes, scores, labels)]

    def segment(self, images: Tensor) -> list[dict[str, Tensor]]:
        from zoo.heads.mask2former import instance_inference

        outputs = self.heads["segmentation"](self.feature_map(images))
        return instance_inference(
            outputs["pred_logits"], outputs["pred_masks"], tuple(images.shape[-2:])
        )

    def caption(self, images: Tensor) -> list[str]:
        head = self.heads["caption"]
        tokens = head.generate(
            self.feature_map(images),
            start_id=self.vocab.start_id,
            end_id=self.vocab.end_id,
            pad_id=self.vocab.pad_id,
        )
        return self.vocab.decode_batch(tokens)

    # --- export ---------------------------------------------------------------------------------
    def merged_backbone_state(self) -> dict[str, Tensor]:
        """The timm model's state dict with any LoRA delta merged (its own key names)."""
        if self.stage == 2 and self.finetune == "lora":
            return merged_state_dict(self.backbone)
        return {k: v.detach().clone() for k, v in self.vit.state_dict().items()}

    def export_model(self) -> tuple[str, nn.Module]:
        """A ``vision_encoder``: the backbone with the LoRA deltas merged."""
        from zoo.backbones.vision import VisionEncoder

        spec = dataclasses.replace(self.backbone_spec, checkpoint=None)
        encoder = VisionEncoder(spec)
        encoder.visual.load_state_dict(self.merged_backbone_state(), strict=True)
        return "vision_encoder", encoder

    def save_adapter(self, directory: str | Path) -> Path:
        """Write the LoRA adapter alone (peft's ``adapter_model.safetensors`` + config)."""
        if self.stage != 2 or self.finetune != "lora":
            raise ValueError("only a stage-2 LoRA model has an adapter to save")
        return save_adapter(self.backbone, directory)


class _TextSide(nn.Module):
    """The text half of a dual encoder (text tower, projections, logit scale), beside the
    image tower that ViSFT fine-tunes: ``forward(tokens)`` is ``encode_text``."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.text = encoder.text
        self.text_projection = encoder.text_projection
        self.image_projection = encoder.image_projection
        self.logit_scale = encoder.logit_scale

    def forward(self, tokens: Tensor) -> Tensor:
        return self.text(tokens) @ self.text_projection


def _base_towers(base: CLIPSource | dict[str, Any]) -> tuple[nn.Module, VisionSpec, nn.Module]:
    """The base dual encoder's image tower (a timm ViT), its spec and its text side."""
    from zoo.fewshot.clip_source import load_clip

    encoder = load_clip(base).encoder
    spec = getattr(getattr(encoder, "spec", None), "vision", None)
    if spec is None:
        raise ValueError("model.base: the dual encoder records no vision spec (encoder.spec)")
    vit = encoder.visual
    if not hasattr(vit, "patch_embed") or not hasattr(vit, "forward_features"):
        raise ValueError(
            f"model.base: ViSFT needs a ViT image tower with patch tokens; the base has a "
            f"{type(vit).__name__}"
        )
    vit.train()
    return vit, dataclasses.replace(spec, checkpoint=None), _TextSide(encoder)


class _Selected(nn.Module):
    """The chosen parameters under their own names (dots become ``__``), so the zoo's
    optimiser builder sees exactly them and nothing else."""

    def __init__(self, named: list[tuple[str, nn.Parameter]]):
        super().__init__()
        for name, param in named:
            self.register_parameter(name.replace(".", "__"), param)


def _check_tasks(tasks: list[str], where: str) -> None:
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks or len(set(tasks)) != len(tasks):
        raise ValueError(f"{where} must be distinct tasks from {list(TASKS)}, got {tasks}")


def _required(num_classes: Mapping[str, int], task: str) -> int:
    if task not in num_classes:
        raise ValueError(f"the datamodule gives no class count for {task} (num_classes)")
    return int(num_classes[task])
