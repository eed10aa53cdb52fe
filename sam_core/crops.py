"""Point grids and crop boxes for automatic mask generation (SA-1B's zoomed-crop scheme).

Coordinates are pixels, x to the right and y down. Crop boxes are XYXY with exclusive right/bottom
(``image[y0:y1, x0:x1]``); mask boxes are XYXY with inclusive pixel indices (see mask_utils).
"""

from __future__ import annotations

import math
from itertools import product

import numpy as np
import torch


def grid_points(n_per_side: int) -> np.ndarray:
    """n_per_side**2 x 2 points (x, y) in [0, 1], at the centres of an n x n grid of cells, row by row."""
    if int(n_per_side) != n_per_side or n_per_side < 1:
        raise ValueError(f"points per side must be a positive integer, got {n_per_side!r}")
    n = int(n_per_side)
    # linspace (not (arange + 0.5) / n) so the coordinates are bit-identical to the reference grid.
    centres = np.linspace(0.5 / n, 1 - 0.5 / n, n)
    ys, xs = np.meshgrid(centres, centres, indexing="ij")
    return np.stack([xs.ravel(), ys.ravel()], axis=-1)


def layer_grid_points(n_per_side: int, n_layers: int, downscale_factor: int) -> list[np.ndarray]:
    """One grid per crop layer (layer 0 = the whole image); layer i has int(n / factor**i) points per side."""
    grids = []
    for i in range(n_layers + 1):
        n = int(n_per_side / (downscale_factor**i))
        if n < 1:
            raise ValueError(
                f"crop layer {i} gets no points: points_per_side={n_per_side} / "
                f"crop_n_points_downscale_factor={downscale_factor}**{i} < 1"
            )
        grids.append(grid_points(n))
    return grids


def crop_boxes(image_size: tuple[int, int], n_layers: int, overlap_ratio: float) -> tuple[list, list]:
    """Crop boxes XYXY (ints) and their layer indices for an image of size (H, W).

    Layer 0 is the whole image; layer i >= 1 tiles it with (2**i) x (2**i) overlapping crops, the overlap
    being overlap_ratio of the short side scaled by 2 / 2**i. Raises ValueError when the image is too small
    for the requested layers (crops that would not advance, or would start outside the image).
    """
    im_h, im_w = image_size
    if im_h < 1 or im_w < 1:
        raise ValueError(f"image size must be positive, got {im_h}x{im_w}")
    boxes, layers = [[0, 0, im_w, im_h]], [0]
    short_side = min(im_h, im_w)
    for layer in range(1, n_layers + 1):
        n_crops = 2**layer
        overlap = int(overlap_ratio * short_side * (2 / n_crops))
        crop_w = math.ceil((overlap * (n_crops - 1) + im_w) / n_crops)
        crop_h = math.ceil((overlap * (n_crops - 1) + im_h) / n_crops)
        stride_w, stride_h = crop_w - overlap, crop_h - overlap
        if (
            min(stride_w, stride_h) < 1
            or stride_w * (n_crops - 1) >= im_w
            or stride_h * (n_crops - 1) >= im_h
        ):
            raise ValueError(
                f"image {im_h}x{im_w} is too small for crop_n_layers={n_layers}: layer {layer} crops of "
                f"{crop_h}x{crop_w} px with {overlap} px overlap do not tile it (use fewer crop layers)"
            )
        x0s = [int((crop_w - overlap) * i) for i in range(n_crops)]
        y0s = [int((crop_h - overlap) * i) for i in range(n_crops)]
        for x0, y0 in product(x0s, y0s):
            boxes.append([x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h)])
            layers.append(layer)
    return boxes, layers


def near_crop_edge(boxes: torch.Tensor, crop_box: list, image_box: list, atol: float = 20.0) -> torch.Tensor:
    """N bool: which mask boxes (XYXY, image frame) lie within atol px of a crop edge that is not an image edge.

    Such masks are likely cut by the crop; another crop (or the whole image) sees them whole.
    """
    crop = torch.as_tensor(crop_box, dtype=torch.float32, device=boxes.device)
    image = torch.as_tensor(image_box, dtype=torch.float32, device=boxes.device)
    b = boxes.float()
    at_crop = torch.isclose(b, crop[None, :], atol=atol, rtol=0)
    at_image = torch.isclose(b, image[None, :], atol=atol, rtol=0)
    return (at_crop & ~at_image).any(dim=1)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Areas of XYXY boxes N x 4 (exclusive corners) -> N."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
