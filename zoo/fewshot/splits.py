"""The few-shot protocol as data: CoOp's split files, the K-shot sampler, base / new classes.

**Split files.** CoOp (Zhou et al., 2022) fixes one train / val / test split per dataset in a
JSON file (``split_zhou_<Dataset>.json``; CoOp's ``OxfordPets.read_split`` / ``save_split``):
``{"train": [[relpath, label, classname], ...], "val": [...], "test": [...]}``, paths
relative to the dataset's image folder. :func:`read_split` reads one and refuses, naming the
file and the entry, a malformed entry, a label with two class names, labels that are not
``0..C-1``, or a class without a training image; :func:`check_files` names a missing image.

**K-shot sampler.** :func:`sample_fewshot` is Dassl's
``DatasetBase.generate_fewshot_dataset`` (no repetition): per class, in order of first
appearance, ``K`` entries drawn without replacement, or all of them (with a warning) when the
class has fewer. :func:`sample_indices` draws the training shots, then ``min(K, 4)`` validation
shots per class (CoOp's ``datasets/*.py``), from one ``random.Random(seed)``, never the global
RNG, so the result is a function of (split file, K, seed) only. CoOp seeds the *global*
``random`` and pickles the sampled items (``split_fewshot/shot_{K}-seed_{seed}.pkl``); here
the sampled *indices* go to ``shot_{K}-seed_{seed}.json`` with the split file's sha256
(:func:`write_indices`), and :func:`read_indices` refuses them when the split file changed.
Because the generator differs, the indices are not CoOp's pickled ones: the protocol (K per
class, ``min(K, 4)`` val, seeds 1-3) is the same, the draw is not.

**Base-to-new** (CoCoOp, Zhou et al., 2022b; CoOp's ``OxfordPets.subsample_classes``): the
sorted labels are halved, the first ``ceil(n / 2)`` are *base*, the rest *new*, each half
relabelled from 0. :func:`harmonic_mean` is the H of the base-to-new tables.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger("zoo.fewshot")

#: One split entry: (image path relative to the image folder, label, class name).
Item = tuple[str, int, str]
SPLIT_NAMES = ("train", "val", "test")
Subsample = Literal["all", "base", "new"]
#: CoOp's validation shots: ``min(K, VAL_SHOTS_MAX)`` per class.
VAL_SHOTS_MAX = 4


class SplitFileChanged(RuntimeError):
    """A sampled-index file belongs to another version of the split file."""


# --- split files ------------------------------------------------------------------------------
@dataclass
class SplitData:
    """A dataset's fixed train / val / test split (CoOp's format), where it came from.

    ``val_from_train``: the dataset has no validation list of its own (ImageNet); the
    few-shot validation shots are then drawn from the training entries left after the
    training shots.
    """

    train: list[Item]
    val: list[Item]
    test: list[Item]
    source: Path
    image_dir: Path
    sha256: str
    val_from_train: bool = False
    classnames: list[str] = field(default_factory=list)

    def items(self, split: str) -> list[Item]:
        if split not in SPLIT_NAMES:
            raise KeyError(f"unknown split {split!r}; known: {SPLIT_NAMES}")
        return getattr(self, split)


def split_bytes(train: Sequence[Item], val: Sequence[Item], test: Sequence[Item]) -> bytes:
    """A split in CoOp's JSON format (``dassl.utils.write_json``: indent 4), as bytes."""
    data = {
        s: [[p, int(y), c] for p, y, c in items]
        for s, items in zip(SPLIT_NAMES, (train, val, test))
    }
    return json.dumps(data, indent=4, separators=(",", ": ")).encode("utf-8")


def save_split(
    train: Sequence[Item], val: Sequence[Item], test: Sequence[Item], path: str | Path
) -> Path:
    """Write a split file (atomic; CoOp's ``save_split`` format) and return its path."""
    from zoo.data.cache import atomic_write_bytes

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, split_bytes(train, val, test))
    return path


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _entry(path: Path, split: str, i: int, entry: Any) -> Item:
    where = f"{path}: {split}[{i}]"
    if not isinstance(entry, (list, tuple)) or len(entry) != 3:
        raise ValueError(f"{where}: expected [relpath, label, classname], got {entry!r}")
    rel, label, name = entry
    if not isinstance(rel, str) or not rel:
        raise ValueError(f"{where}: the image path must be a non-empty string, got {rel!r}")
    if isinstance(label, bool) or not isinstance(label, (int, str)):
        raise ValueError(f"{where}: the label must be an integer, got {label!r}")
    try:
        label = int(label)
    except ValueError:
        raise ValueError(f"{where}: the label must be an integer, got {label!r}") from None
    if label < 0:
        raise ValueError(f"{where}: negative label {label}")
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{where}: the class name must be a non-empty string, got {name!r}")
    # CoOp's save_split strips a leading "/" from the relative path
    return rel.lstrip("/"), label, name


def check_classes(lists: Mapping[str, Sequence[Item]], source: str | Path) -> list[str]:
    """The class names in label order, after checking that every label has one class name,
    the labels are ``0..C-1`` and every class has a training entry (each failure names the
    file and the entries)."""
    names: dict[int, tuple[str, str]] = {}
    for split, items in lists.items():
        for i, (_, label, name) in enumerate(items):
            seen = names.setdefault(label, (name, f"{split}[{i}]"))
            if seen[0] != name:
                raise ValueError(
                    f"{source}: label {label} is {seen[0]!r} at {seen[1]} but {name!r} at "
                    f"{split}[{i}]; a label must name one class"
                )
    if not names:
        raise ValueError(f"{source}: the split has no entries")
    n = max(names) + 1
    missing = sorted(set(range(n)) - set(names))
    if missing:
        raise ValueError(
            f"{source}: labels must be 0..{n - 1} with no gap; no entry has label(s) "
            f"{missing[:10]}{' …' if len(missing) > 10 else ''}"
        )
    in_train = {label for _, label, _ in lists.get("train", ())}
    untrained = sorted(set(names) - in_train)
    if untrained:
        shown = ", ".join(f"{y} {names[y][0]!r}" for y in untrained[:5])
        raise ValueError(f"{source}: class(es) {shown} have no train entry to draw shots from")
    return [names[y][0] for y in range(n)]


def read_split(
    path: str | Path, image_dir: str | Path | None = None, val_from_train: bool = False
) -> SplitData:
    """Read and check a CoOp split file; image paths are relative to ``image_dir`` (default:
    the split file's folder)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split file not found: {path}")
    return parse_split(path.read_bytes(), path, image_dir, val_from_train)


def parse_split(
    raw: bytes, path: str | Path, image_dir: str | Path | None = None, val_from_train: bool = False
) -> SplitData:
    """:func:`read_split` of a split file's bytes (``path`` names it in errors)."""
    path = Path(path)
    try:
        data = json.loads(raw)
    except ValueError as err:
        raise ValueError(f"{path}: not a JSON split file: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an object with train / val / test lists")
    lists: dict[str, list[Item]] = {}
    for split in SPLIT_NAMES:
        entries = data.get(split)
        if entries is None:
            raise ValueError(f"{path}: no {split!r} list (CoOp's format has train, val, test)")
        if not isinstance(entries, list):
            raise ValueError(f"{path}: {split!r} must be a list, got {type(entries).__name__}")
        lists[split] = [_entry(path, split, i, e) for i, e in enumerate(entries)]
    classnames = check_classes(lists, path)
    return SplitData(
        **lists,
        source=path,
        image_dir=Path(image_dir) if image_dir is not None else path.parent,
        sha256=sha256_bytes(raw),
        val_from_train=val_from_train,
        classnames=classnames,
    )


def check_files(split: SplitData, which: Mapping[str, Iterable[int]]) -> None:
    """Fail, naming the split file, the entry and the path, when an image it lists is not
    on disk (``which``: split name → entry indices)."""
    for name, indices in which.items():
        items = split.items(name)
        for i in indices:
            path = split.image_dir / items[i][0]
            if not path.is_file():
                raise FileNotFoundError(
                    f"{split.source}: {name}[{i}] = {list(items[i])}: image not found at "
                    f"{path} (image folder {split.image_dir})"
                )


# --- the K-shot sampler ----------------------------------------------------------------------
def sample_fewshot(
    labels: Sequence[int], shots: int, rng: random.Random, what: str = ""
) -> list[int]:
    """Dassl's ``generate_fewshot_dataset`` (``repeat=False``) over positions: per label, in
    order of first appearance, ``shots`` positions drawn with ``rng.sample``; a class with
    fewer keeps all of them (logged). ``shots < 1``: every position."""
    if shots < 1:
        return list(range(len(labels)))
    by_label: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_label.setdefault(int(label), []).append(i)
    out: list[int] = []
    short: list[int] = []
    for label, positions in by_label.items():
        if len(positions) >= shots:
            out.extend(rng.sample(positions, shots))
        else:
            out.extend(positions)
            short.append(label)
    if short:
        log.warning(
            "%s: %d class(es) have fewer than %d entries and keep all of them (labels %s)",
            what or "few-shot sampler",
            len(short),
            shots,
            short[:10],
        )
    return out


@dataclass(frozen=True)
class FewShotIndices:
    """The sampled entries of one (split file, K, seed): indices into the split file's
    ``train`` list, and into its ``val`` list (or its ``train`` list when
    ``val_source == "train"``)."""

    train: list[int]
    val: list[int]
    shots: int
    seed: int
    split_sha256: str
    split_file: str
    val_source: str = "val"

    def to_json(self) -> dict[str, Any]:
        return {
            "shots": self.shots,
            "seed": self.seed,
            "val_shots": min(self.shots, VAL_SHOTS_MAX),
            "split_file": self.split_file,
            "split_sha256": self.split_sha256,
            "val_source": self.val_source,
            "train": list(self.train),
            "val": list(self.val),
        }


def sample_indices(split: SplitData, shots: int, seed: int) -> FewShotIndices:
    """K training shots per class, then ``min(K, 4)`` validation shots per class, drawn from
    one ``random.Random(seed)`` in that order (CoOp draws train, then val, from the global
    RNG after seeding it). ``shots < 1``: every entry. Datasets without a validation list
    (``val_from_train``) draw the validation shots from the training entries not drawn."""
    rng = random.Random(seed)
    train_labels = [y for _, y, _ in split.train]
    train = sample_fewshot(train_labels, shots, rng, f"{split.source} train")
    val_shots = min(shots, VAL_SHOTS_MAX) if shots >= 1 else 0
    if split.val_from_train:
        chosen = set(train)
        pool = [i for i in range(len(split.train)) if i not in chosen]
        picked = sample_fewshot([train_labels[i] for i in pool], val_shots, rng, "held-out val")
        val, source = [pool[j] for j in picked], "train"
    else:
        val_labels = [y for _, y, _ in split.val]
        val, source = sample_fewshot(val_labels, val_shots, rng, f"{split.source} val"), "val"
    return FewShotIndices(train, val, shots, seed, split.sha256, str(split.source), source)


def index_file(folder: str | Path, shots: int, seed: int) -> Path:
    """``<folder>/shot_{K}-seed_{seed}.json`` (CoOp's name, JSON instead of a pickle)."""
    return Path(folder) / f"shot_{shots}-seed_{seed}.json"


def write_indices(path: str | Path, indices: FewShotIndices) -> Path:
    from zoo.data.cache import atomic_write_text

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(indices.to_json(), indent=1))
    return path


def read_indices(path: str | Path, split: SplitData) -> FewShotIndices:
    """A sampled-index file, checked against ``split``: a split file whose sha256 differs
    from the one the indices were drawn from raises :class:`SplitFileChanged`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        indices = FewShotIndices(
            train=[int(i) for i in data["train"]],
            val=[int(i) for i in data["val"]],
            shots=int(data["shots"]),
            seed=int(data["seed"]),
            split_sha256=str(data["split_sha256"]),
            split_file=str(data["split_file"]),
            val_source=str(data.get("val_source", "val")),
        )
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"{path}: not a sampled-index file ({type(err).__name__}: {err})"
        ) from None
    if indices.split_sha256 != split.sha256:
        raise SplitFileChanged(
            f"{path} holds the {indices.shots}-shot seed-{indices.seed} indices drawn from "
            f"{indices.split_file} (sha256 {indices.split_sha256[:16]}…), but {split.source} "
            f"now has sha256 {split.sha256[:16]}…: the split file changed, so these indices "
            f"would pick other images. Restore the original split file, or delete {path} "
            "(and the other shot_*-seed_*.json files there) to draw new shots from the "
            "current one; results are then not comparable with runs on the old split."
        )
    sizes = {"train": len(split.train), "val": len(split.items(indices.val_source))}
    for name, values in (("train", indices.train), ("val", indices.val)):
        bad = [i for i in values if not 0 <= i < sizes[name]]
        if bad:
            raise ValueError(f"{path}: {name} index {bad[0]} is out of range for {split.source}")
    return indices


def load_or_sample(
    split: SplitData, shots: int, seed: int, folder: str | Path | None, write: bool = False
) -> FewShotIndices:
    """The indices in ``folder``'s index file when there is one (checked against the split
    file), else drawn now, and written there when ``write`` (``prepare_data``)."""
    path = index_file(folder, shots, seed) if folder is not None else None
    if path is not None and path.is_file():
        return read_indices(path, split)
    indices = sample_indices(split, shots, seed)
    if write and path is not None:
        write_indices(path, indices)
    return indices


# --- base-to-new (CoCoOp) ----------------------------------------------------------------------
def class_subset(labels: Iterable[int], subsample: Subsample) -> dict[int, int]:
    """old label → new label of the kept classes: all of them, the first ``ceil(n / 2)``
    sorted labels (``"base"``) or the rest (``"new"``), relabelled from 0."""
    if subsample not in ("all", "base", "new"):
        raise ValueError(f"subsample must be 'all', 'base' or 'new', got {subsample!r}")
    ordered = sorted(set(int(y) for y in labels))
    if subsample == "all":
        return {y: y for y in ordered}
    m = math.ceil(len(ordered) / 2)
    kept = ordered[:m] if subsample == "base" else ordered[m:]
    return {y: i for i, y in enumerate(kept)}


def subsample_classes(
    items: Sequence[Item], subsample: Subsample, labels: Iterable[int] | None = None
) -> list[Item]:
    """CoCoOp's class subsampling of one list of entries: the entries of the kept classes,
    relabelled. The classes halved are ``labels`` (default: those of ``items``; CoOp takes
    them from the first list it is given, the few-shot training set). ``"all"`` keeps the
    entries as they are."""
    mapping = class_subset(labels if labels is not None else (y for _, y, _ in items), subsample)
    if subsample == "all":
        return list(items)
    return [(p, mapping[y], c) for p, y, c in items if y in mapping]


def harmonic_mean(base: float, new: float) -> float:
    """H = 2·base·new / (base + new), the base-to-new summary (0 when both are 0)."""
    if base < 0 or new < 0:
        raise ValueError(f"accuracies must be >= 0, got base={base}, new={new}")
    total = base + new
    return 0.0 if total == 0 else 2.0 * base * new / total
