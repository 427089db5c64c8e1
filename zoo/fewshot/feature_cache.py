"""Frozen-CLIP image features, extracted once per (backbone, preprocessing, data, split,
transform, augmentation pass) and reused.

The few-shot methods never change the CLIP image tower, so its features of a split are a
pure function of :class:`FeatureKey`: the weights' sha256 (``FewShotModule.base_sha256``), the
preprocessing (``PreprocessSpec.to_config()`` as JSON), the data (``dataset_id``: dataset,
split-file sha256, shots, seed, class subset), the split, the transform and the
augmentation pass, and the feature kind. :class:`FeatureCache` stores one safetensors file
per key under ``<cache_root>/features`` (``$VL_ZOO_CACHE``), named by the key's sha256
(:meth:`FeatureKey.digest`), so a changed backbone or preprocessing is a different file and
never reads stale features. Each file records its key in the safetensors metadata (checked
when read) and has a small JSON sidecar with the key fields for people. Files are written
atomically (:func:`zoo.data.cache.atomic_write_bytes`), so concurrent runs never see a
partial file.

A file that cannot be read back (truncated, overwritten, another key's features, wrong
shapes) is **recomputed and rewritten**, with a warning: the cache holds only derived data
that its key fully determines, so recomputing is always correct, where an error would stop
a sweep for nothing.

Augmentation passes (Tip-Adapter builds its cache keys from 10 passes of
``RandomResizedCrop(scale 0.5-1)`` + flip over the few-shot train set, official
``main.py`` / ``main_imagenet.py``): pass p reads sample i as the zoo's training loader
reads it in epoch p (:class:`zoo.data.samples.SampleKey` with ``epoch = p``, seed = the
protocol seed), so its augmentations come from an RNG seeded by ``(seed, p, i)`` only:
the same features run after run, in any worker, and a different draw for every pass.

Feature kinds: ``"embed"`` is ``encode_image`` (the projected joint-space feature);
``"trunk"`` the pre-projection feature x of
:func:`zoo.fewshot.clip_source.pre_projection_features` (``image_trunk`` for a ViT, the
attention-pool output before ``c_proj`` for a CLIP ResNet), with ``embed = x Wᵀ + b``.
Features are stored unnormalised, float32.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Sized
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from zoo.data.samples import SampleKey, SkipReplaceDataset, sample_seed, seeded_rng

log = logging.getLogger("zoo.fewshot")

#: Bumped when what a cached file means changes (layout, extraction), so old files miss.
FORMAT_VERSION = 1
#: safetensors metadata entry holding the key's fields (JSON).
_KEY_METADATA = "zoo_feature_key"
FEATURE_KINDS = ("embed", "trunk")


@dataclass(frozen=True)
class FeatureKey:
    """Everything the frozen features of one split depend on."""

    backbone_sha256: str  # FewShotModule.base_sha256
    preprocess: str  # json of PreprocessSpec.to_config()
    dataset: str  # FewShotDataModule.dataset_id
    split: str  # "train" | "val" | "test"
    transform: str  # "eval" | "coop" | "tip" ...
    aug_pass: int = 0  # augmentation pass (Tip-Adapter: 0..9); 0 for "eval"
    kind: str = "embed"  # "embed" (projected) | "trunk" (pre-projection)

    def fields(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def as_json(self) -> str:
        """The fields (and the cache format version) as canonical JSON."""
        payload = {"format": FORMAT_VERSION, **self.fields()}
        return json.dumps(payload, sort_keys=True, separators=(",", ":"))

    def digest(self) -> str:
        """sha256 of all fields: the cache file's name."""
        return hashlib.sha256(self.as_json().encode("utf-8")).hexdigest()


def preprocess_key(preprocess: Any) -> str:
    """The ``preprocess`` field of a :class:`FeatureKey`: canonical JSON of
    ``PreprocessSpec.to_config()``."""
    return json.dumps(preprocess.to_config(), sort_keys=True, separators=(",", ":"))


def _checked(result: Any, where: str) -> tuple[Tensor, Tensor]:
    """``(features (N, D) float32 CPU, labels (N,) long CPU)``, or a ValueError naming
    ``where`` when ``result`` is not such a pair."""
    if not (isinstance(result, tuple | list) and len(result) == 2):
        raise ValueError(f"{where}: expected (features, labels), got {type(result).__name__}")
    features, labels = result
    if not (isinstance(features, Tensor) and isinstance(labels, Tensor)):
        raise ValueError(f"{where}: features and labels must be tensors")
    if features.dim() != 2 or labels.dim() != 1 or len(features) != len(labels):
        raise ValueError(
            f"{where}: expected features (N, D) and labels (N,), got "
            f"{tuple(features.shape)} and {tuple(labels.shape)}"
        )
    if not features.is_floating_point() or labels.is_floating_point():
        raise ValueError(
            f"{where}: features must be floating point and labels integer, got "
            f"{features.dtype} and {labels.dtype}"
        )
    return (
        features.detach().to("cpu", torch.float32).contiguous(),
        labels.detach().to("cpu", torch.long).contiguous(),
    )


class FeatureCache:
    """One safetensors file per :class:`FeatureKey` under ``root`` (default
    ``<zoo cache_root()>/features``): ``<digest>.safetensors`` plus ``<digest>.json``."""

    def __init__(self, root: str | Path | None = None):
        if root is None:
            from zoo.data.cache import cache_root

            root = cache_root() / "features"
        self.root = Path(root).expanduser()

    def path(self, key: FeatureKey) -> Path:
        return self.root / f"{key.digest()}.safetensors"

    def sidecar(self, key: FeatureKey) -> Path:
        return self.root / f"{key.digest()}.json"

    def load(self, key: FeatureKey) -> tuple[Tensor, Tensor] | None:
        """The cached features of ``key``; ``None`` when there is no usable file (missing,
        or unreadable: then a warning says why, and the caller recomputes)."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                stored = (f.metadata() or {}).get(_KEY_METADATA)
                if stored != key.as_json():
                    raise ValueError(f"it holds the features of another key: {stored}")
                if set(f.keys()) != {"features", "labels"}:
                    raise ValueError(f"unexpected tensors {sorted(f.keys())}")
                result = (f.get_tensor("features"), f.get_tensor("labels"))
            features, labels = _checked(result, str(path))
            if features.dtype != result[0].dtype or labels.dtype != result[1].dtype:
                raise ValueError(f"stored dtypes {result[0].dtype}, {result[1].dtype}")
        except Exception as err:  # any unreadable file is recomputed: derived data only
            log.warning("feature cache file %s is unusable (%s); recomputing it", path, err)
            return None
        return features, labels

    def save(self, key: FeatureKey, features: Tensor, labels: Tensor) -> Path:
        """Write ``key``'s file atomically, then its JSON sidecar."""
        from safetensors.torch import save

        from zoo.data.cache import atomic_write_bytes, atomic_write_text

        features, labels = _checked((features, labels), f"features of {key}")
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.path(key)
        data = save(
            {"features": features, "labels": labels},
            metadata={_KEY_METADATA: key.as_json()},
        )
        atomic_write_bytes(path, data)
        sidecar = {
            "key": key.fields(),
            "format": FORMAT_VERSION,
            "digest": key.digest(),
            "file": path.name,
            "num_samples": int(features.shape[0]),
            "dim": int(features.shape[1]),
        }
        atomic_write_text(self.sidecar(key), json.dumps(sidecar, indent=2) + "\n")
        return path

    def get_or_compute(
        self, key: FeatureKey, compute: Callable[[], tuple[Tensor, Tensor]]
    ) -> tuple[Tensor, Tensor]:
        """``(features (N, D) float32 CPU, labels (N,) long)`` of ``key``: read from its
        file, or computed by ``compute()`` and written."""
        cached = self.load(key)
        if cached is not None:
            return cached
        features, labels = _checked(compute(), f"compute() for {key}")
        self.save(key, features, labels)
        return features, labels


def extract_features(
    encode: Callable[[Tensor], Tensor],
    loader: Iterable[dict],
    device: torch.device | str,
    *,
    desc: str = "features",
) -> tuple[Tensor, Tensor]:
    """``encode`` every batch's ``"image"`` on ``device`` (no gradient, progress bar):
    ``(features (N, D) float32 CPU, labels (N,) long CPU)`` in loader order."""
    from tqdm.auto import tqdm

    features: list[Tensor] = []
    labels: list[Tensor] = []
    total = len(loader) if isinstance(loader, Sized) else None
    with torch.no_grad():
        for batch in tqdm(loader, desc=desc, total=total, unit="batch", leave=False):
            images = batch["image"].to(device, non_blocking=True)
            features.append(encode(images).float().cpu())
            labels.append(batch["label"].cpu().long())
    if not features:
        raise ValueError(f"{desc}: the loader yielded no batches (an empty split?)")
    return torch.cat(features), torch.cat(labels)


class PassSampler(Sampler[SampleKey]):
    """Indices ``0..n-1`` in order, as :class:`SampleKey` ``(i, seed, epoch=aug_pass)``:
    the dataset seeds sample i's augmentations from ``(seed, aug_pass, i)``, exactly as in
    epoch ``aug_pass`` of the training loader (:class:`zoo.data.resumable.EpochSampler`)."""

    def __init__(self, n: int, seed: int, aug_pass: int):
        self.n, self.seed, self.aug_pass = int(n), int(seed), int(aug_pass)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[SampleKey]:
        return (SampleKey(i, self.seed, self.aug_pass) for i in range(self.n))


class SeededSamples(Dataset):
    """A map-style dataset read as the zoo's own datasets read a :class:`SampleKey`: under
    :func:`zoo.data.samples.seeded_rng` of ``sample_seed(seed, epoch, index)``. Wraps
    datasets that are not a :class:`~zoo.data.samples.SkipReplaceDataset` (which do this
    themselves)."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int) -> Any:
        if isinstance(key, SampleKey):
            with seeded_rng(sample_seed(key.seed, key.epoch, int(key))):
                return self.dataset[int(key)]
        return self.dataset[key]


def _backbone(module: Any) -> tuple[Any, str]:
    """The frozen :class:`~zoo.backbones.DualEncoder` of ``module`` (a ``FewShotModule`` or
    the encoder itself) and its weights' sha256."""
    from zoo.backbones import DualEncoder
    from zoo.fewshot.clip_source import state_sha256

    encoder = module if isinstance(module, DualEncoder) else getattr(module, "encoder", None)
    if not isinstance(encoder, DualEncoder):
        raise TypeError(
            f"fewshot_features needs a FewShotModule or a DualEncoder, got {type(module).__name__}"
        )
    sha256 = getattr(module, "base_sha256", None) or state_sha256(encoder)
    return encoder, str(sha256)


def _eval_batch_size(datamodule: Any) -> int:
    size = getattr(datamodule, "eval_batch_size", None) or getattr(datamodule, "batch_size", None)
    return int(size or 64)


def split_features(
    encoder: Any,
    datamodule: Any,
    split: str,
    transform: str,
    aug_pass: int,
    kind: str,
) -> tuple[Tensor, Tensor]:
    """Extract (no cache) the ``kind`` features of ``datamodule.build_dataset(split,
    transform)``, augmentation pass ``aug_pass`` (see the module docstring)."""
    from torch.utils.data import DataLoader

    from zoo.fewshot.clip_source import pre_projection_features

    dataset = datamodule.build_dataset(split, transform)
    if len(dataset) == 0:
        raise ValueError(f"{type(datamodule).__name__}: split {split!r} is empty")
    collate = dataset.collator() if hasattr(dataset, "collator") else None
    if not isinstance(dataset, SkipReplaceDataset):
        dataset = SeededSamples(dataset)
    seed = int(getattr(datamodule, "fewshot_seed", 0) or 0)
    num_workers = int(getattr(datamodule, "num_workers", 0) or 0)
    loader = DataLoader(
        dataset,
        batch_size=_eval_batch_size(datamodule),
        sampler=PassSampler(len(dataset), seed, aug_pass),
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=bool(getattr(datamodule, "pin_memory", False)),
    )
    encode = encoder.encode_image if kind == "embed" else partial(pre_projection_features, encoder)
    device = next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    try:
        return extract_features(
            encode, loader, device, desc=f"{split} features ({transform}, pass {aug_pass})"
        )
    finally:
        encoder.train(was_training)


def fewshot_features(
    module: Any,
    datamodule: Any,
    split: str,
    transform: str = "eval",
    aug_pass: int = 0,
    kind: str = "embed",
    cache: FeatureCache | None | bool = True,
) -> tuple[Tensor, Tensor]:
    """The frozen CLIP's features of a few-shot split: ``(features (N, D) float32 CPU,
    labels (N,) long)``, in the split's order.

    Args:
        module: a ``FewShotModule`` (its frozen ``encoder`` and ``base_sha256``) or a
            :class:`~zoo.backbones.DualEncoder` (keyed by :func:`state_sha256` of its weights).
        datamodule: a ``FewShotDataModule`` (``build_dataset``, ``dataset_id``,
            ``preprocess``, ``eval_batch_size``, ``fewshot_seed``, ``num_workers``).
        split: the split of ``datamodule.build_dataset(split, transform)``.
        transform: its transform name (``"eval"``, ``"coop"``, ``"tip"`` …).
        aug_pass: augmentation pass p, deterministic per ``(protocol seed, p, index)``; must
            be 0 for ``"eval"`` (deterministic, one pass).
        kind: ``"embed"`` (``encode_image``) or ``"trunk"`` (pre-projection feature x).
        cache: ``True``: the default :class:`FeatureCache`; a :class:`FeatureCache`: that
            one; ``False`` or ``None``: no cache (always extract).
    """
    if kind not in FEATURE_KINDS:
        raise ValueError(f"feature kind {kind!r} is unknown; known: {', '.join(FEATURE_KINDS)}")
    if aug_pass < 0:
        raise ValueError(f"aug_pass must be >= 0, got {aug_pass}")
    if transform == "eval" and aug_pass != 0:
        raise ValueError(
            f"aug_pass={aug_pass} with the deterministic 'eval' transform: every pass would be "
            "identical; use aug_pass=0"
        )
    encoder, sha256 = _backbone(module)

    def compute() -> tuple[Tensor, Tensor]:
        return split_features(encoder, datamodule, split, transform, aug_pass, kind)

    if cache is None or cache is False:
        return _checked(compute(), f"features of split {split!r}")
    store = FeatureCache() if cache is True else cache
    key = FeatureKey(
        backbone_sha256=sha256,
        preprocess=preprocess_key(datamodule.preprocess),
        dataset=str(datamodule.dataset_id),
        split=split,
        transform=transform,
        aug_pass=int(aug_pass),
        kind=kind,
    )
    return store.get_or_compute(key, compute)
