"""A synthetic geo world in CSP's layout: classes that look alike but live far apart.

The CSP card's small-scale reproduction (no download): ``2·num_pairs`` classes in
visually confusable pairs (Arctic fox vs bat-eared fox).

- **Image features** stand in for a frozen CNN's: the classes of pair p have prototypes
  ``m_p ± offset · u_p`` (``m_p ~ N(0, spread² I)``, ``u_p`` a random unit vector) and a
  feature is its class prototype plus ``N(0, I)`` noise. Pairs are far apart in feature
  space, the two classes of a pair only ``2·offset`` noise units apart, so the image alone
  tells the pair but confuses its two classes (Bayes accuracy within a pair Φ(offset)).
- **Locations**: each class is a mixture of ``components`` von Mises–Fisher distributions
  on the sphere (``scipy.stats.vonmises_fisher``, concentration ``kappa``). The first class
  of pair p has its mixture centres uniform in a spherical cap of half-angle ``cap_degrees``
  around a random axis a_p, the second the antipodes of those (a cap around −a_p), so the
  two classes of a pair are at least 180° − 2·``cap_degrees`` apart and the location tells
  them apart, while each class spreads over several regions that a few labelled images do
  not all cover.
- **Predictions**: the test split's "CNN" class probabilities are the Bayes posterior of
  the image feature alone (equal class priors, the true prototypes), what a perfectly
  trained image classifier would output, for the fusion with the geo prior.

:class:`SyntheticGeoWorld` (:class:`zoo.datamodule.GeneratedData`) writes, in the iNat
JSON layout of :mod:`zoo.data.geo`::

    categories.json                    [{"id", "name"}]
    train.json, train_locations.json   annotations (every image labelled) and locations
    test.json, test_locations.json
    features/train_feats.npy, features/test_feats.npy
    predictions/test_preds.npy

in a folder of the zoo cache named by a hash of its parameters (``write_atomically``).
Which training images count as labelled is the datamodule's choice (``labelled_fraction``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from zoo.data.cache import cache_root
from zoo.data.generated import locate_written, write_atomically
from zoo.data.geo import GeoSplitSpec

_MARKER = ".complete"


def sphere_to_lonlat(xyz: np.ndarray) -> np.ndarray:
    """Unit vectors ``(N, 3)`` → (lon, lat) degrees ``(N, 2)``; z is the polar axis."""
    lat = np.degrees(np.arcsin(np.clip(xyz[:, 2], -1.0, 1.0)))
    lon = np.degrees(np.arctan2(xyz[:, 1], xyz[:, 0]))
    return np.stack((lon, lat), axis=1)


@dataclass
class SyntheticGeoWorld:
    """The generator; see the module docstring. ``root`` overrides the cache folder."""

    num_pairs: int = 10
    feature_dim: int = 64
    train_samples: int = 50_000
    test_samples: int = 10_000
    components: int = 2
    kappa: float = 30.0
    cap_degrees: float = 60.0
    offset: float = 0.3
    spread: float = 3.0
    seed: int = 0
    root: str | None = None

    def __post_init__(self) -> None:
        for name in ("num_pairs", "feature_dim", "train_samples", "test_samples", "components"):
            if getattr(self, name) < 1:
                raise ValueError(f"synthetic geo world: {name} must be >= 1")
        if self.kappa <= 0 or self.offset < 0 or self.spread <= 0:
            raise ValueError("synthetic geo world: kappa and spread must be > 0, offset >= 0")
        if not 0 < self.cap_degrees < 90:
            raise ValueError(
                f"synthetic geo world: cap_degrees must be in (0, 90), got {self.cap_degrees}"
            )

    @property
    def num_classes(self) -> int:
        return 2 * self.num_pairs

    def _params(self) -> dict:
        params = asdict(self)
        params.pop("root")
        return params

    def folder(self) -> Path:
        if self.root is not None:
            return Path(self.root).expanduser()
        digest = hashlib.sha256(json.dumps(self._params(), sort_keys=True).encode()).hexdigest()
        return cache_root() / f"geo-world-{digest[:12]}"

    @staticmethod
    def split(name: str) -> GeoSplitSpec:
        """The files of split ``train`` / ``test``, relative to :meth:`folder`."""
        return GeoSplitSpec(
            features=f"features/{name}_feats.npy",
            metadata=f"{name}.json",
            locations=f"{name}_locations.json",
            predictions="predictions/test_preds.npy" if name == "test" else None,
        )

    def locate(self) -> Path:
        return locate_written(self.folder(), _MARKER, self._params(), "synthetic geo world")

    def write(self) -> Path:
        folder = self.folder()
        if (folder / _MARKER).is_file():
            return self.locate()

        def fill(tmp: Path) -> str:
            self._fill(tmp)
            return json.dumps(self._params())

        write_atomically(folder, _MARKER, fill)
        return self.locate()

    # --- the world ------------------------------------------------------------------------------
    def prototypes(self, rng: np.random.Generator) -> np.ndarray:
        """``(2P, D)``: pair centres ± ``offset`` along a random unit direction per pair."""
        centres = self.spread * rng.standard_normal((self.num_pairs, self.feature_dim))
        direction = rng.standard_normal((self.num_pairs, self.feature_dim))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        pairs = np.stack((centres + self.offset * direction, centres - self.offset * direction))
        return pairs.transpose(1, 0, 2).reshape(self.num_classes, self.feature_dim)

    def mixture_centres(self, rng: np.random.Generator) -> np.ndarray:
        """``(2P, components, 3)`` unit vectors: class 2p's uniform in the cap around a random
        axis a_p, class 2p+1's their antipodes."""
        from scipy.spatial.transform import Rotation

        axes = rng.standard_normal((self.num_pairs, 3))
        axes /= np.linalg.norm(axes, axis=1, keepdims=True)
        # uniform in a cap around the north pole: z ~ U[cos(cap), 1], azimuth ~ U[0, 2π)
        z = rng.uniform(
            np.cos(np.radians(self.cap_degrees)), 1.0, (self.num_pairs, self.components)
        )
        phi = rng.uniform(0.0, 2 * np.pi, (self.num_pairs, self.components))
        r = np.sqrt(1 - z**2)
        north = np.stack((r * np.cos(phi), r * np.sin(phi), z), axis=-1)
        first = np.stack(
            [
                Rotation.align_vectors([a], [[0.0, 0.0, 1.0]])[0].apply(c)
                for a, c in zip(axes, north)
            ]
        )
        return np.stack((first, -first), axis=1).reshape(self.num_classes, self.components, 3)

    def sample_locations(
        self, labels: np.ndarray, centres: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        from scipy.stats import vonmises_fisher

        component = rng.integers(self.components, size=len(labels))
        xyz = np.empty((len(labels), 3))
        for c in range(self.num_classes):
            for m in range(self.components):
                rows = np.flatnonzero((labels == c) & (component == m))
                if len(rows):
                    dist = vonmises_fisher(centres[c, m], self.kappa)
                    xyz[rows] = dist.rvs(len(rows), random_state=rng).reshape(len(rows), 3)
        return sphere_to_lonlat(xyz)

    @staticmethod
    def image_posterior(features: np.ndarray, prototypes: np.ndarray) -> np.ndarray:
        """Bayes class posterior of the feature alone: softmax of −½‖x − μ_c‖²."""
        logits = features @ prototypes.T - 0.5 * (prototypes**2).sum(axis=1)
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        return probs / probs.sum(axis=1, keepdims=True)

    def _fill(self, tmp: Path) -> None:
        rng = np.random.default_rng(self.seed)
        prototypes = self.prototypes(rng)
        centres = self.mixture_centres(rng)
        names = [f"pair{c // 2}_{'ab'[c % 2]}" for c in range(self.num_classes)]
        (tmp / "categories.json").write_text(
            json.dumps([{"id": c, "name": n} for c, n in enumerate(names)])
        )
        (tmp / "features").mkdir()
        (tmp / "predictions").mkdir()
        first_id = 0
        for split, count in (("train", self.train_samples), ("test", self.test_samples)):
            labels = rng.integers(self.num_classes, size=count)
            features = prototypes[labels] + rng.standard_normal((count, self.feature_dim))
            lonlat = self.sample_locations(labels, centres, rng)
            ids = list(range(first_id, first_id + count))
            first_id += count
            annotations = {
                "images": [{"id": i} for i in ids],
                "annotations": [
                    {"image_id": i, "category_id": int(y)} for i, y in zip(ids, labels)
                ],
            }
            (tmp / f"{split}.json").write_text(json.dumps(annotations))
            locations = [
                {"id": i, "lon": round(float(lon), 5), "lat": round(float(lat), 5)}
                for i, (lon, lat) in zip(ids, lonlat)
            ]
            (tmp / f"{split}_locations.json").write_text(json.dumps(locations))
            np.save(tmp / "features" / f"{split}_feats.npy", features.astype(np.float32))
            if split == "test":
                posterior = self.image_posterior(features, prototypes).astype(np.float32)
                np.save(tmp / "predictions" / "test_preds.npy", posterior)
