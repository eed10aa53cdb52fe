"""Every instance a phrase names ("every striped ellipse"), from a text-prompted model.

One text prompt gives one mask: the union of what the phrase names. Instances that touch or overlap are one
connected piece of it, so pieces alone cannot separate them: on 50 validation scenes, the connected pieces of the
*ground-truth* union match only 0.698 of the instances at IoU 0.5 (the recall floor is 0.8). So the instances come
from clicks, as SAM's automatic masks do: the phrase's own mask says where to look, a grid of clicks inside it
each ask "the <phrase> here" (text + one positive click, what the trainer's click prompts teach: the one
instance under the click), and non-maximum suppression by mask IoU keeps one mask per instance, best predicted
IoU first. A model with a mask recognizer (sam_core.text_recognition) needs no grid: its instances are the
candidate masks it scores above 0.5, each asked again as "the <phrase>, here" with a click inside it and its box,
and its union is theirs. (Taking those candidates as they are found more instances on 40 val scenes, recall 0.775
against 0.749, at a precision of 0.229 against 0.303: the question again is kept.)

``segment_phrase`` is what a user asking "segment <phrase>" gets: nothing when the presence head judges the phrase
absent, the instances when the phrase names several ("every ...", "each ...", "all ...") or the caller always
wants instances (the text-prompted automatic stage), else the phrase's mask; an empty
answer always carries the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from sam_core.mask_utils import binary_iou
from sam_core.predictor import SamPredictor
from sam_core.prompts import farthest_point, mask_to_box
from sam_core.text_encoder import check_phrase

POINTS_PER_SIDE = 16
NMS_IOU = 0.5
MIN_AREA = 16  # px of the image: smaller masks are noise, not instances
PRESENCE_THRESHOLD = (
    0.5  # presence probability at which a phrase counts as present (sam_core.text_eval's too)
)
SEVERAL_WORDS = ("every", "each", "all")  # a phrase starting with one of these names instances, not one thing


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
    best first. ``union``: the phrase's own mask (H x W bool), predicted with the text alone when not given
    (a recognizer model ignores it: its instances are the candidate masks it names)."""
    candidates, scores = [], []
    if predictor.recognizes_text:
        named = recognized_masks(predictor, text)
        if named:
            clicks = np.array([[farthest_point(m)[:2]] for m in named], np.float64)
            boxes = np.array([mask_to_box(m) for m in named], np.float64)
            masks, iou, _, _ = predictor.predict_batch(
                clicks, np.ones(clicks.shape[:2], np.int64), boxes, text=text, multimask_output=False
            )
            candidates, scores = list(masks[:, 0].cpu().numpy()), iou[:, 0].cpu().tolist()
        return _suppress(candidates, scores, nms_iou)
    if union is None:
        union = predictor.predict(text=text)[0][0]
    clicks = grid_clicks_inside(union, points_per_side)
    for start in range(0, len(clicks), batch):
        coords = clicks[start : start + batch, None, :]
        masks, iou, _, _ = predictor.predict_batch(
            coords, np.ones(coords.shape[:2], np.int64), text=text, multimask_output=False
        )
        candidates += list(masks[:, 0].cpu().numpy())
        scores += iou[:, 0].cpu().tolist()
    return _suppress(candidates, scores, nms_iou)


def _suppress(candidates: list[np.ndarray], scores: list[float], nms_iou: float):
    """Non-maximum suppression by mask IoU, best predicted IoU first; masks under MIN_AREA dropped."""
    kept, kept_scores = [], []
    for i in np.argsort(scores)[::-1]:
        mask = candidates[i]
        if mask.sum() < MIN_AREA or any(binary_iou(mask, other) > nms_iou for other in kept):
            continue
        kept.append(mask)
        kept_scores.append(float(scores[i]))
    return kept, kept_scores


def recognized_masks(predictor: SamPredictor, text: str, threshold: float = 0.5) -> list[np.ndarray]:
    """The candidate masks (sam_core.text_recognition) a recognizer model scores at least ``threshold`` for
    ``text``, best first."""
    masks, probabilities = predictor.score_candidates(text)
    return [masks[i] for i in np.argsort(-probabilities) if probabilities[i] >= threshold]


def recognized_union(predictor: SamPredictor, text: str) -> np.ndarray:
    """H x W bool: the union of ``recognized_masks`` (all False when the recognizer names none)."""
    named = recognized_masks(predictor, text)
    return np.any(np.stack(named), axis=0) if named else np.zeros(predictor.original_size, bool)


def names_several(phrase: str) -> bool:
    """Whether a phrase asks for every instance of what it names: its first word is one of SEVERAL_WORDS."""
    words = phrase.lower().split()
    return bool(words) and words[0] in SEVERAL_WORDS


@dataclass
class PhraseMasks:
    """What a phrase finds on one image. masks: H x W bool each, best first; scores: their predicted IoU;
    presence: the probability that what the phrase names is in the image, present: presence >= the threshold;
    instances: whether the masks are instances (a phrase naming several) or the phrase's one mask; why_empty: the
    reason when masks is empty."""

    phrase: str
    presence: float
    present: bool
    instances: bool
    masks: list[np.ndarray] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    why_empty: str | None = None


@torch.no_grad()
def segment_phrase(
    predictor: SamPredictor,
    text: str | bytes,
    presence_threshold: float = PRESENCE_THRESHOLD,
    always_instances: bool = False,
    min_predicted_iou: float = 0.0,
    **instance_args,
) -> PhraseMasks:
    """The masks ``text`` names on the predictor's current image (see PhraseMasks). The phrase is checked by the
    predictor's text encoder (ValueError naming what is wrong); instance_args go to find_instances.

    ``always_instances``: look for instances whatever the phrase's first word (the automatic stage asks "find
    every PHRASE" of every image); ``min_predicted_iou``: masks rated lower are dropped, and an answer left empty
    by it says so."""
    masks, scores, _, presence = predictor.predict(text=text)
    phrase = check_phrase(text)
    several = always_instances or names_several(phrase)
    result = PhraseMasks(phrase, presence, presence >= presence_threshold, several)
    if not result.present:
        result.why_empty = (
            f"no mask: the model judges {phrase!r} absent from the image (presence {presence:.3f} < "
            f"{presence_threshold})"
        )
        return result
    # Several: where the instances are looked for (a recognizer model's: the union of the masks it names); one:
    # the text's own answer (a recognizer model's: its best-scored mask, the one the evaluation scores).
    mask = recognized_union(predictor, phrase) if several and predictor.recognizes_text else masks[0]
    if not mask.any():
        result.why_empty = (
            f"no mask: {phrase!r} is judged present (presence {presence:.3f}) but its mask is empty"
        )
        return result
    if several:
        found, rated = find_instances(predictor, phrase, union=mask, **instance_args)
    else:
        found, rated = [mask], [float(scores[0])]
    if not found:
        result.why_empty = (
            f"no mask: {phrase!r} is judged present (presence {presence:.3f}), but the clicks inside its mask of "
            f"{int(mask.sum())} px gave no instance of at least {MIN_AREA} px"
        )
        return result
    kept = [i for i, score in enumerate(rated) if score >= min_predicted_iou]
    result.masks, result.scores = [found[i] for i in kept], [rated[i] for i in kept]
    if not kept:
        what = f"none of its {len(found)} instances is" if several else "its mask is not"
        result.why_empty = (
            f"no mask: {phrase!r} is judged present (presence {presence:.3f}), but {what} rated at least "
            f"{min_predicted_iou} (predicted IoU {max(rated):.3f} at best)"
        )
    return result
