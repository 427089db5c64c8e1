"""TiMix data (Jiang et al., AAAI 2024; official ``dataset/__init__.py`` and
``dataset/caption_dataset.py`` ``region_dataset``): image–text pairs for the ITC and mixed
steps, plus region–phrase samples for the PTA step, in one batch per iteration.

Each training sample is an image–text pair (any source of
:class:`zoo.data.image_text_datamodule.ImageTextDataModule`) with one region sample riding
along (``region_image``, ``region_text``, ``region_labels``: :mod:`zoo.data.regions`), drawn
at random from the region data with the pair's own seed (``(seed, epoch, index)``), so the
region batch is as large as the pair batch, a resumed run sees the same regions, and data
parallelism shards both. (Official: a separate region loader of 64 images with up to 5
regions each, cycled beside the pair loader of 128.)

Region data (``regions``: one :class:`RegionSpec` or a list, concatenated; paths relative
to ``data.root``): Visual Genome region descriptions (``format: vg``) or COCO instances
(``format: coco``, phrase = category name); the official configuration reads VG objects, VG
regions and COCO objects. With ``source: mosaics`` and no ``regions``, the generated digit
mosaics' own ``regions_train.json`` (one region per digit tile, phrase "a seven") is used.
``with_regions: false`` leaves the region samples out (the ITC baseline reads none).

``train_fraction`` < 1 trains on a seeded subset of the pairs (``fraction_seed``; the
data-efficiency arm of the card's reproduction). The region data follow: with the mosaics
(same images) only the regions of the kept images; otherwise the same fraction of regions.

``patch_size`` must be the vision tower's (region labels are per patch); the region images
are resized to ``image_size`` squares (bicubic) and flipped with probability
``region_hflip`` (official 0.5; the official loader also crops around the box and applies
RandAugment's colour operations, which are not done here).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, IterableDataset

from zoo.data.collate import DEFAULT_FIELDS, Collator, stacked
from zoo.data.image_text_datamodule import ImageTextDataModule
from zoo.data.regions import REGION_FORMATS, RegionPhraseBuilder, RegionPhrases
from zoo.data.samples import SampleKey, sample_seed
from zoo.heads.patch_predictor import LABEL_RULES

#: Pair fields plus the region sample's.
TIMIX_FIELDS = {
    **DEFAULT_FIELDS,
    "region_image": stacked(),
    "region_text": stacked(),
    "region_labels": stacked(),
}


@dataclass
class RegionSpec:
    """Region–phrase data: ``path`` (VG ``region_descriptions.json`` or COCO instances),
    ``image_root`` (its image folder), ``format`` (``vg`` / ``coco``), ``images`` (optional
    image list giving file names: COCO file or VG ``image_data.json``); paths relative to
    ``data.root``."""

    path: str
    image_root: str
    format: str = "vg"
    images: str | None = None


class RegionSets(Dataset):
    """Several region readers end to end; a :class:`SampleKey` reaches the reader that
    holds the index as a key of its own (so each region sample keeps its seeding)."""

    def __init__(self, readers: list[RegionPhrases]):
        self.readers = readers
        self.offsets = [0]
        for reader in readers:
            self.offsets.append(self.offsets[-1] + len(reader))
        #: every region's record (image id, region id, phrase, box), in order
        self.regions = [r for reader in readers for r in reader.regions]

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getitem__(self, key: int) -> dict[str, Any]:
        import bisect

        k = bisect.bisect_right(self.offsets, int(key)) - 1
        local = int(key) - self.offsets[k]
        if isinstance(key, SampleKey):
            return self.readers[k][SampleKey(local, key.seed, key.epoch)]
        return self.readers[k][local]


class PairsWithRegions(Dataset):
    """Pairs ``pairs[indices[i]]`` with one region of ``regions[region_indices]`` each,
    drawn from the pair's sample seed (see the module docstring)."""

    def __init__(
        self,
        pairs: Dataset,
        regions: Dataset,
        indices: list[int] | None = None,
        region_indices: list[int] | None = None,
    ):
        self.pairs, self.regions = pairs, regions
        self.indices = list(range(len(pairs))) if indices is None else list(indices)
        self.region_indices = (
            list(range(len(regions))) if region_indices is None else list(region_indices)
        )
        if not self.indices or not self.region_indices:
            raise ValueError("TiMix training needs at least one pair and one region")

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: int) -> dict[str, Any]:
        index = self.indices[int(key)]
        if isinstance(key, SampleKey):
            seed, epoch = key.seed, key.epoch
            pair = self.pairs[SampleKey(index, seed, epoch)]
        else:
            seed, epoch = 0, 0
            pair = self.pairs[index]
        rng = random.Random(sample_seed(seed, epoch, index) ^ 0x5EED_0F_1E)
        j = self.region_indices[rng.randrange(len(self.region_indices))]
        region = self.regions[SampleKey(j, seed, epoch)]
        sample = {**pair, **{k: v for k, v in region.items() if k.startswith("region_")}}
        sample["skipped"] = int(pair.get("skipped", 0)) + int(region.get("skipped", 0))
        return sample


class PairsOnly(Dataset):
    """``pairs[indices[i]]``, keys kept (the seeded subset without regions)."""

    def __init__(self, pairs: Dataset, indices: list[int]):
        self.pairs, self.indices = pairs, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: int) -> dict[str, Any]:
        index = self.indices[int(key)]
        if isinstance(key, SampleKey):
            return self.pairs[SampleKey(index, key.seed, key.epoch)]
        return self.pairs[index]


class TiMixDataModule(ImageTextDataModule):
    """Image–text pairs with region samples (module docstring).

    Arguments are those of :class:`zoo.data.image_text_datamodule.ImageTextDataModule`, plus
    ``regions`` (:class:`RegionSpec` or a list), ``with_regions``, ``patch_size``, ``train_fraction``,
    ``fraction_seed``, ``region_hflip`` and ``region_rule`` (``overlap``: official; or
    ``centre``). The official pre-training transform is ``RandomResizedCrop(scale 0.2–1)``,
    flip and RandAugment; the ``clip`` transform (crop 0.5–1) is the default here.
    """

    default_train_transform = "clip"
    collate_fn = Collator(TIMIX_FIELDS)

    def __init__(
        self,
        *,
        regions: RegionSpec | list[RegionSpec] | None = None,
        with_regions: bool = True,
        patch_size: int = 16,
        train_fraction: float = 1.0,
        fraction_seed: int = 0,
        region_hflip: float = 0.5,
        region_rule: str = "overlap",
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if not 0.0 < train_fraction <= 1.0:
            raise ValueError(f"data.train_fraction must be in (0, 1], got {train_fraction}")
        if region_rule not in LABEL_RULES:
            raise ValueError(f"data.region_rule must be one of {LABEL_RULES}, got {region_rule!r}")
        if self.image_size % patch_size:
            raise ValueError(
                f"data.image_size {self.image_size} is not a multiple of data.patch_size "
                f"{patch_size}"
            )
        listed = regions if isinstance(regions, list | tuple) else [regions]
        self.region_specs = [_as_region_spec(r) for r in listed if r is not None]
        for spec in self.region_specs:
            if spec.format not in REGION_FORMATS:
                raise ValueError(
                    f"data.regions.format must be one of {REGION_FORMATS}, got {spec.format!r}"
                )
        self.with_regions = bool(with_regions)
        root = kwargs.get("root")
        self.data_root = Path(root).expanduser() if root else None
        self.patch_size = int(patch_size)
        self.train_fraction, self.fraction_seed = float(train_fraction), int(fraction_seed)
        self.region_hflip, self.region_rule = float(region_hflip), region_rule

    def _path(self, value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() or self.data_root is None else self.data_root / path

    def region_dataset(self) -> RegionSets:
        """The region–phrase readers (``regions``, or the mosaics' own regions)."""
        preprocess = self.preprocess
        builder = RegionPhraseBuilder(
            self.tokenizer,
            self.image_size,
            self.patch_size,
            preprocess.mean,
            preprocess.std,
            self.region_hflip,
            self.region_rule,  # type: ignore[arg-type]
        )
        if self.region_specs:
            return RegionSets(
                [
                    RegionPhrases(
                        self._path(spec.path),
                        self._path(spec.image_root),
                        builder,
                        format=spec.format,  # type: ignore[arg-type]
                        images=None if spec.images is None else self._path(spec.images),
                        max_pixels=self.max_pixels,
                    )
                    for spec in self.region_specs
                ]
            )
        mosaics = getattr(self, "mosaics", None)
        if mosaics is None:
            raise ValueError(
                "TiMix needs region data: set data.regions (path, image_root, format) or use "
                "data.source: mosaics"
            )
        files = mosaics.locate()
        reader = RegionPhrases(
            files.regions("train"),
            files.images("train"),
            builder,
            format="vg",
            images=files.instances("train"),
            max_pixels=self.max_pixels,
        )
        return RegionSets([reader])

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_set is None:
            self._ensure_splits()
            if self.splits.get("train") is not None:
                pairs = self.build_dataset("train", train=True)
                if isinstance(pairs, IterableDataset):
                    raise ValueError(
                        "TiMix reads its training pairs by index (regions ride along each "
                        "pair): use local WebDataset shards (wds_access: auto / indexed), a "
                        "table, COCO captions or generated data, not a stream"
                    )
                if self.with_regions:
                    pairs = self._with_regions(pairs)
                elif self.train_fraction < 1.0:
                    subset = seeded_subset(len(pairs), self.train_fraction, self.fraction_seed)
                    pairs = PairsOnly(pairs, subset)
                self.train_set = pairs
                self.check_train_size(self.train_set, self.splits["train"].where)
        super().setup(stage)

    def _with_regions(self, pairs: Dataset) -> PairsWithRegions:
        regions = self.region_dataset()
        indices = region_indices = None
        if self.train_fraction < 1.0:
            indices = seeded_subset(len(pairs), self.train_fraction, self.fraction_seed)
            pair_ids = getattr(pairs, "ids", None)
            if getattr(self, "mosaics", None) is not None and pair_ids is not None:
                kept = {pair_ids[i] for i in indices}
                region_indices = [k for k, r in enumerate(regions.regions) if r["image_id"] in kept]
            else:
                region_indices = seeded_subset(
                    len(regions), self.train_fraction, self.fraction_seed
                )
        return PairsWithRegions(pairs, regions, indices, region_indices)


def seeded_subset(size: int, fraction: float, seed: int) -> list[int]:
    """``round(fraction · size)`` (at least 1) indices of ``range(size)``, sorted, drawn
    without replacement by a ``torch.Generator`` seeded with ``seed``."""
    count = max(1, round(fraction * size))
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed))
    return sorted(order[:count].tolist())


def _as_region_spec(value: Any) -> RegionSpec | None:
    if value is None or isinstance(value, RegionSpec):
        return value
    mapping = dict(value) if isinstance(value, dict) else dict(vars(value))
    known = set(RegionSpec.__dataclass_fields__)
    unknown = sorted(set(mapping) - known)
    if unknown:
        raise ValueError(f"unknown data.regions keys: {unknown}; known: {sorted(known)}")
    return RegionSpec(**mapping)
