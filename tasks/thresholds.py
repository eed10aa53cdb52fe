"""The operating point of a model version: the loosest predicted-IoU and stability thresholds at which its automatic
masks are right often enough. Pure policy over a calibration table (tasks.calibrate measures and stores it): no
Prefect, no store.

A stage that asks for a ``target_precision`` (``FilterSettings``) gets the loosest pair of thresholds at which the
masks it would keep (after the area limits and box NMS) are right at least that often, where a right mask matches a
ground-truth object at ``match_iou`` that no higher-rated kept mask matched, and "at least" holds at a lower
confidence bound (``FilterSettings.precision_confidence``, one-sided 95% unless told; ``operating_point``,
``wilson_lower``). Where no pair qualifies, both thresholds are ``NOTHING`` and nothing
is kept (``thresholds_at``).

With ``FilterSettings.calibrate_quality`` the first threshold is not on predicted IoU but on a quality (the
probability of being right) that ``fit_quality`` fits on the same candidates from predicted IoU, stability and
area (tasks.filter.QualityModel); masks are then ranked by it for NMS too. On the demo's faint cells a young
model's IoU head rated its loose masks of cells as high as its good ones, and size told them apart.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Annotated, TypeVar

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from sam_core import defaults
from sam_core.mask_utils import box_nms
from tasks.filter import FilterSettings, QualityModel, quality_features

GeneratorSettings = TypeVar(
    "GeneratorSettings", bound=BaseModel
)  # tasks.autogen.AutogenSettings, a task module

STABILITY_GRID = (0.0, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.97)
"""Stability thresholds tried by ``operating_point`` (the predicted-IoU threshold is searched exactly)."""
NOTHING = math.inf
"""The threshold of an operating point that cannot be met: nothing passes it."""
CONFIDENCE = 0.95
"""One-sided 95% unless a filter says otherwise (FilterSettings.precision_confidence): an operating point's
precision must reach the target at its Wilson lower bound, not just on average. Picking the best of many
thresholds on a few images flatters the winner (the demo's first calibration on 4 images promised 0.5 and gave
0.14 on the test images); the bound asks for more evidence where there is little."""


def confidence_z(confidence: float) -> float:
    """The standard normal quantile of a one-sided ``confidence`` level in [0.5, 1) (0.95 -> 1.645; 0.5 -> 0: the
    bound is the observed proportion)."""
    if not 0.5 <= confidence < 1.0:
        raise ValueError(f"confidence must be in [0.5, 1), got {confidence!r}")
    return NormalDist().inv_cdf(confidence)


CONFIDENCE_Z = confidence_z(CONFIDENCE)


def wilson_lower(matched, kept, z: float = CONFIDENCE_Z):
    """Wilson score lower bound of the proportion matched / kept (numbers or arrays; kept >= 1) at the normal
    quantile ``z`` (``confidence_z``)."""
    n = np.asarray(kept, np.float64)
    p = np.asarray(matched, np.float64) / n
    centre = p + z * z / (2 * n)
    spread = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - spread) / (1 + z * z / n)


THRESHOLD_KEYS = {"predicted_iou": "pred_iou_thresh", "quality": "quality_thresh"}
"""The key of an operating point's first threshold, by the score it is on."""
RATED_COLUMNS = ("predicted_iou", "stability_score", "area", "image_area")
"""The calibration table's columns a QualityModel rates a candidate by (tasks.filter.quality_features)."""
MIN_QUALITY_EXAMPLES = 10
"""``fit_quality`` fits nothing with fewer right or fewer wrong candidates than this."""


def _survivors(candidates: pd.DataFrame, nms_iou: float, score: str = "predicted_iou") -> pd.DataFrame:
    """The candidates box NMS by ``score`` keeps, image by image (all of them when the table has no boxes or
    nms_iou >= 1)."""
    if nms_iou >= 1.0 or "x0" not in candidates or candidates.empty:
        return candidates
    kept = []
    for _, group in candidates.groupby("image_id", sort=False):
        boxes = group[["x0", "y0", "x1", "y1"]].to_numpy(np.float32)
        kept.append(group.iloc[box_nms(boxes, group[score].to_numpy(np.float32), nms_iou)])
    return pd.concat(kept)


def _sized(candidates: pd.DataFrame, min_area: int, max_area_fraction: float) -> pd.DataFrame:
    """The candidates within the area limits (all of them when the table has no image_area)."""
    if "image_area" not in candidates or (min_area <= 0 and max_area_fraction >= 1.0):
        return candidates
    area = candidates["area"]
    return candidates[(area >= min_area) & (area <= max_area_fraction * candidates["image_area"])]


def fit_quality(
    candidates: pd.DataFrame,
    match_iou: float,
    min_area: int = 0,
    max_area_fraction: float = 1.0,
    l2: float = 1.0,
    iterations: int = 50,
) -> QualityModel | None:
    """A QualityModel of P(best_iou >= match_iou) over the candidates within the area limits (a calibration
    table: predicted_iou, stability_score, area, image_area, best_iou), by L2-regularised logistic regression
    (Newton's method on standardised features, ``l2`` on the weights, not the bias). Deterministic.

    None when fewer than MIN_QUALITY_EXAMPLES candidates are right or wrong: too little to fit (the stage then
    ranks by predicted IoU)."""
    sized = _sized(candidates, min_area, max_area_fraction)
    y = (sized["best_iou"].to_numpy(np.float64) >= match_iou).astype(np.float64)
    right = int(y.sum())
    if min(right, len(y) - right) < MIN_QUALITY_EXAMPLES:
        return None
    x = quality_features(*(sized[column] for column in RATED_COLUMNS))
    mean = x.mean(0)
    scale = np.where(x.std(0) > 1e-6, x.std(0), 1.0)
    z = np.c_[(x - mean) / scale, np.ones(len(x))]
    w = np.zeros(z.shape[1])
    penalty = np.diag([l2] * (z.shape[1] - 1) + [0.0])
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(z @ w)))
        gradient = z.T @ (p - y) + penalty @ w
        hessian = (z * (p * (1 - p))[:, None]).T @ z + penalty + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return QualityModel(
        mean=tuple(mean.tolist()),
        scale=tuple(scale.tolist()),
        weights=tuple(w[:-1].tolist()),
        bias=float(w[-1]),
    )


def operating_point(
    candidates: pd.DataFrame,
    target_precision: float,
    match_iou: float,
    min_kept: int = 10,
    nms_iou: float = 1.0,
    min_area: int = 0,
    max_area_fraction: float = 1.0,
    score: str = "predicted_iou",
    confidence: float = CONFIDENCE,
) -> dict:
    """The loosest thresholds at which ``target_precision`` of the kept masks match at ``match_iou``.

    Kept means what a stage would keep: candidates at or above both thresholds, within the area limits, after
    box NMS at ``nms_iou`` per image. Greedy NMS in decreasing predicted IoU keeps a candidate or not by the
    higher-rated ones alone, so for one stability threshold a single NMS pass serves every predicted-IoU
    threshold. Over the stability thresholds of STABILITY_GRID and every predicted-IoU threshold, the pair that
    keeps the most right masks while keeping at least ``min_kept``, with the Wilson lower bound of its precision
    at one-sided ``confidence`` (CONFIDENCE: 95%) at least ``target_precision``.
    A kept mask is right when its best ground-truth mask matches it at ``match_iou`` and no higher-rated kept
    mask has matched that object already: duplicates are wrong, as in the evaluation's one-to-one precision
    (box NMS leaves many: variants of a large object whose boxes differ).

    ``score``: the column the first threshold is on and NMS ranks by (THRESHOLD_KEYS: "predicted_iou", or
    "quality" where filter_operating_point has rated the candidates).

    Returns {"pred_iou_thresh" (or "quality_thresh"), "stability_score_thresh", "precision" (observed),
    "precision_lower" (its bound), "kept", "matched", "candidates", "feasible"}; when no pair qualifies, both
    thresholds are NOTHING (inf) and "feasible" is False.
    """
    threshold_key = THRESHOLD_KEYS[score]
    z = confidence_z(confidence)
    if not 0.0 < target_precision <= 1.0:
        raise ValueError(f"target_precision must be in (0, 1], got {target_precision}")
    if not 0.0 < match_iou <= 1.0:
        raise ValueError(f"match_iou must be in (0, 1], got {match_iou}")
    best = {
        threshold_key: NOTHING,
        "stability_score_thresh": NOTHING,
        "precision": None,
        "precision_lower": None,
        "kept": 0,
        "matched": 0,
        "candidates": len(candidates),
        "feasible": False,
    }
    sized = _sized(candidates, min_area, max_area_fraction)
    for s in STABILITY_GRID:
        on = _survivors(sized[sized["stability_score"] >= s], nms_iou, score)
        order = np.argsort(-on[score].to_numpy(np.float64), kind="stable")
        p = on[score].to_numpy(np.float64)[order]
        g = on["best_iou"].to_numpy(np.float64)[order] >= match_iou
        # Only the first (highest-rated) kept mask of each ground-truth object counts as right: the rest are
        # duplicates, as in the evaluation's one-to-one precision.
        images, objects = on["image_id"].to_numpy()[order], on["best_gt"].to_numpy()[order]
        seen: set = set()
        for i in np.flatnonzero(g):
            if (images[i], objects[i]) in seen:
                g[i] = False
            seen.add((images[i], objects[i]))
        kept = np.arange(1, len(p) + 1)
        matched = np.cumsum(g)
        # A threshold keeps every candidate at or above it: only the last index of each run of equal values is
        # a cut a threshold can make.
        cut = np.append(p[1:] != p[:-1], True) if len(p) else np.zeros(0, bool)
        ok = cut & (kept >= min_kept) & (wilson_lower(matched, kept, z) >= target_precision)
        if not ok.any():
            continue
        i = int(np.flatnonzero(ok)[np.argmax(matched[ok])])
        precision = float(matched[i] / kept[i])
        if (matched[i], precision) > (best["matched"], best["precision"] or 0.0):
            best.update(
                {threshold_key: float(p[i])},
                stability_score_thresh=float(s),
                precision=precision,
                precision_lower=float(wilson_lower(matched[i], kept[i], z)),
                kept=int(kept[i]),
                matched=int(matched[i]),
                feasible=True,
            )
    return best


def measured_nms(autogen, filter: FilterSettings) -> float:
    """The box NMS IoU a stage with these generator and filter settings applies, the one its operating point is
    measured at (filter_operating_point) and its filter then keeps (thresholds_at): both NMS passes run on what
    passes, so the stricter decides."""
    return min(autogen.box_nms_thresh, filter.nms_iou)


def filter_operating_point(candidates: pd.DataFrame, autogen, filter: FilterSettings) -> dict:
    """``operating_point`` for ``filter.target_precision`` under the NMS and area limits a stage with these
    generator and filter settings applies (the generator's NMS and the filter's both run on what passes; the
    stricter of the two decides).

    With ``filter.calibrate_quality`` the candidates are first rated by a QualityModel fitted on them
    (fit_quality) and the point is on that rating: {"quality_thresh", "quality_model" (its fields), ...}, and
    "pred_iou_thresh" None. Where too few candidates are right or wrong to fit one, the point is on predicted
    IoU, as without it ("quality_model" None)."""
    limits = {
        "nms_iou": measured_nms(autogen, filter),
        "min_area": filter.min_area,
        "max_area_fraction": filter.max_area_fraction,
        "confidence": filter.precision_confidence,
    }
    model = None
    if filter.calibrate_quality:
        model = fit_quality(candidates, filter.match_iou, filter.min_area, filter.max_area_fraction)
    if model is None:
        point = operating_point(
            candidates, filter.target_precision, filter.match_iou, filter.min_kept, **limits
        )
        return {**point, "quality_thresh": None, "quality_model": None}
    rated = candidates.assign(quality=model.rate(*(candidates[column] for column in RATED_COLUMNS)))
    point = operating_point(
        rated, filter.target_precision, filter.match_iou, filter.min_kept, score="quality", **limits
    )
    return {**point, "pred_iou_thresh": None, "quality_model": model.model_dump()}


def thresholds_at(
    point: dict, autogen: GeneratorSettings, filter: FilterSettings
) -> tuple[GeneratorSettings, FilterSettings]:
    """The generator and filter settings with ``point``'s thresholds (a ``filter_operating_point``) as their
    predicted-IoU and stability thresholds: the generator's too, so that its NMS runs only over masks that pass.

    The generator takes thresholds in [0, 1] (an IoU head may predict below 0): it gets them clipped, and an
    unreachable point keeps its strictest while the filter's inf (model_copy does not validate) drops the rest.

    A point on quality ("quality_model") gives the filter the model and its quality threshold; the generator then
    keeps every predicted IoU and leaves NMS, within and across crops, to the filter, which ranks by quality as
    the calibration did (its candidates had no NMS either), at the stricter of the two NMS thresholds, the one
    the point was measured at (filter_operating_point): at the filter's own alone, stage 2's pre-fill (CONFIDENT,
    NMS 0.7, under a generator at 0.3) kept a cell's variants as duplicates, at precision 0.70 for a target of 0.9.
    """
    s = point["stability_score_thresh"]
    generator = {"stability_score_thresh": min(max(s, 0.0), 1.0)}
    kept = {"min_stability_score": s}
    if point.get("quality_model") is not None:
        generator.update(pred_iou_thresh=0.0, box_nms_thresh=1.0, crop_nms_thresh=1.0)
        kept.update(
            quality=QualityModel.model_validate(point["quality_model"]),
            min_quality=point["quality_thresh"],
            nms_iou=measured_nms(autogen, filter),
        )
    else:
        t = point["pred_iou_thresh"]
        generator["pred_iou_thresh"] = min(max(t, 0.0), 1.0)
        kept["min_predicted_iou"] = t
    return autogen.model_copy(update=generator), filter.model_copy(update=kept)


# The settings that decide which crops a generator sees (its crop layout), one definition for the generator's
# settings (tasks.autogen.AutogenSettings) and the calibration's (tasks.calibrate.CalibrationSettings): a
# calibration is of one layout, and the two must accept the same ones.
CropLayers = Annotated[
    int,
    Field(
        ge=0,
        le=3,
        description="zoomed-in crop layers beside the whole image (layer i: (2**i)**2 overlapping crops, each "
        "encoded in the task); 0: the whole image alone",
    ),
]
CropPointsDownscale = Annotated[
    int, Field(ge=1, le=16, description="crop layer i has points_per_side / factor**i points per side")
]
CropOverlap = Annotated[
    float,
    Field(
        ge=0.0, lt=1.0, description="overlap of neighbouring crops (layer 1), a fraction of the short side"
    ),
]
CROP_DEFAULTS = {
    "crop_n_layers": 0,
    "crop_n_points_downscale_factor": 1,
    "crop_overlap_ratio": defaults.CROP_OVERLAP_RATIO,
}
CROP_FIELDS = tuple(CROP_DEFAULTS)


def crop_layout(settings) -> str:
    """A name for the crops ``settings`` (AutogenSettings or CalibrationSettings) look at: "" for the whole image
    alone, else e.g. "crops1-down1-overlap0.341". Thresholds calibrated on one layout's candidates are not
    another's (a crop's zoomed masks rate differently), so calibrations are kept per layout."""
    if settings.crop_n_layers == 0:
        return ""
    return (
        f"crops{settings.crop_n_layers}-down{settings.crop_n_points_downscale_factor}"
        f"-overlap{settings.crop_overlap_ratio:.3g}"
    )
