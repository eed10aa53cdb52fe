"""The mask utilities against pycocotools, torchvision and the reference's conventions."""

import numpy as np
import pytest
import torch
from pycocotools import mask as coco_mask
from torchvision.ops import nms as tv_nms

from sam_core import mask_utils


def _random_masks(rng, n, h, w, density=0.5):
    return rng.random((n, h, w)) < density


def _edge_case_masks(h, w):
    empty = np.zeros((h, w), bool)
    full = np.ones((h, w), bool)
    first = empty.copy()
    first[0, 0] = True
    last = empty.copy()
    last[-1, -1] = True
    middle = empty.copy()
    middle[h // 2, w // 3] = True
    return np.stack([empty, full, first, last, middle])


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (6, 1), (17, 23), (64, 48)])
def test_rle_matches_pycocotools_on_random_and_edge_masks(shape):
    rng = np.random.default_rng(sum(shape))
    h, w = shape
    masks = np.concatenate(
        [_edge_case_masks(h, w), _random_masks(rng, 6, h, w), _random_masks(rng, 3, h, w, 0.95)]
    )
    ours = mask_utils.masks_to_rle(masks)
    for mask, rle in zip(masks, ours, strict=True):
        theirs = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
        compressed = mask_utils.coco_encode_rle(rle)
        assert compressed["counts"] == theirs["counts"].decode("ascii")
        assert compressed["size"] == [h, w]
        # pycocotools reads what we write, in both forms.
        assert np.array_equal(coco_mask.decode({"size": [h, w], "counts": compressed["counts"]}), mask)
        assert np.array_equal(coco_mask.decode(coco_mask.frPyObjects(rle, h, w)), mask)
        # We read what pycocotools writes, and areas agree.
        assert np.array_equal(mask_utils.rle_to_mask(theirs), mask)
        assert np.array_equal(mask_utils.rle_to_mask(rle), mask)
        assert mask_utils.area_from_rle(rle) == mask_utils.area_from_rle(compressed) == int(mask.sum())
        assert mask_utils.area_from_rle(compressed) == int(coco_mask.area(theirs))


def test_rle_accepts_torch_and_long_runs():
    mask = torch.zeros(1, 300, 400, dtype=torch.bool)
    mask[0, 10:290, 5:395] = True  # runs far above 2**10, where the string codec needs several groups
    rle = mask_utils.masks_to_rle(mask)[0]
    theirs = coco_mask.encode(np.asfortranarray(mask[0].numpy().astype(np.uint8)))
    assert mask_utils.coco_encode_rle(rle)["counts"] == theirs["counts"].decode()
    assert np.array_equal(mask_utils.decode_coco_counts(theirs["counts"]), rle["counts"])


def test_rle_to_mask_rejects_counts_of_the_wrong_size():
    with pytest.raises(ValueError, match="4x5"):
        mask_utils.rle_to_mask({"size": [4, 5], "counts": [3, 4]})


def test_masks_to_boxes_inclusive_corners_and_empty():
    masks = torch.zeros(3, 10, 12, dtype=torch.bool)
    masks[1, 2:5, 3:9] = True
    masks[2, 9, 11] = True
    boxes = mask_utils.masks_to_boxes(masks)
    assert boxes.tolist() == [[0, 0, 0, 0], [3, 2, 8, 4], [11, 9, 11, 9]]
    assert mask_utils.masks_to_boxes(masks.reshape(3, 1, 10, 12)).shape == (3, 1, 4)
    assert mask_utils.masks_to_boxes(torch.zeros(0, 5, 5, dtype=torch.bool)).shape == (0, 4)


def test_masks_to_boxes_matches_reference_on_random_masks():
    from segment_anything.utils.amg import batched_mask_to_box

    rng = np.random.default_rng(1)
    masks = torch.from_numpy(rng.random((20, 33, 41)) < 0.002)
    assert torch.equal(mask_utils.masks_to_boxes(masks), batched_mask_to_box(masks))


def test_stability_score_is_count_ratio():
    logits = torch.tensor([[[3.0, 0.5], [-0.5, -3.0]], [[-5.0, -5.0], [-5.0, -5.0]]])
    score = mask_utils.stability_score(logits, 0.0, 1.0)
    assert score[0].item() == pytest.approx(1 / 3)
    assert torch.isnan(score[1])  # empty at both thresholds: 0/0, filtered by any threshold


@pytest.mark.parametrize("seed", range(4))
def test_box_nms_matches_torchvision(seed):
    rng = np.random.default_rng(seed)
    xy = rng.integers(0, 50, (200, 2))
    wh = rng.integers(0, 30, (200, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    scores = rng.integers(0, 5, 200).astype(np.float32)  # many ties: order must follow the input
    for thresh in (0.0, 0.3, 0.7, 1.0):
        ours = mask_utils.box_nms(boxes, scores, thresh)
        theirs = tv_nms(torch.from_numpy(boxes), torch.from_numpy(scores), thresh).numpy()
        assert np.array_equal(ours, theirs), thresh
    assert mask_utils.box_nms(np.zeros((0, 4)), np.zeros(0), 0.5).shape == (0,)


def test_remove_small_regions_fills_holes_and_drops_islands():
    mask = np.zeros((30, 30), bool)
    mask[5:25, 5:25] = True
    mask[10:12, 10:12] = False  # 4-pixel hole
    mask[1, 28] = True  # 1-pixel island
    filled, changed = mask_utils.remove_small_regions(mask, 10, "holes")
    assert changed and filled[10:12, 10:12].all() and filled[1, 28]
    cleaned, changed = mask_utils.remove_small_regions(filled, 10, "islands")
    assert changed and not cleaned[1, 28] and cleaned[5:25, 5:25].all()
    same, changed = mask_utils.remove_small_regions(cleaned, 10, "islands")
    assert not changed and same is cleaned
    tiny = np.zeros((9, 9), bool)
    tiny[1, 1] = True
    tiny[5:7, 5:7] = True
    kept, _ = mask_utils.remove_small_regions(tiny, 100, "islands")  # all small: the largest stays
    assert kept.sum() == 4 and kept[5:7, 5:7].all()
    with pytest.raises(ValueError, match="mode"):
        mask_utils.remove_small_regions(mask, 10, "bumps")


def test_binary_iou_of_two_empty_masks_is_one_and_of_empty_against_any_mask_zero():
    empty, dot = np.zeros((4, 5), bool), np.zeros((4, 5), bool)
    dot[1, 2] = True
    half = np.zeros((4, 5), bool)
    half[:2] = True
    assert mask_utils.binary_iou(empty, empty) == 1.0
    assert mask_utils.binary_iou(empty, dot) == 0.0 and mask_utils.binary_iou(dot, empty) == 0.0
    assert mask_utils.binary_iou(dot, half) == 0.1
