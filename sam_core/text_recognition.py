"""Which mask a phrase names: SAM's own masks, each described by what it looks like, scored against the phrase.

The paper trained its text prompts on CLIP image embeddings *of each mask* and swapped in text embeddings at
inference. We have no CLIP image tower to run here, so each candidate mask gets a descriptor of our own, from
the pixels it covers (the image embedding keeps no colour: a linear probe of the colour word from it scores below
the majority word, benchmarks/bench_embedding_probe.py):

- colour: mean and spread of CIE Lab over the mask's own pixels (those no smaller candidate inside it covers: a
  part is painted its own way);
- texture: fine and coarse luminance variation and the structure tensor's coherence (stripes run one way);
- shape: area, solidity, fill of its rotated bounding rectangle and of its fitted ellipse, polygon corners,
  circularity;
- the same of the smallest candidate that encloses it, and whether there is one ("the part inside the blue
  polygon").

``MaskRecognizer`` maps descriptors and text embeddings to a score per (phrase, mask): a logit that the mask is
(one of) what the phrase names. Candidates are the masks of a grid of clicks on the image (``candidate_masks``);
the text path asks the decoder at the best one (a click at its point farthest from its border and its box, with
the text tokens), a phrase's presence is its best score, and the instances of "every ..." are the candidates
scored above 0 (probability 0.5).

Shapes: image H x W x 3 uint8 RGB, masks K x H x W bool -> descriptors K x DESCRIPTOR_DIM float32; text
embeddings B x text_dim -> logits B x K.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import nn

from . import crops, mask_utils

OWN_FEATURES = 19  # per mask: 6 colour, 4 texture, 7 shape, 2 size/edge
DESCRIPTOR_DIM = 2 * OWN_FEATURES + 1  # its own, its enclosing candidate's, whether it has one
# Candidates: the automatic mask generator's settings for them (loose: a missed object cannot be named).
CANDIDATE_POINTS_PER_SIDE = 16
# Looser than the generator's 0.88 / 0.95, since the recognizer, not the thresholds, rejects what is wrong: on 15
# val scenes, 0.5 / 0.7 covered (IoU >= 0.5) 98% of the wholes, 51% of the parts and 15% of the subparts; 0.2 / 0.3
# covered 100%, 84% and 50%, with 54 candidates an image instead of 16, at the same cost (the grid's decoding).
CANDIDATE_PRED_IOU = 0.2
CANDIDATE_STABILITY = 0.3
CANDIDATE_NMS = 0.7
STABILITY_OFFSET = 1.0
# The dot product's divisor. 1/sqrt(width) (11.3 at width 128) learnt far slower: with ground-truth masks as the
# candidates, 500 steps of 8 scenes picked the named object for 54% of 179 val phrases against 78% with 4.
TEMPERATURE = 4.0
# A mask is inside another when this much of it is covered by one at least 1.2x larger.
ENCLOSED_FRACTION = 0.9
NO_CANDIDATE_LOGIT = -20.0  # the presence logit of an image without candidates


def enclosing(masks: list[np.ndarray]) -> list[int]:
    """For each mask, the index of the smallest other mask, at least 1.2x its area, that covers ENCLOSED_FRACTION
    of it; -1 when none does."""
    areas = [int(m.sum()) for m in masks]
    out = []
    for i, mask in enumerate(masks):
        best = -1
        for j, other in enumerate(masks):
            if j == i or areas[j] < 1.2 * areas[i]:
                continue
            if (mask & other).sum() >= ENCLOSED_FRACTION * areas[i] and (best < 0 or areas[j] < areas[best]):
                best = j
        out.append(best)
    return out


@dataclass
class _Maps:
    lab: np.ndarray
    fine: np.ndarray
    coarse: np.ndarray
    jxx: np.ndarray
    jyy: np.ndarray
    jxy: np.ndarray


def _maps(image: np.ndarray) -> _Maps:
    lab = cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
    grey = lab[..., 0]
    gx, gy = cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1)
    blur = lambda x, sigma: cv2.GaussianBlur(x, (0, 0), sigma)  # noqa: E731
    return _Maps(
        lab,
        grey - blur(grey, 1.5),
        blur(grey, 3.0),
        blur(gx * gx, 4.0),
        blur(gy * gy, 4.0),
        blur(gx * gy, 4.0),
    )


def _own_features(maps: _Maps, mask: np.ndarray, own: np.ndarray) -> np.ndarray:
    if own.sum() < 5:
        own = mask
    lab = maps.lab[own]
    a, b, c = maps.jxx[own].mean(), maps.jyy[own].mean(), maps.jxy[own].mean()
    features = [
        *(lab.mean(0) / 100),
        *(lab.std(0) / 30),
        maps.fine[own].std() / 10,
        maps.coarse[own].std() / 10,
    ]
    features += [np.sqrt((a - b) ** 2 + 4 * c**2) / (a + b + 1e-6), np.log1p(a + b) / 5]
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contour = max(contours, key=cv2.contourArea)
    area, perimeter = float(mask.sum()), cv2.arcLength(contour, True) + 1e-6
    hull = cv2.contourArea(cv2.convexHull(contour)) + 1e-6
    rotated = cv2.minAreaRect(contour)
    rectangle = np.zeros(mask.shape, np.uint8)
    cv2.drawContours(rectangle, [np.int32(cv2.boxPoints(rotated))], -1, 1, -1)
    ellipse_fill = 0.0
    if len(contour) >= 5:
        ellipse = np.zeros(mask.shape, np.uint8)
        cv2.ellipse(ellipse, cv2.fitEllipse(contour), 1, -1)
        ellipse_fill = (ellipse.astype(bool) & mask).sum() / ((ellipse.astype(bool) | mask).sum() + 1e-6)
    corners = len(cv2.approxPolyDP(contour, 0.03 * perimeter, True))
    rectangle_fill = (rectangle.astype(bool) & mask).sum() / ((rectangle.astype(bool) | mask).sum() + 1e-6)
    features += [
        np.log(area) / 10,
        area / hull,
        area / (rotated[1][0] * rotated[1][1] + 1e-6),
        ellipse_fill,
        min(corners, 12) / 12,
        4 * np.pi * area / perimeter**2,
        rectangle_fill,
        len(contours) / 4,
        (mask[0].any() + mask[-1].any() + mask[:, 0].any() + mask[:, -1].any()) / 4,  # cut by the image edge
    ]
    return np.asarray(features, np.float32)


def mask_descriptors(image: np.ndarray, masks: list[np.ndarray]) -> np.ndarray:
    """K x DESCRIPTOR_DIM descriptors of ``masks`` (H x W bool each, non-empty) on ``image`` (H x W x 3 uint8 RGB);
    see the module docstring."""
    if not masks:
        return np.zeros((0, DESCRIPTOR_DIM), np.float32)
    if image.shape[:2] != masks[0].shape:
        raise ValueError(f"masks are {masks[0].shape} but the image is {image.shape[:2]}")
    maps = _maps(image)
    parents = enclosing(masks)
    own_features = []
    for i, mask in enumerate(masks):
        own = mask.copy()
        for j, parent in enumerate(parents):
            if parent == i:
                own &= ~masks[j]
        own_features.append(_own_features(maps, mask, own))
    own_features = np.stack(own_features)
    outer = np.stack([own_features[p] if p >= 0 else np.zeros(OWN_FEATURES, np.float32) for p in parents])
    inside = np.array([[p >= 0] for p in parents], np.float32)
    return np.concatenate([own_features, outer, inside], axis=1)


class MaskRecognizer(nn.Module):
    """Descriptors K x DESCRIPTOR_DIM and text embeddings B x text_dim -> logits B x K (see the module docstring):
    a dot product of the two, each through its own small network, over TEMPERATURE, plus a learnt bias."""

    def __init__(self, text_dim: int, width: int = 128) -> None:
        super().__init__()
        if text_dim < 1 or width < 1:
            raise ValueError(f"text_dim and width must be >= 1, got {text_dim} and {width}")
        self.text_dim, self.width = text_dim, width
        self.masks = nn.Sequential(
            nn.Linear(DESCRIPTOR_DIM, 2 * width), nn.GELU(), nn.Linear(2 * width, 2 * width), nn.GELU(),
            nn.Linear(2 * width, width),
        )  # fmt: skip
        self.text = nn.Sequential(nn.LayerNorm(text_dim), nn.Linear(text_dim, width))
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, descriptors: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        if text_embeddings.dim() != 2 or text_embeddings.shape[1] != self.text_dim:
            raise ValueError(
                f"text embeddings must be B x {self.text_dim}, got {tuple(text_embeddings.shape)}"
            )
        if descriptors.dim() != 2 or descriptors.shape[1] != DESCRIPTOR_DIM:
            raise ValueError(f"descriptors must be K x {DESCRIPTOR_DIM}, got {tuple(descriptors.shape)}")
        masks = self.masks(descriptors.to(torch.float32))
        text = self.text(text_embeddings.to(torch.float32))
        return text @ masks.T / TEMPERATURE + self.bias


def presence_logits(logits: torch.Tensor) -> torch.Tensor:
    """B x K recognition logits -> B presence logits: the best candidate's (a phrase is in the image when one of
    its masks is what it names); NO_CANDIDATE_LOGIT for an image without candidates."""
    if logits.shape[1] == 0:
        return logits.new_full((logits.shape[0],), NO_CANDIDATE_LOGIT)
    return logits.amax(dim=1)


def candidate_masks(predictor, batch: int = 64) -> list[np.ndarray]:
    """The masks a phrase is matched against, on the predictor's current image: a CANDIDATE_POINTS_PER_SIDE^2
    grid of clicks, each click's three masks kept when rated above CANDIDATE_PRED_IOU and stable to
    CANDIDATE_STABILITY, then box NMS at CANDIDATE_NMS (the automatic mask generator's first crop, at looser
    settings: a missed object cannot be named). H x W bool each, largest first.

    ``predictor``: a sam_core.predictor.SamPredictor with an image set (taken as any object with its methods,
    since the predictor itself calls this)."""
    h, w = predictor.original_size
    points = crops.grid_points(CANDIDATE_POINTS_PER_SIDE) * np.array([w, h], np.float64)
    masks, scores, boxes = [], [], []
    threshold = predictor.model.mask_threshold
    for start in range(0, len(points), batch):
        clicks = points[start : start + batch, None, :]
        _, iou, low_res = predictor.predict_batch(
            clicks, np.ones(clicks.shape[:2], np.int64), multimask_output=True, upsample=False
        )
        iou, low_res = iou.flatten(), low_res.flatten(0, 1)
        keep = (iou > CANDIDATE_PRED_IOU).nonzero().flatten()
        if len(keep) == 0:
            continue
        logits = predictor.upscale_logits(low_res[keep][:, None])[:, 0]
        stable = mask_utils.stability_score(logits, threshold, STABILITY_OFFSET) >= CANDIDATE_STABILITY
        found = logits[stable] > threshold
        nonempty = found.flatten(1).any(dim=1)
        found = found[nonempty]
        masks += list(found.cpu().numpy())
        scores += iou[keep][stable][nonempty].float().cpu().tolist()
        boxes += list(mask_utils.masks_to_boxes(found).float().cpu().numpy())
    if not masks:
        return []
    kept = mask_utils.box_nms(np.asarray(boxes), np.asarray(scores), CANDIDATE_NMS)
    return sorted((masks[int(i)] for i in kept), key=lambda m: -int(m.sum()))
