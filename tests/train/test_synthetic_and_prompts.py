import numpy as np
import pytest
import torch

from sam_core.prompts import farthest_point, next_click, noisy_box, sample_error_points
from sam_core.synthetic import SPLITS, make_scene, scene, split_seeds


def test_scene_is_deterministic_by_seed_and_differs_across_seeds():
    image_a, masks_a = scene(7)
    image_b, masks_b = scene(7)
    image_c, _ = scene(8)
    assert image_a.shape == (256, 256, 3) and image_a.dtype == np.uint8
    assert np.array_equal(image_a, image_b) and len(masks_a) == len(masks_b)
    assert all(np.array_equal(a, b) for a, b in zip(masks_a, masks_b, strict=True))
    assert not np.array_equal(image_a, image_c)


def test_hierarchy_children_lie_inside_their_parents_and_all_levels_occur():
    levels = set()
    for seed in range(30):
        s = make_scene(seed)
        for i, (mask, parent) in enumerate(zip(s.masks, s.parents, strict=True)):
            assert mask.dtype == bool and mask.sum() >= 64
            levels.add(s.levels[i])
            if parent >= 0:
                assert s.levels[parent] == s.levels[i] - 1
                assert not (mask & ~s.masks[parent]).any(), "a part leaks out of its parent"
                assert mask.sum() < s.masks[parent].sum()
    assert levels == {0, 1, 2}


def test_splits_are_disjoint():
    train, val, test = (set(SPLITS[k]) for k in ("train", "val", "test"))
    assert not (train & val) and not (train & test) and not (val & test)
    assert split_seeds("test", 3) == list(SPLITS["test"][:3])
    with pytest.raises(ValueError, match="unknown split"):
        split_seeds("dev")


def test_farthest_point_is_the_centre_of_a_square_and_border_counts_as_boundary():
    region = np.zeros((21, 21), bool)
    region[5:16, 5:16] = True
    assert farthest_point(region)[:2] == (10, 10)
    full = np.ones((9, 9), bool)
    assert farthest_point(full)[:2] == (4, 4)
    with pytest.raises(ValueError, match="empty"):
        farthest_point(np.zeros((4, 4), bool))


def test_next_click_is_positive_on_missed_area_and_negative_on_extra_area():
    gt = np.zeros((40, 40), bool)
    gt[5:35, 5:20] = True
    pred = np.zeros_like(gt)
    x, y, label = next_click(gt, pred)
    assert label == 1 and gt[y, x]
    pred = gt.copy()
    pred[5:35, 20:38] = True  # a large false positive
    x, y, label = next_click(gt, pred)
    assert label == 0 and not gt[y, x] and pred[y, x]
    assert next_click(gt, gt) is None


def test_noisy_box_noise_is_bounded_by_20_pixels():
    mask = np.zeros((256, 256), bool)
    mask[20:240, 30:250] = True
    rng = np.random.default_rng(0)
    boxes = np.stack([noisy_box(mask, rng) for _ in range(200)])
    exact = np.array([30, 20, 249, 239])
    assert np.abs(boxes - exact).max() <= 20.0 + 1e-4
    assert np.abs(boxes - exact).std() > 5  # 10% of a 220 px side, clipped


def test_sample_error_points_labels_and_no_error_case():
    gt = torch.zeros((3, 8, 8), dtype=torch.bool)
    gt[:, 2:6, 2:6] = True
    pred = gt.clone()
    pred[0] = False  # all false negative
    pred[1, 0, 0] = True  # one false positive pixel
    coords, labels = sample_error_points(gt, pred, torch.Generator().manual_seed(0))
    assert labels.tolist() == [1, 0, -1]
    assert coords[1].tolist() == [0.0, 0.0]
    x, y = coords[0].long().tolist()
    assert gt[0, y, x]
