"""A synthetic segmentation dataset, deterministic by seed, with instances at three levels.

Each scene is a textured background with a few objects ("whole"), most of which hold parts, some of which hold
subparts. Every level is a ground-truth instance, so a click on a subpart is genuinely ambiguous between the
subpart, its part and the whole object: exactly the ambiguity SAM's three mask outputs exist for. Later objects
occlude earlier ones, and every mask is the *visible* region of its instance.

Seeds are split into fixed ranges (``SPLITS``) so that training never sees a validation or test scene.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# Fixed, disjoint seed ranges. Training draws from a million seeds; evaluation uses small fixed sets.
SPLITS: dict[str, range] = {
    "train": range(0, 1_000_000),
    "val": range(1_000_000, 1_000_200),
    "test": range(2_000_000, 2_000_200),
}

LEVELS = ("whole", "part", "subpart")
TEXTURES = ("flat", "blotchy", "striped", "checkered")  # _texture's kinds, in the order of its random draw
SHAPES = ("ellipse", "rectangle", "polygon")  # _shape's kinds, in the order of its random draw
MIN_AREA = 64  # pixels; smaller visible regions are dropped (with their children)


@dataclass
class Scene:
    """One synthetic scene.

    image: HxWx3 uint8 RGB. masks: list of HxW bool (visible region of each instance). parents: for each mask
    the index of its enclosing instance, or -1 for a whole object. levels: 0 whole, 1 part, 2 subpart.
    attributes: for each mask how it was painted, {"colour": (r, g, b) floats 0-255 before texture and noise,
    "texture": one of TEXTURES, "shape": one of SHAPES} (what sam_core.phrases names); None for domains that do
    not record them.
    """

    image: np.ndarray
    masks: list[np.ndarray]
    parents: list[int]
    levels: list[int]
    attributes: list[dict] | None = None

    def children(self, index: int) -> list[int]:
        """Indices of the masks whose parent is ``index``."""
        return [i for i, p in enumerate(self.parents) if p == index]

    def hierarchy(self) -> list[dict]:
        """One dict per mask: index, level name, parent index, area in pixels."""
        return [
            {"index": i, "level": LEVELS[lv], "parent": p, "area": int(m.sum())}
            for i, (m, p, lv) in enumerate(zip(self.masks, self.parents, self.levels, strict=True))
        ]


def split_seeds(split: str, count: int | None = None) -> list[int]:
    """The first ``count`` seeds of a named split ("train", "val", "test")."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
    seeds = SPLITS[split]
    if count is None:
        count = len(seeds)
    if count > len(seeds):
        raise ValueError(f"split {split!r} holds {len(seeds)} seeds, asked for {count}")
    return list(seeds[:count])


def scene(seed: int, size: int = 256) -> tuple[np.ndarray, list[np.ndarray]]:
    """The image (HxWx3 uint8) and instance masks (list of HxW bool) of scene ``seed``; see ``make_scene``."""
    s = make_scene(seed, size)
    return s.image, s.masks


def make_scene(seed: int, size: int = 256) -> Scene:
    """Generate scene ``seed`` at ``size`` x ``size`` pixels with its whole/part/subpart hierarchy."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if size < 32:
        raise ValueError(f"size must be >= 32 pixels, got {size}")
    rng = np.random.default_rng(seed)
    image = _texture(rng, size, _random_colour(rng))[0].astype(np.float32)
    # owner[y, x] = index into `shapes` of the instance painted last at that pixel (-1 = background).
    owner = np.full((size, size), -1, dtype=np.int32)
    shapes: list[np.ndarray] = []  # full (unoccluded) shape of each instance, clipped to its parent
    parents: list[int] = []
    levels: list[int] = []
    attributes: list[dict] = []
    paint = (rng, image, owner, shapes, parents, levels, attributes)

    n_objects = int(rng.integers(2, 6))
    for _ in range(n_objects):
        radius = rng.uniform(0.10, 0.26) * size
        centre = rng.uniform(radius * 0.5, size - radius * 0.5, size=2)
        whole, whole_kind = _shape(rng, size, centre, radius)
        if whole.sum() < MIN_AREA:
            continue
        colour = _random_colour(rng)
        whole_index = _paint(*paint, whole, whole_kind, colour, -1, 0)
        for _ in range(int(rng.integers(0, 4))):
            part, part_kind = _inner_shape(rng, size, whole, radius * rng.uniform(0.25, 0.45))
            if part is None:
                continue
            part_colour = _contrasting_colour(rng, colour)
            part_index = _paint(*paint, part, part_kind, part_colour, whole_index, 1)
            for _ in range(int(rng.integers(0, 3))):
                sub, sub_kind = _inner_shape(rng, size, part, radius * rng.uniform(0.12, 0.22))
                if sub is None:
                    continue
                sub_colour = _contrasting_colour(rng, part_colour)
                _paint(*paint, sub, sub_kind, sub_colour, part_index, 2)

    image += rng.normal(0.0, rng.uniform(2.0, 8.0), size=image.shape).astype(np.float32)
    image_u8 = np.clip(image, 0, 255).astype(np.uint8)
    return visible_instances(image_u8, owner, shapes, parents, levels, attributes)


def visible_instances(image, owner, shapes, parents, levels, attributes=None) -> Scene:
    """Turn painted shapes into visible masks (an instance includes its descendants) and drop tiny ones;
    ``attributes`` (one dict per painted shape, or None) follow the masks that are kept."""
    n = len(shapes)
    ancestors = []
    for i in range(n):
        chain, p = [i], parents[i]
        while p >= 0:
            chain.append(p)
            p = parents[p]
        ancestors.append(chain)
    visible = [np.zeros_like(owner, dtype=bool) for _ in range(n)]
    for i in range(n):
        region = owner == i
        if region.any():
            for a in ancestors[i]:
                visible[a] |= region
    keep_index: dict[int, int] = {}
    masks, out_parents, out_levels, out_attributes = [], [], [], []
    for i in range(n):
        p = parents[i]
        if visible[i].sum() < MIN_AREA or (p >= 0 and p not in keep_index):
            continue
        # A part that covers all of its parent's visible area is the same instance twice: keep the parent.
        if p >= 0 and visible[i].sum() == visible[p].sum():
            continue
        keep_index[i] = len(masks)
        masks.append(visible[i])
        out_parents.append(keep_index[p] if p >= 0 else -1)
        out_levels.append(levels[i])
        if attributes is not None:
            out_attributes.append(attributes[i])
    return Scene(
        image=image,
        masks=masks,
        parents=out_parents,
        levels=out_levels,
        attributes=out_attributes if attributes is not None else None,
    )


def _paint(
    rng, image, owner, shapes, parents, levels, attributes, shape, shape_kind, colour, parent, level
) -> int:
    index = len(shapes)
    shapes.append(shape)
    parents.append(parent)
    levels.append(level)
    tex, texture_kind = _texture(rng, image.shape[0], colour)
    attributes.append(
        {
            "colour": tuple(float(c) for c in colour),
            "texture": TEXTURES[texture_kind],
            "shape": SHAPES[shape_kind],
        }
    )
    image[shape] = tex[shape]
    owner[shape] = index
    return index


def _random_colour(rng) -> np.ndarray:
    return rng.uniform(20, 235, size=3).astype(np.float32)


def _contrasting_colour(rng, colour: np.ndarray) -> np.ndarray:
    # Parts must stand out from their parent, or the hierarchy is invisible and the label is noise.
    for _ in range(20):
        c = _random_colour(rng)
        if np.abs(c - colour).sum() > 120:
            return c
    return (255.0 - colour).astype(np.float32)


def _texture(rng, size: int, colour: np.ndarray) -> tuple[np.ndarray, int]:
    """A size x size x 3 float32 texture around ``colour`` and its kind (an index into TEXTURES): flat, blotchy,
    striped or checkered."""
    kind = int(rng.integers(0, 4))
    base = np.broadcast_to(colour, (size, size, 3)).astype(np.float32)
    amp = rng.uniform(8, 30)
    if kind == 1:
        cells = int(rng.integers(3, 9))
        noise = rng.normal(0, 1, size=(cells, cells, 3)).astype(np.float32)
        base = base + amp * cv2.resize(noise, (size, size), interpolation=cv2.INTER_CUBIC)
    elif kind == 2:
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(6, 24)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        wave = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * (2 * np.pi / period))
        base = base + amp * wave[..., None]
    elif kind == 3:
        cell = int(rng.integers(6, 20))
        yy, xx = np.mgrid[0:size, 0:size]
        checker = (((yy // cell) + (xx // cell)) % 2).astype(np.float32) * 2 - 1
        base = base + amp * checker[..., None]
    return base, kind


def _shape(rng, size: int, centre: np.ndarray, radius: float) -> tuple[np.ndarray, int]:
    """A filled ellipse, rotated rectangle or star-like polygon as an HxW bool mask, and its kind (an index into
    SHAPES)."""
    canvas = np.zeros((size, size), dtype=np.uint8)
    kind = int(rng.integers(0, 3))
    cx, cy = float(centre[0]), float(centre[1])
    if kind == 0:
        axes = (max(2, int(radius * rng.uniform(0.6, 1.0))), max(2, int(radius * rng.uniform(0.4, 1.0))))
        cv2.ellipse(canvas, (int(cx), int(cy)), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    elif kind == 1:
        w, h = radius * rng.uniform(1.0, 1.8), radius * rng.uniform(0.7, 1.6)
        box = cv2.boxPoints(((cx, cy), (w, h), float(rng.uniform(0, 90))))
        cv2.fillPoly(canvas, [np.round(box).astype(np.int32)], 1)
    else:
        k = int(rng.integers(5, 11))
        angles = np.sort(rng.uniform(0, 2 * np.pi, size=k))
        radii = radius * rng.uniform(0.55, 1.0, size=k)
        pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
        cv2.fillPoly(canvas, [np.round(pts).astype(np.int32)], 1)
    return canvas.astype(bool), kind


def _inner_shape(rng, size: int, parent: np.ndarray, radius: float) -> tuple[np.ndarray | None, int]:
    """A shape centred inside ``parent`` and clipped to it with its kind, or (None, -1) if the parent has no
    room."""
    inner = cv2.erode(parent.astype(np.uint8), np.ones((5, 5), np.uint8), iterations=max(1, int(radius / 4)))
    ys, xs = np.nonzero(inner)
    if len(ys) == 0:
        return None, -1
    j = int(rng.integers(0, len(ys)))
    shape, kind = _shape(rng, size, np.array([xs[j], ys[j]], dtype=np.float64), max(radius, 3.0))
    shape &= parent
    return (shape, kind) if shape.sum() >= MIN_AREA else (None, -1)
