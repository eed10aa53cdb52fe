"""Phrases about a synthetic scene, each with its ground-truth masks: what the text prompts train and are scored on.

``sam_core.synthetic`` records how it painted each instance (colour, texture, shape), so a scene can be described
in words it can check. Four kinds of phrase, deterministic by seed:

- "one": names exactly one whole object, "the red striped ellipse", "the checkered object" (its mask);
- "several": names two or more whole objects, "every plain rectangle" (each object's mask: the instances);
- "part": the parts of one named object, "the part inside the blue polygon" (one part) or "every part inside the
  blue polygon" (each part);
- "absent": names nothing in the scene, "the green rectangle" (no mask; what the presence head learns).

Colour words are read from the painted RGB colour by the nearest entry of PALETTE in CIE Lab. A colour near the
border of two names is ambiguous: such an object "might" be called either, and a phrase is only used when the
objects it certainly names are exactly those it might name. So "every red object" is never said of a scene whose
orange-red ellipse a person could count either way, and an absent phrase is absent for every reading.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import cv2
import numpy as np

from sam_core.synthetic import SHAPES, TEXTURES, Scene

# Reference colours (RGB) of the colour words.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (200, 35, 35),
    "orange": (230, 130, 30),
    "yellow": (225, 215, 45),
    "green": (50, 165, 55),
    "cyan": (45, 200, 210),
    "blue": (45, 70, 205),
    "purple": (130, 55, 175),
    "pink": (230, 125, 185),
    "brown": (125, 80, 40),
    "white": (228, 228, 228),
    "grey": (128, 128, 128),
    "black": (28, 28, 28),
}
# A colour is named when its nearest palette entry is at most MAX_DISTANCE away in Lab (beyond: no word fits), and
# it might be called any entry within AMBIGUITY of the nearest.
MAX_DISTANCE = 45.0
AMBIGUITY = 12.0
TEXTURE_WORDS = {"flat": "plain", "blotchy": "mottled", "striped": "striped", "checkered": "checkered"}
SHAPE_WORDS = {"ellipse": "ellipse", "rectangle": "rectangle", "polygon": "polygon"}
KINDS = ("one", "several", "part", "absent")
VOCABULARY: tuple[str, ...] = (
    "the",
    "every",
    "part",
    "inside",
    "object",
    *PALETTE,
    *TEXTURE_WORDS.values(),
    *SHAPE_WORDS.values(),
)
assert set(TEXTURE_WORDS) == set(TEXTURES) and set(SHAPE_WORDS) == set(SHAPES)


@dataclass(frozen=True)
class Phrase:
    """A phrase and what it names in its scene.

    kind: one of KINDS. indices: the scene's mask indices it names (empty for "absent"); masks: those masks,
    HxW bool each, in the same order.
    """

    text: str
    kind: str
    indices: tuple[int, ...]
    masks: tuple[np.ndarray, ...]

    @property
    def present(self) -> bool:
        return bool(self.indices)


@dataclass(frozen=True)
class Description:
    """What words fit one whole object: the certain colour word (None when ambiguous or unnamed), every colour
    word it might be called, its texture and shape words."""

    colour: str | None
    colours: frozenset[str]
    texture: str
    shape: str


def _lab(rgb) -> np.ndarray:
    pixel = np.asarray(rgb, np.float32).reshape(1, 1, 3) / 255.0
    return cv2.cvtColor(pixel, cv2.COLOR_RGB2LAB)[0, 0].astype(np.float64)


_PALETTE_LAB = {name: _lab(rgb) for name, rgb in PALETTE.items()}


def colour_words(rgb) -> tuple[str | None, frozenset[str]]:
    """(the colour word of an RGB colour 0-255 when it is clear, else None; every word it might be called)."""
    lab = _lab(rgb)
    distance = {name: float(np.linalg.norm(lab - ref)) for name, ref in _PALETTE_LAB.items()}
    ranked = sorted(distance, key=distance.get)
    nearest = distance[ranked[0]]
    possible = frozenset(n for n in ranked if distance[n] <= nearest + AMBIGUITY)
    certain = ranked[0] if nearest <= MAX_DISTANCE and len(possible) == 1 else None
    return certain, possible


def describe(attributes: dict) -> Description:
    colour, colours = colour_words(attributes["colour"])
    return Description(
        colour, colours, TEXTURE_WORDS[attributes["texture"]], SHAPE_WORDS[attributes["shape"]]
    )


def _words(colour: str | None, texture: str | None, shape: str | None) -> str:
    return " ".join(w for w in (colour, texture, shape or "object") if w)


def _matches(d: Description, colour, texture, shape) -> tuple[bool, bool]:
    """(certainly named, possibly named) by a phrase of these words (None: the word is left out)."""
    fits = (texture is None or d.texture == texture) and (shape is None or d.shape == shape)
    if not fits:
        return False, False
    if colour is None:
        return True, True
    return d.colour == colour, colour in d.colours


def scene_phrases(scene: Scene, seed: int, per_kind: int = 3) -> list[Phrase]:
    """Up to ``per_kind`` phrases of each kind about ``scene`` (which must record attributes), chosen at random
    by ``seed`` among every phrase that names its objects unambiguously; in KINDS order."""
    if scene.attributes is None:
        raise ValueError("this scene records no attributes (only sam_core.synthetic.make_scene scenes do)")
    rng = np.random.default_rng([seed, 19])
    wholes = [i for i, level in enumerate(scene.levels) if level == 0]
    described = {i: describe(scene.attributes[i]) for i in wholes}
    colours = [None, *PALETTE]
    textures = [None, *TEXTURE_WORDS.values()]
    shapes = [None, *SHAPE_WORDS.values()]
    named: dict[str, list[tuple[str, tuple[int, ...]]]] = {kind: [] for kind in KINDS}
    unique: list[tuple[str, int]] = []  # ("the ...", object index) for the parts phrases
    for colour, texture, shape in itertools.product(colours, textures, shapes):
        if colour is None and texture is None and shape is None:
            continue
        certain, possible = set(), set()
        for i, d in described.items():
            sure, maybe = _matches(d, colour, texture, shape)
            certain |= {i} if sure else set()
            possible |= {i} if maybe else set()
        if certain != possible:
            continue  # an ambiguous colour makes the ground truth uncertain
        words = _words(colour, texture, shape)
        if len(certain) == 1:
            named["one"].append((f"the {words}", tuple(certain)))
            unique.append((f"the {words}", next(iter(certain))))
        elif len(certain) > 1:
            named["several"].append((f"every {words}", tuple(sorted(certain))))
        elif colour is not None or rng.random() < 0.5:  # absent phrases: keep most with a colour word
            named["absent"].append((f"{'the' if rng.random() < 0.5 else 'every'} {words}", ()))
    for the_object, index in unique:
        parts = tuple(i for i in scene.children(index) if scene.levels[i] == 1)
        if len(parts) == 1:
            named["part"].append((f"the part inside {the_object}", parts))
        elif len(parts) > 1:
            named["part"].append((f"every part inside {the_object}", parts))
    phrases = []
    for kind in KINDS:
        candidates = named[kind]
        chosen = rng.choice(len(candidates), size=min(per_kind, len(candidates)), replace=False)
        for j in sorted(int(c) for c in chosen):
            text, indices = candidates[j]
            phrases.append(Phrase(text, kind, indices, tuple(scene.masks[i] for i in indices)))
    return phrases
