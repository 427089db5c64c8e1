"""The 11 datasets of the few-shot CLIP protocol (CoOp's ``datasets/*.py``), as a registry.

Each :class:`FewShotDatasetInfo` says where a dataset lives under CoOp's ``DATASET.ROOT``
(``folder``, ``image_dir``), which split file fixes its train / val / test lists
(``split_zhou_<Dataset>.json``, read by :func:`zoo.fewshot.splits.read_split`), CoOp's
hand-crafted prompt for it (``CUSTOM_TEMPLATES`` in CoOp's ``trainers/zsclip.py``, also in
CLIP-Adapter's ``clip_adapter.py`` and Tip-Adapter's ``datasets/*.py``), and how CoOp turns
the raw download into that split and cleans its class names (:func:`build_split`):

- Caltech101: class folders minus ``BACKGROUND_Google`` and ``Faces_easy``; ``airplanes``,
  ``Faces``, ``Leopards``, ``Motorbikes`` renamed ``airplane``, ``face``, ``leopard``,
  ``motorbike``; 50 / 20 / 30 % per class;
- DTD, Food101: class folders, 50 / 20 / 30 % per class;
- EuroSAT: class folders renamed to phrases (``SeaLake`` → ``Sea or Lake``, …), 50 / 20 / 30;
- OxfordPets: the breed from the file name, lower-cased (``Abyssinian_1`` → ``abyssinian``),
  ``trainval.txt`` split 80 / 20 per class into train / val, ``test.txt`` the test set;
- StanfordCars: ``cars_meta.mat`` names with the year moved first (``2012 Tesla Model S``);
- OxfordFlowers: ``imagelabels.mat`` + ``cat_to_name.json``, 50 / 20 / 30 per class;
- SUN397: the category path reversed without its letter (``/a/apartment_building/outdoor``
  → ``outdoor apartment_building``), ``Training_01`` / ``Testing_01``, train split 80 / 20;
- UCF101: CamelCase actions split with underscores (``ApplyEyeMakeup`` →
  ``Apply_Eye_Makeup``), ``trainlist01`` / ``testlist01``, train split 80 / 20;
- FGVCAircraft: no split file; the variant lists ``images_variant_{train,val,test}.txt``
  and ``variants.txt`` (label order) are the split;
- ImageNet: ``classnames.txt`` (``<wnid> <name>``, CLIP's names) and
  ``images/{train,val}/<wnid>/``; the val folder is the test set, as in CoOp.

Prompts see the class name with ``_`` replaced by a space (:func:`prompt_classname`, CoOp's
``PromptLearner`` and ``ZeroshotCLIP``). :data:`TIP_IMAGENET_TEMPLATES` is Tip-Adapter's
7-template ImageNet ensemble (``datasets/imagenet.py``). ``shifted_digits`` is a generated
dataset in the same layout (:mod:`zoo.fewshot.shifted_digits`). Add a dataset with
:func:`register_dataset`.

**Where this differs from CoOp.** CoOp builds a missing split file with the unseeded global
``random``; :func:`build_split` uses ``random.Random(seed)`` and sorts file listings first, so
a rebuilt split is reproducible, but it is not CoOp's published split: download CoOp's
``split_zhou_*.json`` (its ``DATASETS.md``) to compare with published numbers. ImageNet has no
validation list: CoOp validates on its test set (the val folder) and keeps the last-step
model; here ``min(K, 4)`` validation shots per class are held out from the training images
left after the K shots, so nothing is ever selected on the test set.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from zoo.fewshot.splits import Item, check_classes, save_split, sha256_bytes, split_bytes

#: Tip-Adapter's ImageNet prompt ensemble (official code, ``datasets/imagenet.py``).
TIP_IMAGENET_TEMPLATES = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)
#: The template CoOp's custom datasets and its ImageNet entry use.
DEFAULT_TEMPLATE = "a photo of a {}."

Lists = tuple[list[Item], list[Item], list[Item]]
#: (dataset folder, image folder, RNG) → (train, val, test): CoOp's construction of a split
SplitBuilder = Callable[[Path, Path, random.Random], Lists]
#: dataset folder → (train, val, test), for layouts whose split is not a JSON file
LayoutReader = Callable[[Path], Lists]


@dataclass(frozen=True)
class FewShotDatasetInfo:
    """One registry entry.

    - ``name``: the registry key (``data.dataset``); ``coop_name``: CoOp's class name;
    - ``folder``: the dataset's folder under the root; ``image_dir``: the folder the split's
      relative paths start from, relative to ``folder`` (``""``: ``folder`` itself);
    - ``split_file``: the CoOp split JSON in ``folder`` (``None``: ``reader`` reads the raw
      layout into the split, FGVCAircraft and ImageNet);
    - ``template``: CoOp's prompt for the dataset;
    - ``required``: files of the raw layout a ``reader`` needs (checked at construction);
    - ``builder``: CoOp's construction of the split file from the raw download;
    - ``val_from_train``: no validation list; validation shots come from train;
    - ``generated``: the data is written by ``prepare_data`` (shifted digits).
    """

    name: str
    coop_name: str
    folder: str
    image_dir: str
    split_file: str | None
    template: str = DEFAULT_TEMPLATE
    required: tuple[str, ...] = ()
    reader: LayoutReader | None = None
    builder: SplitBuilder | None = None
    val_from_train: bool = False
    generated: bool = False

    def dataset_dir(self, root: str | Path) -> Path:
        return Path(root).expanduser() / self.folder

    def images(self, root: str | Path) -> Path:
        return self.dataset_dir(root) / self.image_dir


DATASETS: dict[str, FewShotDatasetInfo] = {}


def register_dataset(info: FewShotDatasetInfo, overwrite: bool = False) -> FewShotDatasetInfo:
    """Add ``info`` under ``info.name`` (``overwrite`` to replace an entry)."""
    if not overwrite and info.name in DATASETS:
        raise ValueError(f"few-shot dataset {info.name!r} is already registered")
    if info.split_file is None and info.reader is None and not info.generated:
        raise ValueError(f"{info.name}: give a split_file or a reader")
    DATASETS[info.name] = info
    return info


def get_dataset(name: str) -> FewShotDatasetInfo:
    if name not in DATASETS:
        raise KeyError(f"unknown few-shot dataset {name!r}; registered: {sorted(DATASETS)}")
    return DATASETS[name]


def prompt_classname(name: str) -> str:
    """The class name a prompt sees: ``_`` → space (CoOp's ``name.replace("_", " ")``)."""
    return name.replace("_", " ")


# --- CoOp's split construction from the raw downloads ------------------------------------------
def _listdir(path: Path) -> list[str]:
    """Non-hidden entries, sorted (Dassl's ``listdir_nohidden``, sorted so a rebuilt split
    does not depend on the file system's order)."""
    if not path.is_dir():
        raise FileNotFoundError(f"folder not found: {path}")
    return sorted(f for f in os.listdir(path) if not f.startswith("."))


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"{path.name} not found: {path}")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _three_way(
    groups: Sequence[tuple[int, str, list[str]]], rng: random.Random, p_trn: float, p_val: float
) -> tuple[list[Item], list[Item], list[Item]]:
    """Per class, shuffle and cut ``round(n·p_trn)`` / ``round(n·p_val)`` / rest (CoOp's
    ``DTD.read_and_split_data`` and ``OxfordFlowers.read_data``)."""
    train: list[Item] = []
    val: list[Item] = []
    test: list[Item] = []
    for label, name, paths in groups:
        paths = list(paths)
        rng.shuffle(paths)
        n_train, n_val = round(len(paths) * p_trn), round(len(paths) * p_val)
        if n_train == 0 or n_val == 0 or len(paths) - n_train - n_val == 0:
            raise ValueError(f"class {name!r} has {len(paths)} images: too few for train/val/test")
        train += [(p, label, name) for p in paths[:n_train]]
        val += [(p, label, name) for p in paths[n_train : n_train + n_val]]
        test += [(p, label, name) for p in paths[n_train + n_val :]]
    return train, val, test


def split_trainval(
    trainval: Sequence[Item], rng: random.Random, p_val: float = 0.2
) -> tuple[list[Item], list[Item]]:
    """CoOp's ``OxfordPets.split_trainval``: per label (first-appearance order), shuffle and
    move ``round(n·p_val)`` entries to val."""
    by_label: dict[int, list[int]] = {}
    for i, (_, label, _) in enumerate(trainval):
        by_label.setdefault(label, []).append(i)
    train: list[Item] = []
    val: list[Item] = []
    for label, idxs in by_label.items():
        n_val = round(len(idxs) * p_val)
        if n_val == 0:
            raise ValueError(f"label {label} has {len(idxs)} images: too few for a val share")
        rng.shuffle(idxs)
        val += [trainval[i] for i in idxs[:n_val]]
        train += [trainval[i] for i in idxs[n_val:]]
    return train, val


def class_folder_builder(
    ignored: Sequence[str] = (), renames: dict[str, str] | None = None
) -> SplitBuilder:
    """CoOp's ``DTD.read_and_split_data``: one folder per class under the image folder,
    ``ignored`` folders dropped, labels from the sorted folder names, class names renamed
    by ``renames``, 50 / 20 / 30 % per class."""
    renames = dict(renames or {})

    def build(dataset_dir: Path, images: Path, rng: random.Random) -> Lists:
        categories = [c for c in _listdir(images) if c not in ignored and (images / c).is_dir()]
        groups = [
            (label, renames.get(c, c), [f"{c}/{f}" for f in _listdir(images / c)])
            for label, c in enumerate(categories)
        ]
        return _three_way(groups, rng, 0.5, 0.2)

    return build


def _pets(dataset_dir: Path, images: Path, rng: random.Random) -> Lists:
    def read(name: str) -> list[Item]:
        items = []
        for line in _lines(dataset_dir / "annotations" / name):
            if line.startswith("#"):
                continue
            imname, label = line.split()[:2]
            breed = "_".join(imname.split("_")[:-1]).lower()
            items.append((f"{imname}.jpg", int(label) - 1, breed))
        return items

    train, val = split_trainval(read("trainval.txt"), rng)
    return train, val, read("test.txt")


def _cars(dataset_dir: Path, images: Path, rng: random.Random) -> Lists:
    from scipy.io import loadmat

    meta = loadmat(dataset_dir / "devkit" / "cars_meta.mat")["class_names"][0]

    def read(folder: str, annos: Path) -> list[Item]:
        items = []
        for anno in loadmat(annos)["annotations"][0]:
            label = int(anno["class"][0, 0]) - 1
            words = str(meta[label][0]).split(" ")
            name = " ".join([words[-1], *words[:-1]])  # the year first
            items.append((f"{folder}/{anno['fname'][0]}", label, name))
        return items

    trainval = read("cars_train", dataset_dir / "devkit" / "cars_train_annos.mat")
    test = read("cars_test", dataset_dir / "cars_test_annos_withlabels.mat")
    train, val = split_trainval(trainval, rng)
    return train, val, test


def _flowers(dataset_dir: Path, images: Path, rng: random.Random) -> Lists:
    from scipy.io import loadmat

    labels = loadmat(dataset_dir / "imagelabels.mat")["labels"][0]
    names = json.loads((dataset_dir / "cat_to_name.json").read_text())
    by_label: dict[int, list[str]] = {}
    for i, label in enumerate(labels):
        by_label.setdefault(int(label), []).append(f"image_{i + 1:05d}.jpg")
    groups = [(y - 1, names[str(y)], paths) for y, paths in by_label.items()]
    return _three_way(groups, rng, 0.5, 0.2)


def _sun397(dataset_dir: Path, images: Path, rng: random.Random) -> Lists:
    categories = [line[1:] for line in _lines(dataset_dir / "ClassName.txt")]
    to_label = {c: i for i, c in enumerate(categories)}

    def read(name: str) -> list[Item]:
        items = []
        for line in _lines(dataset_dir / name):
            rel = line[1:]  # drop the leading "/"
            category = os.path.dirname(rel)
            words = category.split("/")[1:][::-1]  # drop the letter; indoor/outdoor first
            items.append((rel, to_label[category], " ".join(words)))
        return items

    train, val = split_trainval(read("Training_01.txt"), rng)
    return train, val, read("Testing_01.txt")


def _ucf101(dataset_dir: Path, images: Path, rng: random.Random) -> Lists:
    lists = dataset_dir / "ucfTrainTestlist"
    to_label = {}
    for line in _lines(lists / "classInd.txt"):
        label, action = line.split(" ")
        to_label[action] = int(label) - 1

    def read(name: str) -> list[Item]:
        items = []
        for line in _lines(lists / name):
            action, filename = line.split(" ")[0].split("/")
            renamed = "_".join(re.findall("[A-Z][^A-Z]*", action))
            items.append(
                (f"{renamed}/{filename.replace('.avi', '.jpg')}", to_label[action], renamed)
            )
        return items

    train, val = split_trainval(read("trainlist01.txt"), rng)
    return train, val, read("testlist01.txt")


# --- layouts without a split file -----------------------------------------------------------
def _fgvc(dataset_dir: Path) -> Lists:
    variants = _lines(dataset_dir / "variants.txt")
    to_label = {v: i for i, v in enumerate(variants)}

    def read(name: str) -> list[Item]:
        items = []
        for line in _lines(dataset_dir / name):
            imname, variant = line.split(" ", 1)
            if variant not in to_label:
                raise ValueError(f"{dataset_dir / name}: variant {variant!r} not in variants.txt")
            items.append((f"{imname}.jpg", to_label[variant], variant))
        return items

    return (
        read("images_variant_train.txt"),
        read("images_variant_val.txt"),
        read("images_variant_test.txt"),
    )


def _imagenet(dataset_dir: Path) -> Lists:
    names: dict[str, str] = {}
    for line in _lines(dataset_dir / "classnames.txt"):
        wnid, _, name = line.partition(" ")
        names[wnid] = name.strip()

    def read(split: str) -> list[Item]:
        folder = dataset_dir / "images" / split
        items = []
        for label, wnid in enumerate(w for w in _listdir(folder) if (folder / w).is_dir()):
            if wnid not in names:
                raise ValueError(f"{folder / wnid}: {wnid} is not in {dataset_dir}/classnames.txt")
            items += [(f"{split}/{wnid}/{f}", label, names[wnid]) for f in _listdir(folder / wnid)]
        return items

    return read("train"), [], read("val")


def read_layout(info: FewShotDatasetInfo, root: str | Path) -> tuple[bytes, str]:
    """A ``reader`` dataset's split as CoOp-format JSON bytes and their sha256."""
    assert info.reader is not None
    train, val, test = info.reader(info.dataset_dir(root))
    data = split_bytes(train, val, test)
    return data, sha256_bytes(data)


def build_split(name: str, root: str | Path, seed: int = 0, overwrite: bool = False) -> Path:
    """Write ``<root>/<folder>/<split_file>`` from the raw download, as CoOp does when the
    file is missing (class-name cleaning included), and return its path.

    A rebuilt split is a *new* random split (``random.Random(seed)``): for published numbers
    use CoOp's own split files. An existing file is kept unless ``overwrite``.
    """
    info = get_dataset(name)
    if info.builder is None or info.split_file is None:
        raise ValueError(f"{name}: no split builder (its layout is read directly, or generated)")
    path = info.dataset_dir(root) / info.split_file
    if path.is_file() and not overwrite:
        return path
    train, val, test = info.builder(info.dataset_dir(root), info.images(root), random.Random(seed))
    check_classes({"train": train, "val": val, "test": test}, path)
    return save_split(train, val, test, path)


#: The 11 datasets of the CoOp protocol, in CoOp's table order.
STANDARD_DATASETS = (
    "imagenet",
    "caltech101",
    "oxford_pets",
    "stanford_cars",
    "oxford_flowers",
    "food101",
    "fgvc_aircraft",
    "sun397",
    "dtd",
    "eurosat",
    "ucf101",
)
_CALTECH_IGNORED = ("BACKGROUND_Google", "Faces_easy")
_CALTECH_RENAMES = {
    "airplanes": "airplane",
    "Faces": "face",
    "Leopards": "leopard",
    "Motorbikes": "motorbike",
}
_EUROSAT_RENAMES = {
    "AnnualCrop": "Annual Crop Land",
    "Forest": "Forest",
    "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road",
    "Industrial": "Industrial Buildings",
    "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land",
    "Residential": "Residential Buildings",
    "River": "River",
    "SeaLake": "Sea or Lake",
}

for _info in (
    FewShotDatasetInfo(
        "imagenet", "ImageNet", "imagenet", "images", None, DEFAULT_TEMPLATE,
        required=("classnames.txt", "images/train", "images/val"), reader=_imagenet,
        val_from_train=True,
    ),
    FewShotDatasetInfo(
        "caltech101", "Caltech101", "caltech-101", "101_ObjectCategories",
        "split_zhou_Caltech101.json", "a photo of a {}.",
        builder=class_folder_builder(_CALTECH_IGNORED, _CALTECH_RENAMES),
    ),
    FewShotDatasetInfo(
        "oxford_pets", "OxfordPets", "oxford_pets", "images", "split_zhou_OxfordPets.json",
        "a photo of a {}, a type of pet.", builder=_pets,
    ),
    FewShotDatasetInfo(
        "stanford_cars", "StanfordCars", "stanford_cars", "", "split_zhou_StanfordCars.json",
        "a photo of a {}.", builder=_cars,
    ),
    FewShotDatasetInfo(
        "oxford_flowers", "OxfordFlowers", "oxford_flowers", "jpg",
        "split_zhou_OxfordFlowers.json", "a photo of a {}, a type of flower.", builder=_flowers,
    ),
    FewShotDatasetInfo(
        "food101", "Food101", "food-101", "images", "split_zhou_Food101.json",
        "a photo of {}, a type of food.", builder=class_folder_builder(),
    ),
    FewShotDatasetInfo(
        "fgvc_aircraft", "FGVCAircraft", "fgvc_aircraft", "images", None,
        "a photo of a {}, a type of aircraft.",
        required=tuple(f"images_variant_{s}.txt" for s in ("train", "val", "test"))
        + ("variants.txt",),
        reader=_fgvc,
    ),
    FewShotDatasetInfo(
        "sun397", "SUN397", "sun397", "SUN397", "split_zhou_SUN397.json", "a photo of a {}.",
        builder=_sun397,
    ),
    FewShotDatasetInfo(
        "dtd", "DescribableTextures", "dtd", "images", "split_zhou_DescribableTextures.json",
        "{} texture.", builder=class_folder_builder(),
    ),
    FewShotDatasetInfo(
        "eurosat", "EuroSAT", "eurosat", "2750", "split_zhou_EuroSAT.json",
        "a centered satellite photo of {}.",
        builder=class_folder_builder(renames=_EUROSAT_RENAMES),
    ),
    FewShotDatasetInfo(
        "ucf101", "UCF101", "ucf101", "UCF-101-midframes", "split_zhou_UCF101.json",
        "a photo of a person doing {}.", builder=_ucf101,
    ),
    FewShotDatasetInfo(
        "shifted_digits", "ShiftedDigits", "shifted_digits", "images",
        "split_zhou_ShiftedDigits.json", "a photo of the number {}.", generated=True,
    ),
):  # fmt: skip
    register_dataset(_info)
