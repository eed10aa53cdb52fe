"""Calibrate: the predicted-IoU and stability thresholds at which one model version's automatic masks are right.

The paper's thresholds (predicted IoU >= 0.88, stability >= 0.95) suit a model whose IoU head is calibrated, as
SAM's was after a billion masks. A young model's head is not: the CPU-trained tiny model never predicts above
about 0.45, so at the paper's thresholds it keeps nothing, even where many of its masks are good. So the engine
measures each version's own operating point, the way a detector's score threshold is set on validation data:

1. The automatic mask generator runs on the labelled images of a calibration split (default ``val``, never
   annotated by the stages nor used for evaluation) with no thresholds and no NMS. Every candidate mask is kept
   with its predicted IoU, stability score and best IoU against the ground truth (any level: whole, part,
   subpart). The table goes to ``<store>/calibration/<model_version>.parquet``.
2. A stage that asks for a ``target_precision`` (``FilterSettings``) gets the loosest pair of thresholds at
   which the masks it would keep are right at least that often: the policy, pure and apart from the store and
   Prefect, is tasks.thresholds (``operating_point``); ``calibrated_settings`` reads the table and applies it.

This module measures, stores and reads the candidates (the ``calibrate`` task) and checks a stage can have them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from prefect import task
from pydantic import BaseModel, Field

from sam_core import defaults
from sam_core.automatic_mask_generator import AutomaticMaskGenerator
from stores import Store
from stores.schemas import CALIBRATION
from tasks.ground_truth import evaluation_set
from tasks.models import load_model
from tasks.progress import CACHE_POLICY, OnProgress
from tasks.runlog import run_logger
from tasks.thresholds import (
    CROP_DEFAULTS,
    CROP_FIELDS,
    CropLayers,
    CropOverlap,
    CropPointsDownscale,
    crop_layout,
    filter_operating_point,
    thresholds_at,
)

CANDIDATE_COLUMNS = tuple(CALIBRATION.names)
"""The columns of a calibration table (stores.schemas.CALIBRATION): one row per candidate mask."""


class CalibrationSettings(BaseModel):
    """Where and how a model version's automatic masks are scored against ground truth."""

    ground_truth: str = Field(
        ..., min_length=1, description="COCO JSON holding the calibration images' masks"
    )
    split: str = Field("val", description="images to calibrate on (keep them apart from training and test)")
    max_images: int = Field(8, ge=1, le=10_000, description="at most this many (the first by image id)")
    points_per_side: int = Field(16, ge=1, le=128, description="grid points per side for the candidates")
    points_per_batch: int = Field(defaults.POINTS_PER_BATCH, ge=1, le=1024)
    # The same cleaning as the generator the thresholds are for (AutogenSettings.min_mask_region_area): a
    # calibration of uncleaned candidates would score masks the stage never keeps.
    min_mask_region_area: int = Field(
        0, ge=0, description="fill holes / drop islands smaller than this (px), as the stage's generator does"
    )
    # A stage with crop layers keeps masks by thresholds measured on the same crops (AutogenSettings has the
    # same fields; tasks.thresholds.crop_layout names the calibration file): a zoomed crop's masks rate otherwise.
    crop_n_layers: CropLayers = CROP_DEFAULTS["crop_n_layers"]
    crop_n_points_downscale_factor: CropPointsDownscale = CROP_DEFAULTS["crop_n_points_downscale_factor"]
    crop_overlap_ratio: CropOverlap = CROP_DEFAULTS["crop_overlap_ratio"]

    def for_generator(self, autogen) -> CalibrationSettings:
        """These settings (the images) with ``autogen``'s grid, cleaning and crops: a calibration of the
        generator a stage runs."""
        return self.model_copy(
            update={
                name: getattr(autogen, name)
                for name in ("points_per_side", "points_per_batch", "min_mask_region_area", *CROP_FIELDS)
            }
        )


def best_matches(
    candidates: list[np.ndarray], ground_truth: list[np.ndarray], chunk: int = 128
) -> tuple[np.ndarray, np.ndarray]:
    """Each candidate's (HxW bool) best ground-truth mask (HxW bool): ((N,) float32 IoU, (N,) int64 index).

    The index is -1 where no ground-truth mask overlaps the candidate (IoU 0).
    """
    ious = np.zeros(len(candidates), np.float32)
    index = np.full(len(candidates), -1, np.int64)
    if not candidates or not ground_truth:
        return ious, index
    g = np.stack([np.asarray(m, bool).ravel() for m in ground_truth]).astype(np.float32)  # (G, P)
    g_area = g.sum(1)
    for start in range(0, len(candidates), chunk):
        p = np.stack([np.asarray(m, bool).ravel() for m in candidates[start : start + chunk]]).astype(
            np.float32
        )
        inter = p @ g.T
        union = p.sum(1)[:, None] + g_area[None, :] - inter
        iou = np.where(union > 0, inter / np.maximum(union, 1.0), 0.0)
        best = iou.argmax(1)
        ious[start : start + len(p)] = iou[np.arange(len(p)), best]
        index[start : start + len(p)] = np.where(iou.max(1) > 0, best, -1)
    return ious, index


def candidate_table(
    model,
    samples: list[tuple],
    settings: CalibrationSettings,
    on_progress: OnProgress | None = None,
) -> pd.DataFrame:
    """Every automatic candidate of ``samples`` [(image_id, HxWx3 uint8, [HxW bool GT])], one row each
    (CANDIDATE_COLUMNS: area and image_area in pixels, box x0, y0, x1, y1 in pixels).
    ``on_progress(images done, images)`` is called after each image."""
    # No thresholds and no NMS, within a crop or across crops: the thresholds are what we are choosing, and NMS
    # depends on them (operating_point runs it per stability threshold).
    generator = AutomaticMaskGenerator(
        model,
        points_per_side=settings.points_per_side,
        points_per_batch=settings.points_per_batch,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        box_nms_thresh=1.0,
        crop_n_layers=settings.crop_n_layers,
        crop_n_points_downscale_factor=settings.crop_n_points_downscale_factor,
        crop_overlap_ratio=settings.crop_overlap_ratio,
        crop_nms_thresh=1.0,
        min_mask_region_area=settings.min_mask_region_area,
        output_mode="binary_mask",
    )
    frames = []
    for done, (image_id, image, masks) in enumerate(samples, start=1):
        records = generator.generate(image)
        boxes = np.asarray([r["bbox"] for r in records], np.float32).reshape(-1, 4)  # XYWH
        best_iou, best_gt = best_matches([r["segmentation"] for r in records], masks)
        frames.append(
            pd.DataFrame(
                {
                    "image_id": image_id,
                    "predicted_iou": np.asarray([r["predicted_iou"] for r in records], np.float32),
                    "stability_score": np.asarray([r["stability_score"] for r in records], np.float32),
                    "area": np.asarray([r["area"] for r in records], np.int64),
                    "image_area": int(image.shape[0] * image.shape[1]),
                    "x0": boxes[:, 0],
                    "y0": boxes[:, 1],
                    "x1": boxes[:, 0] + boxes[:, 2],
                    "y1": boxes[:, 1] + boxes[:, 3],
                    "best_iou": best_iou,
                    "best_gt": best_gt,
                }
            )
        )
        if on_progress is not None:
            on_progress(done, len(samples))
    if not frames:
        return pd.DataFrame(columns=list(CANDIDATE_COLUMNS))
    return pd.concat(frames, ignore_index=True)[list(CANDIDATE_COLUMNS)]


def read_calibration(store, model_version: str, layout: str = "") -> pd.DataFrame:
    """The candidate table of ``model_version`` for crop layout ``layout`` (tasks.thresholds.crop_layout);
    FileNotFoundError naming the version (and layout) when it was never calibrated so."""
    if not store.has_calibration(model_version, layout):
        raise _not_calibrated(store, model_version, layout)
    return store.calibration(model_version, layout)


def _not_calibrated(store, model_version: str, layout: str = "") -> FileNotFoundError:
    if layout:
        return FileNotFoundError(
            f"model {model_version!r} has no calibration for the crops of crop layout {layout!r} in store "
            f"{store.url}: calibrate it with the stage's crop settings (CalibrationSettings.crop_n_layers and "
            "the rest; a round's `calibration` parameter does it before the stage), or give the filter fixed "
            "thresholds (target_precision=None)"
        )
    return FileNotFoundError(
        f"model {model_version!r} has no calibration in store {store.url}: run the calibrate task "
        "(a round's `calibration` parameter) for it, or give the filter fixed thresholds (target_precision=None)"
    )


def asks_precision(*filters) -> bool:
    """Whether any of ``filters`` (FilterSettings) asks for a target precision: it needs a calibration."""
    return any(f.target_precision is not None for f in filters)


def check_calibration(store, model_version: str, *filters, layout: str = "") -> None:
    """Fail fast: a filter that asks for a target precision needs ``model_version``'s calibration (of crop
    layout ``layout``)."""
    if asks_precision(*filters):
        if not store.has_calibration(model_version, layout):
            raise _not_calibrated(store, model_version, layout)


def calibrated_settings(store, model_version: str, autogen, filter):
    """(autogen, filter, operating point or None): ``filter.target_precision`` turned into thresholds.

    Without a target precision both settings come back unchanged. With one, the operating point of the model's
    calibration replaces the generator's and the filter's predicted-IoU and stability thresholds
    (tasks.thresholds.thresholds_at). An unreachable target gives the filter thresholds of inf: nothing is kept.
    """
    if filter.target_precision is None:
        return autogen, filter, None
    candidates = read_calibration(store, model_version, crop_layout(autogen))
    point = filter_operating_point(candidates, autogen, filter)
    if not point["feasible"]:
        run_logger().warning(
            "model %s reaches precision %.2f at IoU %.2f at no threshold: no automatic mask is kept",
            model_version,
            filter.target_precision,
            filter.match_iou,
        )
    autogen, filter = thresholds_at(point, autogen, filter)
    return autogen, filter, point


@task(
    name="calibrate",
    retries=1,
    retry_delay_seconds=2,
    task_run_name="calibrate-{model_version}",
    cache_policy=CACHE_POLICY,
)
def calibrate(
    store_url: str,
    model_version: str,
    settings: CalibrationSettings,
    device: str = "cpu",
    on_progress: OnProgress | None = None,
) -> dict:
    """Score ``model_version``'s automatic candidates on the calibration split and store them.

    ``on_progress(images done, images)`` is called after each image (the CLI's progress bar).

    Returns {"model_version", "images", "candidates", "path"}.
    """
    store = Store(store_url)
    model = load_model(store, model_version, device)
    samples = evaluation_set(store, settings.ground_truth, settings.split, settings.max_images)
    candidates = candidate_table(model, samples, settings, on_progress)
    url = store.write_calibration(model_version, candidates, crop_layout(settings))
    run_logger().info(
        "calibrated %s on %d %s images (%d candidates)",
        model_version,
        len(samples),
        settings.split,
        len(candidates),
    )
    return {
        "model_version": model_version,
        "images": len(samples),
        "candidates": len(candidates),
        "path": url,
    }
