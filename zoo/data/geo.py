"""Geo-tagged image features: CSP's on-disk layout, its reader, label subsets and the dataset.

CSP (Mai et al., ICML 2023) trains on *pre-extracted* image features with their
geo-locations (official code ``main/datasets.py``: ``load_dataset``, ``load_inat_data``;
``main/data_utils.py``: ``get_classes_sample_idxs``). One split of that layout is:

- ``features``: a ``.npy`` float array ``(N, D)``, row i the frozen CNN's feature of image i
  (iNat2018: ``features_inception_pretrain/inat2018_<split>_pretrain_net_feats.npy``,
  D = 2048);
- ``metadata``, either
  - the iNat/fMoW JSON pair: an annotation file (``train2018.json``: ``images`` with ``id``,
    ``annotations`` with ``image_id`` / ``category_id``; row i of the features is
    ``images[i]``) and a ``locations`` file (``train2018_locations.json``: a list of
    ``{"id", "lon", "lat", ...}`` per image; ``lon`` ``null`` when unknown), or
  - a CSV table with ``lon``, ``lat`` and optionally ``label`` columns, row i ↔ feature row
    i (an empty ``label`` cell: unlabelled);
- ``predictions`` (evaluation splits, optional): the image classifier's class probabilities
  ``(N, C)``, a dense ``.npy`` or a SciPy sparse ``.npz`` (iNat2018's
  ``features_inception/inat2018_val_preds_sparse.npz``), fused with the geo prior at
  inference.

Class names come from a categories file: a list of ``{"id", "name"}`` (iNat's
``categories2018.json``) or a ``{name: id}`` mapping (fMoW's ``category.json``), ids 0…C−1.

Images without a location are dropped from training splits (the code's
``train_remove_invalid``) and kept in evaluation splits with NaN coordinates
(``eval_remove_invalid=False``): the evaluation decides what to do with them.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

log = logging.getLogger("zoo.data")

MissingLocations = Literal["drop", "keep"]
LabelledSampling = Literal["stratified", "random"]


@dataclass
class GeoSplitSpec:
    """One split of CSP's layout; paths are relative to ``data.root`` unless absolute.

    Attributes:
        features: the ``.npy`` image features ``(N, D)``.
        metadata: the annotation ``.json`` (with ``locations``) or a ``lon,lat[,label]``
            ``.csv``.
        locations: the locations ``.json`` of a JSON ``metadata`` (unused with a CSV).
        predictions: the image classifier's class probabilities, ``.npy`` or sparse ``.npz``.
    """

    features: str
    metadata: str
    locations: str | None = None
    predictions: str | None = None


@dataclass
class GeoRecords:
    """A split in memory: ``locations`` ``(N, 2)`` float32 (lon, lat) degrees (NaN when
    unknown), ``labels`` ``(N,)`` int64 (−1 unlabelled), ``features`` ``(N, D)`` float32,
    ``predictions`` ``(N, C)`` float32 or ``None``."""

    locations: np.ndarray
    labels: np.ndarray
    features: np.ndarray
    predictions: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def has_location(self) -> np.ndarray:
        return np.isfinite(self.locations).all(axis=1)

    def subset(self, index: np.ndarray) -> GeoRecords:
        preds = None if self.predictions is None else self.predictions[index]
        return GeoRecords(self.locations[index], self.labels[index], self.features[index], preds)


# --- reading ------------------------------------------------------------------------------------
def _resolve(root: str | Path | None, path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() or root is None else Path(root).expanduser() / p


def _require(path: Path, what: str) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")


def _load_json(path: Path, what: str) -> Any:
    _require(path, what)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{what} {path} is not valid JSON: {err}") from err


def _json_metadata(
    annotations: Path, locations: Path | None, where: str
) -> tuple[np.ndarray, np.ndarray]:
    """(lon/lat ``(N, 2)``, labels ``(N,)``) in the annotation file's image order."""
    data = _load_json(annotations, f"{where}.metadata")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(
            f"{where}.metadata {annotations}: expected an object with an 'images' list "
            "(and 'annotations'), the iNat annotation format"
        )
    try:
        ids = [image["id"] for image in data["images"]]
        category = {a["image_id"]: a["category_id"] for a in data.get("annotations") or []}
    except (KeyError, TypeError) as err:
        raise ValueError(
            f"{where}.metadata {annotations}: every image needs an 'id' and every annotation "
            f"an 'image_id' and a 'category_id' (missing {err})"
        ) from err
    labels = np.array([category.get(i, -1) for i in ids], dtype=np.int64)
    if locations is None:
        raise ValueError(
            f"{where}: a JSON metadata file needs {where}.locations (the <split>_locations.json "
            "file with lon / lat per image id)"
        )
    entries = _load_json(locations, f"{where}.locations")
    if not isinstance(entries, list):
        raise ValueError(f"{where}.locations {locations}: expected a list of {{id, lon, lat}}")
    try:
        by_id = {e["id"]: (e.get("lon"), e.get("lat")) for e in entries}
    except (KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"{where}.locations {locations}: every entry needs an 'id'") from err
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise ValueError(
            f"{where}.locations {locations} has no entry for {len(missing)} image id(s) of "
            f"{annotations}, e.g. {missing[:5]}"
        )
    lonlat = np.array(
        [[np.nan if v is None else v for v in by_id[i]] for i in ids], dtype=np.float64
    ).reshape(len(ids), 2)
    return lonlat.astype(np.float32), labels


def _csv_metadata(path: Path, where: str) -> tuple[np.ndarray, np.ndarray]:
    _require(path, f"{where}.metadata")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        for column in ("lon", "lat"):
            if column not in columns:
                raise ValueError(
                    f"{where}.metadata {path} has no {column!r} column (columns: {columns}); "
                    "a CSV metadata table needs lon, lat and optionally label"
                )
        rows = list(reader)

    def number(row: int, column: str, value: str | None) -> float:
        if value is None or value.strip() == "":
            return np.nan if column != "label" else -1
        try:
            return float(value)
        except ValueError:
            raise ValueError(
                f"{where}.metadata {path}, row {row + 1}: {column} {value!r} is not a number"
            ) from None

    lonlat = np.array(
        [[number(i, c, r.get(c)) for c in ("lon", "lat")] for i, r in enumerate(rows)],
        dtype=np.float32,
    ).reshape(len(rows), 2)
    has_label = "label" in columns
    labels = np.array(
        [number(i, "label", r.get("label")) if has_label else -1 for i, r in enumerate(rows)],
        dtype=np.int64,
    )
    return lonlat, labels


def _load_array(path: Path, what: str) -> np.ndarray:
    _require(path, what)
    if path.suffix == ".npz":
        from scipy import sparse

        return np.asarray(sparse.load_npz(path).todense(), dtype=np.float32)
    array = np.load(path, allow_pickle=False)
    return np.asarray(array, dtype=np.float32)


def _check_coordinates(lonlat: np.ndarray, path: Path, where: str) -> None:
    known = np.isfinite(lonlat).all(axis=1)
    bad = known & ((np.abs(lonlat[:, 0]) > 180) | (np.abs(lonlat[:, 1]) > 90))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{where}.metadata {path}, row {row}: (lon, lat) = {tuple(lonlat[row].tolist())} is "
            "outside [-180, 180] x [-90, 90] (degrees, lon first)"
        )


def read_geo_split(
    spec: GeoSplitSpec,
    root: str | Path | None = None,
    where: str = "data.train",
    missing_locations: MissingLocations = "drop",
) -> GeoRecords:
    """Read one split (see the module docstring); every error names ``where`` and the file.

    ``missing_locations``: ``drop`` images without a location (training) or ``keep`` them
    with NaN coordinates (evaluation)."""
    features_path = _resolve(root, spec.features)
    if features_path.suffix != ".npy":
        raise ValueError(f"{where}.features {features_path}: expected a .npy array")
    features = _load_array(features_path, f"{where}.features")
    if features.ndim != 2:
        raise ValueError(
            f"{where}.features {features_path}: expected (N, D) features, got shape "
            f"{features.shape}"
        )
    metadata_path = _resolve(root, spec.metadata)
    if metadata_path.suffix == ".csv":
        lonlat, labels = _csv_metadata(metadata_path, where)
    elif metadata_path.suffix == ".json":
        locations = None if spec.locations is None else _resolve(root, spec.locations)
        lonlat, labels = _json_metadata(metadata_path, locations, where)
    else:
        raise ValueError(f"{where}.metadata {metadata_path}: expected a .json or .csv file")
    if len(labels) != len(features):
        raise ValueError(
            f"{where}: {metadata_path} lists {len(labels)} images but {features_path} holds "
            f"{len(features)} feature rows; row i of the features must be image i"
        )
    if not np.isfinite(features).all():
        row = int(np.flatnonzero(~np.isfinite(features).all(axis=1))[0])
        raise ValueError(f"{where}.features {features_path}: row {row} is not finite")
    _check_coordinates(lonlat, metadata_path, where)
    predictions = None
    if spec.predictions is not None:
        preds_path = _resolve(root, spec.predictions)
        predictions = _load_array(preds_path, f"{where}.predictions")
        if predictions.ndim != 2 or len(predictions) != len(features):
            raise ValueError(
                f"{where}.predictions {preds_path}: expected ({len(features)}, C) class "
                f"probabilities (one row per feature row), got shape {predictions.shape}"
            )
    records = GeoRecords(lonlat, labels, features, predictions)
    if missing_locations == "drop":
        keep = records.has_location
        if not keep.all():
            log.info("%s: %d images without a location dropped", where, int((~keep).sum()))
            records = records.subset(np.flatnonzero(keep))
    return records


def read_categories(path: str | Path, where: str = "data.categories") -> list[str]:
    """Class names in id order from ``[{"id", "name"}, ...]`` or ``{name: id}``; ids must be
    exactly 0 … C−1."""
    path = Path(path)
    data = _load_json(path, where)
    try:
        if isinstance(data, dict):
            pairs = [(int(i), str(name)) for name, i in data.items()]
        else:
            pairs = [(int(c["id"]), str(c["name"])) for c in data]
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(
            f"{where} {path}: expected a list of {{id, name}} or a {{name: id}} mapping"
        ) from err
    ids = sorted(i for i, _ in pairs)
    if ids != list(range(len(pairs))):
        raise ValueError(f"{where} {path}: category ids must be 0 … {len(pairs) - 1} exactly")
    return [name for _, name in sorted(pairs)]


# --- label subsets ------------------------------------------------------------------------------
def _rank_in_class(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each sample, its position in a random order of its class (0-based)."""
    order = np.lexsort((rng.random(len(labels)), labels))
    sorted_labels = labels[order]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    run = np.repeat(starts, np.diff(np.r_[starts, len(labels)]))
    rank = np.empty(len(labels), dtype=np.int64)
    rank[order] = np.arange(len(labels)) - run
    return rank


def labelled_subset(
    labels: np.ndarray, fraction: float, method: LabelledSampling = "stratified", seed: int = 0
) -> np.ndarray:
    """Sorted indices of the labelled training subset (the code's ``train_sample_ratio``).

    ``stratified`` (``stratified-fix``): ``round(n_c · fraction)`` samples of each class c,
    at least 1 (NumPy's round half to even, as the code's ``np.round_``); ``random``: a
    uniform ``int(N · fraction)`` of all labelled samples. Samples with label −1 never enter.
    ``fraction >= 1`` keeps every labelled sample."""
    if not fraction > 0:
        raise ValueError(f"data.labelled_fraction must be > 0, got {fraction}")
    known = np.flatnonzero(labels >= 0)
    if fraction >= 1:
        return known
    rng = np.random.default_rng(seed)
    if method == "random":
        take = rng.choice(len(known), size=int(len(known) * fraction), replace=False)
        return np.sort(known[take])
    if method != "stratified":
        raise ValueError(f"data.labelled_sampling {method!r} is not 'stratified' or 'random'")
    classes, counts = np.unique(labels[known], return_counts=True)
    quota = np.maximum(np.round(counts * fraction), 1).astype(np.int64)
    per_label = np.zeros(int(classes.max()) + 1, dtype=np.int64)
    per_label[classes] = quota
    rank = _rank_in_class(labels[known], rng)
    return np.sort(known[rank < per_label[labels[known]]])


def balanced_selection(labels: np.ndarray, max_per_class: int, seed: int, epoch: int) -> np.ndarray:
    """At most ``max_per_class`` random samples of each class for one epoch, a function of
    ``(seed, epoch)`` (the code's ``BalancedSampler``, ``max_num_exs_per_class`` 100,
    without replacement). Sorted; the epoch sampler shuffles them."""
    rng = np.random.default_rng([seed, epoch, 0xBA1])
    return np.flatnonzero(_rank_in_class(labels, rng) < max_per_class)


# --- dataset --------------------------------------------------------------------------------------
class GeoFeatureDataset(Dataset):
    """Samples ``{"location": (2,) float32, "features": (D,) float32, "label": int64}``.

    ``show_labels=False`` hides the labels (−1) from the samples (self-supervised
    pre-training); ``labels`` stays the split's labels (evaluation checks, balancing).
    ``max_per_class`` makes each epoch a class-balanced selection
    (:func:`balanced_selection`) drawn from the :class:`zoo.data.samples.SampleKey`'s seed
    and epoch, so resumes are exact; its length is the same every epoch."""

    def __init__(
        self,
        records: GeoRecords,
        show_labels: bool = True,
        max_per_class: int | None = None,
    ):
        self.locations = torch.from_numpy(np.ascontiguousarray(records.locations))
        self.features = torch.from_numpy(np.ascontiguousarray(records.features))
        self.labels = torch.from_numpy(np.ascontiguousarray(records.labels))
        self.show_labels = show_labels
        self.max_per_class = max_per_class
        self._selection: tuple[tuple[int, int], np.ndarray] | None = None
        self._length = len(self.labels)
        if max_per_class is not None:
            if max_per_class < 1:
                raise ValueError(f"data.balanced_per_class must be >= 1, got {max_per_class}")
            if (self.labels < 0).any():
                raise ValueError("class-balanced sampling needs a label for every sample")
            counts = torch.bincount(self.labels)
            self._length = int(counts.clamp(max=max_per_class).sum())

    def __len__(self) -> int:
        return self._length

    def _row(self, key: int) -> int:
        if self.max_per_class is None:
            return int(key)
        seed, epoch = getattr(key, "seed", 0), getattr(key, "epoch", 0)
        if self._selection is None or self._selection[0] != (seed, epoch):
            rows = balanced_selection(self.labels.numpy(), self.max_per_class, seed, epoch)
            self._selection = ((seed, epoch), rows)
        return int(self._selection[1][int(key)])

    def __getitem__(self, key: int) -> dict[str, torch.Tensor]:
        row = self._row(key)
        label = self.labels[row] if self.show_labels else torch.tensor(-1)
        return {"location": self.locations[row], "features": self.features[row], "label": label}
