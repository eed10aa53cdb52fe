"""Filter: keep the automatic masks worth keeping, as the SA-1B pipeline did.

The automatic mask generator already drops masks below its predicted-IoU and stability thresholds, suppresses
duplicates within a crop and cleans up small holes and islands. This filter is the stage's own policy on top:
a stricter confidence bar (the semi-automatic stage pre-fills only *confident* masks), a minimum area, dropping
masks that cover nearly the whole image (SA-1B dropped masks covering 95% or more of the image), and a final box
NMS over what remains.

With ``target_precision`` the two confidence thresholds are not fixed numbers but the model version's own
operating point, measured on labelled images (tasks.calibrate): the paper's 0.88 / 0.95 assume a calibrated IoU
head, which a young model does not have.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, Field

from sam_core import defaults
from sam_core.mask_utils import box_nms


class FilterSettings(BaseModel):
    """Thresholds applied to automatic-mask records (predicted_iou, stability_score, area, bbox XYWH)."""

    min_predicted_iou: float = Field(
        defaults.PRED_IOU_THRESH, ge=0.0, le=1.0, description="keep masks with predicted IoU >= this"
    )
    min_stability_score: float = Field(
        defaults.STABILITY_SCORE_THRESH, ge=0.0, le=1.0, description="keep masks with stability >= this"
    )
    min_area: int = Field(16, ge=0, description="pixels; smaller masks are dropped")
    max_area_fraction: float = Field(
        defaults.MAX_AREA_FRACTION, gt=0.0, le=1.0, description="drop masks covering more of the image"
    )
    nms_iou: float = Field(
        defaults.BOX_NMS_THRESH,
        ge=0.0,
        le=1.0,
        description="box IoU above which the lower-scored mask is dropped",
    )
    target_precision: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="take both confidence thresholds from the model's calibration (tasks.calibrate): the loosest "
        "at which this fraction of kept masks match a ground-truth mask at match_iou. None: the fixed ones above",
    )
    match_iou: float = Field(0.75, gt=0.0, le=1.0, description="with target_precision: IoU of a right mask")
    min_kept: int = Field(
        10, ge=1, description="with target_precision: calibration candidates an operating point must keep"
    )


def keeps_nothing(settings: FilterSettings) -> bool:
    """True when no mask can pass ``settings``: a calibration found no operating point at its target precision
    and set both confidence thresholds to inf (tasks.thresholds.NOTHING). Callers then skip the automatic mask
    generator, whose grid of decoder passes (about 2 s an image on 2 cores) could keep nothing."""
    return bool(np.isinf(settings.min_predicted_iou) or np.isinf(settings.min_stability_score))


def why_nothing(settings: FilterSettings, model_version: str) -> str:
    """The sentence an empty result gives when ``keeps_nothing(settings)``."""
    return (
        f"no mask kept: the calibration of {model_version} found no thresholds at which its automatic masks are "
        f"right {settings.target_precision} of the time (at IoU {settings.match_iou}), so none was generated"
    )


CONFIDENT = FilterSettings(min_predicted_iou=0.92, min_stability_score=0.97, min_area=32)
"""The semi-automatic stage's bar for masks it pre-fills without a person looking."""


def filter_records(records: list[dict], image_size: tuple[int, int], settings: FilterSettings) -> list[dict]:
    """The records (AMG output dicts) that pass ``settings``, in decreasing predicted-IoU order.

    image_size: (H, W) of the image the records belong to.
    """
    height, width = image_size
    limit = settings.max_area_fraction * height * width
    kept = [
        r
        for r in records
        if r["predicted_iou"] >= settings.min_predicted_iou
        and r["stability_score"] >= settings.min_stability_score
        and settings.min_area <= r["area"] <= limit
    ]
    if len(kept) < 2:
        return kept
    boxes = np.asarray([[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in kept)], dtype=np.float32)
    scores = np.asarray([r["predicted_iou"] for r in kept], dtype=np.float32)
    return [kept[i] for i in box_nms(boxes, scores, settings.nms_iou)]


def why_none_kept(records: list[dict], image_size: tuple[int, int], settings: FilterSettings) -> str:
    """Why ``filter_records`` kept none of ``records``: the best value of the first bar that removed them all,
    against its threshold."""
    if not records:
        return "the generator kept no mask"
    height, width = image_size
    limit = settings.max_area_fraction * height * width
    best_iou = max(r["predicted_iou"] for r in records)
    if best_iou < settings.min_predicted_iou:
        return (
            f"the stage filter kept none of {len(records)} masks: the highest predicted IoU was {best_iou:.3f}, "
            f"below min_predicted_iou {settings.min_predicted_iou:.3f}"
        )
    confident = [r for r in records if r["predicted_iou"] >= settings.min_predicted_iou]
    best_stability = max(r["stability_score"] for r in confident)
    if best_stability < settings.min_stability_score:
        return (
            f"the stage filter kept none of {len(records)} masks: {len(confident)} reached min_predicted_iou "
            f"{settings.min_predicted_iou:.3f}, and their highest stability score was {best_stability:.3f}, below "
            f"min_stability_score {settings.min_stability_score:.3f}"
        )
    return (
        f"the stage filter kept none of {len(records)} masks: every confident and stable mask was outside the area "
        f"limits ({settings.min_area} px to {limit:.0f} px)"
    )
