"""Checks and conversions for what users hand to SamPredictor: images, points, labels, boxes, mask prompts.

Image policy (documented in SamPredictor.set_image):
- H x W or H x W x 1 grayscale is replicated to 3 channels; H x W x 4 (RGBA / BGRA) drops the alpha channel.
- uint8 is taken as is. Other integer types are accepted when every value lies in 0..255.
- Floating point images must be finite and lie in [0, 1] (the usual float convention); they are scaled by
  255 and rounded. A float image outside [0, 1] is refused rather than guessed at: 0..255 floats and
  0..1 floats cannot be told apart reliably (a dark 0..255 image may have max <= 1).
- bool, complex and object arrays, and empty images are refused.
"""

from __future__ import annotations

import numpy as np
import torch

VALID_LABELS = (-1, 0, 1)  # padding, background, foreground


def to_rgb_uint8(image: np.ndarray, image_format: str = "RGB", model_format: str = "RGB") -> np.ndarray:
    """Validate an image and return it as a contiguous H x W x 3 uint8 array in model_format channel order."""
    if image_format not in ("RGB", "BGR"):
        raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
    if isinstance(image, torch.Tensor):
        raise TypeError("image must be a numpy array (H x W x 3 uint8); for tensors use set_torch_image")
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy array, got {type(image).__name__}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3:
        raise ValueError(f"image must be H x W or H x W x C, got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image is empty (shape {image.shape})")
    channels = image.shape[2]
    if channels == 1:
        image = np.repeat(image, 3, axis=2)
    elif channels == 4:
        image = image[:, :, :3]  # alpha carries no colour: drop it
    elif channels != 3:
        raise ValueError(f"image must have 1, 3 or 4 channels, got {channels} (shape {image.shape})")
    image = _to_uint8(image)
    if image_format != model_format:
        image = image[..., ::-1]
    return np.ascontiguousarray(image)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    kind = image.dtype.kind
    if image.dtype == np.uint8:
        return image
    if kind in "iu":
        low, high = int(image.min()), int(image.max())
        if low < 0 or high > 255:
            raise ValueError(
                f"integer image of dtype {image.dtype} has values in [{low}, {high}]; expected 0..255 "
                "(convert it to uint8 first)"
            )
        return image.astype(np.uint8)
    if kind == "f":
        if not np.isfinite(image).all():
            raise ValueError("float image contains NaN or infinite values")
        low, high = float(image.min()), float(image.max())
        if low < 0.0 or high > 1.0:
            raise ValueError(
                f"float image has values in [{low:g}, {high:g}]; float images must lie in [0, 1] "
                "(for 0..255 data pass a uint8 array)"
            )
        return np.rint(image * 255.0).astype(np.uint8)
    raise TypeError(f"image dtype {image.dtype} is not supported; pass uint8 (or floats in [0, 1])")


def check_points(
    point_coords: np.ndarray | torch.Tensor | None,
    point_labels: np.ndarray | torch.Tensor | None,
    original_size: tuple[int, int],
    batched: bool = False,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Points in original-image pixels: N x 2 (B x N x 2 if batched) with labels N (B x N) in {-1, 0, 1}.

    Returns float64 coords and int64 labels, or (None, None). Raises ValueError naming the problem.
    """
    if point_coords is None and point_labels is None:
        return None, None
    if point_coords is None:
        raise ValueError("point_labels was given without point_coords")
    if point_labels is None:
        raise ValueError("point_coords was given without point_labels")
    coords = _as_numpy(point_coords, "point_coords").astype(np.float64)
    labels = _as_numpy(point_labels, "point_labels")
    lead = 2 if batched else 1
    shape_text = "B x N x 2" if batched else "N x 2"
    if coords.ndim != lead + 1 or coords.shape[-1] != 2:
        raise ValueError(f"point_coords must be {shape_text}, got shape {coords.shape}")
    if labels.shape != coords.shape[:-1]:
        raise ValueError(
            f"point_labels has shape {labels.shape} but point_coords has {coords.shape}: "
            "one label per point is needed"
        )
    if labels.dtype.kind == "f" and not np.all(labels == np.round(labels)):
        raise ValueError("point_labels must be integers (1 foreground, 0 background, -1 padding)")
    labels = labels.astype(np.int64)
    bad = sorted(set(np.unique(labels).tolist()) - set(VALID_LABELS))
    if bad:
        raise ValueError(f"point_labels must be 1 (foreground), 0 (background) or -1 (padding), got {bad}")
    _check_inside(coords, original_size, "point_coords", ignore=labels == -1)
    return coords, labels


def check_boxes(box, original_size: tuple[int, int], batched: bool = False) -> np.ndarray | None:
    """A box (x0, y0, x1, y1) in original-image pixels, shape 4 (B x 4 if batched) -> float64 B x 4."""
    if box is None:
        return None
    boxes = _as_numpy(box, "box").astype(np.float64)
    if (not batched and boxes.shape != (4,)) or (batched and (boxes.ndim != 2 or boxes.shape[1] != 4)):
        raise ValueError(
            f"box must be {'B x 4' if batched else 'a length-4 array'} (x0, y0, x1, y1), got {boxes.shape}"
        )
    boxes = boxes.reshape(-1, 4)
    if np.any(boxes[:, 2] < boxes[:, 0]) or np.any(boxes[:, 3] < boxes[:, 1]):
        raise ValueError(f"box must be (x0, y0, x1, y1) with x0 <= x1 and y0 <= y1, got {boxes.tolist()[:3]}")
    _check_inside(boxes.reshape(-1, 2), original_size, "box")
    return boxes


def check_mask_input(mask_input, low_res_size: tuple[int, int], batched: bool = False) -> np.ndarray | None:
    """A low-res logit mask 1 x h x w (B x 1 x h x w if batched), h, w = low_res_size -> float32 B x 1 x h x w."""
    if mask_input is None:
        return None
    mask = _as_numpy(mask_input, "mask_input").astype(np.float32)
    h, w = low_res_size
    ok = mask.shape == (1, h, w) if not batched else (mask.ndim == 4 and mask.shape[1:] == (1, h, w))
    if not ok:
        want = f"1 x {h} x {w}" if not batched else f"B x 1 x {h} x {w}"
        raise ValueError(
            f"mask_input must be {want} low-res logits (a previous low_res_logits), got {mask.shape}"
        )
    if not np.isfinite(mask).all():
        raise ValueError("mask_input contains NaN or infinite values")
    return mask.reshape(-1, 1, h, w)


def _as_numpy(value, name: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be array-like, got {type(value).__name__}") from err
    if array.dtype.kind not in "iuf" and array.dtype != np.bool_:
        raise TypeError(f"{name} must be numeric, got dtype {array.dtype}")
    return array


def _check_inside(xy: np.ndarray, original_size: tuple[int, int], name: str, ignore=None) -> None:
    """Coordinates must be finite and inside the image: 0 <= x <= W, 0 <= y <= H (the far edge included)."""
    flat = xy.reshape(-1, 2)
    keep = np.ones(len(flat), bool) if ignore is None else ~np.asarray(ignore).reshape(-1)
    flat = flat[keep]
    if not np.isfinite(flat).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    h, w = original_size
    outside = (flat[:, 0] < 0) | (flat[:, 0] > w) | (flat[:, 1] < 0) | (flat[:, 1] > h)
    if outside.any():
        raise ValueError(
            f"{name} outside the {w} x {h} (W x H) image: {flat[outside][:3].tolist()} "
            "(coordinates are (x, y) pixels of the original image)"
        )
