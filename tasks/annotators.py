"""The annotator interface, and the simulated annotator that makes every flow runnable without people.

An annotator receives one image at a time (its embedding already set on a ``SamPredictor`` so each click costs only
a mask-decoder pass) and the masks already accepted for it (the semi-automatic stage's prefilled masks), and
returns the masks it adds, each with the clicks it took and the seconds it cost.

The simulated annotator clicks like the SAM paper's evaluation protocol against known ground truth (the first
click at the point of the object farthest from its boundary, each next one at the point of the error region
farthest from that region's boundary, the previous low-resolution logits fed back as the mask prompt) and accepts
a mask once its IoU with the ground truth reaches a target. It labels objects in order of prominence (largest
first, as the paper's annotators were asked to), skips objects a prefilled mask already covers, and stops when
the image's time budget is spent, so a better model buys more masks per image in the same time. With
``order="levels"`` it takes the objects level by level in turn (the largest whole object, the largest part, the
largest subpart, the next whole object, ...; an object's level is how many others contain it): the paper's stage
2 asked annotators for the less prominent objects, to make the masks more diverse, and an annotator who labels
largest first spends an image of many similar cells on the cells alone and never reaches a nucleus. A mask that does
not reach the target within ``max_clicks`` is finished with the brush (the ground truth, at extra cost), as the
paper's annotators finished masks with brush and eraser.

Simulated time per mask = seconds_per_object (find the object, decide what it is)
                        + clicks * seconds_per_click + (brush_seconds if brushed).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import numpy as np

from sam_core.mask_utils import binary_iou
from sam_core.prompts import first_click, next_click


@dataclass
class AnnotationRequest:
    """One image for an annotator.

    predictor: a ``SamPredictor`` with this image's embedding set. prefilled: HxW bool masks already accepted for
    the image (empty in the assisted-manual stage). ground_truth: HxW bool masks, known only in simulation.
    """

    image_id: str
    uri: str
    height: int
    width: int
    predictor: object
    prefilled: list[np.ndarray] = field(default_factory=list)
    ground_truth: list[np.ndarray] | None = None


@dataclass
class AnnotatedMask:
    """One mask an annotator accepted. mask: HxW bool. point_coords: [[x, y], ...] of its clicks in pixels."""

    mask: np.ndarray
    clicks: int
    seconds: float
    point_coords: list[list[float]]
    predicted_iou: float | None
    annotator: str
    brushed: bool = False


@runtime_checkable
class Annotator(Protocol):
    """Anything that turns an :class:`AnnotationRequest` into the masks it adds. ``name`` goes in the masks'
    ``annotator`` column."""

    name: str

    def annotate(self, request: AnnotationRequest) -> list[AnnotatedMask]: ...


AnnotationOrder = Literal["largest", "levels"]
ORDERS: tuple[str, ...] = ("largest", "levels")
CONTAINED = 0.9
"""An object lies inside another when at least this fraction of its pixels are the other's (a nucleus in its
cell; the synthetic scenes' parts lie wholly inside, less where a boundary erodes them)."""


def labelling_order(masks: list[np.ndarray], order: str = "largest") -> list[int]:
    """The indices of ``masks`` (HxW bool each) in the order a simulated annotator labels them: "largest" first,
    or "levels" in turn, each level largest first, where an object's level is the number of larger masks that
    contain it (CONTAINED). Ties keep the input order."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    areas = np.asarray([int(m.sum()) for m in masks], np.int64)
    by_area = sorted(range(len(masks)), key=lambda i: -areas[i])
    if order == "largest" or len(masks) < 2:
        return by_area
    flat = np.stack([m.reshape(-1) for m in masks]).astype(np.float32)
    inside = (flat @ flat.T) >= CONTAINED * np.maximum(areas, 1)[:, None]  # [i, j]: i's pixels are j's
    larger = areas[None, :] > areas[:, None]
    level = (inside & larger).sum(axis=1)
    within, seen = {}, Counter()  # each object's place within its level, largest first
    for i in by_area:
        within[i] = seen[level[i]]
        seen[level[i]] += 1
    return sorted(by_area, key=lambda i: (within[i], level[i]))


@dataclass
class SimulatedAnnotator:
    """Clicks by the paper's protocol against ``request.ground_truth``; see the module docstring.

    iou_target: accept a mask at this IoU with the ground truth. max_clicks: give up clicking and brush after
    this many. covered_iou: a ground-truth object is already done when a prefilled mask overlaps it at least this
    much. seconds_per_image: the time budget per image (None: label every object). order: "largest" first, or
    "levels" in turn (see the module docstring; ``labelling_order``).
    """

    iou_target: float = 0.9
    max_clicks: int = 10
    seconds_per_object: float = 5.0
    seconds_per_click: float = 3.0
    brush_seconds: float = 20.0
    seconds_per_image: float | None = 150.0
    covered_iou: float = 0.7
    min_area: int = 0
    order: AnnotationOrder = "largest"
    name: str = "simulated"

    def __post_init__(self) -> None:
        if not 0.0 < self.iou_target <= 1.0:
            raise ValueError(f"iou_target must be in (0, 1], got {self.iou_target}")
        if self.max_clicks < 1:
            raise ValueError(f"max_clicks must be >= 1, got {self.max_clicks}")
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {self.order!r}")

    def annotate(self, request: AnnotationRequest) -> list[AnnotatedMask]:
        if request.ground_truth is None:
            raise ValueError(f"the simulated annotator needs ground truth for image {request.image_id}")
        objects = [m for m in request.ground_truth if m.sum() > max(self.min_area, 0)]
        objects = [objects[i] for i in labelling_order(objects, self.order)]
        done = list(request.prefilled)
        out: list[AnnotatedMask] = []
        spent = 0.0
        for gt in objects:
            if self.seconds_per_image is not None and spent >= self.seconds_per_image:
                break
            if any(binary_iou(gt, m) >= self.covered_iou for m in done):
                continue
            annotated = self.annotate_object(request.predictor, gt)
            spent += annotated.seconds
            done.append(annotated.mask)
            out.append(annotated)
        return out

    def annotate_object(self, predictor, gt: np.ndarray) -> AnnotatedMask:
        """Click on one ground-truth object (HxW bool) until the predictor's mask reaches ``iou_target``."""
        x, y, label = first_click(gt)
        coords, labels = [[float(x), float(y)]], [label]
        logits = None
        mask, score = None, None
        for clicks in range(1, self.max_clicks + 1):
            masks, scores, low_res = predictor.predict(
                point_coords=np.asarray(coords, dtype=np.float32),
                point_labels=np.asarray(labels, dtype=np.int64),
                mask_input=logits,
                # One click is ambiguous (subpart, part or whole): ask for three and take the one the model rates
                # best, as the interactive tool shows it; later clicks disambiguate, so one mask is enough.
                multimask_output=clicks == 1,
            )
            best = int(np.argmax(scores))
            mask, score, logits = masks[best], float(scores[best]), low_res[best : best + 1]
            if binary_iou(gt, mask) >= self.iou_target:
                return self._accepted(mask, clicks, coords, score, brushed=False)
            click = next_click(gt, mask)
            if click is None or clicks == self.max_clicks:
                break
            coords.append([float(click[0]), float(click[1])])
            labels.append(click[2])
        return self._accepted(gt.copy(), len(coords), coords, score, brushed=True)

    def _accepted(self, mask, clicks, coords, score, brushed) -> AnnotatedMask:
        seconds = self.seconds_per_object + clicks * self.seconds_per_click
        if brushed:
            seconds += self.brush_seconds
        return AnnotatedMask(
            mask=np.asarray(mask, dtype=bool),
            clicks=clicks,
            seconds=seconds,
            point_coords=[list(c) for c in coords],
            predicted_iou=score,
            annotator=self.name,
            brushed=brushed,
        )
