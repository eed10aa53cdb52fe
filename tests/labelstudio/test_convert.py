"""Brush RLE and coordinate conversions: exact round trips, parity with the SDK, clear errors."""

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle, encode_rle, mask2rle

from tasks.labelstudio.convert import (
    BrushRLEError,
    box_to_rect_percent,
    brush_rle_to_coco_rle,
    brush_rle_to_mask,
    coco_rle_to_brush_rle,
    coco_rle_to_mask,
    decode_brush_rle,
    mask_to_brush_rle,
    mask_to_coco_rle,
    percent_to_pixels,
    pixels_to_percent,
    rect_percent_to_box,
)


def _masks():
    rng = np.random.default_rng(1)
    yield np.zeros((1, 1), bool)
    yield np.ones((3, 5), bool)
    yield rng.random((37, 53)) < 0.5  # many single-pixel runs
    big = np.zeros((300, 400), bool)
    big[20:250, 30:390] = True  # runs longer than 2**16 channel values
    yield big
    yield np.zeros((200, 400), bool)  # one run of 320000 values: several 2**16 chunks


@pytest.mark.parametrize("mask", list(_masks()), ids=lambda m: f"{m.shape}-{int(m.sum())}")
def test_encoding_is_bit_identical_to_the_sdk_and_round_trips(mask):
    ours = mask_to_brush_rle(mask)
    assert ours == list(mask2rle(mask.astype(np.uint8) * 255))
    assert np.array_equal(brush_rle_to_mask(ours, *mask.shape), mask)
    assert np.array_equal(decode_brush_rle(ours), decode_rle(ours))


def test_browser_style_rle_with_colour_and_literal_runs_decodes_from_alpha():
    # A browser canvas paints RGB colour too; single values become literal runs, which our encoder never writes.
    mask = np.zeros((20, 30), bool)
    mask[5:12, 3:25] = True
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[mask] = [255, 0, 128, 255]
    rle = encode_rle(rgba.ravel())
    assert np.array_equal(brush_rle_to_mask(rle, 20, 30), mask)


def test_antialiased_alpha_is_thresholded_at_half():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 3] = [[127, 128], [0, 255]]
    mask = brush_rle_to_mask(encode_rle(rgba.ravel()), 2, 2)
    assert mask.tolist() == [[False, True], [False, True]]


def test_coco_round_trip_is_pixel_equal():
    mask = np.zeros((40, 70), bool)
    mask[3:30, 10:60] = True
    mask[10:15, 20:25] = False
    coco = brush_rle_to_coco_rle(mask_to_brush_rle(mask), 40, 70)
    assert coco["size"] == [40, 70]
    assert np.array_equal(coco_rle_to_mask(coco["counts"], 40, 70), mask)
    assert np.array_equal(brush_rle_to_mask(coco_rle_to_brush_rle(coco["counts"], 40, 70), 40, 70), mask)
    assert coco == mask_to_coco_rle(mask)


def test_truncated_rle_is_refused():
    rle = mask_to_brush_rle(np.ones((10, 10), bool))
    with pytest.raises(BrushRLEError, match="truncated"):
        decode_brush_rle(rle[:7])


def test_wrong_size_is_refused_with_both_sizes():
    rle = mask_to_brush_rle(np.ones((10, 10), bool))
    with pytest.raises(BrushRLEError, match="400 values, expected 4 \\* 10 \\* 20"):
        brush_rle_to_mask(rle, 10, 20)


@pytest.mark.parametrize("bad", ["abc", [1, 2], [0, 0, 0, 300, 1, 2, 3], None])
def test_non_byte_input_is_refused(bad):
    with pytest.raises(BrushRLEError):
        decode_brush_rle(bad)


def test_percent_and_pixels_convert_both_ways():
    assert percent_to_pixels(50, 25, 200, 100) == (100.0, 25.0)
    assert pixels_to_percent(100, 25, 200, 100) == (50.0, 25.0)
    box = rect_percent_to_box({"x": 10, "y": 20, "width": 50, "height": 40}, 200, 100)
    assert box == [20.0, 20.0, 120.0, 60.0]
    assert rect_percent_to_box(box_to_rect_percent(box, 200, 100), 200, 100) == pytest.approx(box)
    with pytest.raises(ValueError, match="rotation"):
        rect_percent_to_box({"x": 1, "y": 1, "width": 1, "height": 1, "rotation": 30}, 10, 10)
