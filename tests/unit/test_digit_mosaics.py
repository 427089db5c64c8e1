"""The digit-mosaic generator: tiles are the resized source digits, masks / boxes / regions /
captions agree with the tile labels, train and held-out splits share no digit image, the
copy is deterministic and parameter-checked, and the COCO readers and the image–text
datamodule read it back."""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from zoo.data.digit_mosaics import DIGIT_NAMES, MANIFEST, DigitMosaics

SPLITS = {"train": 12, "val": 4, "test": 6}
WORDS = "|".join(DIGIT_NAMES)
GRID2 = {"top left": (0, 0), "top right": (0, 1), "bottom left": (1, 0), "bottom right": (1, 1)}
# one caption part: "<a|an> <digit> in <the top left | row r column c>"
PART = re.compile(
    rf"(?:a|an) ({WORDS}) in (?:the (top left|top right|bottom left|bottom right)"
    rf"|row (\d+) column (\d+))"
)


def _parse(caption: str) -> list[tuple[int, tuple[int, int]]]:
    """The (digit, (row, col)) a caption names, in order; fails on any other text."""
    assert caption.endswith("."), caption
    body = caption[:-1]
    pieces = re.split(r", | and ", body)
    named = []
    for piece in pieces:
        match = PART.fullmatch(piece)
        assert match, (caption, piece)
        word, corner, row, col = match.groups()
        where = GRID2[corner] if corner else (int(row) - 1, int(col) - 1)
        article = "an" if word == "eight" else "a"
        assert piece.startswith(article + " "), piece
        named.append((DIGIT_NAMES.index(word), where))
    return named


def _load(path: Path):
    return json.loads(path.read_text())


DIGITS = load_digits()


def _expected_tile(source: int, size: int) -> np.ndarray:
    """The source digit, 0-16 → 0-255, bilinear resize: written out here, not imported."""
    pixels = DIGITS.images[source]
    grey = np.rint(pixels * 255.0 / 16.0).astype(np.uint8)
    return np.asarray(Image.fromarray(grey, "L").resize((size, size), Image.BILINEAR))


@pytest.fixture(scope="module")
def gen(tmp_path_factory: pytest.TempPathFactory) -> DigitMosaics:
    root = tmp_path_factory.mktemp("mosaics") / "m"
    g = DigitMosaics(
        root=str(root), splits=SPLITS, mentions=2, captions_per_image=3, empty_prob=0.4, seed=3
    )
    g.write()
    return g


@pytest.fixture(scope="module")
def files(gen):
    return gen.locate()


def _image(files, split: str, index: int) -> np.ndarray:
    return np.asarray(Image.open(files.images(split) / f"{index:06d}.png"))


def test_tile_pixels_are_the_resized_source_digit(gen, files):
    t = gen.tile_size
    for split, count in SPLITS.items():
        for index in range(count):
            pixels = _image(files, split, index)
            mosaic = gen.mosaic(split, index)
            assert np.array_equal(pixels, mosaic.image)
            assert (pixels[..., 0] == pixels[..., 1]).all() and (
                pixels[..., 0] == pixels[..., 2]
            ).all()
            for r in range(gen.grid):
                for c in range(gen.grid):
                    tile = pixels[r * t : (r + 1) * t, c * t : (c + 1) * t, 0]
                    label, source = int(mosaic.labels[r, c]), int(mosaic.sources[r, c])
                    if label < 0:
                        assert source == -1 and not tile.any()
                    else:
                        assert DIGITS.target[source] == label
                        assert np.array_equal(tile, _expected_tile(source, t))
            assert (mosaic.labels >= 0).any()


def test_masks_hold_label_plus_one_per_tile_and_zero_when_blank(gen, files):
    t = gen.tile_size
    seen_blank = False
    for split, count in SPLITS.items():
        for index in range(count):
            mask_image = Image.open(files.masks(split) / f"{index:06d}.png")
            assert mask_image.mode == "L"
            mask = np.asarray(mask_image)
            labels = gen.mosaic(split, index).labels
            for r in range(gen.grid):
                for c in range(gen.grid):
                    tile = mask[r * t : (r + 1) * t, c * t : (c + 1) * t]
                    assert (tile == labels[r, c] + 1).all()
                    seen_blank |= bool(labels[r, c] < 0)
    assert seen_blank, "empty_prob=0.4 should leave some tile blank in 22 mosaics"


def test_captions_name_the_labels_at_the_named_positions(gen, files):
    for split in SPLITS:
        coco = _load(files.captions(split))
        by_image: dict[int, list[str]] = {}
        for ann in sorted(coco["annotations"], key=lambda a: a["id"]):
            by_image.setdefault(ann["image_id"], []).append(ann["caption"])
        for image in coco["images"]:
            index = image["id"] - 1
            mosaic = gen.mosaic(split, index)
            assert by_image[image["id"]] == mosaic.captions
            assert len(mosaic.captions) == gen.captions_per_image
            n = int((mosaic.labels >= 0).sum())
            for caption, named in zip(mosaic.captions, mosaic.mentioned_by):
                parsed = _parse(caption)
                assert len(parsed) == min(gen.mentions, n)
                assert len({where for _, where in parsed}) == len(parsed)  # distinct tiles
                for digit, (r, c) in parsed:
                    assert mosaic.labels[r, c] == digit
                assert [where for _, where in parsed] == named
            assert mosaic.mentioned == mosaic.mentioned_by[0]


@pytest.mark.parametrize("mentions", [1, 4, 9])
def test_general_grid_captions_say_row_and_column(tmp_path, mentions):
    gen = DigitMosaics(
        root=str(tmp_path), splits={"train": 8}, grid=3, tile_size=8, mentions=mentions
    )
    for index in range(8):
        mosaic = gen.mosaic("train", index)
        parsed = _parse(mosaic.captions[0])
        assert "row" in mosaic.captions[0] and len(parsed) == mentions  # no blanks: 9 digits
        assert all(mosaic.labels[r, c] == d for d, (r, c) in parsed)


def test_regions_are_the_tile_boxes_and_match_the_instances(gen, files):
    t = gen.tile_size
    for split in SPLITS:
        instances = _load(files.instances(split))
        regions = _load(files.regions(split))
        files_of = {im["id"]: im["file_name"] for im in instances["images"]}
        assert [entry["id"] for entry in regions] == sorted(files_of)
        assert [c["name"] for c in instances["categories"]] == list(DIGIT_NAMES)
        assert [c["id"] for c in instances["categories"]] == list(range(1, 11))
        anns = {a["id"]: a for a in instances["annotations"]}
        count = 0
        for entry in regions:
            labels = gen.mosaic(split, int(files_of[entry["id"]][:-4])).labels
            assert len(entry["regions"]) == int((labels >= 0).sum())
            for region in entry["regions"]:
                count += 1
                ann = anns[region["region_id"]]
                box = [region["x"], region["y"], region["width"], region["height"]]
                r, c = region["y"] // t, region["x"] // t
                assert box == [c * t, r * t, t, t] == ann["bbox"]
                assert region["image_id"] == entry["id"] == ann["image_id"]
                digit = int(labels[r, c])
                assert ann["category_id"] == digit + 1
                assert region["phrase"] == ("an " if digit == 8 else "a ") + DIGIT_NAMES[digit]
                assert ann["area"] == t * t and ann["iscrowd"] == 0
                assert isinstance(ann["segmentation"]["counts"], str)
        assert count == len(anns)


def test_train_and_held_out_splits_share_no_digit_image(gen, files):
    def sources(split: str) -> set[int]:
        anns = _load(files.instances(split))["annotations"]
        return {a["attributes"]["source"] for a in anns}

    train_pool, held_out = set(gen.pool("train").tolist()), set(gen.pool("test").tolist())
    assert not train_pool & held_out and len(train_pool | held_out) == 1797
    assert len(train_pool) == round(0.8 * 1797)
    assert sources("train") <= train_pool
    assert sources("val") | sources("test") <= held_out
    assert not sources("train") & (sources("val") | sources("test"))


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_same_parameters_write_identical_bytes_and_another_seed_differs(tmp_path):
    kwargs = {"splits": {"train": 5, "test": 3}, "mentions": 2, "empty_prob": 0.3}
    first = DigitMosaics(root=str(tmp_path / "a"), seed=1, **kwargs).write()
    second = DigitMosaics(root=str(tmp_path / "b"), seed=1, **kwargs).write()
    other = DigitMosaics(root=str(tmp_path / "c"), seed=2, **kwargs).write()
    a, b, c = _tree_bytes(first.root), _tree_bytes(second.root), _tree_bytes(other.root)
    assert a == b
    assert a.keys() == c.keys()
    assert a["images/train/000000.png"] != c["images/train/000000.png"]
    assert a["annotations/captions_train.json"] != c["annotations/captions_train.json"]
    # write() again is a no-op: the same files, untouched
    mtime = (first.root / MANIFEST).stat().st_mtime_ns
    DigitMosaics(root=str(tmp_path / "a"), seed=1, **kwargs).write()
    assert (first.root / MANIFEST).stat().st_mtime_ns == mtime


def test_caption_knobs_leave_the_pixels_unchanged():
    one = DigitMosaics(splits={"train": 4}, captions_per_image=1, mentions=2, empty_prob=0.3)
    three = DigitMosaics(splits={"train": 4}, captions_per_image=3, mentions=2, empty_prob=0.3)
    more = DigitMosaics(splits={"train": 4}, captions_per_image=1, mentions=4, empty_prob=0.3)
    for index in range(4):
        a, b, c = (g.mosaic("train", index) for g in (one, three, more))
        assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels)
        assert np.array_equal(a.image, c.image) and np.array_equal(a.labels, c.labels)
        assert a.captions[0] == b.captions[0]


def test_locate_refuses_missing_copies_and_other_parameters(tmp_path):
    root = str(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="prepare_data"):
        DigitMosaics(root=root, splits={"train": 2}).locate()
    DigitMosaics(root=root, splits={"train": 2}).write()
    assert DigitMosaics(root=root, splits={"train": 2}).locate().root == Path(root)
    for other in ({"mentions": 2}, {"seed": 1}, {"empty_prob": 0.5}, {"tile_size": 8}):
        with pytest.raises(ValueError, match="written with"):
            DigitMosaics(root=root, splits={"train": 2}, **other).locate()
    with pytest.raises(ValueError, match="written with"):
        DigitMosaics(root=root, splits={"train": 3}).locate()
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "x.txt").write_text("not mosaics")
    with pytest.raises(FileExistsError, match="manifest.json"):
        DigitMosaics(root=str(stray), splits={"train": 2}).write()


def test_default_root_is_a_cache_folder_named_after_the_parameters(tmp_path, monkeypatch):
    monkeypatch.setenv("VL_ZOO_CACHE", str(tmp_path))
    a, b = DigitMosaics(splits={"train": 2}), DigitMosaics(splits={"train": 2}, mentions=2)
    assert a.root_dir().parent == tmp_path and a.root_dir() != b.root_dir()
    assert a.write().root == a.root_dir()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mentions": 5}, "mentions"),
        ({"mentions": 0}, "mentions"),
        ({"empty_prob": 1.5}, "empty_prob"),
        ({"splits": {"train": 0}}, "splits"),
        ({"captions_per_image": 0}, "captions_per_image"),
    ],
)
def test_bad_parameters_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DigitMosaics(**kwargs)


def test_coco_readers_read_the_files_back(gen, files):
    from zoo.data.coco import CocoCaptions, CocoInstances

    t = gen.tile_size
    instances = CocoInstances(files.instances("test"), files.images("test"))
    assert instances.classnames == list(DIGIT_NAMES)
    captions = CocoCaptions(files.captions("test"), files.images("test"))
    for index in range(SPLITS["test"]):
        record, mosaic = instances.read(index), gen.mosaic("test", index)
        rows, cols = np.nonzero(mosaic.labels >= 0)
        assert record["labels"].tolist() == mosaic.labels[rows, cols].tolist()
        for box, mask, r, c in zip(record["boxes"], record["masks"], rows, cols):
            assert box.tolist() == [c * t, r * t, (c + 1) * t, (r + 1) * t]
            square = torch.zeros(gen.image_size, gen.image_size, dtype=torch.uint8)
            square[r * t : (r + 1) * t, c * t : (c + 1) * t] = 1
            assert torch.equal(mask, square)
        assert np.array_equal(np.asarray(record["image"]), mosaic.image)
        assert captions.read(index)["captions"] == mosaic.captions


def test_image_text_datamodule_batches_name_the_right_digits(tmp_path, monkeypatch):
    from zoo.data.image_text_datamodule import ImageTextDataModule

    monkeypatch.setenv("VL_ZOO_CACHE", str(tmp_path / "cache"))
    options = {"splits": {"train": 8, "test": 4}, "mentions": 2, "empty_prob": 0.3, "seed": 5}
    data = ImageTextDataModule(
        source="mosaics",
        mosaics=options,
        image_size=32,
        context_length=40,
        train_transform="eval",  # no crop: the pixels identify the mosaic
        batch_size=4,
    )
    with pytest.raises(FileNotFoundError):
        data.setup("fit")  # nothing is written before prepare_data
    data.prepare_data()
    data.setup("fit")
    assert data.splits["val"] is None and data.splits["test"] is not None
    gen = DigitMosaics(**options)
    transform = data.transform("eval")
    reference = torch.stack(
        [transform(Image.fromarray(gen.mosaic("train", i).image)) for i in range(8)]
    )
    seen = set()
    for batch in data.train_dataloader():
        for image, caption in zip(batch["image"], batch["caption"]):
            (match,) = [i for i in range(8) if torch.equal(reference[i], image)]
            labels = gen.mosaic("train", match).labels
            parsed = _parse(caption)
            assert len(parsed) == min(2, int((labels >= 0).sum()))
            assert all(labels[r, c] == d for d, (r, c) in parsed)
            seen.add(match)
    assert seen == set(range(8))
    with pytest.raises(ValueError, match="source: mosaics"):
        ImageTextDataModule(source="csv", mosaics={"splits": {"train": 2}})


def test_caption_mentions_read_back_what_the_captions_name(files):
    from zoo.data.digit_mosaics import caption_mentions

    for split in SPLITS:
        for ann in _load(files.captions(split))["annotations"]:
            named = [(d, r, c) for d, (r, c) in _parse(ann["caption"])]
            assert caption_mentions(ann["caption"], 2) == named
    assert caption_mentions("a one in row 3 column 2.", 3) == [(1, 2, 1)]
    with pytest.raises(ValueError, match="not a digit-mosaic caption"):
        caption_mentions("a photo of a seven.", 2)


def test_caption_relevance_by_hand():
    from zoo.data.digit_mosaics import caption_relevance

    tiles = np.array([[[7, -1], [2, 8]], [[7, 1], [3, 3]], [[-1, -1], [-1, 8]]])
    captions = [
        "a seven in the top left.",
        "an eight in the bottom right.",
        "a seven in the top left and an eight in the bottom right.",
        "a two in the top right.",
    ]
    expected = np.array(
        [
            [True, True, False],  # 7 top left: images 0 and 1
            [True, False, True],  # 8 bottom right: images 0 and 2
            [True, False, False],  # both: image 0 only
            [False, False, False],  # 2 top right: nobody (a blank tile is not a two)
        ]
    )
    assert (caption_relevance(captions, tiles, 2) == expected).all()


def test_datamodule_caption_relevance_agrees_with_the_label_masks(gen, files):
    from zoo.data.image_text_datamodule import ImageTextDataModule

    dm = ImageTextDataModule(
        source="mosaics", mosaics={**asdict(gen), "root": gen.root}, image_size=16
    )
    relevance = dm.caption_relevance("test").numpy()
    coco = _load(files.captions("test"))
    ids = sorted(img["id"] for img in coco["images"])
    captions = [
        a["caption"]
        for i in ids
        for a in sorted(coco["annotations"], key=lambda a: a["id"])
        if a["image_id"] == i
    ]
    assert relevance.shape == (len(captions), len(ids))
    # from the masks (an independent record of the tiles): class d + 1 fills the named tile
    name = {img["id"]: img["file_name"] for img in coco["images"]}
    tile = gen.tile_size
    masks = [np.asarray(Image.open(files.masks("test") / Path(name[i]).name)) for i in ids]
    for t, caption in enumerate(captions):
        for j, mask in enumerate(masks):
            fits = all(
                mask[r * tile + tile // 2, c * tile + tile // 2] == d + 1
                for d, (r, c) in _parse(caption)
            )
            assert relevance[t, j] == fits, (caption, j)
    own = np.repeat(np.arange(len(ids)), gen.captions_per_image)
    assert relevance[np.arange(len(captions)), own].all()  # a caption fits its own mosaic
