import cv2
import numpy as np
import pytest

from sam_core.domains import DOMAINS, domain_scene, make_domain_scene
from sam_core.synthetic import MIN_AREA, make_scene
from sam_core.synthetic_cells import CellImaging, make_cell_scene, make_faint_cell_scene


def test_cell_scene_is_deterministic_by_seed_and_differs_across_seeds():
    a, b, c = make_cell_scene(3), make_cell_scene(3), make_cell_scene(4)
    assert a.image.shape == (256, 256, 3) and a.image.dtype == np.uint8
    assert np.array_equal(a.image, b.image) and len(a.masks) == len(b.masks)
    assert all(np.array_equal(x, y) for x, y in zip(a.masks, b.masks, strict=True))
    assert not np.array_equal(a.image, c.image)


def test_nuclei_lie_inside_their_cells_and_every_level_occurs():
    levels = set()
    for seed in range(12):
        s = make_cell_scene(seed)
        for i, (mask, parent) in enumerate(zip(s.masks, s.parents, strict=True)):
            assert mask.dtype == bool and mask.sum() >= MIN_AREA
            levels.add(s.levels[i])
            if parent >= 0:
                assert s.levels[parent] == s.levels[i] - 1
                assert not (mask & ~s.masks[parent]).any(), "a nucleus leaks out of its cell"
    assert levels == {0, 1, 2}


def test_cells_are_many_small_and_mostly_touching():
    """What makes the domain new for the embedded model: many more, smaller objects than its training scenes,
    with neighbours one membrane apart."""
    cells, touching, areas, shape_objects = 0, 0, [], 0
    for seed in range(10):
        s = make_cell_scene(seed)
        wholes = [m for m, level in zip(s.masks, s.levels, strict=True) if level == 0]
        shape_objects += sum(1 for level in make_scene(seed).levels if level == 0)
        for i, cell in enumerate(wholes):
            grown = cv2.dilate(cell.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
            touching += any((grown & other).any() for j, other in enumerate(wholes) if j != i)
            areas.append(cell.sum())
        cells += len(wholes)
    assert cells >= 4 * shape_objects
    assert touching / cells > 0.5
    assert np.median(areas) < 0.02 * 256 * 256


def test_cell_masks_are_disjoint_between_cells():
    s = make_cell_scene(5)
    wholes = np.stack([m for m, level in zip(s.masks, s.levels, strict=True) if level == 0])
    assert wholes.sum(axis=0).max() == 1


def test_domains_by_name():
    assert set(DOMAINS) == {"shapes", "cells", "faint_cells"}
    image, masks = domain_scene("cells", 2, 128)
    assert image.shape == (128, 128, 3) and np.array_equal(masks[0], make_cell_scene(2, 128).masks[0])
    assert np.array_equal(make_domain_scene("shapes", 2).image, make_scene(2).image)
    with pytest.raises(ValueError, match="unknown synthetic domain 'tissue'.*cells"):
        make_domain_scene("tissue", 0)
    with pytest.raises(ValueError, match="seed must be >= 0"):
        make_cell_scene(-1)


def test_faint_imaging_keeps_the_cells_and_buries_them_in_noise():
    """The demo's domain: the same masks as the standard imaging, but a cell stands out less from its
    neighbourhood and the pixels are noisier (measured on the cytoplasm's green or grey channel)."""
    for seed in range(4):
        standard, faint = make_cell_scene(seed), make_faint_cell_scene(seed)
        assert len(standard.masks) == len(faint.masks)
        assert all(np.array_equal(a, b) for a, b in zip(standard.masks, faint.masks, strict=True))
        assert np.array_equal(make_domain_scene("faint_cells", seed).image, faint.image)
        cells = np.any([m for m, level in zip(faint.masks, faint.levels, strict=True) if level == 0], axis=0)
        contrast, noise = [], []
        for s in (standard, faint):
            # The cytoplasm's channel: green in fluorescence, grey in brightfield.
            channel = s.image[..., 1].astype(np.float32)
            contrast.append(abs(channel[cells].mean() - channel[~cells].mean()))
            # Noise: what a 3x3 median leaves, away from the edges of anything.
            noise.append((channel - cv2.medianBlur(s.image[..., 1], 3)).std())
        assert contrast[1] < 0.8 * contrast[0], (seed, contrast)
        assert noise[1] > 1.5 * noise[0], (seed, noise)
    with pytest.raises(ValueError, match="contrast must be > 0"):
        CellImaging(contrast=0.0)


def test_consecutive_seeds_alternate_the_imaging_style():
    """A demo's 8 test scenes, 8 validation scenes and each round's 8 images hold both styles evenly:
    fluorescence has a dark background, brightfield a light one."""
    for first in (0, 1_000_000, 2_000_000):
        dark = [make_cell_scene(seed, 64).image.mean() < 100 for seed in range(first, first + 8)]
        assert dark == [True, False] * 4, (first, dark)
