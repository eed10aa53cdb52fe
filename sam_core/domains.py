"""The synthetic image domains by name: "shapes" (objects with parts, the embedded model's training world) and
"cells" (microscopy-like, never seen in its training) and "faint_cells" (the same cells at half the contrast and more
noise, on which the model is weak: the demo's new domain). All share the seed splits of
``sam_core.synthetic.SPLITS`` and return ``sam_core.synthetic.Scene``."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from sam_core.synthetic import Scene, make_scene
from sam_core.synthetic_cells import make_cell_scene, make_faint_cell_scene

DOMAINS: dict[str, Callable[[int, int], Scene]] = {
    "shapes": make_scene,
    "cells": make_cell_scene,
    "faint_cells": make_faint_cell_scene,
}


def make_domain_scene(domain: str, seed: int, size: int = 256) -> Scene:
    """Scene ``seed`` of ``domain`` at ``size`` x ``size`` pixels."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown synthetic domain {domain!r}; expected one of {sorted(DOMAINS)}")
    return DOMAINS[domain](seed, size)


def domain_scene(domain: str, seed: int, size: int = 256) -> tuple[np.ndarray, list[np.ndarray]]:
    """The image (HxWx3 uint8) and instance masks (list of HxW bool) of scene ``seed`` of ``domain``."""
    s = make_domain_scene(domain, seed, size)
    return s.image, s.masks
