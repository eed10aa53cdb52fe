"""The tiny config end to end, training gradients, and bad input to the predictor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sam_core import SamPredictor
from sam_core.build import CONFIGS
from sam_core.predictor_inputs import to_rgb_uint8


@pytest.fixture(scope="module")
def tiny_predictor(tiny_model):
    predictor = SamPredictor(tiny_model)
    rng = np.random.default_rng(0)
    predictor.set_image(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8))
    return predictor


def test_tiny_config_dims_and_predict(tiny_predictor):
    model = tiny_predictor.model
    assert model.image_encoder.img_size == 256
    assert tuple(tiny_predictor.get_image_embedding().shape) == (1, 256, 32, 32)
    masks, iou, low_res = tiny_predictor.predict(np.array([[100, 120]]), np.array([1]))
    assert masks.shape == (3, 256, 256) and masks.dtype == bool
    assert iou.shape == (3,) and low_res.shape == (3, 128, 128)
    assert CONFIGS["tiny"].decoder_mlp_dim == 1024 and CONFIGS["tiny"].encoder_global_attn_indexes == (2, 5)


def test_predict_under_bf16_autocast_returns_float32_arrays(tiny_predictor):
    # What a GPU caller in bf16 does; numpy has no bfloat16, so the predictor hands back float32.
    point, label = np.array([[100, 120]]), np.array([1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        masks, iou, low_res = tiny_predictor.predict(point, label)
        logits = tiny_predictor.predict(point, label, return_logits=True)[0]
    assert masks.dtype == bool and iou.dtype == low_res.dtype == logits.dtype == np.float32
    reference = tiny_predictor.predict(point, label)[2]
    assert np.abs(low_res - reference).max() < 0.1 * np.abs(reference).max()


def test_gradient_flows_through_sam_forward(tiny_model):
    model = tiny_model
    model.zero_grad()
    batch = [
        {
            "image": torch.rand(3, 256, 192) * 255,
            "original_size": (200, 150),
            "point_coords": torch.tensor([[[60.0, 80.0]]]),
            "point_labels": torch.tensor([[1]]),
            "mask_inputs": torch.randn(1, 1, 128, 128),
        }
    ]
    out = model(batch, multimask_output=True)
    assert out[0]["masks"].shape == (1, 3, 200, 150)
    loss = out[0]["low_res_logits"].square().mean() + out[0]["iou_predictions"].sum()
    loss.backward()
    for name in (
        "image_encoder.blocks.0.attn.rel_pos_h",
        "prompt_encoder.mask_downscaling.0.weight",
        "mask_decoder.output_upscaling.0.weight",
        "mask_decoder.iou_prediction_head.layers.0.weight",
    ):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    model.zero_grad()


def test_grayscale_rgba_float_and_bgr_images_convert():
    rgb = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    gray = rgb[:, :, 0]
    np.testing.assert_array_equal(to_rgb_uint8(gray), np.repeat(gray[:, :, None], 3, 2))
    np.testing.assert_array_equal(to_rgb_uint8(gray[:, :, None]), np.repeat(gray[:, :, None], 3, 2))
    rgba = np.concatenate([rgb, np.full((5, 7, 1), 9, np.uint8)], axis=2)
    np.testing.assert_array_equal(to_rgb_uint8(rgba), rgb)
    np.testing.assert_array_equal(to_rgb_uint8(rgb.astype(np.float32) / 255), rgb)
    np.testing.assert_array_equal(to_rgb_uint8(rgb.astype(np.int64)), rgb)
    np.testing.assert_array_equal(to_rgb_uint8(rgb[:, :, ::-1], image_format="BGR"), rgb)


def test_bgr_set_image_equals_rgb(tiny_model, tiny_predictor):
    rgb = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    other = SamPredictor(tiny_model)
    other.set_image(np.ascontiguousarray(rgb[:, :, ::-1]), image_format="BGR")
    assert torch.allclose(other.get_image_embedding(), tiny_predictor.get_image_embedding())


@pytest.mark.parametrize(
    ("image", "error", "match"),
    [
        (np.zeros((0, 10, 3), np.uint8), ValueError, "empty"),
        (np.zeros((10, 0), np.uint8), ValueError, "empty"),
        (np.full((4, 4, 3), 2.0, np.float32), ValueError, r"float images must lie in \[0, 1\]"),
        (np.full((4, 4, 3), np.nan, np.float32), ValueError, "NaN"),
        (np.full((4, 4, 3), 300, np.int32), ValueError, "expected 0..255"),
        (np.zeros((4, 4, 2), np.uint8), ValueError, "1, 3 or 4 channels"),
        (np.zeros((2, 4, 4, 3), np.uint8), ValueError, "H x W or H x W x C"),
        (np.zeros((4, 4, 3), bool), TypeError, "dtype bool"),
        ([[1, 2], [3, 4]], TypeError, "numpy array"),
    ],
)
def test_bad_images_are_refused(tiny_predictor, image, error, match):
    with pytest.raises(error, match=match):
        tiny_predictor.set_image(image)


def test_unknown_image_format_is_refused(tiny_predictor):
    with pytest.raises(ValueError, match="image_format must be 'RGB' or 'BGR'"):
        tiny_predictor.set_image(np.zeros((4, 4, 3), np.uint8), image_format="HSV")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(point_coords=[[300, 10]], point_labels=[1]), r"point_coords outside the 256 x 256"),
        (dict(point_coords=[[-1, 10]], point_labels=[1]), "outside"),
        (dict(point_coords=[[10, 10], [20, 20]], point_labels=[1]), "one label per point"),
        (dict(point_coords=[[10, 10]]), "without point_labels"),
        (dict(point_labels=[1]), "without point_coords"),
        (dict(point_coords=[10, 10], point_labels=[1]), "N x 2"),
        (dict(point_coords=[[10, 10]], point_labels=[7]), "got \\[7\\]"),
        (dict(point_coords=[[np.nan, 10]], point_labels=[1]), "NaN"),
        (dict(box=[10, 10, 300, 50]), "box outside"),
        (dict(box=[50, 10, 10, 50]), "x0 <= x1"),
        (dict(box=[1, 2, 3]), "length-4"),
        (
            dict(point_coords=[[10, 10]], point_labels=[1], mask_input=np.zeros((1, 256, 256))),
            "1 x 128 x 128",
        ),
    ],
)
def test_bad_prompts_are_refused(tiny_predictor, kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_predictor.predict(**{k: np.array(v) if isinstance(v, list) else v for k, v in kwargs.items()})


def test_bad_batches_and_embeddings_are_refused(tiny_predictor):
    with pytest.raises(ValueError, match="disagree on the number of prompts"):
        tiny_predictor.predict_batch(np.zeros((3, 1, 2)), np.ones((3, 1)), boxes=np.array([[0, 0, 5, 5]] * 2))
    with pytest.raises(ValueError, match=r"embedding must be \(256, 32, 32\)"):
        tiny_predictor.set_embedding(np.zeros((256, 64, 64), np.float32), (256, 256))
    with pytest.raises(ValueError, match="original_size"):
        tiny_predictor.set_embedding(np.zeros((256, 32, 32), np.float32), (0, 256))
    empty = SamPredictor(tiny_predictor.model)
    with pytest.raises(RuntimeError, match="no image is set"):
        empty.predict(np.array([[1, 1]]), np.array([1]))


def test_points_on_the_far_edge_and_padding_labels_are_accepted(tiny_predictor):
    masks, _, _ = tiny_predictor.predict(
        np.array([[256.0, 256.0], [900.0, -5.0]]), np.array([1, -1]), multimask_output=False
    )
    assert masks.shape == (1, 256, 256)
