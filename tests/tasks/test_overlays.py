"""Overlays tint exactly the masked pixels; the plot draws one panel per series."""

import numpy as np
import pytest

from tasks.overlays import line_plot, overlay, png_data_uri


def test_overlay_tints_masked_pixels_only():
    image = np.full((20, 30, 3), 100, np.uint8)
    mask = np.zeros((20, 30), bool)
    mask[5:15, 5:15] = True
    out = np.asarray(overlay(image, [mask]))
    assert out.shape == image.shape
    assert (out[10, 10] != image[10, 10]).any() and (out[0, 0] == image[0, 0]).all()
    assert (out[5, 5] == 255).all()  # the outline
    assert png_data_uri(overlay(image, [mask])).startswith("data:image/png;base64,")


def test_plot_has_a_panel_per_series_and_tolerates_missing_values():
    picture = line_plot(
        {"a": [None, 1.0, 2.0], "b": [0.5, None, 0.7], "c": [None, None, None]}, ["r0", "r1", "r2"], "t"
    )
    assert picture.size == (900, 210)
    assert (np.asarray(picture) != 255).any()


def test_plot_axis_starts_at_zero_so_a_small_change_looks_small_and_draws_the_band():
    # 0.50 -> 0.54 on a 0..1 axis moves a point by a few pixels, not the whole panel height.
    flat = np.asarray(
        line_plot({"mIoU": [0.50, 0.54]}, ["r0", "r1"], "t", columns=1, ranges={"mIoU": (0, 1)})
    )
    plot_area = flat[52:]  # below the title and the series name, drawn in the same colour
    red = np.argwhere((plot_area[..., 0] > 200) & (plot_area[..., 1] < 60) & (plot_area[..., 2] < 100))
    assert 0 < red[:, 0].max() - red[:, 0].min() < 16
    default = line_plot({"masks": [3.0, 4.0]}, ["r0", "r1"], "t", columns=1)
    banded = line_plot({"masks": [3.0, 4.0]}, ["r0", "r1"], "t", columns=1, bands={"masks": [0.5, 0.5]})
    assert (np.asarray(banded) != np.asarray(default)).any()
    with pytest.raises(ValueError):
        line_plot({"masks": [3.0, 4.0]}, ["r0", "r1"], "t", bands={"masks": [0.5]})
