"""The frozen-feature cache: hits never recompute, any change of backbone, preprocessing or
data misses, an unreadable file is recomputed, and augmentation pass p gives the same
features run after run while different passes differ."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch.utils.data import Dataset
from torchvision import transforms as T

from zoo.data.builders import LabelledImageBuilder
from zoo.data.samples import SkipReplaceDataset
from zoo.fewshot.clip_source import load_clip, pre_projection_features
from zoo.fewshot.feature_cache import (
    FeatureCache,
    FeatureKey,
    extract_features,
    fewshot_features,
    preprocess_key,
)
from zoo.preprocess import PreprocessSpec

SIZE = 16
KEY = FeatureKey(
    backbone_sha256="a" * 64,
    preprocess='{"preprocess":{"image_size":16}}',
    dataset="shifted_digits-k4-seed1",
    split="train",
    transform="tip",
    aug_pass=3,
)


class _Counter:
    """A ``compute`` that counts its calls and returns fixed features."""

    def __init__(self, n: int = 5, dim: int = 4, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        self.features = torch.randn(n, dim, generator=gen)
        self.labels = torch.arange(n) % 3
        self.calls = 0

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls += 1
        return self.features.clone(), self.labels.clone()


# --------------------------------------------------------------------------- FeatureCache


def test_second_call_reads_the_file_and_never_computes(tmp_path: Path) -> None:
    compute = _Counter()
    first = FeatureCache(tmp_path).get_or_compute(KEY, compute)
    again = FeatureCache(tmp_path).get_or_compute(KEY, compute)  # a new process, same root
    assert compute.calls == 1
    for got in (first, again):
        assert torch.equal(got[0], compute.features) and got[0].dtype == torch.float32
        assert torch.equal(got[1], compute.labels) and got[1].dtype == torch.long
    sidecar = json.loads((tmp_path / f"{KEY.digest()}.json").read_text())
    assert sidecar["key"] == dataclasses.asdict(KEY)
    assert (sidecar["num_samples"], sidecar["dim"]) == (5, 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"{KEY.digest()}.json", f"{KEY.digest()}.safetensors"]
    )  # the atomic writes leave no temporary files behind


@pytest.mark.parametrize(
    "change",
    [
        {"backbone_sha256": "b" * 64},
        {"preprocess": '{"preprocess":{"image_size":32}}'},
        {"dataset": "shifted_digits-k4-seed2"},
        {"split": "val"},
        {"transform": "coop"},
        {"aug_pass": 4},
        {"kind": "trunk"},
    ],
)
def test_any_changed_field_is_a_miss(tmp_path: Path, change: dict) -> None:
    cache = FeatureCache(tmp_path)
    cache.get_or_compute(KEY, _Counter())
    other = dataclasses.replace(KEY, **change)
    assert other.digest() != KEY.digest()
    compute = _Counter(seed=1)
    features, _ = cache.get_or_compute(other, compute)
    assert compute.calls == 1 and torch.equal(features, compute.features)
    untouched = _Counter(seed=2)
    assert torch.equal(cache.get_or_compute(KEY, untouched)[0], _Counter().features)
    assert untouched.calls == 0  # the original key still reads its own file


def _garbage(path: Path) -> None:
    path.write_bytes(b"\x00not a safetensors file")


def _truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-7])


def _wrong_dtype(path: Path) -> None:
    save_file(
        {"features": torch.zeros(5, 4, dtype=torch.float64), "labels": torch.zeros(5).long()},
        str(path),
        metadata={"zoo_feature_key": KEY.as_json()},
    )


def _other_key(path: Path) -> None:
    """Another key's (valid) file copied under this key's name."""
    other = dataclasses.replace(KEY, aug_pass=9)
    cache = FeatureCache(path.parent)
    cache.get_or_compute(other, _Counter(seed=3))
    path.write_bytes(cache.path(other).read_bytes())


@pytest.mark.parametrize("damage", [_garbage, _truncated, _wrong_dtype, _other_key])
def test_unusable_file_is_recomputed_and_rewritten(tmp_path: Path, damage, caplog) -> None:
    cache = FeatureCache(tmp_path)
    cache.get_or_compute(KEY, _Counter())
    damage(cache.path(KEY))
    compute = _Counter()
    features, labels = cache.get_or_compute(KEY, compute)
    assert compute.calls == 1 and "unusable" in caplog.text
    assert torch.equal(features, compute.features) and torch.equal(labels, compute.labels)
    third = _Counter()
    cache.get_or_compute(KEY, third)
    assert third.calls == 0  # the rewritten file is good again


def test_compute_results_are_validated(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    with pytest.raises(
        ValueError, match=r"features \(N, D\) and labels \(N,\).*\(3, 4\) and \(2,\)"
    ):
        cache.get_or_compute(KEY, lambda: (torch.zeros(3, 4), torch.zeros(2).long()))
    with pytest.raises(ValueError, match="labels integer"):
        cache.get_or_compute(KEY, lambda: (torch.zeros(3, 4), torch.zeros(3)))
    assert not cache.path(KEY).exists()


def test_default_root_is_under_the_zoo_cache(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("VL_ZOO_CACHE", str(tmp_path))
    assert FeatureCache().root == tmp_path / "features"


# --------------------------------------------------------------------------- fewshot_features


def _digit_images(n: int = 6) -> list[Image.Image]:
    gen = np.random.default_rng(0)
    return [Image.fromarray(gen.integers(0, 255, (20, 24, 3), dtype=np.uint8)) for _ in range(n)]


class _ZooImages(SkipReplaceDataset):
    """A zoo dataset (seeds each SampleKey read itself)."""

    def __init__(self, images: list[Image.Image], transform):
        super().__init__("stand-in", LabelledImageBuilder(transform))
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def read(self, index: int) -> dict:
        return {"image": self.images[index], "label": index % 3}


class _PlainImages(Dataset):
    """Any other map-style dataset (fewshot_features seeds its reads)."""

    def __init__(self, images: list[Image.Image], transform):
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.transform(self.images[index]), "label": index % 3}


class _StandInData:
    """The part of FewShotDataModule that fewshot_features uses."""

    def __init__(self, dataset_cls=_ZooImages, preprocess: PreprocessSpec | None = None):
        self.dataset_cls = dataset_cls
        self.preprocess = preprocess or PreprocessSpec(image_size=SIZE, context_length=16)
        self.dataset_id = "stand-in-k2-seed1"
        self.fewshot_seed = 1
        self.eval_batch_size = 4
        self.images = _digit_images()
        self.built: list[tuple[str, str]] = []

    def build_dataset(self, split: str, transform: str):
        self.built.append((split, transform))
        pre = self.preprocess
        if transform == "eval":
            tf = pre.eval_transform()
        else:  # Tip-Adapter's augmentation: RandomResizedCrop(scale 0.5-1) + flip
            tf = T.Compose(
                [
                    T.RandomResizedCrop(SIZE, scale=(0.5, 1.0)),
                    T.RandomHorizontalFlip(),
                    T.ToTensor(),
                    T.Normalize(pre.mean, pre.std),
                ]
            )
        return self.dataset_cls(self.images, tf)


@pytest.fixture(scope="module")
def module():
    from zoo.fewshot.module import FewShotModule

    return FewShotModule(clip={"encoder": {"preset": "vit-tiny-digits"}})


@torch.no_grad()
def test_eval_features_are_the_encoders_and_the_second_call_is_a_hit(module, tmp_path) -> None:
    data = _StandInData()
    cache = FeatureCache(tmp_path)
    features, labels = fewshot_features(module, data, "test", cache=cache)
    tf = data.preprocess.eval_transform()
    images = torch.stack([tf(img) for img in data.images])
    torch.testing.assert_close(features, module.encoder.encode_image(images), atol=1e-5, rtol=0)
    assert torch.equal(labels, torch.arange(6) % 3)
    again = fewshot_features(module, data, "test", cache=cache)
    assert data.built == [("test", "eval")]  # the second call read the file
    assert torch.equal(again[0], features) and torch.equal(again[1], labels)

    key = FeatureKey(
        module.base_sha256, preprocess_key(data.preprocess), data.dataset_id, "test", "eval"
    )
    assert cache.path(key).is_file()

    trunk, _ = fewshot_features(module, data, "test", kind="trunk", cache=cache)
    torch.testing.assert_close(
        trunk, pre_projection_features(module.encoder, images), atol=1e-5, rtol=0
    )


def test_changed_backbone_or_preprocessing_never_reads_stale_features(module, tmp_path) -> None:
    cache = FeatureCache(tmp_path)
    data = _StandInData()
    base, _ = fewshot_features(module, data, "test", cache=cache)

    other = load_clip({"encoder": {"preset": "vit-tiny-digits"}, "seed": 1}).encoder
    features, _ = fewshot_features(other, data, "test", cache=cache)  # keyed by its state
    assert len(data.built) == 2  # another backbone: extracted again
    assert features.shape == base.shape and not torch.allclose(features, base)

    bilinear = dataclasses.replace(data.preprocess, interpolation="bilinear")
    moved = _StandInData(preprocess=bilinear)
    fewshot_features(module, moved, "test", cache=cache)
    assert moved.built == [("test", "eval")]  # another preprocessing: extracted again


@pytest.mark.parametrize("dataset_cls", [_ZooImages, _PlainImages])
def test_augmentation_pass_is_deterministic_and_passes_differ(module, dataset_cls) -> None:
    data = _StandInData(dataset_cls)
    pass0, labels = fewshot_features(module, data, "train", "tip", aug_pass=0, cache=False)
    torch.manual_seed(1234)  # the global RNG state plays no part
    again, _ = fewshot_features(module, data, "train", "tip", aug_pass=0, cache=False)
    pass1, labels1 = fewshot_features(module, data, "train", "tip", aug_pass=1, cache=False)
    assert torch.equal(pass0, again)
    assert torch.equal(labels, labels1)
    differs = (pass0 - pass1).abs().amax(dim=1) > 1e-4
    assert bool(differs.all())  # every image got another crop / flip in pass 1


def test_bad_arguments_are_named(module) -> None:
    data = _StandInData()
    with pytest.raises(ValueError, match="aug_pass=2 with the deterministic 'eval'"):
        fewshot_features(module, data, "test", "eval", aug_pass=2, cache=False)
    with pytest.raises(ValueError, match="feature kind 'pixels' is unknown"):
        fewshot_features(module, data, "test", kind="pixels", cache=False)
    with pytest.raises(TypeError, match="FewShotModule or a DualEncoder"):
        fewshot_features(object(), data, "test", cache=False)


def test_extract_features_concatenates_in_loader_order() -> None:
    batches = [
        {"image": torch.full((2, 3), float(i)), "label": torch.tensor([i, i])} for i in range(3)
    ]
    features, labels = extract_features(lambda x: x.sum(dim=1, keepdim=True), batches, "cpu")
    assert torch.equal(features, torch.tensor([[0.0], [0.0], [3.0], [3.0], [6.0], [6.0]]))
    assert torch.equal(labels, torch.tensor([0, 0, 1, 1, 2, 2]))
    with pytest.raises(ValueError, match="no batches"):
        extract_features(lambda x: x, [], "cpu")
