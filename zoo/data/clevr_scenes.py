"""CLEVR-like scenes: flat 2-D shapes on a background, with a scene graph, in the COCO layout.

A procedural stand-in for CLEVR (Johnson et al., 2017) that needs no renderer and no
download, written once and read back by the real COCO readers (:mod:`zoo.data.coco`).
ViSFT's small reproduction trains its detection, segmentation and caption heads on it and
probes out-of-domain counting and left/right questions; the visual self-supervision family
reuses it for CLEVR-style VQA. The page ``docs/data/clevr_scenes.md`` describes it in full.

**A scene.** 1 to N objects (:attr:`ClevrScenes.num_objects`), each a shape (circle,
square, triangle) × a colour (CLEVR's palette, ``image_generation/data/properties.json``
of ``facebookresearch/clevr-dataset-gen``, without gray, which would vanish into the grey
background) × a size (large / small, CLEVR's 2:1 ratio: 0.26 and 0.13 of the image side,
times the style's ``object_scale``) × a position, drawn flat with Pillow (no antialiasing,
so every pixel belongs to exactly one object or to the background). A placement whose box
IoU with an earlier object exceeds ``max_iou``, or that would leave an earlier object
with less than ``min_visible`` of its drawn pixels visible, is redrawn (up to
``max_attempts`` candidates; when none fits, that object is left out). Later objects are
drawn on top, so each instance mask holds the object's visible pixels, and its box and
centre are those of that mask.

**The scene graph.** ``objects``: shape, colour, size, ``bbox`` (COCO ``[x, y, w, h]``,
pixel extents: ``x + w`` is the right edge of the last pixel), ``center`` (the box centre)
and ``area`` (visible pixels); ``relations``: ``{"subject": i, "predicate": "left_of" |
"right_of", "object": j}`` for every ordered pair whose centres differ in x (the subject's
centre is left of / right of the object's).

**Styles** (:class:`SceneStyle`): ``in_domain`` is a plain grey background at full object
scale; ``out_of_domain`` adds oriented stripes and per-pixel noise to the background and
draws objects at 0.6 of the scale. Register more in :data:`STYLES`. A split is written in
the style ``styles[split]`` names; by default a split whose name ends in ``_ood`` is
out of domain and the others in domain.

**Determinism.** Scene ``index`` of split ``split`` is a pure function of ``(seed, split,
index)`` and the parameters: independent NumPy streams (``default_rng([seed,
crc32(split), index, stream])``) draw the layout, the background, the captions and the
questions, so the same call writes identical bytes.

**On disk** (the COCO layout), under :attr:`ClevrScenes.root`:

- ``images/<split>/<index:06d>.png``: RGB images, ``image_size`` square;
- ``annotations/instances_<split>.json``: COCO instances. Categories are the shapes
  (``categories="shape"``, ids 1-3) or shape × colour (``"shape_color"``, ids 1-21, e.g.
  ``"red circle"``); colour and size are also in each annotation's ``attributes``. Boxes
  ``[x, y, w, h]``, instance masks as COCO RLE (``pycocotools.mask.encode``, ``counts`` as
  a string), ``area`` the mask's pixel count, ``iscrowd`` 0;
- ``annotations/captions_<split>.json``: COCO captions, ``captions_per_image`` distinct
  template captions per image made from the scene graph (e.g. "a large red circle left of
  a small blue square.");
- ``annotations/scenes_<split>.json``: the scene graphs;
- ``annotations/questions_<split>.json``: out-of-domain probe records ``{"id",
  "image_id", "task", "question", "label"}``: ``task="count"`` (label = number of
  objects = number of annotations), and ``task="left_of"`` with ``query`` ``"A|B"`` for
  each pair of shapes A before B in :data:`SHAPES` that occur exactly once in the image
  (label 1 when A's centre is left of B's, 0 when right of it; ``subject`` / ``object`` are
  the object indices). Naming objects by a shape that occurs once makes every question
  unambiguous, and a fixed ``query`` gives a per-image binary label a linear probe on
  frozen image features can learn;
- ``manifest.json``: the parameters and the split sizes; :meth:`ClevrScenes.locate` reads
  it to check that the copy was written, and with these parameters.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageDraw

from zoo.data.cache import cache_root
from zoo.data.generated import coco_rles, write_atomically
from zoo.data.generated import dump_json as _dump

SHAPES = ("circle", "square", "triangle")
#: CLEVR's colour palette (clevr-dataset-gen ``properties.json``) without gray.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (173, 35, 35),
    "blue": (42, 75, 215),
    "green": (29, 105, 20),
    "brown": (129, 74, 25),
    "purple": (129, 38, 192),
    "cyan": (41, 208, 208),
    "yellow": (255, 238, 51),
}
#: Object side as a fraction of the image side (CLEVR's large : small = 0.7 : 0.35).
SIZES: dict[str, float] = {"large": 0.26, "small": 0.13}
CategoryMode = Literal["shape", "shape_color"]
MANIFEST = "manifest.json"
_FORMAT_VERSION = 1
_NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_NUMBERS += ("ten", "eleven", "twelve")
# Independent random streams of one scene, so that e.g. more captions leave layouts unchanged.
_LAYOUT, _BACKGROUND, _CAPTIONS = 0, 1, 2


@dataclass(frozen=True)
class SceneStyle:
    """How a split looks: the background texture and the object scale.

    The background is ``level`` grey plus ``stripe_amplitude · sin(2π·u / period + φ)``
    along a random direction (``period = stripe_period · image side``, random phase φ),
    plus per-pixel Gaussian noise of std ``noise_std`` (grey levels, the same on the three
    channels), rounded and clipped to 0-255. ``object_scale`` multiplies :data:`SIZES`.
    """

    name: str
    level: int = 150
    stripe_amplitude: float = 0.0
    stripe_period: float = 0.125
    noise_std: float = 0.0
    object_scale: float = 1.0

    def __post_init__(self) -> None:
        if not 0 <= self.level <= 255:
            raise ValueError(f"scene style {self.name!r}: level must be in 0..255")
        if self.stripe_period <= 0 or self.object_scale <= 0:
            raise ValueError(
                f"scene style {self.name!r}: stripe_period and object_scale must be > 0"
            )
        if self.stripe_amplitude < 0 or self.noise_std < 0:
            raise ValueError(f"scene style {self.name!r}: amplitudes must be >= 0")

    def background(self, size: int, rng: np.random.Generator) -> np.ndarray:
        """A (size, size, 3) uint8 background; draws from ``rng`` only when textured."""
        grey = np.full((size, size), float(self.level))
        if self.stripe_amplitude > 0:
            angle, phase = rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
            y, x = np.mgrid[0:size, 0:size]
            along = x * np.cos(angle) + y * np.sin(angle)
            wave = np.sin(2 * np.pi * along / (self.stripe_period * size) + phase)
            grey = grey + self.stripe_amplitude * wave
        if self.noise_std > 0:
            grey = grey + rng.normal(0.0, self.noise_std, grey.shape)
        grey = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)


#: The registered styles; the visual self-supervision family adds its own here.
STYLES: dict[str, SceneStyle] = {
    "in_domain": SceneStyle("in_domain"),
    "out_of_domain": SceneStyle(
        "out_of_domain", stripe_amplitude=40.0, noise_std=20.0, object_scale=0.6
    ),
}


def register_style(style: SceneStyle) -> SceneStyle:
    """Add ``style`` to :data:`STYLES` under its name (an existing name is an error)."""
    if style.name in STYLES and STYLES[style.name] != style:
        raise ValueError(f"scene style {style.name!r} is already registered differently")
    STYLES[style.name] = style
    return style


def default_style(split: str) -> str:
    """The style of a split no ``styles`` entry names: ``*_ood`` → out of domain."""
    return "out_of_domain" if split.endswith("_ood") else "in_domain"


@dataclass
class SceneObject:
    """One object of a scene graph (``bbox`` COCO ``[x, y, w, h]`` of its visible mask)."""

    shape: str
    color: str
    size: str
    bbox: list[float]
    center: list[float]
    area: int

    def describe(self) -> str:
        """``"large red circle"``."""
        return f"{self.size} {self.color} {self.shape}"


@dataclass
class Scene:
    """A rendered scene: the image, one visible mask per object (N, H, W) bool, the scene
    graph (objects and left/right relations) and the split's style."""

    image: Image.Image
    masks: np.ndarray
    objects: list[SceneObject]
    relations: list[dict[str, Any]]
    style: str

    def graph(self) -> dict[str, Any]:
        return {
            "style": self.style,
            "objects": [vars(o).copy() for o in self.objects],
            "relations": self.relations,
        }


def _draw(shape: str, x0: int, y0: int, side: int, image_size: int) -> np.ndarray:
    """The (H, W) bool pixels Pillow fills for one shape in the box at (x0, y0), side ``side``."""
    canvas = Image.new("L", (image_size, image_size), 0)
    draw = ImageDraw.Draw(canvas)
    x1, y1 = x0 + side - 1, y0 + side - 1
    if shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=255)
    elif shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=255)
    elif shape == "triangle":
        draw.polygon([(x0 + (side - 1) / 2, y0), (x0, y1), (x1, y1)], fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}; choose from {SHAPES}")
    return np.asarray(canvas) > 0


def _mask_box(mask: np.ndarray) -> list[float]:
    """COCO ``[x, y, w, h]`` of a non-empty mask (pixel extents)."""
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    return [float(x0), float(y0), float(xs.max() - x0 + 1), float(ys.max() - y0 + 1)]


def render_scene(
    layout_rng: np.random.Generator,
    background_rng: np.random.Generator,
    style: SceneStyle,
    image_size: int = 64,
    num_objects: tuple[int, int] = (1, 5),
    max_iou: float = 0.1,
    min_visible: float = 0.5,
    max_attempts: int = 100,
) -> Scene:
    """Render one scene (see the module docstring); the pure core of :class:`ClevrScenes`."""
    import torch
    from torchvision.ops import box_iou

    wanted = int(layout_rng.integers(num_objects[0], num_objects[1] + 1))
    placed: list[tuple[str, str, str]] = []
    boxes: list[list[int]] = []
    # Visible pixels of the objects placed so far (later objects are drawn on top), and
    # their drawn areas.
    visible = np.zeros((0, image_size, image_size), dtype=bool)
    areas = np.zeros(0, dtype=np.int64)
    for _ in range(wanted):
        shape = SHAPES[layout_rng.integers(len(SHAPES))]
        color = list(COLORS)[layout_rng.integers(len(COLORS))]
        size = list(SIZES)[layout_rng.integers(len(SIZES))]
        side = min(image_size, max(3, round(SIZES[size] * style.object_scale * image_size)))
        # All candidate corners at once (a fixed number of draws per object), screened by
        # box IoU in one call; the first that also keeps earlier objects visible wins.
        corners = layout_rng.integers(0, image_size - side + 1, size=(max_attempts, 2))
        candidates = np.concatenate([corners, corners + side], axis=1)
        allowed = np.ones(max_attempts, dtype=bool)
        if boxes:
            iou = box_iou(torch.from_numpy(candidates).float(), torch.tensor(boxes).float())
            allowed = (iou.amax(dim=1) <= max_iou).numpy()
        for x0, y0, _, _ in candidates[allowed].tolist():
            pixels = _draw(shape, x0, y0, side, image_size)
            still = visible & ~pixels
            if np.any(still.sum(axis=(1, 2)) < min_visible * areas):
                continue
            placed.append((shape, color, size))
            boxes.append([x0, y0, x0 + side, y0 + side])
            visible = np.concatenate([still, pixels[None]])
            areas = np.append(areas, pixels.sum())
            break
    masks = visible
    pixels = style.background(image_size, background_rng)
    palette = np.array([COLORS[c] for _, c, _ in placed], dtype=np.uint8).reshape(-1, 3)
    for mask, colour in zip(masks, palette):
        pixels[mask] = colour
    objects = []
    for (shape, color, size), mask in zip(placed, masks):
        x, y, w, h = _mask_box(mask)
        center = [x + w / 2, y + h / 2]
        objects.append(SceneObject(shape, color, size, [x, y, w, h], center, int(mask.sum())))
    relations = [
        {
            "subject": i,
            "predicate": "left_of" if a.center[0] < b.center[0] else "right_of",
            "object": j,
        }
        for i, a in enumerate(objects)
        for j, b in enumerate(objects)
        if i != j and a.center[0] != b.center[0]
    ]
    return Scene(Image.fromarray(pixels, "RGB"), masks, objects, relations, style.name)


# --- captions and probe questions -------------------------------------------------------------
def _article(desc: str) -> str:
    return f"a {desc}"


def _listing(objects: list[SceneObject]) -> str:
    names = [_article(o.describe()) for o in objects]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _count_word(n: int) -> str:
    return _NUMBERS[n] if n < len(_NUMBERS) else str(n)


def _shape_counts(objects: list[SceneObject]) -> str:
    parts = []
    for shape in SHAPES:
        n = sum(o.shape == shape for o in objects)
        if n:
            parts.append(f"{_count_word(n)} {shape}{'s' if n > 1 else ''}")
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _extreme(objects: list[SceneObject], sign: int) -> SceneObject | None:
    """The unique leftmost (sign 1) / rightmost (sign -1) object, None on a tie."""
    xs = [sign * o.center[0] for o in objects]
    best = min(xs)
    return objects[xs.index(best)] if xs.count(best) == 1 else None


def scene_captions(
    objects: list[SceneObject], rng: np.random.Generator, count: int = 5
) -> list[str]:
    """Up to ``count`` distinct template captions of a scene graph, in a seeded order.

    Templates: "three objects: a large red circle, ... and a small blue square.", "a scene
    with ...", "two circles and one square.", "the leftmost / rightmost object is a ...",
    "there is a ...", and "a <A> left of a <B>." / "a <B> right of a <A>." for a random pair
    whose centres differ. A one-object scene has six distinct captions, so ``count <= 6``
    always gets ``count`` captions.
    """
    if not objects:
        return ["an empty scene."][:count]
    n = len(objects)
    noun = "object" if n == 1 else "objects"
    candidates = [
        f"{_count_word(n)} {noun}: {_listing(objects)}.",
        f"a scene with {_listing(objects)}.",
        f"{_shape_counts(objects)}.",
    ]
    for sign, side in ((1, "leftmost"), (-1, "rightmost")):
        if (o := _extreme(objects, sign)) is not None:
            candidates.append(f"the {side} object is {_article(o.describe())}.")
    order = rng.permutation(n)
    candidates.append(f"there is {_article(objects[order[0]].describe())}.")
    pairs = [(i, j) for i in order for j in order if objects[i].center[0] < objects[j].center[0]]
    if pairs:
        i, j = pairs[rng.integers(len(pairs))]
        left, right = objects[i].describe(), objects[j].describe()
        candidates.append(f"{_article(left)} left of {_article(right)}.")
        candidates.append(f"{_article(right)} right of {_article(left)}.")
    unique = list(dict.fromkeys(candidates))
    return [unique[k] for k in rng.permutation(len(unique))[:count]]


def probe_questions(objects: list[SceneObject]) -> list[dict[str, Any]]:
    """The out-of-domain probe records of one scene (without ids): the count, and one
    left/right question per pair of shapes that occur once each (see the module docstring)."""
    records: list[dict[str, Any]] = [
        {"task": "count", "question": "how many objects are there?", "label": len(objects)}
    ]
    single = {
        s: next(i for i, o in enumerate(objects) if o.shape == s)
        for s in SHAPES
        if sum(o.shape == s for o in objects) == 1
    }
    for a_pos, a in enumerate(SHAPES):
        for b in SHAPES[a_pos + 1 :]:
            if a not in single or b not in single:
                continue
            i, j = single[a], single[b]
            if objects[i].center[0] == objects[j].center[0]:
                continue
            question = f"is the {objects[i].describe()} left of the {objects[j].describe()}?"
            records.append(
                {
                    "task": "left_of",
                    "query": f"{a}|{b}",
                    "question": question,
                    "label": int(objects[i].center[0] < objects[j].center[0]),
                    "subject": i,
                    "object": j,
                }
            )
    return records


# --- the generated dataset ---------------------------------------------------------------------
@dataclass(frozen=True)
class SceneFiles:
    """Where a written copy's files are (the COCO layout under ``root``)."""

    root: Path
    splits: dict[str, int]

    def images(self, split: str) -> Path:
        return self.root / "images" / self._check(split)

    def instances(self, split: str) -> Path:
        return self.root / "annotations" / f"instances_{self._check(split)}.json"

    def captions(self, split: str) -> Path:
        return self.root / "annotations" / f"captions_{self._check(split)}.json"

    def scenes(self, split: str) -> Path:
        return self.root / "annotations" / f"scenes_{self._check(split)}.json"

    def questions(self, split: str) -> Path:
        return self.root / "annotations" / f"questions_{self._check(split)}.json"

    def _check(self, split: str) -> str:
        if split not in self.splits:
            raise KeyError(f"split {split!r} is not in {self.root} (written: {list(self.splits)})")
        return split


def _default_splits() -> dict[str, int]:
    return {"train": 200, "val": 50, "test": 50, "test_ood": 50}


@dataclass
class ClevrScenes:
    """The generator (:class:`zoo.datamodule.GeneratedData`): :meth:`write` writes every
    split once (atomic: a temp folder renamed into place), :meth:`locate` finds the copy
    without writing.

    ``root``: the folder of the COCO layout (default: a folder of the zoo cache named after
    the parameters); ``splits``: split name → number of images; ``styles``: split name →
    style name in :data:`STYLES` (splits it does not name follow :func:`default_style`);
    ``num_objects``: inclusive (min, max) per image; ``max_iou``, ``min_visible``,
    ``max_attempts``: the placement rule; ``categories``: COCO categories = shapes or
    shape × colour; ``captions_per_image``: at most 6 (the distinct captions of a
    one-object scene).
    """

    root: str | None = None
    splits: dict[str, int] = field(default_factory=_default_splits)
    seed: int = 0
    image_size: int = 64
    num_objects: tuple[int, int] = (1, 5)
    max_iou: float = 0.1
    min_visible: float = 0.5
    max_attempts: int = 100
    categories: CategoryMode = "shape"
    captions_per_image: int = 5
    styles: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.num_objects = tuple(int(v) for v in self.num_objects)  # type: ignore[assignment]
        self.splits = {str(k): int(v) for k, v in self.splits.items()}
        where = "clevr scenes"
        if not self.splits or any(n < 1 for n in self.splits.values()):
            raise ValueError(f"{where}: splits must map names to sizes >= 1, got {self.splits}")
        for name in self.splits:
            if not name or "/" in name or name.startswith("."):
                raise ValueError(f"{where}: bad split name {name!r}")
        if len(self.num_objects) != 2 or not 1 <= self.num_objects[0] <= self.num_objects[1]:
            raise ValueError(f"{where}: num_objects must be (min, max) with 1 <= min <= max")
        if self.image_size < 16:
            raise ValueError(f"{where}: image_size must be >= 16, got {self.image_size}")
        if not 0 <= self.max_iou <= 1 or not 0 <= self.min_visible <= 1:
            raise ValueError(f"{where}: max_iou and min_visible must be in [0, 1]")
        if self.categories not in ("shape", "shape_color"):
            raise ValueError(f"{where}: categories must be 'shape' or 'shape_color'")
        if not 1 <= self.captions_per_image <= 6:
            raise ValueError(f"{where}: captions_per_image must be in 1..6")
        for split, style in self.styles.items():
            if split not in self.splits:
                raise ValueError(
                    f"{where}: styles names split {split!r}, not in {list(self.splits)}"
                )
            if style not in STYLES:
                raise ValueError(f"{where}: unknown style {style!r}; registered: {list(STYLES)}")

    # --- parameters and places ----------------------------------------------------------
    def style(self, split: str) -> SceneStyle:
        return STYLES[self.styles.get(split, default_style(split))]

    def params(self) -> dict[str, Any]:
        """Everything the bytes depend on (the manifest; styles resolved to their fields)."""
        params = asdict(self)
        params.pop("root")
        params["num_objects"] = list(self.num_objects)
        params["styles"] = {s: asdict(self.style(s)) for s in self.splits}
        params["format_version"] = _FORMAT_VERSION
        return params

    def root_dir(self) -> Path:
        if self.root is not None:
            return Path(self.root).expanduser()
        digest = hashlib.sha256(json.dumps(self.params(), sort_keys=True).encode()).hexdigest()
        return cache_root() / f"clevr-scenes-{self.image_size}px-seed{self.seed}-{digest[:10]}"

    def files(self) -> SceneFiles:
        return SceneFiles(self.root_dir(), dict(self.splits))

    def categories_list(self) -> list[dict[str, Any]]:
        """The COCO categories, ids from 1 in :data:`SHAPES` (then :data:`COLORS`) order."""
        if self.categories == "shape":
            names = [(s, s) for s in SHAPES]
        else:
            names = [(f"{c} {s}", s) for s in SHAPES for c in COLORS]
        return [{"id": k + 1, "name": n, "supercategory": s} for k, (n, s) in enumerate(names)]

    def _category_id(self, obj: SceneObject) -> int:
        name = obj.shape if self.categories == "shape" else f"{obj.color} {obj.shape}"
        return next(c["id"] for c in self.categories_list() if c["name"] == name)

    # --- one scene ---------------------------------------------------------------------------
    def _rng(self, split: str, index: int, stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, zlib.crc32(split.encode()), index, stream])

    def scene(self, split: str, index: int) -> Scene:
        """Scene ``index`` of ``split``, a pure function of (seed, split, index, parameters)."""
        return render_scene(
            self._rng(split, index, _LAYOUT),
            self._rng(split, index, _BACKGROUND),
            self.style(split),
            self.image_size,
            self.num_objects,  # type: ignore[arg-type]
            self.max_iou,
            self.min_visible,
            self.max_attempts,
        )

    # --- GeneratedData ----------------------------------------------------------------------
    def locate(self) -> SceneFiles:
        """The written copy; ``FileNotFoundError`` when it is not written (yet),
        ``ValueError`` when it was written with other parameters."""
        root = self.root_dir()
        manifest = root / MANIFEST
        if not manifest.is_file():
            raise FileNotFoundError(
                f"the CLEVR-like scenes are not written at {root} ({MANIFEST} missing): "
                "prepare_data() writes them (the Trainer calls it; outside a Trainer call "
                "datamodule.prepare_data() first)"
            )
        written = json.loads(manifest.read_text())
        if written.get("params") != json.loads(json.dumps(self.params())):
            raise ValueError(
                f"{root} holds CLEVR-like scenes written with other parameters "
                f"({written.get('params')}), not {self.params()}; use another root or delete it"
            )
        return self.files()

    def write(self) -> SceneFiles:
        """Write every split unless a complete copy with these parameters exists."""
        root = self.root_dir()
        if (root / MANIFEST).is_file():
            return self.locate()
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise FileExistsError(
                f"{root} exists and holds no {MANIFEST}: it is not a copy of the CLEVR-like "
                "scenes; choose another root or remove it"
            )

        def fill(tmp: Path) -> str:
            (tmp / "annotations").mkdir()
            for split, count in self.splits.items():
                self._write_split(tmp, split, count)
            manifest = {"params": self.params(), "splits": self.splits}
            return json.dumps(manifest, indent=1, sort_keys=True)

        write_atomically(root, MANIFEST, fill)  # an existing root is empty (checked above)
        return self.locate()

    def _write_split(self, folder: Path, split: str, count: int) -> None:
        image_dir = folder / "images" / split
        image_dir.mkdir(parents=True)
        style = self.style(split)
        info = {"description": "vl-zoo CLEVR-like scenes", "split": split, "style": style.name}
        images, instances, captions, scenes, questions = [], [], [], [], []
        for index in range(count):
            scene = self.scene(split, index)
            image_id = index + 1
            file_name = f"{index:06d}.png"
            scene.image.save(image_dir / file_name, format="PNG")
            size = self.image_size
            images.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
            rles = coco_rles(scene.masks)
            for obj, rle in zip(scene.objects, rles):
                instances.append(
                    {
                        "id": len(instances) + 1,
                        "image_id": image_id,
                        "category_id": self._category_id(obj),
                        "bbox": obj.bbox,
                        "area": obj.area,
                        "segmentation": rle,
                        "iscrowd": 0,
                        "attributes": {"shape": obj.shape, "color": obj.color, "size": obj.size},
                    }
                )
            texts = scene_captions(
                scene.objects, self._rng(split, index, _CAPTIONS), self.captions_per_image
            )
            for text in texts:
                captions.append({"id": len(captions) + 1, "image_id": image_id, "caption": text})
            scenes.append({"image_id": image_id, "file_name": file_name, **scene.graph()})
            for record in probe_questions(scene.objects):
                questions.append({"id": len(questions) + 1, "image_id": image_id, **record})
        coco = {"info": info, "licenses": [], "images": images}
        annotations = folder / "annotations"
        _dump(
            annotations / f"instances_{split}.json",
            coco | {"annotations": instances, "categories": self.categories_list()},
        )
        _dump(annotations / f"captions_{split}.json", coco | {"annotations": captions})
        _dump(annotations / f"scenes_{split}.json", {"info": info, "scenes": scenes})
        _dump(annotations / f"questions_{split}.json", {"info": info, "questions": questions})


def write_clevr_scenes(
    root: str | Path | None = None,
    splits: Mapping[str, int] | None = None,
    seed: int = 0,
    styles: Mapping[str, str] | None = None,
    **options: Any,
) -> SceneFiles:
    """Write the CLEVR-like scenes in the COCO layout under ``root`` (once) and return their
    paths; ``options`` are the other fields of :class:`ClevrScenes`."""
    return ClevrScenes(
        root=None if root is None else str(root),
        splits=dict(splits) if splits is not None else _default_splits(),
        seed=seed,
        styles=dict(styles or {}),
        **options,
    ).write()
