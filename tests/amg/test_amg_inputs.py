"""Bad input gets a clear error naming what is wrong; an image whose masks are all filtered gives []."""

import numpy as np
import pytest

from sam_core import crops
from sam_core.automatic_mask_generator import AutomaticMaskGenerator


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"points_per_side": 0}, "points_per_side"),
        ({"points_per_side": None, "point_grids": [np.zeros((0, 2))]}, r"point_grids\[0\]"),
        ({"points_per_side": None, "point_grids": [np.full((4, 2), 1.5)]}, r"normalised to \[0, 1\]"),
        (
            {"points_per_side": None, "point_grids": [np.full((4, 2), 0.5)], "crop_n_layers": 1},
            "one per layer",
        ),
        ({"points_per_side": None}, "exactly one of points_per_side and point_grids"),
        ({"point_grids": [np.full((4, 2), 0.5)]}, "exactly one of points_per_side and point_grids"),
        (
            {"points_per_side": 1, "crop_n_layers": 1, "crop_n_points_downscale_factor": 2},
            "crop layer 1 gets no points",
        ),
        ({"points_per_batch": 0}, "points_per_batch"),
        ({"pred_iou_thresh": 1.5}, "pred_iou_thresh"),
        ({"pred_iou_thresh": -0.1}, "pred_iou_thresh"),
        ({"stability_score_thresh": 2.0}, "stability_score_thresh"),
        ({"stability_score_offset": 0.0}, "stability_score_offset"),
        ({"stability_score_offset": float("nan")}, "stability_score_offset"),
        ({"box_nms_thresh": -1}, "box_nms_thresh"),
        ({"crop_nms_thresh": 1.01}, "crop_nms_thresh"),
        ({"crop_overlap_ratio": 1.0}, "crop_overlap_ratio"),
        ({"crop_n_layers": -1}, "crop_n_layers"),
        ({"crop_n_points_downscale_factor": 0}, "crop_n_points_downscale_factor"),
        ({"min_mask_region_area": -5}, "min_mask_region_area"),
        ({"output_mode": "png"}, "output_mode"),
        ({"pred_iou_thresh": "high"}, "pred_iou_thresh"),
    ],
)
def test_bad_arguments_are_refused_by_name(kwargs, message, blob_model):
    with pytest.raises(ValueError, match=message):
        AutomaticMaskGenerator(blob_model, **kwargs)


def test_bad_images_are_refused(blob_model):
    generator = AutomaticMaskGenerator(blob_model, points_per_side=4)
    with pytest.raises(ValueError, match="H x W x 3"):
        generator.generate(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="H x W x 3"):
        generator.generate(np.zeros((10, 10, 4), np.uint8))
    with pytest.raises(TypeError, match="uint8"):
        generator.generate(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(ValueError, match="image size must be positive"):
        generator.generate(np.zeros((0, 10, 3), np.uint8))


def test_image_too_small_for_the_crop_layers(blob_model):
    generator = AutomaticMaskGenerator(blob_model, points_per_side=4, crop_n_layers=3)
    with pytest.raises(ValueError, match="too small for crop_n_layers=3"):
        generator.generate(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="too small"):
        crops.crop_boxes((4, 4), 3, 512 / 1500)


def test_generate_from_embedding_refuses_crops_and_bad_sizes(blob_model):
    embedding = np.zeros((3, 128, 128), np.float32)
    with pytest.raises(ValueError, match="crop_n_layers=1"):
        AutomaticMaskGenerator(blob_model, points_per_side=4, crop_n_layers=1).generate_from_embedding(
            embedding, (64, 64)
        )
    with pytest.raises(ValueError, match="original_size"):
        AutomaticMaskGenerator(blob_model, points_per_side=4).generate_from_embedding(embedding, (0, 64))


@pytest.mark.parametrize("output_mode", ["binary_mask", "uncompressed_rle", "coco_rle"])
def test_all_masks_filtered_gives_empty_list(output_mode, blob_model, images):
    strict = {
        "pred_iou_thresh": 1.0,
        "min_mask_region_area": 10,
        "crop_n_layers": 1,
        "output_mode": output_mode,
    }
    generator = AutomaticMaskGenerator(blob_model, points_per_side=4, **strict)
    assert generator.generate(images[0]) == []
    # The same generator is not left in a bad state: relaxed, it finds masks.
    generator.pred_iou_thresh = 0.5
    assert len(generator.generate(images[0])) > 0


def test_an_empty_result_says_which_filter_removed_everything_and_the_best_value(blob_model, images):
    generator = AutomaticMaskGenerator(blob_model, points_per_side=4, pred_iou_thresh=1.0)
    assert generator.generate(images[0]) == []
    funnel = generator.funnel
    assert funnel.candidates == 48 and funnel.passed_iou == 0 and funnel.kept == 0
    why = funnel.why_empty(generator.pred_iou_thresh, generator.stability_score_thresh)
    assert f"highest predicted IoU of 48 candidates was {funnel.max_predicted_iou:.3f}" in why
    assert "pred_iou_thresh 1.0" in why

    from sam_core.automatic_mask_generator import Funnel

    unstable = Funnel(candidates=48, max_predicted_iou=0.95, passed_iou=7, max_stability_score=0.91)
    why = unstable.why_empty(0.88, 0.95)
    assert "7 of 48 candidates passed pred_iou_thresh 0.88" in why
    assert "highest stability score was 0.910, below stability_score_thresh 0.95" in why

    generator.pred_iou_thresh = 0.0
    kept = generator.generate(images[0])
    assert generator.funnel.kept == len(kept) > 0  # the funnel is per call, not left over from the last one


def test_generate_reports_the_grid_points_decoded_over_every_crop(blob_model, images):
    calls = []
    generator = AutomaticMaskGenerator(blob_model, points_per_side=4, points_per_batch=10, crop_n_layers=1)
    generator.generate(images[0], on_progress=lambda done, total: calls.append((done, total)))
    # 16 points on the whole image and 16 on each of its 4 crops, decoded 10 at a time per crop
    assert calls[-1] == (80, 80) and {total for _, total in calls} == {80}
    assert [done for done, _ in calls] == sorted({done for done, _ in calls}) and len(calls) == 2 + 4 * 2
