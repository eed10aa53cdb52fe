"""Every instance a phrase names ("every striped ellipse"), from a text-prompted model.

One text prompt gives one mask: the union of what the phrase names. Instances that touch or overlap are one
connected piece of it, so pieces alone cannot separate them: on 50 validation scenes, the connected pieces of the
*ground-truth* union match only 0.698 of the instances at IoU 0.5 (issue #19 asks for 0.8). So the instances come
from clicks, as SAM's automatic masks do: the phrase's own mask says where to look, a grid of clicks inside it
each ask "the <phrase> here" (text + one positive click, what the trainer's click prompts teach: the one
instance under the click), and non-maximum suppression by mask IoU keeps one mask per instance, best predicted
IoU first.
"""

from __future__ import annotations

import numpy as np
import torch

from sam_core.mask_utils import binary_iou
from sam_core.predictor import SamPredictor

POINTS_PER_SIDE = 16
NMS_IOU = 0.5
MIN_AREA = 16  # px of the image: smaller masks are noise, not instances


def grid_clicks_inside(region: np.ndarray, points_per_side: int = POINTS_PER_SIDE) -> np.ndarray:
    """The points of a points_per_side^2 grid (cell centres, as SAM's automatic grid) that fall inside
    ``region`` (H x W bool): K x 2 (x, y) pixels; when no grid point is in, the region's pixel nearest its centroid
    (a small mask still gets one click); none for an empty region."""
    h, w = region.shape
    xs = (np.arange(points_per_side) + 0.5) * w / points_per_side
    ys = (np.arange(points_per_side) + 0.5) * h / points_per_side
    grid = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
    inside = region[grid[:, 1].astype(int).clip(0, h - 1), grid[:, 0].astype(int).clip(0, w - 1)]
    if inside.any() or not region.any():
        return grid[inside]
    ys_in, xs_in = np.nonzero(region)
    centre = np.array([xs_in.mean(), ys_in.mean()])
    nearest = np.argmin((xs_in - centre[0]) ** 2 + (ys_in - centre[1]) ** 2)
    return np.array([[xs_in[nearest] + 0.5, ys_in[nearest] + 0.5]])


@torch.no_grad()
def find_instances(
    predictor: SamPredictor,
    text: str,
    union: np.ndarray | None = None,
    points_per_side: int = POINTS_PER_SIDE,
    nms_iou: float = NMS_IOU,
    batch: int = 64,
) -> tuple[list[np.ndarray], list[float]]:
    """The instances ``text`` names on the predictor's current image: (masks H x W bool, predicted IoU of each),
    best first. ``union``: the phrase's own mask (H x W bool), predicted with the text alone when not given."""
    if union is None:
        union = predictor.predict(text=text)[0][0]
    clicks = grid_clicks_inside(union, points_per_side)
    candidates, scores = [], []
    for start in range(0, len(clicks), batch):
        coords = clicks[start : start + batch, None, :]
        masks, iou, _, _ = predictor.predict_batch(
            coords, np.ones(coords.shape[:2], np.int64), text=text, multimask_output=False
        )
        candidates += list(masks[:, 0].cpu().numpy())
        scores += iou[:, 0].cpu().tolist()
    kept, kept_scores = [], []
    for i in np.argsort(scores)[::-1]:
        mask = candidates[i]
        if mask.sum() < MIN_AREA or any(binary_iou(mask, other) > nms_iou for other in kept):
            continue
        kept.append(mask)
        kept_scores.append(float(scores[i]))
    return kept, kept_scores
