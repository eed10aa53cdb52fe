"""Our AutomaticMaskGenerator against Meta's SamAutomaticMaskGenerator: same model, same parameters.

Passes when >= 98% of the reference's masks are matched by one of ours at mask IoU >= 0.95 and >= 98%
of ours by one of the reference's, on several images, crops on and off, cleanup on and off.
"""

import numpy as np
import pytest
from amg_helpers import iou_matrix, match_rates
from segment_anything import SamAutomaticMaskGenerator

from sam_core.automatic_mask_generator import AutomaticMaskGenerator

FIELDS = ("segmentation", "area", "bbox", "predicted_iou", "point_coords", "stability_score", "crop_box")


def _assert_parity(ref_records, our_records, output_mode, min_masks=1):
    assert len(ref_records) >= min_masks, "the case must produce masks to compare"
    ref_rate, our_rate = match_rates(ref_records, our_records, output_mode)
    assert ref_rate >= 0.98 and our_rate >= 0.98, (ref_rate, our_rate, len(ref_records), len(our_records))
    # Each of our records has its twin in the reference's: the same prompt point and predicted IoU (so the
    # same one of the 3 outputs), the same crop, a mask at IoU >= 0.95 and the same stability score. Pixels
    # whose logits sit on the threshold may flip between two float implementations, so the twin is found by
    # its prompt, not by an exact area or box.
    iou = iou_matrix(ref_records, our_records, output_mode)
    for j, ours in enumerate(our_records):
        assert set(ours) == set(FIELDS)
        twins = [
            i
            for i, r in enumerate(ref_records)
            if np.allclose(r["point_coords"], ours["point_coords"])
            and abs(r["predicted_iou"] - ours["predicted_iou"]) < 1e-4
            and r["crop_box"] == ours["crop_box"]
        ]
        assert twins, f"no reference record from point {ours['point_coords']} in crop {ours['crop_box']}"
        best = max(twins, key=lambda i: iou[i, j])
        assert iou[best, j] >= 0.95, (ours["point_coords"], iou[best, j])
        assert abs(ref_records[best]["stability_score"] - ours["stability_score"]) < 1e-2


CASES = {
    # name: (generator arguments, output mode, number of images)
    "defaults": ({}, "binary_mask", 3),
    "crops": (
        {
            "crop_n_layers": 1,
            "crop_n_points_downscale_factor": 2,
            "pred_iou_thresh": 0.8,
            "stability_score_thresh": 0.85,
        },
        "uncompressed_rle",
        2,
    ),
    "cleanup": ({"min_mask_region_area": 100, "pred_iou_thresh": 0.8}, "coco_rle", 2),
    "crops_and_cleanup": (
        {
            "crop_n_layers": 1,
            "crop_n_points_downscale_factor": 2,
            "min_mask_region_area": 25,
            "box_nms_thresh": 0.5,
        },
        "coco_rle",
        1,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_blob_model_masks_match_reference(case, blob_model, images):
    kwargs, output_mode, n_images = CASES[case]
    kwargs = {"points_per_side": 10, "output_mode": output_mode, **kwargs}
    for image in images[:n_images]:
        ref = SamAutomaticMaskGenerator(blob_model, **kwargs).generate(image)
        ours = AutomaticMaskGenerator(blob_model, **kwargs).generate(image)
        _assert_parity(ref, ours, output_mode, min_masks=3)
        if kwargs.get("crop_n_layers"):  # the zoomed crops contribute masks, not only the whole image
            assert any(r["crop_box"] != [0, 0, image.shape[1], image.shape[0]] for r in ours)
    if kwargs.get("min_mask_region_area"):  # cleanup changed something on the last image
        plain = AutomaticMaskGenerator(blob_model, **{**kwargs, "min_mask_region_area": 0}).generate(image)
        assert sorted(r["area"] for r in plain) != sorted(r["area"] for r in ours)


# Random SAM weights give near-zero logits (|x| < 0.2) and predicted IoUs near 0: only a small stability
# offset and low thresholds let masks through, and every mask spans the image, so NMS must be off (1.0).
RANDOM_WEIGHT_ARGS = {
    "points_per_side": 6,
    "pred_iou_thresh": 0.02,
    "stability_score_thresh": 0.4,
    "stability_score_offset": 0.02,
    "box_nms_thresh": 1.0,
}


@pytest.mark.parametrize("crop_n_layers", [0, 1])
def test_random_tiny_weights_match_reference(crop_n_layers, tiny_models, images):
    ref_model, our_model = tiny_models
    kwargs = {
        **RANDOM_WEIGHT_ARGS,
        "crop_n_layers": crop_n_layers,
        "crop_nms_thresh": 1.0,
        "crop_n_points_downscale_factor": 2,  # 3 x 3 points per zoomed crop keeps the test short
    }
    ref = SamAutomaticMaskGenerator(ref_model, **kwargs).generate(images[0])
    ours = AutomaticMaskGenerator(our_model, **kwargs).generate(images[0])
    _assert_parity(ref, ours, "binary_mask", min_masks=5)


def test_random_tiny_weights_at_default_thresholds_give_no_masks(tiny_models, images):
    ref_model, our_model = tiny_models
    ref = SamAutomaticMaskGenerator(ref_model, points_per_side=6).generate(images[1])
    ours = AutomaticMaskGenerator(our_model, points_per_side=6).generate(images[1])
    assert ref == [] and ours == []


def test_generate_from_embedding_matches_generate(tiny_models, images):
    _, our_model = tiny_models
    image = images[2]
    generator = AutomaticMaskGenerator(our_model, **RANDOM_WEIGHT_ARGS, output_mode="coco_rle")
    from_image = generator.generate(image)
    generator.predictor.set_image(image)
    embedding = generator.predictor.get_image_embedding().numpy()[0]  # C x h x w, as the store holds it
    from_embedding = generator.generate_from_embedding(embedding, image.shape[:2])
    assert len(from_image) >= 5
    assert from_embedding == from_image
