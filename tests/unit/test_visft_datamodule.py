"""ViSFT's multi-task data: the task mix (ratios over 10k draws, a pure function of
(seed, epoch, step), exact resume, DDP lock-step, Lightning's epochs), the datamodule on
generated scenes (one task's fields per batch, the train-only vocabulary, probe questions
equal to their JSON, nothing written before prepare_data) and on a COCO 2017 folder (the
``coco`` layout entry, missing paths named)."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import Dataset

from datamodules.visft import TASK_FIELDS, ViSFTDataModule
from zoo.data.layouts import parse_layout, write_recipe_layout
from zoo.data.resumable import EpochSampler
from zoo.data.samples import SampleKey
from zoo.data.task_mix import (
    TaskMixLoader,
    TaskSchedule,
    normalise_ratios,
    task_loader,
)

VISFT = {"caption": 0.4, "segmentation": 0.3, "detection": 0.3}
SPLITS = {"train": 24, "val": 8, "test_ood": 8}


# --- the task mix on synthetic loaders ----------------------------------------------------------
class Keys(Dataset):
    """Sample ``i`` of a task: its index and the pass it was drawn in (the SampleKey's)."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key: SampleKey) -> dict:
        return {"index": int(key), "pass": key.epoch}


def _collate(samples: list[dict]) -> dict:
    return {k: [s[k] for s in samples] for k in samples[0]}


def _mix(sizes: dict[str, int], seed: int = 0, rank: int = 0, replicas: int = 1, **kw):
    loaders = {
        task: task_loader(
            Keys(n), 2, seed=seed + k, collate_fn=_collate, num_replicas=replicas, rank=rank
        )
        for k, (task, n) in enumerate(sizes.items())
    }
    return TaskMixLoader(loaders, {t: VISFT[t] for t in sizes}, seed=seed, **kw)


def _epoch(mix: TaskMixLoader, epoch: int, limit: int | None = None) -> list[tuple]:
    mix.set_epoch(epoch)
    out = []
    for step, batch in enumerate(mix):
        out.append((batch["task"], tuple(batch["index"]), tuple(batch["pass"])))
        if limit is not None and step + 1 == limit:
            break
    return out


def test_ratios_hold_over_10k_draws():
    """ViSFT's 0.4 / 0.3 / 0.3 within ±2 points over 10,000 steps of the loader itself."""
    mix = _mix({"detection": 5, "segmentation": 5, "caption": 5}, steps_per_epoch=10_000)
    counts = Counter(task for task, _, _ in _epoch(mix, 0))
    assert sum(counts.values()) == 10_000
    for task, p in VISFT.items():
        assert abs(counts[task] / 10_000 - p) <= 0.02, (task, counts)
    # a two-task subset, renormalised: caption 4/7, detection 3/7
    mix = _mix({"detection": 5, "caption": 5}, steps_per_epoch=10_000)
    assert mix.ratios == pytest.approx({"detection": 3 / 7, "caption": 4 / 7})
    counts = Counter(task for task, _, _ in _epoch(mix, 3))
    assert abs(counts["caption"] / 10_000 - 4 / 7) <= 0.02, counts


def test_renormalisation_by_hand_and_bad_ratios():
    assert normalise_ratios({"caption": 0.4, "detection": 0.3}, ["caption", "detection"]) == {
        "caption": 0.4 / 0.7,
        "detection": 0.3 / 0.7,
    }
    assert normalise_ratios({"a": 2, "b": 6}, ["a", "b"]) == {"a": 0.25, "b": 0.75}
    with pytest.raises(ValueError, match=r"data.task_ratios names \['caption'\]"):
        normalise_ratios({"caption": 1, "detection": 1}, ["detection"], "data.task_ratios")
    with pytest.raises(ValueError, match=r"no ratio for the tasks \['segmentation'\]"):
        normalise_ratios({"detection": 1}, ["detection", "segmentation"])
    with pytest.raises(ValueError, match="positive"):
        normalise_ratios({"detection": 0}, ["detection"])


def test_draw_is_a_pure_function_of_seed_epoch_step():
    schedule = TaskSchedule([0.4, 0.3, 0.3], seed=7)
    long = schedule.draw(2, 3000)
    # step s does not depend on the epoch's length, nor on any earlier call
    assert torch.equal(TaskSchedule([0.4, 0.3, 0.3], seed=7).draw(2, 1500), long[:1500])
    assert torch.equal(schedule.draw(2, 3000), long)
    assert not torch.equal(schedule.draw(3, 3000), long)  # another epoch, another sequence
    assert not torch.equal(TaskSchedule([0.4, 0.3, 0.3], seed=8).draw(2, 3000), long)
    # the same for whole loaders: two fresh mixes give the same batches, epoch after epoch
    sizes = {"detection": 6, "segmentation": 4, "caption": 10}
    a, b = _mix(sizes, seed=3), _mix(sizes, seed=3)
    runs = [[_epoch(m, 0), _epoch(m, 1)] for m in (a, b)]
    assert runs[0] == runs[1]
    assert [t for t, _, _ in runs[0][1]] == a.tasks(1) and a.tasks(0) != a.tasks(1)
    assert len(a) == 3 + 2 + 5  # default epoch: the sum of the task loaders' lengths


def test_task_loaders_restart_and_cover_every_sample():
    """A task that runs out starts its next pass (a new permutation); every pass is complete."""
    mix = _mix({"detection": 4, "caption": 4}, steps_per_epoch=40)
    seen: dict[tuple[str, int], list[int]] = {}
    for task, indices, passes in _epoch(mix, 0):
        assert len(set(passes)) == 1
        seen.setdefault((task, passes[0]), []).extend(indices)
    full = [v for (task, p), v in seen.items() if (task, p + 1) in seen]
    assert len(full) >= 4  # both tasks ran out and restarted at least twice
    assert all(sorted(v) == [0, 1, 2, 3] for v in full)
    orders = {tuple(v) for v in full}
    assert len(orders) > 1  # passes are reshuffled


def test_resume_mid_epoch_gives_the_remaining_batches():
    """Stop after ``stop`` steps, load the state into a fresh loader: the rest of the epoch
    and the next epoch equal the uninterrupted run, also once task passes have restarted."""
    sizes = {"detection": 12, "segmentation": 8, "caption": 8}
    full = _mix(sizes, seed=5)
    reference = _epoch(full, 0) + _epoch(full, 1)
    assert len(reference) == 2 * len(full) == 2 * 14
    restarted = 0
    for stop in (1, 5, 9, 13):
        first = _mix(sizes, seed=5)
        head = _epoch(first, 0, limit=stop)
        state = first.state_dict()
        assert state["step"] == stop and state["epoch"] == 0
        restarted += any(s["pass"] > 0 for s in state["streams"].values())
        resumed = _mix(sizes, seed=5)
        resumed.load_state_dict(state)
        assert head + _epoch(resumed, 0) + _epoch(resumed, 1) == reference, stop
    assert restarted  # some stop fell after a task loader had run out and restarted


def test_resume_at_an_epoch_boundary_continues_the_task_streams():
    sizes = {"detection": 6, "caption": 4}
    full = _mix(sizes, seed=1)
    reference = [_epoch(full, e) for e in range(3)]
    first = _mix(sizes, seed=1)
    _epoch(first, 0)
    state = first.state_dict()
    resumed = _mix(sizes, seed=1)
    resumed.load_state_dict(state)
    assert [_epoch(resumed, 1), _epoch(resumed, 2)] == reference[1:]


def test_state_of_other_data_is_refused(caplog):
    state = _mix({"detection": 6, "caption": 4}, seed=1).state_dict()
    other = _mix({"detection": 8, "caption": 4}, seed=1)
    with caplog.at_level("WARNING", logger="zoo.data"):
        other.load_state_dict(state)
    assert "data changed" in caplog.text and "lengths" in caplog.text
    assert _epoch(other, 0) == _epoch(_mix({"detection": 8, "caption": 4}, seed=1), 0)


def test_two_ranks_draw_the_same_tasks_from_their_own_shards():
    sizes = {"detection": 8, "segmentation": 8, "caption": 12}
    ranks = [_mix(sizes, seed=2, rank=r, replicas=2) for r in (0, 1)]
    runs = [_epoch(m, 0) for m in ranks]
    assert len(runs[0]) == len(runs[1]) == 2 + 2 + 3
    assert [t for t, _, _ in runs[0]] == [t for t, _, _ in runs[1]]
    first_pass = [
        {i for t, idx, p in run if t == "caption" and p[0] == 0 for i in idx} for run in runs
    ]
    assert first_pass[0] and first_pass[1] and not first_pass[0] & first_pass[1]
    assert all(isinstance(loader.sampler, EpochSampler) for loader in ranks[0].loaders.values())


class Recorder(L.LightningModule):
    """Records the task of every training and validation batch."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.tasks: list[str] = []
        self.val_tasks: list[str] = []

    def training_step(self, batch, batch_idx):
        self.tasks.append(batch["task"])
        return (self.w - 1).pow(2).sum()

    def validation_step(self, batch, batch_idx):
        self.val_tasks.append(batch["task"])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _trainer(tmp_path: Path, **kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        **kwargs,
    )


def test_lightning_sets_the_epoch_and_trains_one_task_per_step(tmp_path):
    mix = _mix({"detection": 4, "caption": 6}, seed=4)
    module = Recorder()
    trainer = _trainer(tmp_path, max_epochs=2)
    trainer.fit(module, train_dataloaders=mix)
    assert trainer.num_training_batches == len(mix) == 5
    assert module.tasks == mix.tasks(0) + mix.tasks(1)


# --- the datamodule on generated scenes --------------------------------------------------------
@pytest.fixture(scope="module")
def scenes_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("visft") / "scenes"
    ViSFTDataModule(root=str(root), clevr={"splits": SPLITS}, image_size=32).prepare_data()
    return root


def _dm(root: Path, **kwargs) -> ViSFTDataModule:
    args = {"clevr": {"splits": SPLITS}, "image_size": 32, "batch_size": 4} | kwargs
    return ViSFTDataModule(root=str(root), **args)


def test_init_writes_nothing_prepare_data_writes(tmp_path):
    root = tmp_path / "scenes"
    dm = _dm(root, clevr={"splits": {"train": 4}}, val_split=None)
    assert not root.exists()
    with pytest.raises(FileNotFoundError, match="prepare_data"):
        dm.setup("fit")
    dm.prepare_data()
    assert (root / "manifest.json").is_file()
    assert (root / "annotations" / "captions_train.json").is_file()
    dm.setup("fit")
    assert len(dm._train_sets["caption"]) == 4


def test_every_batch_is_one_task_with_that_tasks_fields(scenes_root):
    dm = _dm(scenes_root)
    dm.setup("fit")
    assert dm.tasks == ["detection", "segmentation", "caption"]
    assert dm.num_classes == {"detection": 3, "segmentation": 3}
    assert dm.classnames == ["circle", "square", "triangle"]
    instances = json.loads((scenes_root / "annotations" / "instances_train.json").read_text())
    objects = Counter(a["image_id"] for a in instances["annotations"])
    mix = dm.train_dataloader()
    tasks = []
    for batch in mix:
        task = batch["task"]
        tasks.append(task)
        assert set(batch) == {*TASK_FIELDS[task], "task", "image_id", "skipped"}, task
        assert batch["image"].shape == (4, 3, 32, 32)
        if task == "caption":
            tokens, lengths = batch["tokens"], batch["lengths"]
            assert tokens.shape == (4, int(lengths.max()))
            rows = torch.arange(4)
            assert (tokens[:, 0] == dm.vocab.start_id).all()
            assert (tokens[rows, lengths - 1] == dm.vocab.end_id).all()
            assert ((torch.arange(tokens.shape[1]) >= lengths[:, None]) == (tokens == 0)).all()
        else:
            n = [len(x) for x in batch["labels"]]
            key = "boxes" if task == "detection" else "masks"
            assert [len(x) for x in batch[key]] == n
            assert n == [objects[i] for i in batch["image_id"].tolist()]
            if task == "segmentation":
                assert all(m.shape[1:] == (32, 32) for m in batch["masks"])
            else:
                boxes = torch.cat(batch["boxes"])
                assert boxes.shape[1] == 4 and boxes.min() >= 0 and boxes.max() <= 1
    assert tasks == mix.tasks(0) and len(tasks) == 3 * 6


def test_lightning_fit_through_the_datamodule(scenes_root, tmp_path):
    """Trainer.fit calls prepare_data / setup / the loaders: training batches follow the
    mix, the validation loop sees every task's val batches in turn."""
    dm = _dm(scenes_root, tasks=["segmentation", "caption"])
    module = Recorder()
    trainer = _trainer(tmp_path, max_epochs=1, limit_train_batches=5, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=dm)
    assert module.tasks == dm._train_loader.tasks(0)[:5]
    assert module.val_tasks == ["segmentation"] * 2 + ["caption"] * 2
    assert dm.state_dict()["train_loader"]["step"] == 5


def test_datamodule_resumes_mid_epoch_through_its_state(scenes_root):
    """Checkpoint state from ``dm.state_dict()`` after 7 steps: a fresh datamodule gives
    the same remaining batches, pixels (random flips) included."""

    def batches(dm, limit=None):
        mix = dm.train_dataloader()
        mix.set_epoch(0)
        out = []
        for step, b in enumerate(mix):
            out.append((b["task"], b["image_id"].tolist(), b["image"]))
            if limit is not None and step + 1 == limit:
                break
        return out

    reference = batches(_dm(scenes_root, tasks=["detection", "caption"]))
    first = _dm(scenes_root, tasks=["detection", "caption"])
    head = batches(first, limit=7)
    state = first.state_dict()
    resumed = _dm(scenes_root, tasks=["detection", "caption"])
    resumed.load_state_dict(state)
    rest = batches(resumed)
    assert len(head) + len(rest) == len(reference)
    for got, want in zip(head + rest, reference):
        assert got[:2] == want[:2] and torch.equal(got[2], want[2])


def test_task_subset_ratios_and_batch_sizes(scenes_root):
    dm = _dm(scenes_root, tasks=["detection", "caption"], batch_size={"detection": 2, "caption": 3})
    assert dm.task_ratios == pytest.approx({"detection": 3 / 7, "caption": 4 / 7})
    with pytest.raises(ValueError, match="segmentation"):
        _dm(scenes_root, tasks=["detection"], task_ratios={"detection": 1, "segmentation": 1})
    with pytest.raises(ValueError, match="extra"):
        _dm(scenes_root, tasks=["detection"], batch_size={"detection": 2, "caption": 2})
    dm.setup("fit")
    sizes = {b["task"]: len(b["image"]) for b in dm.train_dataloader()}
    assert sizes == {"detection": 2, "caption": 3}
    assert dm.num_classes == {"detection": 3}  # no segmentation task, no segmentation classes


def test_vocabulary_comes_from_the_train_split_only(tmp_path):
    root = tmp_path / "scenes"
    dm = _dm(root, tasks=["caption"], clevr={"splits": {"train": 6, "val": 4}})
    dm.prepare_data()
    annotations = root / "annotations"
    for split, extra in (("train", ["giraffe giraffe.", "okapi."]), ("val", ["zebra zebra."] * 5)):
        path = annotations / f"captions_{split}.json"
        data = json.loads(path.read_text())
        first_id = data["images"][0]["id"]
        for k, text in enumerate(extra):
            data["annotations"].append({"id": 10_000 + k, "image_id": first_id, "caption": text})
        path.write_text(json.dumps(data))
    dm.setup("fit")
    words = dm.vocab.word_map
    assert "giraffe" in words  # twice in train: more than min_word_freq = 1
    assert "okapi" not in words  # once in train
    assert "zebra" not in words  # ten times, but only in val
    assert dm.min_word_freq == 1 and dm.vocab.max_length == 50
    # the reference captions of the evaluation loader are the raw val captions, all of them
    batch = next(iter(dm.task_dataloader("caption", "val")))
    raw = json.loads((annotations / "captions_val.json").read_text())
    first = sorted(
        (a for a in raw["annotations"] if a["image_id"] == batch["image_id"][0].item()),
        key=lambda a: a["id"],
    )
    assert batch["captions"][0] == [a["caption"].strip() for a in first]
    assert batch["tokens"][0].tolist()[: batch["lengths"][0]] == dm.vocab.encode(
        first[0]["caption"]
    )


def test_question_loader_labels_equal_the_json(scenes_root):
    dm = _dm(scenes_root)
    assert dm.question_splits == ("train", "test_ood")
    questions = json.loads((scenes_root / "annotations" / "questions_test_ood.json").read_text())
    records = sorted(questions["questions"], key=lambda r: r["id"])
    for question, keep in (
        ("count", lambda r: r["task"] == "count"),
        ("left_right", lambda r: r["task"] == "left_of" and r["query"] == "circle|square"),
    ):
        want = [r for r in records if keep(r)]
        loader = dm.question_dataloader("test_ood", question)
        labels = torch.cat([b["label"] for b in loader]).tolist()
        assert labels == [r["label"] for r in want] and labels
        assert loader.dataset.image_ids == [r["image_id"] for r in want]
    assert dm.num_answers("left_right") == 2
    assert dm.num_answers("count") == 6  # 1..5 objects per scene (ClevrScenes' default)
    with pytest.raises(ValueError, match="unknown probe question 'colour'"):
        dm.question_dataloader("train", "colour")


def test_evaluation_loaders_are_deterministic_and_classification_is_not_offered(scenes_root):
    dm = _dm(scenes_root)
    for task in ("detection", "segmentation", "caption"):
        a, b = (list(dm.task_dataloader(task, "val")) for _ in range(2))
        assert [x["image_id"].tolist() for x in a] == [[1, 2, 3, 4], [5, 6, 7, 8]]
        assert all(torch.equal(x["image"], y["image"]) for x, y in zip(a, b))
        assert all(x["task"] == task for x in a)
    with pytest.raises(ValueError, match="task_dataloader"):
        dm.eval_dataloader("test")
    assert not dm.has_eval_split("train")
    val = dm.val_dataloader()
    assert [b["task"] for b in val] == ["detection"] * 2 + ["segmentation"] * 2 + ["caption"] * 2


# --- COCO 2017 folders -------------------------------------------------------------------------
def _coco_copy(tmp_path: Path, line: str = "./: coco") -> Path:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"# Layout under data.root (COCO 2017):\n#   {line}\n")
    write_recipe_layout(recipe, tmp_path / "coco", samples=6)
    return tmp_path / "coco"


def test_coco_layout_entry_is_what_the_datamodule_reads(tmp_path):
    root = _coco_copy(tmp_path)
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert [f for f in files if "/" not in f or f.startswith("annotations/")] == [
        "annotations/captions_train2017.json",
        "annotations/captions_val2017.json",
        "annotations/instances_train2017.json",
        "annotations/instances_val2017.json",
    ]  # nothing COCO lacks: no manifest, scene graphs or questions
    assert sum(f.startswith("train2017/") for f in files) == 6
    dm = ViSFTDataModule(source="coco", root=str(root), image_size=32, batch_size=2)
    dm.setup("fit")
    assert dm.min_word_freq == 5 and dm.num_classes == {"detection": 3, "segmentation": 3}
    mix = dm.train_dataloader()
    assert [b["task"] for b in mix] == mix.tasks(0) and len(mix) == 3 * 3
    batch = next(iter(dm.task_dataloader("detection", "val")))
    assert batch["image_id"].tolist() == [1, 2]
    with pytest.raises(FileNotFoundError, match="questions_val2017.json"):
        dm.question_dataloader("val", "count")


def test_coco_layout_entry_syntax():
    header = "# Layout under data.root (x):\n#   {}\n"
    assert parse_layout(header.format("coco/: coco train2017"))[0].coco_splits == ("train2017",)
    with pytest.raises(ValueError, match="names a folder"):
        parse_layout(header.format("instances.json: coco"))


def test_missing_coco_paths_are_named(tmp_path):
    root = _coco_copy(tmp_path)
    shutil.rmtree(root / "train2017")
    dm = ViSFTDataModule(source="coco", root=str(root), tasks=["detection"])
    with pytest.raises(FileNotFoundError, match=r"not found: .*coco/train2017$"):
        dm.setup("fit")
    (root / "annotations" / "captions_train2017.json").unlink()
    dm = ViSFTDataModule(source="coco", root=str(root), tasks=["caption"])
    with pytest.raises(FileNotFoundError, match="annotations/captions_train2017.json"):
        dm.setup("fit")
    with pytest.raises(ValueError, match="data.root"):
        ViSFTDataModule(source="coco")
