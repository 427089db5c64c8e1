"""The CLEVR-like scene generator: masks are exactly the drawn pixels, boxes / counts /
left-right answers agree with them, the out-of-domain style really differs, the COCO JSON
loads (and evaluates) with pycocotools, and the same call writes the same bytes."""

from __future__ import annotations

import contextlib
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision.ops import masks_to_boxes

from zoo.data.clevr_scenes import (
    COLORS,
    MANIFEST,
    SHAPES,
    STYLES,
    ClevrScenes,
    SceneObject,
    SceneStyle,
    probe_questions,
    register_style,
    scene_captions,
    write_clevr_scenes,
)

SPLITS = {"train": 24, "test_ood": 24}
BACKGROUND = np.array([150, 150, 150], dtype=np.uint8)  # the in-domain grey level


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory):
    return write_clevr_scenes(tmp_path_factory.mktemp("clevr") / "scenes", splits=SPLITS, seed=0)


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _per_image(instances: dict) -> dict[int, list[dict]]:
    by_image: dict[int, list[dict]] = {im["id"]: [] for im in instances["images"]}
    for ann in sorted(instances["annotations"], key=lambda a: a["id"]):
        by_image[ann["image_id"]].append(ann)
    return by_image


def _pixels(files, split: str, image: dict) -> np.ndarray:
    return np.asarray(Image.open(files.images(split) / image["file_name"]).convert("RGB"))


def _masks(anns: list[dict]) -> np.ndarray:
    if not anns:
        return np.zeros((0, 64, 64), dtype=bool)
    return mask_utils.decode([a["segmentation"] for a in anns]).transpose(2, 0, 1).astype(bool)


@pytest.mark.parametrize("split", list(SPLITS))
def test_masks_decode_to_exactly_the_drawn_pixels(files, split):
    instances = _load(files.instances(split))
    per_image = _per_image(instances)
    for image in instances["images"]:
        pixels, anns = _pixels(files, split, image), per_image[image["id"]]
        masks = _masks(anns)
        assert (masks.sum(axis=0) <= 1).all(), "instance masks overlap"
        for ann, mask in zip(anns, masks):
            assert mask.any()
            colour = np.array(COLORS[ann["attributes"]["color"]], dtype=np.uint8)
            assert (pixels[mask] == colour).all(), (split, image["file_name"], ann["id"])
            assert ann["area"] == int(mask.sum()) == int(mask_utils.area(ann["segmentation"]))
        if split == "train":  # plain grey: every non-background pixel belongs to an object
            drawn = (pixels != BACKGROUND).any(axis=2)
            assert np.array_equal(drawn, masks.any(axis=0)), image["file_name"]


@pytest.mark.parametrize("split", list(SPLITS))
def test_masks_to_boxes_equals_the_annotated_boxes(files, split):
    instances = _load(files.instances(split))
    anns = sorted(instances["annotations"], key=lambda a: a["id"])
    masks = torch.from_numpy(_masks(anns))
    found = masks_to_boxes(masks)  # x2, y2: the last pixel's index
    x, y, w, h = torch.tensor([a["bbox"] for a in anns]).unbind(1)
    annotated = torch.stack([x, y, x + w, y + h], dim=1)  # COCO pixel extents: x + w past it
    assert torch.allclose(found, annotated, atol=1.0)
    assert torch.equal(found[:, :2], annotated[:, :2])
    assert torch.equal(found[:, 2:] + 1, annotated[:, 2:])


@pytest.mark.parametrize("split", list(SPLITS))
def test_count_answer_equals_the_number_of_annotations(files, split):
    per_image = _per_image(_load(files.instances(split)))
    counts = [q for q in _load(files.questions(split))["questions"] if q["task"] == "count"]
    assert sorted(q["image_id"] for q in counts) == sorted(per_image)
    for q in counts:
        assert q["label"] == len(per_image[q["image_id"]]) >= 1
    assert len({q["label"] for q in counts}) >= 3  # 1..5 objects: the count varies


@pytest.mark.parametrize("split", list(SPLITS))
def test_left_right_answers_agree_with_the_box_centres(files, split):
    per_image = _per_image(_load(files.instances(split)))
    relations = [q for q in _load(files.questions(split))["questions"] if q["task"] == "left_of"]
    assert relations
    for q in relations:
        anns = per_image[q["image_id"]]
        subject, obj = anns[q["subject"]], anns[q["object"]]
        a, b = q["query"].split("|")
        assert (subject["attributes"]["shape"], obj["attributes"]["shape"]) == (a, b)
        shapes = Counter(x["attributes"]["shape"] for x in anns)
        assert shapes[a] == shapes[b] == 1  # the question names each object unambiguously
        cx_subject = subject["bbox"][0] + subject["bbox"][2] / 2
        cx_object = obj["bbox"][0] + obj["bbox"][2] / 2
        assert q["label"] == int(cx_subject < cx_object) and cx_subject != cx_object
        assert q["question"].startswith(f"is the {subject['attributes']['size']} ")
    train = [q for q in relations if split == "train"]
    if train:
        assert {q["label"] for q in train} == {0, 1}


def test_scene_graph_relations_follow_the_centres(files):
    for scene in _load(files.scenes("train"))["scenes"]:
        objects = scene["objects"]
        for rel in scene["relations"]:
            ax = objects[rel["subject"]]["center"][0]
            bx = objects[rel["object"]]["center"][0]
            assert rel["predicate"] == ("left_of" if ax < bx else "right_of") and ax != bx
        n = len(objects)
        untied = sum(
            objects[i]["center"][0] != objects[j]["center"][0]
            for i in range(n)
            for j in range(n)
            if i != j
        )
        assert len(scene["relations"]) == untied


def test_same_call_writes_identical_bytes(tmp_path):
    splits = {"train": 6, "val_ood": 4}

    def tree(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    first = tree(write_clevr_scenes(tmp_path / "a", splits=splits, seed=3).root)
    second = tree(write_clevr_scenes(tmp_path / "b", splits=splits, seed=3).root)
    other = tree(write_clevr_scenes(tmp_path / "c", splits=splits, seed=4).root)
    assert first == second
    assert "images/val_ood/000003.png" in first and MANIFEST in first
    assert first["images/train/000000.png"] != other["images/train/000000.png"]


def test_a_scene_depends_only_on_seed_split_and_index():
    gen = ClevrScenes(splits={"train": 5, "val": 5})
    alone = gen.scene("train", 3)
    for index in range(3):  # rendering others first changes nothing
        gen.scene("val", index)
    again = gen.scene("train", 3)
    assert np.array_equal(np.asarray(alone.image), np.asarray(again.image))
    assert alone.graph() == again.graph()
    assert not np.array_equal(np.asarray(alone.image), np.asarray(gen.scene("val", 3).image))


def test_out_of_domain_style_differs_by_a_stated_margin(files):
    backgrounds, areas = {}, {}
    for split in SPLITS:
        instances = _load(files.instances(split))
        per_image = _per_image(instances)
        values = []
        for image in instances["images"]:
            pixels, masks = _pixels(files, split, image), _masks(per_image[image["id"]])
            values.append(pixels[~masks.any(axis=0)][:, 0].astype(float))
        backgrounds[split] = np.concatenate(values)
        areas[split] = np.mean([a["area"] for a in instances["annotations"]])
    # In domain: plain grey, not one pixel off. Out of domain: stripes (amplitude 40) and
    # noise (std 20): a background std near sqrt(40²/2 + 20²) ≈ 35, asserted above 25.
    assert backgrounds["train"].std() == 0 and backgrounds["train"].mean() == 150
    assert backgrounds["test_ood"].std() > 25
    # Objects at 0.6 scale cover ~0.36 of the in-domain area; asserted below half of it.
    assert areas["test_ood"] < 0.5 * areas["train"]


def test_coco_json_loads_and_evaluates_with_pycocotools(files):
    quiet = contextlib.redirect_stdout(io.StringIO())
    with quiet:
        gt = COCO(str(files.instances("train")))
        captions = COCO(str(files.captions("train")))
    assert [gt.cats[i]["name"] for i in sorted(gt.getCatIds())] == list(SHAPES)
    assert sorted(gt.getImgIds()) == list(range(1, SPLITS["train"] + 1))
    per_image = Counter(a["image_id"] for a in captions.dataset["annotations"])
    assert set(per_image.values()) == {5}
    for image_id in captions.getImgIds():
        texts = [a["caption"] for a in captions.imgToAnns[image_id]]
        assert len(set(texts)) == 5 and all(t.endswith(".") for t in texts)
    # The ground truth scored as detections is a perfect detector and segmenter.
    detections = [
        {**a, "score": 1.0}
        for a in gt.dataset["annotations"]
        if not a.get("iscrowd")  # (there are none)
    ]
    with quiet:
        results = gt.loadRes(detections)
        for iou_type in ("bbox", "segm"):
            evaluator = COCOeval(gt, results, iou_type)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
            assert evaluator.stats[0] == pytest.approx(1.0), iou_type


def test_shape_color_categories():
    gen = ClevrScenes(splits={"train": 3}, categories="shape_color")
    cats = gen.categories_list()
    assert len(cats) == len(SHAPES) * len(COLORS) == 21
    assert cats[0] == {"id": 1, "name": "red circle", "supercategory": "circle"}
    assert cats[-1] == {"id": 21, "name": "yellow triangle", "supercategory": "triangle"}
    assert ClevrScenes(splits={"train": 3}).categories_list()[2] == {
        "id": 3,
        "name": "triangle",
        "supercategory": "triangle",
    }


def test_shape_color_category_ids_match_the_attributes(tmp_path):
    files = write_clevr_scenes(tmp_path / "sc", splits={"train": 6}, categories="shape_color")
    instances = _load(files.instances("train"))
    names = {c["id"]: c["name"] for c in instances["categories"]}
    for ann in instances["annotations"]:
        attrs = ann["attributes"]
        assert names[ann["category_id"]] == f"{attrs['color']} {attrs['shape']}"


def _obj(shape: str, color: str, size: str, x: float) -> SceneObject:
    return SceneObject(shape, color, size, [x, 10.0, 8.0, 8.0], [x + 4.0, 14.0], 64)


def test_captions_of_a_hand_scene():
    objects = [_obj("circle", "red", "large", 5.0), _obj("square", "blue", "small", 40.0)]
    expected = {
        "two objects: a large red circle and a small blue square.",
        "a scene with a large red circle and a small blue square.",
        "one circle and one square.",
        "the leftmost object is a large red circle.",
        "the rightmost object is a small blue square.",
        "a large red circle left of a small blue square.",
        "a small blue square right of a large red circle.",
    }
    there = {"there is a large red circle.", "there is a small blue square."}
    captions = scene_captions(objects, np.random.default_rng(0), count=10)
    assert len(captions) == 8 and set(captions) - there == expected
    assert len(set(captions) & there) == 1  # one random object named
    assert len(set(scene_captions(objects, np.random.default_rng(0), count=5))) == 5
    single = scene_captions([objects[0]], np.random.default_rng(1), count=6)
    assert len(set(single)) == 6


def test_probe_questions_of_a_hand_scene():
    objects = [
        _obj("triangle", "green", "small", 0.0),
        _obj("square", "blue", "small", 40.0),
        _obj("triangle", "cyan", "large", 20.0),
        _obj("circle", "red", "large", 10.0),
    ]
    records = probe_questions(objects)
    assert records == [
        {"task": "count", "question": "how many objects are there?", "label": 4},
        {
            "task": "left_of",
            "query": "circle|square",
            "question": "is the large red circle left of the small blue square?",
            "label": 1,
            "subject": 3,
            "object": 1,
        },
    ]  # two triangles: no question names "the triangle"


def test_locate_and_write_guard_the_root(tmp_path):
    gen = ClevrScenes(root=str(tmp_path / "s"), splits={"train": 2})
    with pytest.raises(FileNotFoundError, match="prepare_data"):
        gen.locate()
    assert gen.write().instances("train") == tmp_path / "s/annotations/instances_train.json"
    assert gen.locate().root == tmp_path / "s"
    with pytest.raises(ValueError, match="other parameters"):
        ClevrScenes(root=str(tmp_path / "s"), splits={"train": 3}).locate()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="busy"):
        ClevrScenes(root=str(tmp_path / "busy"), splits={"train": 2}).write()
    with pytest.raises(KeyError, match="'val'"):
        gen.files().images("val")


def test_styles_and_bad_arguments(tmp_path):
    assert ClevrScenes(splits={"a": 1, "b_ood": 1}).style("b_ood") is STYLES["out_of_domain"]
    assert ClevrScenes(splits={"a": 1}).style("a") is STYLES["in_domain"]
    bright = register_style(SceneStyle("bright_test", level=220, object_scale=1.2))
    gen = ClevrScenes(root=str(tmp_path / "b"), splits={"x": 2}, styles={"x": "bright_test"})
    assert gen.style("x") is bright
    assert gen.params()["styles"]["x"]["level"] == 220
    pixels = np.asarray(gen.scene("x", 0).image)
    assert (pixels == 220).all(axis=2).any()
    with pytest.raises(ValueError, match="unknown style 'nope'"):
        ClevrScenes(splits={"x": 1}, styles={"x": "nope"})
    with pytest.raises(ValueError, match="num_objects"):
        ClevrScenes(num_objects=(3, 2))
    with pytest.raises(ValueError, match="splits"):
        ClevrScenes(splits={"train": 0})


def test_objects_per_image_stay_in_range(files):
    scenes = _load(files.scenes("train"))["scenes"]
    counts = [len(s["objects"]) for s in scenes]
    assert min(counts) >= 1 and max(counts) <= 5
    sizes = {(o["size"], o["shape"]) for s in scenes for o in s["objects"]}
    assert {s for s, _ in sizes} == {"large", "small"} and {s for _, s in sizes} == set(SHAPES)
