"""Sample builders: each builder's fields equal hand-built values, and skip-and-count,
per-sample seeding and exact resume hold for every builder, not only image–text."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from zoo.data.builders import (
    IGNORE_INDEX,
    ConversationBuilder,
    DocumentBuilder,
    ImageMaskBuilder,
    ImageTextBuilder,
    LabelledImageBuilder,
    SampleBuilder,
)
from zoo.data.resumable import EpochSampler, ResumableDataLoader
from zoo.data.samples import (
    BadSample,
    SampleKey,
    SkipReplaceDataset,
    decode_image,
    sample_seed,
    seeded_rng,
)
from zoo.data.tokenizers import TextTokenizer
from zoo.data.transforms import build_transform, to_rgb_tensor

H, W = 12, 16
N, BAD, BATCH = 20, (3, 11), 4
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
SPECIAL = ["<pad>", "<s>", "</s>", "[UNK]"]
VOCAB = SPECIAL + ["user", "assistant", "system", ":", "a", "what", "digit", "be", "brief"]
VOCAB += ["and", "this", "total", "new", "york", "42", *WORDS]
ID = {token: i for i, token in enumerate(VOCAB)}


# --- fixtures ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hf_tokenizer(tmp_path_factory):
    """A word-level Hugging Face tokenizer built offline from :data:`VOCAB`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel(ID, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="[UNK]",
    )
    folder = tmp_path_factory.mktemp("tokenizer")
    tok.save_pretrained(folder)
    tok.folder = folder
    return tok


def _pixels(k: int) -> np.ndarray:
    return np.random.default_rng(k).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _plain(array: np.ndarray) -> torch.Tensor:
    """``ToTensor`` by hand: (H, W, 3) uint8 → (3, H, W) float / 255."""
    return torch.from_numpy(array).permute(2, 0, 1).float() / 255


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


class Records(SkipReplaceDataset):
    """Records with encoded images: ``read`` decodes them, so corrupt bytes are BadSamples."""

    def __init__(self, records: list[dict], builder):
        super().__init__("records", builder)
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def read(self, index: int) -> dict:
        record = dict(self.records[index])
        record["image"] = decode_image(record["image"], f"record {index}")
        return record


def _record(kind: str, i: int) -> dict:
    image = _png(_pixels(i)) if i not in BAD else b"\x89PNG not an image"
    rng = np.random.default_rng(100 + i)
    if kind in ("image_text", "labelled"):
        return {"image": image, "caption": f"a {WORDS[i % 10]}", "label": i % 10}
    if kind == "mask":
        return {"image": image, "mask": rng.integers(0, 5, (H, W), dtype=np.uint8)}
    if kind == "document":
        n = i % 4
        x1, y1 = rng.integers(0, W // 2, n), rng.integers(0, H // 2, n)
        boxes = np.stack([x1, y1, x1 + rng.integers(2, W // 2, n), y1 + 3], 1).astype(float)
        return {"image": image, "boxes": boxes, "words": [WORDS[(i + j) % 10] for j in range(n)]}
    turns = [("user", "what digit"), ("assistant", f"a {WORDS[i % 10]}")] * (1 + i % 3)
    return {"image": image, "conversation": [{"role": r, "content": c} for r, c in turns]}


def _builder(kind: str, tok):
    """Each kind with random transforms, so seeding is what makes samples repeat."""
    if kind == "image_text":
        text = TextTokenizer(str(tok.folder), context_length=6)
        return ImageTextBuilder(build_transform("clip", 8), text, [build_transform("ssl", 8)])
    if kind == "labelled":
        return LabelledImageBuilder(build_transform("clip", 8), [build_transform("ssl", 8)])
    if kind == "mask":
        return ImageMaskBuilder(v2.Compose([v2.RandomResizedCrop(8), v2.RandomHorizontalFlip()]))
    if kind == "document":
        transform = v2.Compose(
            [
                v2.RandomHorizontalFlip(),
                v2.RandomResizedCrop((H, W), scale=(0.3, 1.0)),
                v2.ClampBoundingBoxes(),
                v2.SanitizeBoundingBoxes(min_size=1),
            ]
        )
        return DocumentBuilder(transform, tokenizer=tok)
    return ConversationBuilder(tok, image_transform=build_transform("clip", 8))


KINDS = ["image_text", "labelled", "mask", "document", "conversation"]


def _dataset(kind: str, tok) -> Records:
    return Records([_record(kind, i) for i in range(N)], _builder(kind, tok))


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


# --- each builder's fields equal hand-built values --------------------------------------------
def test_image_text_builder_draws_like_the_sample_builder_of_before(hf_tokenizer) -> None:
    """Same values and the same RNG order as the pre-record SampleBuilder: the image
    transform, then the tokenizer, then each view in order."""
    image = Image.fromarray(_pixels(0))
    tf, view = build_transform("clip", 8), build_transform("ssl", 8)
    text = TextTokenizer(str(hf_tokenizer.folder), context_length=6)
    builder = ImageTextBuilder(tf, text, [view, view])
    with seeded_rng(5):
        want = {"image": tf(image), "text": text("a seven"), "caption": "a seven", "label": 7}
        want |= {"skipped": 1, "views": [view(image), view(image)]}
    with seeded_rng(5):
        got = builder({"image": image, "caption": "a seven", "label": 7}, skipped=1)
    assert _same(got, want)
    assert got["text"].tolist() == [ID["<s>"], ID["a"], ID["seven"], ID["</s>"], 0, 0]
    with seeded_rng(5):  # the old positional call still works and gives the same sample
        legacy = SampleBuilder(tf, text, [view, view])(image, "a seven", 7, skipped=1)
    assert _same(legacy, want)


def test_labelled_builder_applies_the_transforms_in_order() -> None:
    image = Image.fromarray(_pixels(1))
    flip = v2.Compose([v2.RandomHorizontalFlip(p=1.0), to_rgb_tensor()])
    sample = LabelledImageBuilder(to_rgb_tensor(), [flip])({"image": image, "label": 3}, 0)
    plain = _plain(_pixels(1))
    assert torch.equal(sample["image"], plain)
    assert torch.equal(sample["views"][0], plain.flip(-1))
    assert sample["label"] == 3 and sample["skipped"] == 0
    assert set(sample) == {"image", "label", "skipped", "views"}


def test_mask_moves_with_the_pixels() -> None:
    mask = np.random.default_rng(0).integers(0, 5, (H, W), dtype=np.uint8)
    # the red channel encodes the mask, so a joint transform keeps red == 50 * mask
    pixels = _pixels(2)
    pixels[..., 0] = mask * 50
    image = Image.fromarray(pixels)
    flipped = ImageMaskBuilder(v2.RandomHorizontalFlip(p=1.0))({"image": image, "mask": mask})
    assert torch.equal(flipped["mask"], torch.from_numpy(mask).long().flip(-1))
    plain = _plain(pixels)
    assert torch.equal(flipped["image"], plain.flip(-1))
    crop = v2.RandomResizedCrop(8, scale=(0.2, 1.0), interpolation=v2.InterpolationMode.NEAREST)
    builder = ImageMaskBuilder(crop)
    masks = []
    for seed in range(5):
        with seeded_rng(seed):
            sample = builder({"image": image, "mask": mask})
        red = (sample["image"][0] * 255).round().long()
        assert sample["mask"].shape == (8, 8) and torch.equal(red, sample["mask"] * 50)
        masks.append(sample["mask"])
    assert not all(torch.equal(masks[0], m) for m in masks[1:])  # the crops differ


def test_instance_masks_flip_and_pad() -> None:
    masks = np.zeros((2, H, W), dtype=np.uint8)
    masks[0, :, :3] = 1
    masks[1, 4:, 10:] = 1
    builder = ImageMaskBuilder(v2.RandomHorizontalFlip(p=1.0), instance=True)
    image = Image.fromarray(_pixels(3))
    one = builder({"image": image, "masks": masks, "classes": [4, 7]})
    assert torch.equal(one["masks"], torch.from_numpy(masks).long().flip(-1))
    assert one["classes"].tolist() == [4, 7]
    other = builder({"image": image, "masks": masks[:1]})
    batch = builder.collator()([one, other])
    assert batch["masks_mask"].tolist() == [[True, True], [True, False]]
    assert batch["classes"].tolist() == [[4, 7], [-1, -1]]
    assert torch.equal(batch["masks"][1, 1], torch.zeros(H, W, dtype=torch.long))


def test_document_boxes_flip_with_the_page_and_tokens_carry_their_word_box(
    hf_tokenizer,
) -> None:
    boxes = np.array([[1, 2, 5, 4], [6, 1, 14, 3], [0, 8, 16, 12]], dtype=float)
    record = {"image": Image.fromarray(_pixels(4)), "boxes": boxes}
    record["words"] = ["total", "new york", "42"]
    builder = DocumentBuilder(v2.RandomHorizontalFlip(p=1.0), tokenizer=hf_tokenizer)
    sample = builder(record)
    want = [[W - 5, 2, W - 1, 4], [W - 14, 1, W - 6, 3], [W - 16, 8, W - 0, 12]]  # x' = W - x
    assert sample["boxes"].tolist() == want and sample["words"] == record["words"]
    assert sample["input_ids"].tolist() == [ID["total"], ID["new"], ID["york"], ID["42"]]
    assert sample["token_boxes"].tolist() == [want[0], want[1], want[1], want[2]]
    assert sample["attention_mask"].tolist() == [1, 1, 1, 1]


def test_document_drops_the_word_of_a_dropped_box() -> None:
    boxes = np.array([[1, 2, 5, 4], [6, 1, 6, 3], [0, 8, 16, 12]], dtype=float)  # 2nd: empty
    record = {"image": Image.fromarray(_pixels(5)), "boxes": boxes, "words": ["a", "b", "c"]}
    sample = DocumentBuilder(v2.SanitizeBoundingBoxes(min_size=1))(record)
    assert sample["words"] == ["a", "c"]
    assert sample["boxes"].tolist() == [[1, 2, 5, 4], [0, 8, 16, 12]]
    with pytest.raises(BadSample, match="2 words but boxes of shape"):
        DocumentBuilder()({**record, "words": ["a", "b"]})


def test_conversation_labels_are_ignored_except_on_assistant_tokens(hf_tokenizer) -> None:
    turns = [
        ("system", "be brief"),
        ("user", "what digit"),
        ("assistant", "a seven"),
        ("user", "and this"),
        ("assistant", "a one"),
    ]
    record = {"conversation": [{"role": r, "content": c} for r, c in turns]}
    sample = ConversationBuilder(hf_tokenizer)(record)
    tokens = ["<s>", "system", ":", "be", "brief", "user", ":", "what", "digit"]
    tokens += ["assistant", ":", "a", "seven", "</s>", "user", ":", "and", "this"]
    tokens += ["assistant", ":", "a", "one", "</s>"]
    trained = {11, 12, 13, 20, 21, 22}  # "a seven </s>" and "a one </s>"
    ids = [ID[t] for t in tokens]
    assert sample["input_ids"].tolist() == ids
    assert sample["labels"].tolist() == [
        ids[i] if i in trained else IGNORE_INDEX for i in range(len(ids))
    ]
    assert sample["attention_mask"].tolist() == [1] * len(ids) and "image" not in sample
    llava = {"conversation": [{"from": {"user": "human"}.get(r, "gpt" if r == "assistant" else r),
                               "value": c} for r, c in turns]}  # fmt: skip
    assert _same(ConversationBuilder(hf_tokenizer)(llava), sample)
    short = ConversationBuilder(hf_tokenizer, max_length=12)(record)
    assert short["labels"].tolist() == sample["labels"][:12].tolist()
    with pytest.raises(BadSample, match="no 'assistant' turn"):
        ConversationBuilder(hf_tokenizer)({"conversation": [{"role": "user", "content": "a"}]})


def test_conversation_batches_pad_ids_labels_and_attention(hf_tokenizer) -> None:
    builder = ConversationBuilder(hf_tokenizer)
    long = builder({"conversation": [{"role": "assistant", "content": "a one two"}]})
    short = builder({"conversation": [{"role": "assistant", "content": "a"}]})
    batch = builder.collator()([long, short])
    pad = ID["<pad>"]
    assert batch["input_ids"][1].tolist() == short["input_ids"].tolist() + [pad, pad]
    assert batch["labels"][1].tolist() == short["labels"].tolist() + [IGNORE_INDEX] * 2
    assert batch["attention_mask"].tolist() == [[1] * 7, [1] * 5 + [0, 0]]


# --- skip-and-count, per-sample seeding, exact resume: for every builder ------------------------
def _one_pass(dataset, builder, batch_size: int = BATCH) -> list[dict]:
    return list(DataLoader(dataset, batch_size=batch_size, collate_fn=builder.collator()))


@pytest.mark.parametrize("kind", KINDS)
def test_bad_records_are_replaced_and_counted_or_dropped(kind, hf_tokenizer) -> None:
    dataset = _dataset(kind, hf_tokenizer)
    batches = _one_pass(dataset, dataset.builder)
    sizes = [len(b["image"]) for b in batches]
    assert sizes == [BATCH] * (N // BATCH)  # replacement keeps every batch full
    assert sum(int(b["skipped"]) for b in batches) == len(BAD)
    dataset.on_bad = "drop"
    batches = _one_pass(dataset, dataset.builder)
    assert sum(int(b.get("dropped", 0)) for b in batches) == len(BAD)
    assert sum(len(b["image"]) for b in batches) == N - len(BAD)
    assert sum(int(b["skipped"]) for b in batches) == 0


@pytest.mark.parametrize("kind", KINDS)
def test_a_sample_key_gives_the_same_sample_in_any_order(kind, hf_tokenizer) -> None:
    keys = [SampleKey(i, seed=3, epoch=1) for i in range(N)]
    forward = [_dataset(kind, hf_tokenizer)[k] for k in keys]
    fresh = _dataset(kind, hf_tokenizer)
    backward = [fresh[k] for k in reversed(keys)][::-1]
    assert all(_same(a, b) for a, b in zip(forward, backward))
    other_epoch = [fresh[SampleKey(i, seed=3, epoch=2)] for i in range(N)]
    assert not all(_same(a, b) for a, b in zip(forward, other_epoch))  # randomness is real
    with seeded_rng(sample_seed(3, 1, 0)):  # the key's seed is all a sample depends on
        direct = fresh.builder(
            {**fresh.records[0], "image": decode_image(fresh.records[0]["image"])}
        )
    assert _same(direct, forward[0])


def _loader(kind: str, tok, epoch: int) -> ResumableDataLoader:
    dataset = _dataset(kind, tok)
    sampler = EpochSampler(dataset, seed=11)
    sampler.set_epoch(epoch)
    return ResumableDataLoader(
        dataset, sampler=sampler, batch_size=BATCH, collate_fn=dataset.builder.collator()
    )


@pytest.mark.parametrize("kind", KINDS)
def test_a_restored_loader_yields_exactly_the_remaining_batches(kind, hf_tokenizer) -> None:
    k = 2
    reference = list(_loader(kind, hf_tokenizer, epoch=1))
    first = _loader(kind, hf_tokenizer, epoch=1)
    it = iter(first)
    seen = [next(it) for _ in range(k)]
    state = first.state_dict()
    del it, first  # the killed process
    resumed = _loader(kind, hf_tokenizer, epoch=1)
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(reference) == N // BATCH and len(rest) == len(reference) - k
    assert all(_same(a, b) for a, b in zip(seen + rest, reference))


# --- readers take any builder whose fields their records hold ---------------------------------
class RejectOddLabels(LabelledImageBuilder):
    """A builder that refuses some records (as a malformed record would be refused)."""

    def __call__(self, record, skipped: int = 0):
        if record["label"] % 2:
            raise BadSample(record.get("source", "?"), "odd label")
        return super().__call__(record, skipped)


def _shard(path) -> None:
    with wds.TarWriter(str(path)) as sink:
        for i in range(8):
            sink.write({"__key__": f"s{i}", "png": _png(_pixels(i)), "txt": f"a {WORDS[i]}".encode(),
                        "cls": str(i).encode()})  # fmt: skip


def test_shard_readers_count_records_their_builder_rejects(tmp_path, monkeypatch) -> None:
    from zoo.data.indexed_shards import IndexedShards
    from zoo.data.shards import image_text_webdataset

    monkeypatch.setenv("VL_ZOO_CACHE", str(tmp_path / "cache"))
    _shard(tmp_path / "s.tar")
    streamed = image_text_webdataset(str(tmp_path / "s.tar"), None, None, builder=RejectOddLabels())
    samples = list(streamed)
    assert [s["label"] for s in samples] == [0, 2, 4, 6]
    # each rejected odd label is reported by the next kept sample; the last one (7) by none
    assert [s["skipped"] for s in samples] == [0, 1, 1, 1] and streamed.skips.total == 4
    assert set(samples[0]) == {"image", "label", "skipped"}
    indexed = IndexedShards(str(tmp_path / "s.tar"), builder=RejectOddLabels())
    batches = _one_pass(indexed, indexed.builder, batch_size=8)
    assert batches[0]["label"].tolist() == [0, 2, 2, 4, 4, 6, 6, 0]
    assert int(batches[0]["skipped"]) == 4


def test_table_reader_with_a_labelled_builder(tmp_path) -> None:
    from zoo.data.formats import ImageTextTable

    rows = []
    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(_png(_pixels(i)))
        rows.append({"image": f"{i}.png", "caption": "x", "label": i})
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = ImageTextTable(tmp_path / "t.jsonl", builder=LabelledImageBuilder())
    sample = table[2]
    assert set(sample) == {"image", "label", "skipped"} and sample["label"] == 2
    assert torch.equal(sample["image"], _plain(_pixels(2)))


# --- labelled-image readers -----------------------------------------------------------------
CLASSES = {"emu": 2, "cat": 3, "dog": 2}  # written in this (unsorted) order


@pytest.fixture(scope="module")
def image_tree(tmp_path_factory):
    """``root/train/<class>/<n>.png`` with one corrupt file, an upper-case extension and a
    stray text file; returns (split folder, {relative path: class name})."""
    root = tmp_path_factory.mktemp("folder")
    split = root / "train"
    files, k = {}, 0
    for name, count in CLASSES.items():
        (split / name).mkdir(parents=True)
        for n in range(count):
            suffix = ".PNG" if (name, n) == ("cat", 2) else ".png"
            (split / name / f"{n}{suffix}").write_bytes(_png(_pixels(k)))
            files[f"{name}/{n}{suffix}"] = name
            k += 1
    (split / "dog" / "bad.png").write_bytes(b"\x89PNG truncated")
    files["dog/bad.png"] = "dog"
    (split / "cat" / "notes.txt").write_text("not an image")
    return split, files


def _labels_by_file(names, labels) -> dict[str, int]:
    return {str(n): int(y) for n, y in zip(names, labels, strict=True)}


def test_the_three_labelled_readers_agree(image_tree, tmp_path) -> None:
    from zoo.data.labelled import HFImageFolder, ImageFolderDataset, ImageLabelTable

    split, files = image_tree
    classnames = sorted(CLASSES)
    want = {path: classnames.index(name) for path, name in files.items()}

    folder = ImageFolderDataset(split)
    assert folder.classnames == classnames and folder.labels.dtype == torch.long
    assert _labels_by_file(folder.paths, folder.labels) == want

    with (tmp_path / "labels.csv").open("w") as f:
        f.write("image,label\n" + "".join(f"{p},{n}\n" for p, n in files.items()))
    table = ImageLabelTable(tmp_path / "labels.csv", image_root=split)
    assert table.classnames == classnames
    assert _labels_by_file(table.images, table.labels) == want

    hf = HFImageFolder(split.parent, split="train", cache_dir=tmp_path / "hf-cache")
    assert hf.classnames == classnames
    hf_files = [
        Path(hf.dataset[i]["image"]["path"]).relative_to(split).as_posix() for i in range(len(hf))
    ]
    assert _labels_by_file(hf_files, hf.labels) == want

    for reader in (folder, table, hf):
        batches = _one_pass(reader, reader.builder, batch_size=len(want))
        assert int(batches[0]["skipped"]) == 1  # the one corrupt file, replaced and counted
        assert set(batches[0]) == {"image", "label", "skipped"}
        reader.on_bad = "drop"
        kept = _one_pass(reader, reader.builder, batch_size=len(want))[0]
        assert int(kept["dropped"]) == 1
        assert sorted(kept["label"].tolist()) == sorted(
            y for p, y in want.items() if p != "dog/bad.png"
        )


def test_label_table_with_integer_labels_has_no_classnames(image_tree, tmp_path) -> None:
    from zoo.data.labelled import ImageLabelTable

    split, files = image_tree
    rows = [{"file": str(split / p), "y": i % 3} for i, p in enumerate(files)]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = ImageLabelTable(tmp_path / "t.jsonl", image_key="file", label_key="y")
    assert table.classnames is None
    assert table.labels.tolist() == [i % 3 for i in range(len(files))]
    views = ImageLabelTable(
        tmp_path / "t.jsonl", image_key="file", label_key="y", view_transforms=[to_rgb_tensor()]
    )
    sample = views[0]
    assert torch.equal(sample["views"][0], sample["image"]) and sample["label"] == 0
