"""Overlays tint exactly the masked pixels; the plot draws one panel per series."""

import numpy as np

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
