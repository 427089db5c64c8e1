"""Collation: padded fields and their masks equal hand-built tensors, dropped markers and
skip counts are accounted, and image–text batches are the stacked samples."""

from __future__ import annotations

import pickle

import pytest
import torch

from zoo.data.collate import (
    COUNT,
    DEFAULT_FIELDS,
    LIST,
    Collator,
    FieldSpec,
    collate_samples,
    pad_sequences,
    padded,
    scalar,
    stacked,
)


def test_boxes_are_padded_to_the_longest_with_a_mask() -> None:
    a = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
    b = torch.zeros(0, 4)
    c = torch.tensor([[9.0, 9.0, 10.0, 10.0]])
    samples = [{"boxes": a, "words": ["x", "y"]}, {"boxes": b, "words": []}]
    samples.append({"boxes": c, "words": ["z"]})
    batch = collate_samples(samples)
    want = torch.tensor(
        [
            [[1, 2, 3, 4], [5, 6, 7, 8]],
            [[0, 0, 0, 0], [0, 0, 0, 0]],
            [[9, 9, 10, 10], [0, 0, 0, 0]],
        ],
        dtype=torch.float32,
    )
    assert torch.equal(batch["boxes"], want)
    assert batch["boxes_mask"].tolist() == [[True, True], [False, False], [True, False]]
    assert batch["words"] == [["x", "y"], [], ["z"]]
    assert int(batch["skipped"]) == 0  # a count field is in every batch


def test_token_sequences_pad_with_their_own_values() -> None:
    collate = Collator(
        {
            "input_ids": padded(7),
            "labels": padded(-100),
            "attention_mask": padded(0),
            "skipped": COUNT,
        }
    )
    samples = [
        {"input_ids": torch.tensor([1, 2, 3]), "labels": torch.tensor([-100, 2, 3]),
         "attention_mask": torch.ones(3, dtype=torch.long), "skipped": 1},
        {"input_ids": torch.tensor([4]), "labels": torch.tensor([4]),
         "attention_mask": torch.ones(1, dtype=torch.long), "skipped": 0},
    ]  # fmt: skip
    batch = collate(samples)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 7, 7]]
    assert batch["labels"].tolist() == [[-100, 2, 3], [4, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["skipped"].dtype == torch.long and int(batch["skipped"]) == 1


def test_image_text_batch_is_the_stacked_samples() -> None:
    gen = torch.Generator().manual_seed(0)
    samples = [
        {
            "image": torch.rand(3, 4, 4, generator=gen),
            "text": torch.randint(0, 99, (6,), generator=gen),
            "caption": f"caption {i}",
            "label": i,
            "skipped": i % 2,
            "views": [torch.rand(3, 4, 4, generator=gen), torch.rand(3, 4, 4, generator=gen)],
        }
        for i in range(3)
    ]
    batch = collate_samples(samples)
    assert set(batch) == {"image", "text", "caption", "label", "skipped", "views"}
    assert torch.equal(batch["image"], torch.cat([s["image"][None] for s in samples]))
    assert torch.equal(batch["text"], torch.cat([s["text"][None] for s in samples]))
    assert batch["label"].dtype == torch.long and batch["label"].tolist() == [0, 1, 2]
    assert int(batch["skipped"]) == 1 and batch["caption"] == [
        "caption 0",
        "caption 1",
        "caption 2",
    ]
    for k in range(2):
        assert torch.equal(batch["views"][k], torch.cat([s["views"][k][None] for s in samples]))


def test_dropped_markers_are_removed_and_counted() -> None:
    ok = {"image": torch.ones(3, 2, 2), "label": 4, "skipped": 0}
    batch = collate_samples([ok, {"dropped": "a.png"}, ok, {"dropped": "b.png"}])
    assert int(batch["dropped"]) == 2 and batch["label"].tolist() == [4, 4]
    assert batch["image"].shape[0] == 2
    assert "dropped" not in collate_samples([ok])  # no marker, no key
    only = collate_samples([{"dropped": "a.png"}, {"dropped": "b.png"}])
    assert list(only) == ["dropped"] and int(only["dropped"]) == 2


def test_missing_scalar_takes_its_default_and_unknown_keys_stay_lists() -> None:
    collate = Collator({"label": scalar(), "score": scalar(torch.float32, 0.5), "x": stacked()})
    samples = [{"x": torch.zeros(1), "label": 3, "score": 2.0, "meta": {"a": 1}}]
    samples.append({"x": torch.ones(1), "meta": {"b": 2}})
    batch = collate(samples)
    assert batch["label"].tolist() == [3, -1]
    assert batch["score"].dtype == torch.float32 and batch["score"].tolist() == [2.0, 0.5]
    assert batch["meta"] == [{"a": 1}, {"b": 2}]


def test_padding_refuses_mismatched_trailing_dimensions() -> None:
    with pytest.raises(ValueError, match="equal trailing dimensions"):
        pad_sequences([torch.zeros(2, 4), torch.zeros(1, 3)])
    with pytest.raises(ValueError, match="only 'pad' fields have a mask"):
        FieldSpec("stack", mask="m")
    with pytest.raises(ValueError, match="unknown field kind"):
        FieldSpec("ragged")  # type: ignore[arg-type]


def test_collator_pickles_for_spawned_workers() -> None:
    collate = pickle.loads(pickle.dumps(Collator(DEFAULT_FIELDS)))
    samples = [
        {"boxes": torch.ones(1, 4), "caption": "a"},
        {"boxes": torch.ones(2, 4), "caption": "b"},
    ]
    batch = collate(samples)
    assert batch["boxes_mask"].tolist() == [[True, False], [True, True]]
    assert batch["caption"] == ["a", "b"] and DEFAULT_FIELDS["caption"] == LIST
