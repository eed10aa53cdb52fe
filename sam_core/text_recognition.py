"""Which mask a phrase names: SAM's own masks, each described by what it looks like, scored against the phrase.

The paper trained its text prompts on CLIP image embeddings *of each mask* and swapped in text embeddings at
inference. We have no CLIP image tower to run here, so each candidate mask gets a descriptor of our own, from
the pixels it covers (the image embedding keeps no colour: a linear probe of the colour word from it scores below
the majority word, benchmarks/bench_embedding_probe.py):

- where they are read: the mask with its holes filled, less its parts (the candidates it is the smallest
  enclosing one of, 2% to half its area) with a 2 px margin, eroded 3 px off its border; of those, the pixels
  within OWN_COLOUR_DISTANCE of its median colour (what a loose candidate takes in beyond the object, a part it
  did not cut out or a strip of background, stands out in colour);
- colour: median and spread of CIE Lab there;
- texture: the spread of luminance in four bands, computed by normalised convolution inside that region (so
  neither the mask's border nor a cut-out part leaks in), the middle bands' kurtosis (checkers and stripes are
  two-valued or sine-like, blotches are not) and the structure tensor's coherence (stripes run one way) and
  energy; and how much of the mask the region is;
- shape: area, solidity, fill of its rotated bounding rectangle and of its fitted ellipse, polygon corners,
  circularity, its pieces of real size, how many image edges cut it;
- the same of a candidate that encloses it, the one most candidates duplicate (``outer_candidates``: a whole
  object, not another cut of the part), and whether there is one ("the part inside the blue polygon");
- how good a cut the decoder thinks it is: its predicted IoU and stability score (a ground-truth mask, which
  the first training stage describes, has 1 and 1). Of two near-duplicate cuts of one object the recognizer
  could otherwise only tell the better by its outline.

``MaskRecognizer`` maps descriptors and text embeddings to a score per (phrase, mask): a logit that the mask is
(one of) what the phrase names. Candidates are the masks of a grid of clicks on the image (``candidate_masks``);
text alone is answered with the best-scored candidates themselves (their masks, predicted IoU and low-res logits
as the decoder gave them for their click), a phrase's presence is its best score plus the recognizer's calibrated
presence_bias, and the instances of "every ..." are the candidates scored above the calibrated instance_bias's
threshold (``instance_probabilities`` at least 0.5), each asked
again with the text tokens. (Asking the decoder again at the best candidate, a click at its point farthest from
its border and its box with the text tokens, was the answer before: on 40 val scenes it lost 0.06 mIoU on the
phrases naming one object against the candidate itself, 0.506 against 0.565, and 0.10 where the pick was right.)

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

OWN_FEATURES = 23  # per mask: 6 colour, 7 texture, 1 interior fraction, 7 shape, 2 size/edge
QUALITY_FEATURES = 2  # predicted IoU, stability score
# Its own, its encloser's, whether it has one, its quality.
DESCRIPTOR_DIM = 2 * OWN_FEATURES + 1 + QUALITY_FEATURES
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
# Lab distance from a mask's median colour within which a pixel counts as painted its own colour (textures vary
# it by about 15, noise a few units; a part is painted in a contrasting colour, so it is further).
OWN_COLOUR_DISTANCE = 25.0
NO_CANDIDATE_LOGIT = -20.0  # the presence logit of an image without candidates
# Two candidates at more than this IoU are cuts of one thing (outer_candidates counts them).
OUTER_DUPLICATE_IOU = 0.5


def _overlaps(masks: list[np.ndarray]) -> np.ndarray:
    """K x K pixels shared by each pair of masks (the diagonal: their areas)."""
    flat = np.stack(masks).reshape(len(masks), -1).astype(np.float32)  # exact: counts stay below 2^24
    return flat @ flat.T


def _enclosers(inter: np.ndarray) -> list[np.ndarray]:
    """For each mask, the indices of the other masks at least 1.2x its area that cover ENCLOSED_FRACTION of it."""
    areas = np.diag(inter)
    return [
        np.flatnonzero(
            (areas >= 1.2 * areas[i])
            & (inter[i] >= ENCLOSED_FRACTION * areas[i])
            & (np.arange(len(areas)) != i)
        )
        for i in range(len(areas))
    ]


def enclosing(masks: list[np.ndarray]) -> list[int]:
    """For each mask, the index of the smallest other mask, at least 1.2x its area, that covers ENCLOSED_FRACTION
    of it; -1 when none does."""
    return _smallest_enclosers(_overlaps(masks)) if masks else []


def outer_candidates(masks: list[np.ndarray]) -> list[int]:
    """For each mask (largest first, as candidates are), the enclosing mask its descriptor describes beside it
    ("the part inside the blue polygon"): of the masks that enclose it (as ``enclosing``), the one that most
    candidates duplicate (IoU > OUTER_DUPLICATE_IOU), the largest among equals; -1 when none encloses it.

    The smallest enclosing mask was most often another cut of the part itself (the part with a strip of its
    parent, 1.2-2x its area): for the best candidate of 61 part phrases on 40 val scenes it matched the parent at
    IoU 0.5 for 26% of them; the most duplicated, for 80% (a whole object is found from many grid clicks, so its
    mask survives NMS in several near-identical cuts; an odd fragment does not)."""
    return _most_duplicated_enclosers(_overlaps(masks)) if masks else []


def _smallest_enclosers(inter: np.ndarray) -> list[int]:
    """``enclosing`` from the masks' overlaps (``_overlaps``)."""
    areas = np.diag(inter)
    return [int(found[np.argmin(areas[found])]) if len(found) else -1 for found in _enclosers(inter)]


def _most_duplicated_enclosers(inter: np.ndarray) -> list[int]:
    """``outer_candidates`` from the masks' overlaps (``_overlaps``)."""
    areas = np.diag(inter)
    duplicates = (inter / (areas[:, None] + areas[None, :] - inter) > OUTER_DUPLICATE_IOU).sum(axis=1)
    # Largest first and argmax takes the first of equals: the largest of the most duplicated.
    return [int(found[np.argmax(duplicates[found])]) if len(found) else -1 for found in _enclosers(inter)]


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    filled = np.zeros(mask.shape, np.uint8)
    cv2.drawContours(filled, contours, -1, 1, -1)
    return filled.astype(bool)


_ERODE = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))  # 3 px: off the mask's uncertain border
_MARGIN = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))  # 2 px around the parts cut out of it
_SQUARE = np.ones((3, 3), np.uint8)


def _own_region(mask: np.ndarray, parts: np.ndarray) -> np.ndarray:
    """The pixels a mask's colour and texture are read from: the mask with its holes filled (a candidate often
    misses a stripe or two), less its parts and a margin around them, eroded off its border; less eroded when
    that leaves too few."""
    own = _fill_holes(mask) & ~cv2.dilate(parts.astype(np.uint8), _MARGIN).astype(bool)
    for kernel, least in ((_ERODE, 20), (_SQUARE, 5)):
        region = cv2.erode(own.astype(np.uint8), kernel).astype(bool)
        if region.sum() >= least:
            return region
    return own if own.sum() >= 5 else mask


def _appearance(lab: np.ndarray, region: np.ndarray) -> list[float]:
    """13 features of the pixels of ``region`` (H x W bool) of a CIE Lab image: median and spread of L, a, b;
    the spread of luminance in four bands (finer than 1 px, 1-2.5, 2.5-6, coarser than 6), computed by
    normalised convolution inside the region, so that nothing outside it (its border, the parts cut out) leaks
    in; the kurtosis of the middle bands (two-valued checkers and sine stripes sit low, blotches higher); the
    structure tensor's coherence (stripes run one way) and log energy."""
    median = np.median(lab[region], 0)
    # Texture and spread from the pixels painted near the mask's own colour: what a candidate takes in beyond
    # the object (a part it did not cut out, which stands out in colour, or a strip of background) is left out.
    painted = region.copy()  # the distance only where it is read, not over the whole image for every mask
    painted[region] = np.linalg.norm(lab[region] - median, axis=-1) < OWN_COLOUR_DISTANCE
    if painted.sum() >= 20:
        region = painted
    pixels = lab[region]
    features = [*(median / 100), *(np.clip(pixels.std(0), 0, 60) / 30)]
    ys, xs = np.nonzero(region)
    box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    inside, grey = region[box], lab[box][..., 0]
    weight = inside.astype(np.float32)

    def smooth(sigma: float) -> np.ndarray:  # the Gaussian mean of the region's own pixels only
        return cv2.GaussianBlur(grey * weight, (0, 0), sigma) / (
            cv2.GaussianBlur(weight, (0, 0), sigma) + 1e-6
        )

    fine, mid, coarse = smooth(1.0), smooth(2.5), smooth(6.0)
    bands = [grey - fine, fine - mid, mid - coarse, coarse]
    features += [band[inside].std() / 10 for band in bands]
    middle = (bands[1] + bands[2])[inside]
    middle = middle - middle.mean()
    features.append(min((middle**4).mean() / ((middle**2).mean() ** 2 + 1e-6), 10.0) / 5)
    gx, gy = cv2.Sobel(fine, cv2.CV_32F, 1, 0), cv2.Sobel(fine, cv2.CV_32F, 0, 1)
    core = cv2.erode(inside.astype(np.uint8), _SQUARE).astype(bool)
    core = core if core.sum() >= 5 else inside
    a, b, c = (gx * gx)[core].mean(), (gy * gy)[core].mean(), (gx * gy)[core].mean()
    features += [np.sqrt((a - b) ** 2 + 4 * c**2) / (a + b + 1e-6), np.log1p(a + b) / 5]
    return features


def _shape(mask: np.ndarray) -> list[float]:
    """9 features of a mask's outline: log area, solidity, fill of its rotated bounding rectangle (by area and
    by IoU) and of its fitted ellipse, polygon corners, circularity, its pieces of at least 5% of its area, and
    how many image edges cut it."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contour = max(contours, key=cv2.contourArea)
    area, perimeter = float(mask.sum()), cv2.arcLength(contour, True) + 1e-6
    hull = cv2.contourArea(cv2.convexHull(contour)) + 1e-6
    rotated = cv2.minAreaRect(contour)
    rectangle = np.zeros(mask.shape, np.uint8)
    cv2.drawContours(rectangle, [np.int32(cv2.boxPoints(rotated))], -1, 1, -1)
    ellipse_fill = 0.0
    fitted = cv2.fitEllipse(contour) if len(contour) >= 5 else None
    # A few pixels in a line fit no ellipse (OpenCV answers NaN or inf sizes, which cv2.ellipse refuses).
    if (
        fitted is not None
        and np.isfinite(fitted[0]).all()
        and np.isfinite(fitted[1]).all()
        and min(fitted[1]) > 0
    ):
        ellipse = np.zeros(mask.shape, np.uint8)
        cv2.ellipse(ellipse, fitted, 1, -1)
        ellipse_fill = (ellipse.astype(bool) & mask).sum() / ((ellipse.astype(bool) | mask).sum() + 1e-6)
    corners = len(cv2.approxPolyDP(contour, 0.03 * perimeter, True))
    rectangle_fill = (rectangle.astype(bool) & mask).sum() / ((rectangle.astype(bool) | mask).sum() + 1e-6)
    return [
        np.log(area) / 10,
        area / hull,
        area / (rotated[1][0] * rotated[1][1] + 1e-6),
        ellipse_fill,
        min(corners, 12) / 12,
        4 * np.pi * area / perimeter**2,
        rectangle_fill,
        sum(cv2.contourArea(c) >= 0.05 * area for c in contours)
        / 4,  # not the specks a loose candidate holds
        (mask[0].any() + mask[-1].any() + mask[:, 0].any() + mask[:, -1].any()) / 4,  # cut by the image edge
    ]


def mask_descriptors(
    image: np.ndarray, masks: list[np.ndarray], quality: np.ndarray | None = None
) -> np.ndarray:
    """K x DESCRIPTOR_DIM descriptors of ``masks`` (H x W bool each, non-empty) on ``image`` (H x W x 3 uint8 RGB);
    see the module docstring. ``quality``: K x QUALITY_FEATURES, each mask's predicted IoU and stability score
    as the decoder gave them (``Candidates.quality``); None for ground-truth masks (1 and 1)."""
    if not masks:
        return np.zeros((0, DESCRIPTOR_DIM), np.float32)
    if image.shape[:2] != masks[0].shape:
        raise ValueError(f"masks are {masks[0].shape} but the image is {image.shape[:2]}")
    if quality is None:
        quality = np.ones((len(masks), QUALITY_FEATURES), np.float32)
    quality = np.asarray(quality, np.float32)
    if quality.shape != (len(masks), QUALITY_FEATURES):
        raise ValueError(f"quality must be {len(masks)} x {QUALITY_FEATURES}, got {quality.shape}")
    lab = cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
    inter = _overlaps(masks)  # once: both rules of enclosure read it
    parents = _smallest_enclosers(inter)
    areas = [int(m.sum()) for m in masks]
    own_features = []
    for i, mask in enumerate(masks):
        # Its parts: the candidates it is the smallest enclosing one of, from 2% to half its area (smaller are
        # specks; larger are more often the same object cut another way than a part of it).
        parts = np.zeros(mask.shape, bool)
        for j, parent in enumerate(parents):
            if parent == i and 0.02 * areas[i] <= areas[j] <= 0.5 * areas[i]:
                parts |= masks[j]
        region = _own_region(mask, parts)
        own_features.append(_appearance(lab, region) + [region.sum() / areas[i]] + _shape(mask))
    own_features = np.asarray(own_features, np.float32)
    outers = _most_duplicated_enclosers(inter)
    outer = np.stack([own_features[p] if p >= 0 else np.zeros(OWN_FEATURES, np.float32) for p in outers])
    inside = np.array([[p >= 0] for p in outers], np.float32)
    return np.concatenate([own_features, outer, inside, quality], axis=1)


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
        # Added to a phrase's best score to make its presence logit; not learnt but calibrated on validation
        # scenes after training (sam_core.recognizer_train.calibrate_presence): the instance threshold and the
        # presence threshold trade different errors, so one bias cannot serve both.
        self.register_buffer("presence_bias", torch.zeros(1))
        # Added to each candidate's logit before the instances' threshold 0 (``instance_probabilities``), and
        # calibrated on validation scenes too (calibrate_instances): training pulls most candidates of a scene
        # below 0, so a fixed threshold lost instances as the pick improved (val recall 0.834 at step 500, 0.764
        # at 2,000, last recipe). Neither bias moves which candidate scores best.
        self.register_buffer("instance_bias", torch.zeros(1))

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


def presence_logits(logits: torch.Tensor, bias: torch.Tensor | float = 0.0) -> torch.Tensor:
    """B x K recognition logits -> B presence logits: the best candidate's plus ``bias`` (a recognizer's
    calibrated ``presence_bias``; a phrase is in the image when one of its masks is what it names);
    NO_CANDIDATE_LOGIT for an image without candidates."""
    if logits.shape[1] == 0:
        return logits.new_full((logits.shape[0],), NO_CANDIDATE_LOGIT)
    return logits.amax(dim=1) + bias


def instance_probabilities(logits: torch.Tensor, recognizer: MaskRecognizer) -> torch.Tensor:
    """Logits B x K of ``recognizer`` -> B x K probabilities that each candidate is one of what the phrase names,
    with its calibrated ``instance_bias``: a candidate at 0.5 or more is an instance."""
    return torch.sigmoid(logits + recognizer.instance_bias)


@dataclass
class Candidates:
    """An image's candidate masks as the decoder gave them, largest first: masks K x (H x W bool),
    predicted_iou K, low_res_logits K x 4h x 4w (on the predictor's device), stability_score K."""

    masks: list[np.ndarray]
    predicted_iou: torch.Tensor
    low_res_logits: torch.Tensor
    stability_score: torch.Tensor

    def quality(self) -> np.ndarray:
        """K x QUALITY_FEATURES float32: predicted IoU and stability score (``mask_descriptors``' quality)."""
        quality = torch.stack([self.predicted_iou, self.stability_score], dim=1)
        return quality.float().cpu().numpy().reshape(-1, QUALITY_FEATURES)


def candidate_masks(predictor, batch: int = 64) -> list[np.ndarray]:
    """The masks a phrase is matched against (``candidate_outputs``): H x W bool each, largest first."""
    return candidate_outputs(predictor, batch).masks


def candidate_outputs(predictor, batch: int = 64) -> Candidates:
    """The masks a phrase is matched against, on the predictor's current image, with their predicted IoU and
    low-res logits: a CANDIDATE_POINTS_PER_SIDE^2 grid of clicks, each click's three masks kept when rated above
    CANDIDATE_PRED_IOU and stable to CANDIDATE_STABILITY, then box NMS at CANDIDATE_NMS (the automatic mask
    generator's first crop, at looser settings: a missed object cannot be named).

    ``predictor``: a sam_core.predictor.SamPredictor with an image set (taken as any object with its methods,
    since the predictor itself calls this)."""
    h, w = predictor.original_size
    points = crops.grid_points(CANDIDATE_POINTS_PER_SIDE) * np.array([w, h], np.float64)
    masks, scores, stabilities, boxes, low = [], [], [], [], []
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
        stability = mask_utils.stability_score(logits, threshold, STABILITY_OFFSET)
        stable = stability >= CANDIDATE_STABILITY
        found = logits[stable] > threshold
        nonempty = found.flatten(1).any(dim=1)
        found = found[nonempty]
        masks += list(found.cpu().numpy())
        scores += iou[keep][stable][nonempty].float().cpu().tolist()
        stabilities += stability[stable][nonempty].float().cpu().tolist()
        low += list(low_res[keep][stable][nonempty])
        boxes += list(mask_utils.masks_to_boxes(found).float().cpu().numpy())
    if not masks:
        return Candidates([], torch.zeros(0), torch.zeros(0, 0, 0), torch.zeros(0))
    kept = mask_utils.box_nms(np.asarray(boxes), np.asarray(scores), CANDIDATE_NMS)
    order = sorted((int(i) for i in kept), key=lambda i: -int(masks[i].sum()))
    return Candidates(
        [masks[i] for i in order],
        torch.tensor([scores[i] for i in order]),
        torch.stack([low[i] for i in order]),
        torch.tensor([stabilities[i] for i in order]),
    )
