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
   which the masks it would keep (after the area limits and box NMS) are right at least that often, where a
   right mask matches a ground-truth object at ``match_iou`` that no higher-rated kept mask matched, and "at
   least" holds at the 95% lower bound (``operating_point``). Where no pair qualifies, nothing is kept.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from prefect import task
from pydantic import BaseModel, Field

from sam_core import defaults
from sam_core.automatic_mask_generator import AutomaticMaskGenerator
from sam_core.mask_utils import box_nms
from stores import Store
from stores.schemas import CALIBRATION
from tasks.ground_truth import evaluation_set
from tasks.models import load_model
from tasks.progress import CACHE_POLICY, OnProgress
from tasks.runlog import run_logger

CANDIDATE_COLUMNS = tuple(CALIBRATION.names)
"""The columns of a calibration table (stores.schemas.CALIBRATION): one row per candidate mask."""
STABILITY_GRID = (0.0, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.97)
"""Stability thresholds tried by ``operating_point`` (the predicted-IoU threshold is searched exactly)."""
NOTHING = math.inf
"""The threshold of an operating point that cannot be met: nothing passes it."""
CONFIDENCE_Z = 1.645
"""One-sided 95%: an operating point's precision must reach the target at its Wilson lower bound, not just on
average. Picking the best of many thresholds on a few images flatters the winner (the demo's first calibration
on 4 images promised 0.5 and gave 0.14 on the test images); the bound asks for more evidence where there is
little."""


def wilson_lower(matched, kept, z: float = CONFIDENCE_Z):
    """Wilson score lower bound of the proportion matched / kept (numbers or arrays; kept >= 1)."""
    n = np.asarray(kept, np.float64)
    p = np.asarray(matched, np.float64) / n
    centre = p + z * z / (2 * n)
    spread = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - spread) / (1 + z * z / n)


class CalibrationSettings(BaseModel):
    """Where and how a model version's automatic masks are scored against ground truth."""

    ground_truth: str = Field(
        ..., min_length=1, description="COCO JSON holding the calibration images' masks"
    )
    split: str = Field("val", description="images to calibrate on (keep them apart from training and test)")
    max_images: int = Field(8, ge=1, le=10_000, description="at most this many (the first by image id)")
    points_per_side: int = Field(16, ge=1, le=128, description="grid points per side for the candidates")
    points_per_batch: int = Field(defaults.POINTS_PER_BATCH, ge=1, le=1024)


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
    # No thresholds and no NMS: the thresholds are what we are choosing, and NMS depends on them
    # (operating_point runs it per stability threshold).
    generator = AutomaticMaskGenerator(
        model,
        points_per_side=settings.points_per_side,
        points_per_batch=settings.points_per_batch,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        box_nms_thresh=1.0,
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


def _survivors(candidates: pd.DataFrame, nms_iou: float) -> pd.DataFrame:
    """The candidates box NMS keeps, image by image (all of them when the table has no boxes or nms_iou >= 1)."""
    if nms_iou >= 1.0 or "x0" not in candidates or candidates.empty:
        return candidates
    kept = []
    for _, group in candidates.groupby("image_id", sort=False):
        boxes = group[["x0", "y0", "x1", "y1"]].to_numpy(np.float32)
        kept.append(group.iloc[box_nms(boxes, group["predicted_iou"].to_numpy(np.float32), nms_iou)])
    return pd.concat(kept)


def operating_point(
    candidates: pd.DataFrame,
    target_precision: float,
    match_iou: float,
    min_kept: int = 10,
    nms_iou: float = 1.0,
    min_area: int = 0,
    max_area_fraction: float = 1.0,
) -> dict:
    """The loosest thresholds at which ``target_precision`` of the kept masks match at ``match_iou``.

    Kept means what a stage would keep: candidates at or above both thresholds, within the area limits, after
    box NMS at ``nms_iou`` per image. Greedy NMS in decreasing predicted IoU keeps a candidate or not by the
    higher-rated ones alone, so for one stability threshold a single NMS pass serves every predicted-IoU
    threshold. Over the stability thresholds of STABILITY_GRID and every predicted-IoU threshold, the pair that
    keeps the most right masks while keeping at least ``min_kept``, with the Wilson lower bound of its precision
    (CONFIDENCE_Z) at least ``target_precision``.
    A kept mask is right when its best ground-truth mask matches it at ``match_iou`` and no higher-rated kept
    mask has matched that object already: duplicates are wrong, as in the evaluation's one-to-one precision
    (box NMS leaves many: variants of a large object whose boxes differ).

    Returns {"pred_iou_thresh", "stability_score_thresh", "precision" (observed), "precision_lower" (its bound),
    "kept", "matched", "candidates", "feasible"}; when no pair qualifies, both thresholds are NOTHING (inf) and "feasible" is False.
    """
    if not 0.0 < target_precision <= 1.0:
        raise ValueError(f"target_precision must be in (0, 1], got {target_precision}")
    if not 0.0 < match_iou <= 1.0:
        raise ValueError(f"match_iou must be in (0, 1], got {match_iou}")
    best = {
        "pred_iou_thresh": NOTHING,
        "stability_score_thresh": NOTHING,
        "precision": None,
        "precision_lower": None,
        "kept": 0,
        "matched": 0,
        "candidates": len(candidates),
        "feasible": False,
    }
    sized = candidates
    if "image_area" in candidates and (min_area > 0 or max_area_fraction < 1.0):
        area = candidates["area"]
        sized = candidates[(area >= min_area) & (area <= max_area_fraction * candidates["image_area"])]
    for s in STABILITY_GRID:
        on = _survivors(sized[sized["stability_score"] >= s], nms_iou)
        order = np.argsort(-on["predicted_iou"].to_numpy(np.float64), kind="stable")
        p = on["predicted_iou"].to_numpy(np.float64)[order]
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
        ok = cut & (kept >= min_kept) & (wilson_lower(matched, kept) >= target_precision)
        if not ok.any():
            continue
        i = int(np.flatnonzero(ok)[np.argmax(matched[ok])])
        precision = float(matched[i] / kept[i])
        if (matched[i], precision) > (best["matched"], best["precision"] or 0.0):
            best.update(
                pred_iou_thresh=float(p[i]),
                stability_score_thresh=float(s),
                precision=precision,
                precision_lower=float(wilson_lower(matched[i], kept[i])),
                kept=int(kept[i]),
                matched=int(matched[i]),
                feasible=True,
            )
    return best


def read_calibration(store, model_version: str) -> pd.DataFrame:
    """The candidate table of ``model_version``; FileNotFoundError naming the version when it was never
    calibrated."""
    if not store.has_calibration(model_version):
        raise _not_calibrated(store, model_version)
    return store.calibration(model_version)


def _not_calibrated(store, model_version: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"model {model_version!r} has no calibration in store {store.url}: run the calibrate task "
        "(a round's `calibration` parameter) for it, or give the filter fixed thresholds (target_precision=None)"
    )


def check_calibration(store, model_version: str, *filters) -> None:
    """Fail fast: a filter that asks for a target precision needs ``model_version``'s calibration."""
    if any(f.target_precision is not None for f in filters):
        if not store.has_calibration(model_version):
            raise _not_calibrated(store, model_version)


def filter_operating_point(candidates: pd.DataFrame, autogen, filter) -> dict:
    """``operating_point`` for ``filter.target_precision`` under the NMS and area limits a stage with these
    generator and filter settings applies (the generator's NMS and the filter's both run on what passes; the
    stricter of the two decides)."""
    return operating_point(
        candidates,
        filter.target_precision,
        filter.match_iou,
        filter.min_kept,
        nms_iou=min(autogen.box_nms_thresh, filter.nms_iou),
        min_area=filter.min_area,
        max_area_fraction=filter.max_area_fraction,
    )


def calibrated_settings(store, model_version: str, autogen, filter):
    """(autogen, filter, operating point or None): ``filter.target_precision`` turned into thresholds.

    Without a target precision both settings come back unchanged. With one, the model's operating point replaces
    the generator's and the filter's predicted-IoU and stability thresholds (the generator's too, so that its
    NMS runs only over masks that pass). An unreachable target gives the filter thresholds of inf: nothing is kept.
    """
    if filter.target_precision is None:
        return autogen, filter, None
    point = filter_operating_point(read_calibration(store, model_version), autogen, filter)
    if not point["feasible"]:
        run_logger().warning(
            "model %s reaches precision %.2f at IoU %.2f at no threshold: no automatic mask is kept",
            model_version,
            filter.target_precision,
            filter.match_iou,
        )
    t, s = point["pred_iou_thresh"], point["stability_score_thresh"]
    # The generator takes thresholds in [0, 1] (an IoU head may predict below 0): it gets them clipped, and an
    # unreachable target keeps its strictest while the filter's inf (model_copy does not validate) drops the rest.
    autogen = autogen.model_copy(
        update={
            "pred_iou_thresh": min(max(t, 0.0), 1.0),
            "stability_score_thresh": min(max(s, 0.0), 1.0),
        }
    )
    filter = filter.model_copy(update={"min_predicted_iou": t, "min_stability_score": s})
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
    url = store.write_calibration(model_version, candidates)
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
