"""The COCO readers and the detection builder: hand-written instances / captions files
(polygon, uncompressed RLE, crowd, degenerate box, an image without annotations) read to
hand values; flips and resizes move boxes and masks with the pixels; the reader gives back
exactly what the CLEVR-like generator wrote; missing files name their path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from zoo.data.clevr_scenes import SHAPES, ClevrScenes
from zoo.data.coco import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CaptionsBuilder,
    CocoCaptions,
    CocoInstances,
    DetectionBuilder,
)
from zoo.data.samples import BadSample, SampleKey

H, W = 6, 8
# Uncompressed RLE (column-major runs, starting with zeros) of rows 1-2 x columns 1-2:
# column 0 and row 0 of column 1 are 7 zeros, then 2 ones, 4 zeros, 2 ones, 33 zeros.
RLE_MASK = np.zeros((H, W), dtype=np.uint8)
RLE_MASK[1:3, 1:3] = 1
RLE_COUNTS = [7, 2, 4, 2, 33]


def _png(path: Path, height: int = H, width: int = W) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.arange(height * width * 3, dtype=np.uint8).reshape(height, width, 3)
    Image.fromarray(pixels, "RGB").save(path)


@pytest.fixture()
def coco_dir(tmp_path: Path) -> Path:
    """Images 10 (four annotations), 20 (none) and 30 (one); categories 7 and 3."""
    for name in ("a.png", "b.png", "c.png"):
        _png(tmp_path / "images" / name)
    annotations = [
        # polygon: the rectangle x 4..7, y 0..4
        {"id": 1, "image_id": 10, "category_id": 7, "bbox": [4, 0, 3, 4], "area": 12,
         "segmentation": [[4, 0, 7, 0, 7, 4, 4, 4]], "iscrowd": 0},
        {"id": 2, "image_id": 10, "category_id": 3, "bbox": [1, 1, 2, 2], "area": 4,
         "segmentation": {"size": [H, W], "counts": RLE_COUNTS}, "iscrowd": 0},
        # a crowd region (DETR leaves it out) and a zero-width box (dropped)
        {"id": 3, "image_id": 10, "category_id": 3, "bbox": [0, 0, 8, 6], "area": 48,
         "segmentation": {"size": [H, W], "counts": [0, 48]}, "iscrowd": 1},
        {"id": 4, "image_id": 10, "category_id": 7, "bbox": [5, 5, 0, 1], "area": 0,
         "segmentation": {"size": [H, W], "counts": [48]}, "iscrowd": 0},
        # past the right / bottom edge: clamped to the image
        {"id": 5, "image_id": 30, "category_id": 3, "bbox": [6, 4, 5, 5], "area": 4,
         "segmentation": {"size": [H, W], "counts": RLE_COUNTS}, "iscrowd": 0},
    ]  # fmt: skip
    images = [
        {"id": 30, "file_name": "c.png", "width": W, "height": H},
        {"id": 10, "file_name": "a.png", "width": W, "height": H},
        {"id": 20, "file_name": "b.png", "width": W, "height": H},
    ]
    categories = [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}]
    instances = {"images": images, "annotations": annotations, "categories": categories}
    captions = {
        "images": images,
        "annotations": [
            {"id": 2, "image_id": 10, "caption": "second caption."},
            {"id": 1, "image_id": 10, "caption": " first caption. "},
            {"id": 3, "image_id": 30, "caption": "only caption."},
        ],
    }
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_x.json").write_text(json.dumps(instances))
    (tmp_path / "annotations" / "captions_x.json").write_text(json.dumps(captions))
    return tmp_path


def _instances(root: Path, **kwargs) -> CocoInstances:
    return CocoInstances(root / "annotations" / "instances_x.json", root / "images", **kwargs)


def test_records_hold_hand_boxes_labels_and_masks(coco_dir):
    ds = _instances(coco_dir)
    assert ds.ids == [10, 20, 30]
    assert ds.category_ids == [3, 7] and ds.classnames == ["three", "seven"]
    assert ds.label_of == {3: 0, 7: 1}
    record = ds.read(0)
    assert record["image_id"] == 10 and record["source"].endswith("a.png")
    # the crowd (id 3) and the zero-width box (id 4) are gone
    assert torch.equal(record["boxes"], torch.tensor([[4.0, 0.0, 7.0, 4.0], [1.0, 1.0, 3.0, 3.0]]))
    assert torch.equal(record["labels"], torch.tensor([1, 0]))
    masks = record["masks"]
    assert masks.dtype == torch.uint8 and masks.shape == (2, H, W)
    assert torch.equal(masks[1], torch.from_numpy(RLE_MASK))
    polygon = masks[0].bool()  # a filled rectangle whose extent is the polygon's
    rows, cols = polygon.any(1).nonzero().flatten(), polygon.any(0).nonzero().flatten()
    assert polygon[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()
    assert (cols.min(), rows.min()) == (4, 0) and abs(int(cols.max()) - 7) <= 1
    assert abs(int(rows.max()) - 4) <= 1


def test_clamped_box_and_empty_image(coco_dir):
    ds = _instances(coco_dir)
    empty = ds.read(1)
    assert empty["image_id"] == 20
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)
    assert empty["masks"].shape == (0, H, W)
    clamped = ds.read(2)
    assert torch.equal(clamped["boxes"], torch.tensor([[6.0, 4.0, 8.0, 6.0]]))
    assert _instances(coco_dir, drop_empty=True).ids == [10, 30]
    assert "masks" not in _instances(coco_dir, masks=False).read(0)


def test_missing_files_and_keys_name_the_path(coco_dir, tmp_path):
    missing = coco_dir / "annotations" / "instances_nope.json"
    with pytest.raises(FileNotFoundError, match="instances_nope.json"):
        CocoInstances(missing, coco_dir / "images")
    with pytest.raises(FileNotFoundError, match="captions_nope.json"):
        CocoCaptions(coco_dir / "annotations" / "captions_nope.json", coco_dir / "images")
    with pytest.raises(FileNotFoundError, match="no_images"):
        CocoInstances(coco_dir / "annotations" / "instances_x.json", coco_dir / "no_images")
    # a captions file has no categories: not an instances file
    with pytest.raises(ValueError, match=r"captions_x.json: COCO key 'categories' missing"):
        CocoInstances(coco_dir / "annotations" / "captions_x.json", coco_dir / "images")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="broken.json"):
        CocoInstances(broken, coco_dir / "images")


def test_a_missing_image_is_a_bad_sample_named_by_path(coco_dir):
    (coco_dir / "images" / "a.png").unlink()
    ds = _instances(coco_dir)
    with pytest.raises(BadSample, match="a.png"):
        ds.read(0)
    replaced = ds[0]  # training: replaced by the next readable image, and counted
    assert replaced["image_id"] == 20 and replaced["skipped"] == 1


def test_captions_reader(coco_dir):
    ds = CocoCaptions(coco_dir / "annotations" / "captions_x.json", coco_dir / "images")
    record = ds.read(0)
    assert record["captions"] == ["first caption.", "second caption."]
    assert record["caption"] in record["captions"]
    assert ds.read(1)["captions"] == [] and ds.read(1)["caption"] == ""
    kept = CocoCaptions(
        coco_dir / "annotations" / "captions_x.json", coco_dir / "images", drop_empty=True
    )
    assert kept.ids == [10, 30]
    batch = ds.collator()([ds[0], ds[2]])
    assert batch["captions"] == [["first caption.", "second caption."], ["only caption."]]
    assert torch.equal(batch["image_id"], torch.tensor([10, 30]))
    assert batch["image"].shape == (2, 3, H, W)
    assert isinstance(ds.builder, CaptionsBuilder)


# --- the detection builder ------------------------------------------------------------------
def _record(width: int = 16, height: int = 8) -> dict:
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[2, 3] = (255, 0, 0)  # a marker pixel
    mask = np.zeros((1, height, width), dtype=np.uint8)
    mask[0, 1:5, 2:6] = 1
    return {
        "image": Image.fromarray(pixels, "RGB"),
        "boxes": torch.tensor([[2.0, 1.0, 6.0, 5.0]]),
        "labels": torch.tensor([4]),
        "masks": torch.from_numpy(mask),
        "image_id": 9,
    }


def test_flip_moves_box_mask_and_pixels_together():
    record = _record()
    sample = DetectionBuilder(hflip=1.0, mean=None, std=None)(record)
    # x' = W - x: x1, x2 = 2, 6 become 16 - 6, 16 - 2 = 10, 14 → cx 12/16, w 4/16
    assert torch.allclose(sample["boxes"], torch.tensor([[12 / 16, 3 / 8, 4 / 16, 4 / 8]]))
    expected = torch.zeros(1, 8, 16, dtype=torch.uint8)
    expected[0, 1:5, 10:14] = 1
    assert torch.equal(sample["masks"], expected)
    assert sample["image"][0, 2, 16 - 1 - 3] == 1.0 and sample["image"][0, 2, 3] == 0.0
    plain = DetectionBuilder(mean=None, std=None)(record)
    assert torch.allclose(plain["boxes"], torch.tensor([[4 / 16, 3 / 8, 4 / 16, 4 / 8]]))
    assert torch.equal(plain["labels"], torch.tensor([4])) and plain["image_id"] == 9
    assert torch.equal(plain["orig_size"], torch.tensor([8, 16]))


def test_resize_scales_masks_and_keeps_normalised_boxes():
    sample = DetectionBuilder(size=32, mean=None, std=None)(_record())
    assert sample["image"].shape == (3, 32, 32)
    # x × 2, y × 4: the box [2, 1, 6, 5] becomes [4, 4, 12, 20]; normalised it is unchanged
    assert torch.allclose(sample["boxes"], torch.tensor([[8 / 32, 12 / 32, 8 / 32, 16 / 32]]))
    expected = torch.zeros(1, 32, 32, dtype=torch.uint8)
    expected[0, 4:20, 4:12] = 1
    assert torch.equal(sample["masks"], expected)
    assert torch.equal(sample["orig_size"], torch.tensor([8, 16]))


def test_normalisation_uses_imagenet_statistics():
    sample = DetectionBuilder()(_record())
    red = torch.tensor([1.0, 0.0, 0.0])
    expected = (red - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(sample["image"][:, 2, 3], expected)


def test_random_crop_drops_objects_with_their_masks_and_is_seeded(coco_dir):
    builder = DetectionBuilder(size=8, hflip=0.5, crop_scale=(0.05, 0.1))
    ds = _instances(coco_dir, builder=builder)
    kept = []
    for epoch in range(40):
        sample = ds[SampleKey(0, seed=1, epoch=epoch)]  # image 10: two objects
        n = len(sample["labels"])
        kept.append(n)
        assert sample["boxes"].shape == (n, 4) and sample["masks"].shape == (n, 8, 8)
        for (cx, cy, w, h), mask in zip(sample["boxes"].tolist(), sample["masks"]):
            ys, xs = mask.nonzero().unbind(1)  # pixel centres inside the moved box
            assert ((xs + 0.5) / 8 >= cx - w / 2 - 1e-6).all()
            assert ((xs + 0.5) / 8 <= cx + w / 2 + 1e-6).all()
            assert ((ys + 0.5) / 8 >= cy - h / 2 - 1e-6).all()
            assert ((ys + 0.5) / 8 <= cy + h / 2 + 1e-6).all()
    assert min(kept) < 2 and max(kept) >= 1  # crops drop objects, and keep some
    first = ds[SampleKey(0, seed=5, epoch=2)]
    again = ds[SampleKey(0, seed=5, epoch=2)]
    for key in ("image", "boxes", "labels", "masks"):
        assert torch.equal(first[key], again[key])


def test_fields_collate_variable_objects_as_lists(coco_dir):
    ds = _instances(coco_dir)
    assert set(ds.builder.fields) == {
        "image", "boxes", "labels", "masks", "image_id", "orig_size", "skipped",
    }  # fmt: skip
    batch = ds.collator()([ds[0], ds[1], ds[2]])
    assert [len(b) for b in batch["boxes"]] == [2, 0, 1]
    assert [m.shape for m in batch["masks"]] == [(2, H, W), (0, H, W), (1, H, W)]
    assert torch.equal(batch["image_id"], torch.tensor([10, 20, 30]))
    assert batch["image"].shape == (3, 3, H, W) and int(batch["skipped"]) == 0


def test_disagreeing_records_are_bad_samples():
    record = _record()
    with pytest.raises(BadSample, match="masks of shape"):
        DetectionBuilder()({**record, "masks": torch.zeros(2, 8, 16)})
    with pytest.raises(BadSample, match="2 labels"):
        DetectionBuilder()({**record, "labels": torch.tensor([1, 2])})
    with pytest.raises(BadSample, match="no masks"):
        DetectionBuilder()({k: v for k, v in record.items() if k != "masks"})
    with pytest.raises(ValueError, match="crop_scale needs an output size"):
        DetectionBuilder(crop_scale=(0.5, 1.0))


def test_reader_gives_the_boxes_and_masks_the_generator_wrote(tmp_path):
    gen = ClevrScenes(root=str(tmp_path / "scenes"), splits={"train": 8, "test_ood": 4})
    files = gen.write()
    for split in ("train", "test_ood"):
        ds = CocoInstances(files.instances(split), files.images(split))
        assert ds.classnames == list(SHAPES)
        for index in range(len(ds)):
            record, scene = ds.read(index), gen.scene(split, index)
            x, y, w, h = torch.tensor([o.bbox for o in scene.objects]).unbind(1)
            assert torch.equal(record["boxes"], torch.stack([x, y, x + w, y + h], 1))
            labels = [SHAPES.index(o.shape) for o in scene.objects]
            assert record["labels"].tolist() == labels
            assert torch.equal(record["masks"], torch.from_numpy(scene.masks).to(torch.uint8))
            assert np.array_equal(np.asarray(record["image"]), np.asarray(scene.image))
            assert record["image_id"] == index + 1
    captions = CocoCaptions(files.captions("train"), files.images("train"))
    scenes = json.loads(files.scenes("train").read_text())["scenes"]
    first = [o["shape"] for o in scenes[0]["objects"]]
    assert any(shape in " ".join(captions.read(0)["captions"]) for shape in first)


def test_image_text_datamodule_reads_coco_captions_and_generated_scenes(tmp_path, monkeypatch):
    """``source: scenes`` writes the CLEVR-like scenes and reads their COCO captions files
    (``source: coco``): every sample's caption is one of its image's captions, unlabelled;
    a COCO split without its image folder is refused."""
    import json

    import pytest

    from datamodules.clip import CLIPDataModule
    from zoo.data.image_text_datamodule import ImageTextDataModule

    monkeypatch.setenv("VL_ZOO_CACHE", str(tmp_path / "cache"))
    data = CLIPDataModule(
        source="scenes",
        scenes={"splits": {"train": 6, "val": 4}, "image_size": 32, "seed": 2},
        image_size=32,
        context_length=40,
        batch_size=2,
    )
    data.prepare_data()
    data.setup("fit")
    files = data.scenes.locate()
    coco = json.loads(files.captions("train").read_text())
    by_image = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann["caption"])
    names = {im["id"]: im["file_name"] for im in coco["images"]}
    assert len(data.train_set) == 6 and len(data.val_set) == 4
    assert data.splits["test"] is None and data.splits["val"].label_key is None
    for index in range(6):
        sample = data.train_set[index]
        image_id = sorted(names)[index]
        assert sample["caption"] in by_image[image_id]
        assert sample["label"] == -1
        assert torch.equal(sample["text"], data.tokenizer(sample["caption"]))
    # the same files through source: coco, given by path
    direct = ImageTextDataModule(
        source="coco",
        train={"path": str(files.captions("train")), "image_root": str(files.images("train"))},
        image_size=32,
        context_length=40,
        batch_size=2,
    )
    direct.setup("fit")
    assert len(direct.train_set) == 6
    missing_root = ImageTextDataModule(
        source="coco", train=str(files.captions("train")), image_size=32, batch_size=2
    )
    with pytest.raises(ValueError, match="image_root"):
        missing_root.setup("fit")
    with pytest.raises(ValueError, match="source: scenes"):
        ImageTextDataModule(source="csv", scenes={"splits": {"train": 2}})
