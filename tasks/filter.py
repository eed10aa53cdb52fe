"""Filter: keep the automatic masks worth keeping, as the SA-1B pipeline did.

The automatic mask generator already drops masks below its predicted-IoU and stability thresholds, suppresses
duplicates within a crop and cleans up small holes and islands. This filter is the stage's own policy on top:
a stricter confidence bar (the semi-automatic stage pre-fills only *confident* masks), a minimum area, dropping
masks that cover nearly the whole image (SA-1B dropped masks covering 95% or more of the image), and a final box
NMS over what remains.

With ``target_precision`` the two confidence thresholds are not fixed numbers but the model version's own
operating point, measured on labelled images (tasks.calibrate): the paper's 0.88 / 0.95 assume a calibrated IoU
head, which a young model does not have. That calibration can also rate each mask by a ``QualityModel``: the
probability that it is right, fitted on the same labelled candidates from its predicted IoU, its stability and its
size (a multivariate confidence calibration, as detectors calibrate a box's score with its size), so that masks
are kept and ranked by it instead of by predicted IoU alone.
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel, Field, model_validator

from sam_core import defaults
from sam_core.mask_utils import box_nms

QUALITY_FEATURES = ("predicted_iou", "stability_score", "log_area_fraction", "log_area_fraction_squared")
"""What a ``QualityModel`` rates a mask by: the IoU head's rating, the stability score, and log(area / image area)
with its square, so that a middle size can rate best (a young model's IoU head is calibrated differently on small
and large masks: the demo's r2 rated its loose masks of faint cells, and of two cells as one, as high as its crisp
nuclei)."""


def quality_features(predicted_iou, stability_score, area, image_area) -> np.ndarray:
    """(N, 4) float64 QUALITY_FEATURES of N masks; area and image_area in pixels (arrays or numbers)."""
    area = np.maximum(np.asarray(area, np.float64), 1.0)
    log_fraction = np.log(area / np.asarray(image_area, np.float64))
    return np.stack(
        np.broadcast_arrays(
            np.asarray(predicted_iou, np.float64),
            np.asarray(stability_score, np.float64),
            log_fraction,
            log_fraction**2,
        ),
        axis=-1,
    ).reshape(-1, len(QUALITY_FEATURES))


class QualityModel(BaseModel):
    """A logistic model of the probability that an automatic mask is right, over QUALITY_FEATURES standardised
    by ``mean`` and ``scale``: sigmoid(weights . (x - mean) / scale + bias). Fitted by
    tasks.thresholds.fit_quality on a calibration's candidates; ``rate`` applies it."""

    mean: tuple[float, float, float, float]
    scale: tuple[float, float, float, float]
    weights: tuple[float, float, float, float]
    bias: float

    @model_validator(mode="after")
    def _finite(self) -> QualityModel:
        values = (*self.mean, *self.scale, *self.weights, self.bias)
        if not all(math.isfinite(v) for v in values) or min(self.scale) <= 0:
            raise ValueError(f"a quality model needs finite numbers and positive scales, got {self}")
        return self

    def rate(self, predicted_iou, stability_score, area, image_area) -> np.ndarray:
        """(N,) float64 probabilities in (0, 1) for N masks (see quality_features for the arguments)."""
        x = (quality_features(predicted_iou, stability_score, area, image_area) - self.mean) / self.scale
        return 1.0 / (1.0 + np.exp(-(x @ np.asarray(self.weights) + self.bias)))

    def rate_records(self, records: list[dict], image_size: tuple[int, int]) -> np.ndarray:
        """(N,) probabilities of N AMG records (predicted_iou, stability_score, area) of an H x W image."""
        if not records:
            return np.zeros(0)
        return self.rate(
            [r["predicted_iou"] for r in records],
            [r["stability_score"] for r in records],
            [r["area"] for r in records],
            image_size[0] * image_size[1],
        )


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
    precision_confidence: float = Field(
        0.95,
        ge=0.5,
        lt=1.0,
        description="with target_precision: the one-sided confidence at which the calibration's precision must "
        "reach it (its Wilson lower bound); lower keeps more masks on few calibration images, at a precision "
        "nearer the target. 0.5: the observed precision",
    )
    calibrate_quality: bool = Field(
        True,
        description="with target_precision: keep and rank masks by a probability of being right fitted on the "
        "calibration's candidates from predicted IoU, stability and area (a QualityModel), not by predicted IoU "
        "alone",
    )
    quality: QualityModel | None = Field(
        None,
        description="set by a calibration (calibrate_quality): masks are kept at quality >= min_quality and "
        "stability >= min_stability_score, and ranked by quality; min_predicted_iou is then not used",
    )
    min_quality: float = Field(
        0.0, ge=0.0, le=1.0, description="with quality: keep masks rated at least this"
    )


def keeps_nothing(settings: FilterSettings) -> bool:
    """True when no mask can pass ``settings``: a calibration found no operating point at its target precision
    and set both confidence thresholds to inf (tasks.thresholds.NOTHING). Callers then skip the automatic mask
    generator, whose grid of decoder passes (about 2 s an image on 2 cores) could keep nothing."""
    return bool(
        np.isinf(settings.min_predicted_iou)
        or np.isinf(settings.min_stability_score)
        or np.isinf(settings.min_quality)
    )


def why_nothing(settings: FilterSettings, model_version: str) -> str:
    """The sentence an empty result gives when ``keeps_nothing(settings)``."""
    return (
        f"no mask kept: the calibration of {model_version} found no thresholds at which its automatic masks are "
        f"right {settings.target_precision} of the time (at IoU {settings.match_iou}), so none was generated"
    )


CONFIDENT = FilterSettings(min_predicted_iou=0.92, min_stability_score=0.97, min_area=32)
"""The semi-automatic stage's bar for masks it pre-fills without a person looking."""


def _confidence(records: list[dict], image_size: tuple[int, int], settings: FilterSettings):
    """((N,) float64 rating, bar, name): what ``settings``' first bar rates N AMG records by, with its threshold and
    its name for a message: calibrated quality where the filter has a quality model, else predicted IoU."""
    if settings.quality is not None:
        return settings.quality.rate_records(records, image_size), settings.min_quality, "quality"
    rating = np.asarray([r["predicted_iou"] for r in records], np.float64)
    return rating, settings.min_predicted_iou, "predicted IoU"


def filter_records(records: list[dict], image_size: tuple[int, int], settings: FilterSettings) -> list[dict]:
    """The records (AMG output dicts) that pass ``settings``, best first: in decreasing predicted IoU, or, with a
    quality model, in decreasing quality (each kept record then holds its "quality").

    image_size: (H, W) of the image the records belong to.
    """
    height, width = image_size
    limit = settings.max_area_fraction * height * width
    rating, bar, _ = _confidence(records, image_size, settings)
    passed = [
        i
        for i, r in enumerate(records)
        if rating[i] >= bar
        and r["stability_score"] >= settings.min_stability_score
        and settings.min_area <= r["area"] <= limit
    ]
    if settings.quality is not None:
        kept = [{**records[i], "quality": float(rating[i])} for i in passed]
    else:
        kept = [records[i] for i in passed]
    if len(kept) < 2:
        return kept
    boxes = np.asarray([[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in kept)], dtype=np.float32)
    return [kept[i] for i in box_nms(boxes, rating[passed].astype(np.float32), settings.nms_iou)]


def why_none_kept(records: list[dict], image_size: tuple[int, int], settings: FilterSettings) -> str:
    """Why ``filter_records`` kept none of ``records``: the best value of the first bar that removed them all,
    against its threshold."""
    if not records:
        return "the generator kept no mask"
    height, width = image_size
    limit = settings.max_area_fraction * height * width
    rating, bar, name = _confidence(records, image_size, settings)
    if rating.max() < bar:
        return (
            f"the stage filter kept none of {len(records)} masks: the highest {name} was {rating.max():.3f}, "
            f"below its threshold {bar:.3f}"
        )
    confident = [r for r, q in zip(records, rating, strict=True) if q >= bar]
    best_stability = max(r["stability_score"] for r in confident)
    if best_stability < settings.min_stability_score:
        return (
            f"the stage filter kept none of {len(records)} masks: {len(confident)} reached the {name} threshold "
            f"{bar:.3f}, and their highest stability score was {best_stability:.3f}, below "
            f"min_stability_score {settings.min_stability_score:.3f}"
        )
    return (
        f"the stage filter kept none of {len(records)} masks: every confident and stable mask was outside the area "
        f"limits ({settings.min_area} px to {limit:.0f} px)"
    )
