"""Prompt sampling shared by training, evaluation and the simulated annotator.

Two families, both from the SAM paper:
- evaluation clicks (deterministic): the first click at the point of the object farthest from its boundary, each
  next click at the point of the error region farthest from that region's boundary; positive on a false
  negative, negative on a false positive.
- training prompts (random): a positive point drawn uniformly from the mask or a box with noise (std 10% of the
  side, at most 20 px), then points drawn uniformly from the error region, batched in torch.

Coordinates are (x, y) in pixels of the mask's own grid; labels are 1 (positive), 0 (negative), -1 (no point:
the prompt encoder's "not a point" embedding, used when a prediction has no error left).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch


def farthest_point(region: np.ndarray) -> tuple[int, int, float]:
    """The pixel of ``region`` (HxW bool) farthest from its boundary: (x, y, distance in pixels).

    The image border counts as boundary. Raises ValueError on an empty region.
    """
    region = np.asarray(region, dtype=bool)
    if region.ndim != 2:
        raise ValueError(f"region must be HxW, got shape {region.shape}")
    if not region.any():
        raise ValueError("region is empty: no pixel to click")
    padded = np.pad(region, 1).astype(np.uint8)
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(x), int(y), float(dist[y, x])


def first_click(gt: np.ndarray) -> tuple[int, int, int]:
    """The evaluation protocol's first click on ground truth ``gt`` (HxW bool): (x, y, label=1)."""
    x, y, _ = farthest_point(gt)
    return x, y, 1


def next_click(gt: np.ndarray, pred: np.ndarray) -> tuple[int, int, int] | None:
    """The evaluation protocol's next click given ground truth and prediction (both HxW bool).

    Returns (x, y, label): label 1 inside the false-negative region, 0 inside the false-positive region, at the
    point farthest from the boundary of whichever error region reaches deeper; None when there is no error.
    """
    gt = np.asarray(gt, dtype=bool)
    pred = np.asarray(pred, dtype=bool)
    if gt.shape != pred.shape:
        raise ValueError(f"gt {gt.shape} and pred {pred.shape} must have the same shape")
    false_negative = gt & ~pred
    false_positive = pred & ~gt
    best = None
    for region, label in ((false_negative, 1), (false_positive, 0)):
        if region.any():
            x, y, d = farthest_point(region)
            if best is None or d > best[2]:
                best = (x, y, d, label)
    if best is None:
        return None
    return best[0], best[1], best[3]


def mask_to_box(mask: np.ndarray) -> np.ndarray:
    """The tight box of ``mask`` (HxW bool) as float32 [x0, y0, x1, y1] in pixels (inclusive corners)."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        raise ValueError("mask is empty: it has no box")
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.float32)


def noisy_box(
    mask: np.ndarray, rng: np.random.Generator, noise: float = 0.1, max_noise: float = 20.0
) -> np.ndarray:
    """The box of ``mask`` with each coordinate moved by N(0, noise * side), clipped to +-max_noise px and
    to the image; returns float32 [x0, y0, x1, y1] with x0 <= x1, y0 <= y1."""
    box = mask_to_box(mask)
    h, w = mask.shape
    side = np.array([box[2] - box[0], box[3] - box[1]] * 2, dtype=np.float32)
    jitter = np.clip(rng.normal(0.0, 1.0, size=4) * noise * side, -max_noise, max_noise)
    box = box + jitter.astype(np.float32)
    box[[0, 2]] = np.clip(box[[0, 2]], 0, w - 1)
    box[[1, 3]] = np.clip(box[[1, 3]], 0, h - 1)
    x0, x1 = sorted(box[[0, 2]])
    y0, y1 = sorted(box[[1, 3]])
    return np.array([x0, y0, x1, y1], dtype=np.float32)


def sample_points_in(masks: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One pixel drawn uniformly from each mask: masks NxHxW bool -> coords Nx2 float (x, y).

    An empty mask gives (0, 0); callers label such points -1.
    """
    n, h, w = masks.shape
    flat = masks.reshape(n, h * w)
    scores = torch.rand(flat.shape, generator=generator, device=masks.device) * flat
    index = scores.argmax(dim=1)
    return torch.stack([index % w, index // w], dim=1).float()


def sample_error_points(
    gt: torch.Tensor, pred: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A correction click per mask, drawn uniformly from the error region (the training protocol).

    gt, pred: NxHxW bool. Returns coords Nx2 float (x, y) and labels N long: 1 on a false negative, 0 on a
    false positive, -1 where the prediction has no error (the point is then a placeholder).
    """
    if gt.shape != pred.shape:
        raise ValueError(f"gt {tuple(gt.shape)} and pred {tuple(pred.shape)} must have the same shape")
    error = gt ^ pred
    coords = sample_points_in(error, generator)
    n, h, w = gt.shape
    index = (coords[:, 1] * w + coords[:, 0]).long()
    labels = gt.reshape(n, h * w).gather(1, index[:, None])[:, 0].long()
    labels = torch.where(error.reshape(n, -1).any(dim=1), labels, torch.full_like(labels, -1))
    return coords, labels
