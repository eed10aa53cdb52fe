"""Instances of a phrase that names several: clicks inside the phrase's mask, one mask per instance after
non-maximum suppression; and the matching that scores them."""

from __future__ import annotations

import numpy as np
import pytest

from sam_core import SamPredictor
from sam_core.mask_utils import binary_iou
from sam_core.synthetic import make_scene, split_seeds
from sam_core.text_eval import connected_pieces, matched_instances
from sam_core.text_instances import NMS_IOU, find_instances, grid_clicks_inside, segment_phrase


def _disk(cx, cy, r, size=64):
    yy, xx = np.mgrid[0:size, 0:size]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def test_grid_clicks_fall_inside_the_region_or_on_its_middle_when_it_is_small():
    region = np.zeros((64, 64), bool)
    region[:, :32] = True
    clicks = grid_clicks_inside(region, points_per_side=8)
    assert len(clicks) == 32 and (clicks[:, 0] < 32).all()
    speck = _disk(40, 20, 1.5)
    ((x, y),) = grid_clicks_inside(speck, points_per_side=8)
    assert speck[int(y), int(x)]
    assert grid_clicks_inside(np.zeros((64, 64), bool)).shape == (0, 2)


def test_touching_instances_are_one_piece_and_matching_is_one_to_one():
    a, b, c = _disk(11, 32, 11), _disk(32, 32, 11), _disk(53, 32, 11)  # a row of three that touch
    pieces = connected_pieces(a | b | c)
    assert len(pieces) == 1
    assert matched_instances(pieces, [a, b, c]) == 0  # the one piece matches none of them at IoU 0.5
    assert matched_instances([a, b], [a, b]) == 2
    assert matched_instances([a, a], [a, b]) == 1  # a duplicate counts once


def test_find_instances_keeps_one_mask_per_instance_best_first(text_model, embedded_text_encoder, scene):
    predictor = SamPredictor(text_model, text_encoder=embedded_text_encoder)
    predictor.set_image(scene.image)
    union = np.any(np.stack(scene.masks[:2]), axis=0)
    masks, scores = find_instances(predictor, "every plain object", union=union, points_per_side=8)
    assert scores == sorted(scores, reverse=True)
    for i in range(len(masks)):
        assert masks[i].shape == (256, 256) and masks[i].sum() >= 16
        for j in range(i):
            assert binary_iou(masks[i], masks[j]) <= NMS_IOU


@pytest.fixture(scope="module")
def trained_predictor(trained_text_model):
    """The trained text model on the scene it was trained on (split_seeds("train", 1)[0])."""
    model, encoder = trained_text_model
    predictor = SamPredictor(model, text_encoder=encoder)
    predictor.set_image(make_scene(split_seeds("train", 1)[0]).image)
    return predictor


def test_segment_phrase_looks_for_instances_when_asked_whatever_the_first_word(trained_predictor):
    one = segment_phrase(trained_predictor, "the rectangle")
    assert one.present and not one.instances and len(one.masks) == 1 and one.why_empty is None
    union = trained_predictor.predict(text="the rectangle")[0][0]
    assert np.array_equal(one.masks[0], union)
    each = segment_phrase(trained_predictor, "the rectangle", always_instances=True, points_per_side=8)
    found, scores = find_instances(trained_predictor, "the rectangle", union=union, points_per_side=8)
    assert each.instances and len(each.masks) == len(found) > 1 and each.scores == scores
    assert all(np.array_equal(a, b) for a, b in zip(each.masks, found, strict=True))


def test_segment_phrase_drops_masks_rated_below_the_cut_and_says_so_when_none_is_left(trained_predictor):
    # The scene holds several rectangles; how many instances a model trained for 15 steps finds differs between
    # CPUs (2 to 4 seen), so the cut is placed by the count found: it drops the lowest rated one.
    phrase = "every rectangle"
    every = segment_phrase(trained_predictor, phrase, always_instances=True)
    assert every.instances and len(every.scores) >= 2
    assert every.scores == sorted(every.scores, reverse=True)
    cut = every.scores[-2]  # best first: the cut keeps all but the last
    kept = segment_phrase(trained_predictor, phrase, always_instances=True, min_predicted_iou=cut)
    assert kept.scores == every.scores[:-1] and len(kept.masks) == len(every.masks) - 1
    none = segment_phrase(trained_predictor, phrase, always_instances=True, min_predicted_iou=0.99)
    assert none.masks == [] and none.present
    assert none.why_empty == (
        f"no mask: {phrase!r} is judged present (presence {every.presence:.3f}), but none of its "
        f"{len(every.masks)} instances is rated at least 0.99 (predicted IoU {every.scores[0]:.3f} at best)"
    )
    single = segment_phrase(trained_predictor, "the rectangle", min_predicted_iou=0.99)
    assert single.masks == [] and "but its mask is not rated at least 0.99" in single.why_empty
