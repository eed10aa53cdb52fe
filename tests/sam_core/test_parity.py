"""Our model and predictor against Meta's reference with the same random vit_b weights, on non-square images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

RTOL = 1e-4  # relative to the scale (max |reference|) of the compared quantity
MIN_PIXEL_AGREEMENT = 0.999


def assert_close_to_scale(ours, reference, name: str) -> None:
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    assert ours.shape == reference.shape, f"{name}: shape {ours.shape} != {reference.shape}"
    scale = max(np.abs(reference).max(), 1e-12)
    err = np.abs(ours - reference).max() / scale
    assert err <= RTOL, f"{name}: max error {err:.2e} of scale {scale:.3g}"


def assert_masks_agree(ours, reference) -> None:
    ours, reference = np.asarray(ours), np.asarray(reference)
    assert ours.shape == reference.shape and ours.dtype == bool
    agreement = (ours == reference).mean()
    assert agreement >= MIN_PIXEL_AGREEMENT, f"binary masks agree on only {agreement:.5f} of pixels"


def assert_predictions_agree(ours, reference) -> None:
    masks, iou, low_res = ours
    ref_masks, ref_iou, ref_low_res = reference
    assert_close_to_scale(iou, ref_iou, "iou_predictions")
    assert_close_to_scale(low_res, ref_low_res, "low_res_logits")
    assert_masks_agree(masks, ref_masks)


def test_image_embedding_matches_reference(wide_predictors):
    ref_pred, our_pred = wide_predictors
    assert our_pred.original_size == tuple(ref_pred.original_size)
    assert our_pred.input_size == tuple(ref_pred.input_size)
    assert_close_to_scale(our_pred.get_image_embedding(), ref_pred.get_image_embedding(), "image embedding")


def test_preprocessing_matches_reference_on_tall_image(reference_and_ours, tall_predictors, tall_image):
    """The tall image's pixels only go through resize + normalise here (its embedding is borrowed)."""
    from segment_anything.utils.transforms import ResizeLongestSide as ReferenceResize

    from sam_core import ResizeLongestSide

    reference, ours = reference_and_ours
    ref_resized = ReferenceResize(1024).apply_image(tall_image)
    resized = ResizeLongestSide(1024).apply_image(tall_image)
    np.testing.assert_array_equal(resized, ref_resized)
    x = torch.as_tensor(resized).permute(2, 0, 1)[None].float()
    assert torch.equal(ours.preprocess(x), reference.preprocess(x))
    assert tall_predictors[1].input_size == (1024, 683)


CASES = {
    "one point": dict(point_coords=[[250, 180]], point_labels=[1]),
    "positive and negative points": dict(
        point_coords=[[250, 180], [400, 300], [60, 420]], point_labels=[1, 0, 1]
    ),
    "box": dict(box=[80, 60, 330, 400]),
    "points and box": dict(point_coords=[[200, 200], [100, 90]], point_labels=[1, 0], box=[80, 60, 330, 400]),
}


@pytest.mark.parametrize("image", ["wide", "tall"])
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("multimask_output", [True, False])
def test_predict_matches_reference(request, image, case, multimask_output):
    ref_pred, our_pred = request.getfixturevalue(f"{image}_predictors")
    prompt = {k: np.array(v) for k, v in CASES[case].items()}
    reference = ref_pred.predict(**prompt, multimask_output=multimask_output)
    ours = our_pred.predict(**prompt, multimask_output=multimask_output)
    assert ours[0].shape[0] == (3 if multimask_output else 1)
    assert_predictions_agree(ours, reference)


@pytest.mark.parametrize("image", ["wide", "tall"])
def test_mask_input_fed_back_matches_reference(request, image):
    ref_pred, our_pred = request.getfixturevalue(f"{image}_predictors")
    first = dict(point_coords=np.array([[250.0, 180.0]]), point_labels=np.array([1]))
    _, ref_iou, ref_low_res = ref_pred.predict(**first)
    best = int(np.argmax(ref_iou))
    second = dict(point_coords=np.array([[250.0, 180.0], [300.0, 330.0]]), point_labels=np.array([1, 0]))
    mask_input = ref_low_res[best][None]
    reference = ref_pred.predict(**second, mask_input=mask_input, multimask_output=False)
    ours = our_pred.predict(**second, mask_input=mask_input, multimask_output=False)
    assert_predictions_agree(ours, reference)


def test_logits_at_image_resolution_match_reference(tall_predictors):
    ref_pred, our_pred = tall_predictors
    prompt = dict(point_coords=np.array([[150.0, 300.0]]), point_labels=np.array([1]))
    ref_logits = ref_pred.predict(**prompt, return_logits=True)[0]
    logits = our_pred.predict(**prompt, return_logits=True)[0]
    assert logits.shape == (3, 600, 400)
    assert_close_to_scale(logits, ref_logits, "image-resolution logits")


def test_best_only_returns_the_highest_iou_mask(wide_predictors):
    ref_pred, our_pred = wide_predictors
    prompt = dict(point_coords=np.array([[400.0, 100.0]]), point_labels=np.array([1]))
    ref_masks, ref_iou, ref_low_res = ref_pred.predict(**prompt)
    best = int(np.argmax(ref_iou))
    masks, iou, low_res = our_pred.predict(**prompt, best_only=True)
    assert masks.shape == (1, 480, 640) and iou.shape == (1,) and low_res.shape == (1, 256, 256)
    assert_predictions_agree(
        (masks, iou, low_res),
        (ref_masks[best : best + 1], ref_iou[best : best + 1], ref_low_res[best : best + 1]),
    )


@pytest.mark.parametrize("multimask_output", [True, False])
def test_batched_prompts_match_one_reference_call_per_prompt(tall_predictors, multimask_output):
    ref_pred, our_pred = tall_predictors
    rng = np.random.default_rng(5)
    coords = rng.uniform([0, 0], [400, 600], size=(5, 2, 2))
    labels = np.array([[1, 0], [1, 1], [1, -1], [0, 1], [1, 0]])
    boxes = np.array(
        [[10, 20, 200, 300], [50, 50, 390, 590], [0, 0, 400, 600], [100, 200, 150, 260], [5, 5, 60, 90]]
    )
    masks, iou, low_res = our_pred.predict_batch(coords, labels, boxes, multimask_output=multimask_output)
    lr_only = our_pred.predict_batch(coords, labels, boxes, multimask_output=multimask_output, upsample=False)
    assert lr_only[0] is None
    for i in range(len(coords)):
        reference = ref_pred.predict(coords[i], labels[i], boxes[i], multimask_output=multimask_output)
        assert_predictions_agree((masks[i].numpy(), iou[i].numpy(), low_res[i].numpy()), reference)
        assert_close_to_scale(lr_only[2][i], reference[2], "low-res-only logits")
        assert_close_to_scale(lr_only[1][i], reference[1], "low-res-only iou")


def test_predict_torch_matches_reference_batched_call(wide_predictors):
    ref_pred, our_pred = wide_predictors
    coords = ref_pred.transform.apply_coords_torch(
        torch.tensor([[[100.0, 100.0]], [[500.0, 300.0]]]), (480, 640)
    )
    labels = torch.ones(2, 1, dtype=torch.int)
    reference = [t.numpy() for t in ref_pred.predict_torch(coords, labels, multimask_output=True)]
    ours = [t.numpy() for t in our_pred.predict_torch(coords, labels, multimask_output=True)]
    for i in range(2):
        assert_predictions_agree([o[i] for o in ours], [r[i] for r in reference])


def test_set_embedding_reuses_a_stored_embedding(reference_and_ours, wide_predictors):
    from sam_core import SamPredictor

    ref_pred, our_pred = wide_predictors
    stored = ref_pred.get_image_embedding()[0].numpy().astype(np.float16).astype(np.float32)  # C x h x w
    fresh = SamPredictor(reference_and_ours[1])
    fresh.set_embedding(stored, (480, 640))
    assert fresh.input_size == tuple(ref_pred.input_size)
    prompt = dict(point_coords=np.array([[320.0, 240.0]]), point_labels=np.array([1]))
    ref_pred_features = ref_pred.features
    ref_pred.features = torch.from_numpy(stored)[None]
    try:
        reference = ref_pred.predict(**prompt)
    finally:
        ref_pred.features = ref_pred_features
    assert_predictions_agree(fresh.predict(**prompt), reference)
