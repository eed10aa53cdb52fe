"""A second synthetic domain: microscopy-like cell images, deterministic by seed, with instances at three levels.

Where teams fine-tune SAM most: many small cells that touch one another, faint boundaries between them, nuclei
inside (the parts) with nucleoli inside those (the subparts), uneven illumination and camera noise. The embedded
model never trains on these scenes, so the demo can show the data engine adapting it to a new domain.

Each scene is one of two imaging styles, fluorescence (dark background, cytoplasm in one channel, nuclei in
another) or brightfield (light background, darker cells, dark nuclei), in turn by seed (even seeds fluorescence).
Cells are ellipses clipped to the Voronoi region of their centre, so neighbours share a boundary instead of
overlapping; every level is a ground-truth instance (a cell's mask includes its nucleus, a nucleus's its
nucleoli), as in ``sam_core.synthetic``.

``FAINT`` images the same scenes at half the contrast and two and a half times the camera noise: the domain the
embedded model is weak on since it learnt on a GPU (the demo's held-out mIoU@1 / @5 0.25 / 0.29 there, both styles
in its test images; 0.35 / 0.46 on fluorescence alone, against 0.57 / 0.70 on the standard imaging, and 0.61 / 0.81
on its own scenes), so the demo has something to adapt it to.

Seeds use the same splits as ``sam_core.synthetic`` (``SPLITS``), so a train seed never gives a test scene.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from sam_core.synthetic import MIN_AREA, Scene, visible_instances

STYLES = ("fluorescence", "brightfield")


@dataclass(frozen=True)
class CellImaging:
    """How the microscope images a scene, as factors on the standard imaging's random draws (the draws themselves
    are the same, so a seed gives the same cells under every imaging)."""

    contrast: float = 1.0  # the cytoplasm's contrast against the background
    noise: float = 1.0  # the camera noise's standard deviation (0.015-0.04 of full scale when 1)

    def __post_init__(self) -> None:
        if not (self.contrast > 0 and self.noise >= 0):
            raise ValueError(f"contrast must be > 0 and noise >= 0, got {self}")


STANDARD = CellImaging()
FAINT = CellImaging(contrast=0.5, noise=2.5)


def make_cell_scene(seed: int, size: int = 256, imaging: CellImaging = STANDARD) -> Scene:
    """Generate cell scene ``seed`` at ``size`` x ``size`` pixels: 12-40 cells, most touching a neighbour (whole),
    their nuclei (part) and nucleoli (subpart). Cell diameters are about 0.07-0.2 of ``size``; masks smaller
    than ``MIN_AREA`` pixels are dropped. ``imaging`` changes the pixels, never the masks."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if size < 32:
        raise ValueError(f"size must be >= 32 pixels, got {size}")
    rng = np.random.default_rng(seed)
    # The style alternates with the seed, so that any run of consecutive seeds (a demo's test and validation
    # scenes, each round's images) holds both styles evenly: drawn at random, the demo's 8 test scenes were all
    # fluorescence and 17 of its 24 training scenes brightfield. The draw stays, so every layout is as before.
    rng.integers(0, len(STYLES))
    style = STYLES[seed % len(STYLES)]
    radius = rng.uniform(0.035, 0.08) * size  # typical cell radius in pixels for this scene
    centres = _cell_centres(rng, size, radius)
    region = _voronoi_labels(size, centres)
    owner = np.full((size, size), -1, dtype=np.int32)
    shapes: list[np.ndarray] = []
    parents: list[int] = []
    levels: list[int] = []
    # Intensities in 0..1 per channel role: background, cytoplasm, nucleus, nucleolus.
    cytoplasm = np.zeros((size, size), np.float32)
    nucleus_signal = np.zeros((size, size), np.float32)
    for index, centre in enumerate(centres):
        cell = _ellipse(rng, size, centre, radius * rng.uniform(1.0, 1.4), 0.7) & (region == index)
        # A thin gap at the shared boundary: the membrane, one or two pixels that are faint but present.
        cell = cv2.erode(cell.astype(np.uint8), np.ones((2, 2), np.uint8)).astype(bool)
        if cell.sum() < MIN_AREA:
            continue
        cell_index = _claim(owner, shapes, parents, levels, cell, -1, 0)
        cytoplasm[cell] = rng.uniform(0.35, 0.7)
        nucleus = _inner_ellipse(rng, size, cell, radius * rng.uniform(0.4, 0.6))
        if nucleus is None:
            continue
        nucleus_index = _claim(owner, shapes, parents, levels, nucleus, cell_index, 1)
        nucleus_signal[nucleus] = rng.uniform(0.55, 1.0)
        for _ in range(int(rng.integers(0, 3))):
            nucleolus = _inner_ellipse(rng, size, nucleus, radius * rng.uniform(0.18, 0.28))
            if nucleolus is None:
                continue
            _claim(owner, shapes, parents, levels, nucleolus, nucleus_index, 2)
            nucleus_signal[nucleolus] *= rng.uniform(1.3, 1.6)
    image = _render(rng, style, cytoplasm, nucleus_signal, imaging)
    return visible_instances(image, owner, shapes, parents, levels)


def make_faint_cell_scene(seed: int, size: int = 256) -> Scene:
    """Cell scene ``seed`` imaged ``FAINT``: the same cells as ``make_cell_scene(seed, size)``, fainter and noisier."""
    return make_cell_scene(seed, size, FAINT)


def cell_scene(seed: int, size: int = 256) -> tuple[np.ndarray, list[np.ndarray]]:
    """The image (HxWx3 uint8) and instance masks (list of HxW bool) of cell scene ``seed``."""
    s = make_cell_scene(seed, size)
    return s.image, s.masks


def _cell_centres(rng, size: int, radius: float) -> np.ndarray:
    """Kx2 (x, y) cell centres at least 1.5 radii apart (dart throwing), up to 12-40 of them: dense enough that
    most cells touch a neighbour."""
    want = int(rng.integers(12, 41))
    centres: list[np.ndarray] = []
    for _ in range(want * 30):
        if len(centres) == want:
            break
        p = rng.uniform(radius * 0.3, size - radius * 0.3, size=2)
        if all(np.hypot(*(p - c)) >= 1.5 * radius for c in centres):
            centres.append(p)
    return np.asarray(centres, dtype=np.float64).reshape(-1, 2)


def _voronoi_labels(size: int, centres: np.ndarray) -> np.ndarray:
    """HxW int: the index of the nearest centre at each pixel."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    distances = (xx[None] - centres[:, 0, None, None]) ** 2 + (yy[None] - centres[:, 1, None, None]) ** 2
    return distances.argmin(axis=0)


def _ellipse(rng, size: int, centre: np.ndarray, radius: float, min_ratio: float) -> np.ndarray:
    """A filled, rotated ellipse with semi-axes ``radius`` and ``radius`` x U(min_ratio, 1), as HxW bool."""
    canvas = np.zeros((size, size), dtype=np.uint8)
    axes = (max(2, int(round(radius))), max(2, int(round(radius * rng.uniform(min_ratio, 1.0)))))
    cv2.ellipse(canvas, (int(centre[0]), int(centre[1])), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    return canvas.astype(bool)


def _inner_ellipse(rng, size: int, parent: np.ndarray, radius: float) -> np.ndarray | None:
    """An ellipse inside ``parent`` and clipped to it, or None when the parent has no room."""
    # Room for the centre: the parent shrunk by half the radius (a nucleus may sit off-centre, clipped).
    inner = cv2.erode(parent.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=max(1, int(radius / 2)))
    ys, xs = np.nonzero(inner)
    if len(ys) == 0:
        return None
    j = int(rng.integers(0, len(ys)))
    shape = _ellipse(rng, size, np.array([xs[j], ys[j]], np.float64), max(radius, 3.0), 0.6) & parent
    return shape if shape.sum() >= MIN_AREA else None


def _claim(owner, shapes, parents, levels, shape, parent, level) -> int:
    index = len(shapes)
    shapes.append(shape)
    parents.append(parent)
    levels.append(level)
    owner[shape] = index
    return index


def _render(rng, style: str, cytoplasm: np.ndarray, nucleus: np.ndarray, imaging: CellImaging) -> np.ndarray:
    """HxWx3 uint8 from the cytoplasm and nucleus signals (0..1): granular texture, optical blur, uneven
    illumination, the style's colours (cytoplasm contrast times ``imaging.contrast``), Poisson-like noise (times
    ``imaging.noise``)."""
    size = cytoplasm.shape[0]
    grain = cv2.resize(rng.normal(0, 1, (size // 4, size // 4)).astype(np.float32), (size, size))
    cytoplasm = cytoplasm * (1.0 + 0.25 * grain)
    nucleus = nucleus * (1.0 + 0.15 * grain)
    sigma = rng.uniform(0.8, 1.6)
    cytoplasm = cv2.GaussianBlur(cytoplasm, (0, 0), sigma)
    nucleus = cv2.GaussianBlur(nucleus, (0, 0), sigma)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    cx, cy = rng.uniform(0.0, 1.0, size=2)
    illumination = 1.0 - rng.uniform(0.2, 0.5) * ((xx - cx) ** 2 + (yy - cy) ** 2)
    if style == "fluorescence":
        # Cytoplasm faint in green, nuclei bright in blue with a little green bleed-through; dark background.
        contrast = rng.uniform(0.25, 0.5) * imaging.contrast
        green = 0.08 + contrast * cytoplasm + 0.1 * nucleus
        blue = 0.06 + 0.75 * nucleus
        red = 0.05 + 0.05 * cytoplasm
        image = np.stack([red, green, blue], axis=-1)
    else:
        # Cells a little darker than the light background, nuclei darker still, a purple-grey stain.
        contrast = rng.uniform(0.12, 0.3) * imaging.contrast
        grey = 0.85 - contrast * cytoplasm - 0.3 * nucleus
        tint = rng.uniform(0.9, 1.05, size=3).astype(np.float32)
        image = grey[..., None] * tint
    image = image * illumination[..., None]
    noise = rng.uniform(0.015, 0.04) * imaging.noise
    image = image + rng.normal(0, noise, size=image.shape).astype(np.float32)
    return np.clip(image * 255.0, 0, 255).astype(np.uint8)
