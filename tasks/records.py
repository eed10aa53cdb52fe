"""Rows of the store's masks table from masks in memory, and back.

Masks are stored as COCO compressed RLE (pycocotools' ``counts`` string, column-major). A mask's id is derived
from what it is (image, round, stage, source, RLE; ``stores.mask_id_for``), so a rerun of the same step writes the
same ids and the store's shard replacement leaves no duplicates.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
from pycocotools import mask as coco_mask

from stores import mask_id_for


def encode_mask(mask: np.ndarray) -> tuple[str, int, list[float]]:
    """HxW bool mask -> (COCO counts string, area in pixels, bbox [x, y, w, h] in pixels)."""
    rle = coco_mask.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    counts = rle["counts"].decode("ascii") if isinstance(rle["counts"], bytes) else rle["counts"]
    bbox = [float(v) for v in coco_mask.toBbox(rle)]
    return counts, int(coco_mask.area(rle)), bbox


def decode_mask(counts: str, height: int, width: int) -> np.ndarray:
    """COCO counts string of a height x width mask -> HxW bool."""
    rle = {
        "size": [int(height), int(width)],
        "counts": counts.encode("ascii") if isinstance(counts, str) else counts,
    }
    return coco_mask.decode(rle).astype(bool)


def decode_rows(masks: pd.DataFrame) -> list[np.ndarray]:
    """Decode every row of a masks-table DataFrame to an HxW bool mask, in row order."""
    return [decode_mask(r.counts, r.height, r.width) for r in masks.itertuples(index=False)]


def mask_rows(
    image_id: str,
    masks: list,
    *,
    round: int,
    stage: str,
    source: str,
    model_version: str,
    predicted_iou: list[float | None] | None = None,
    stability_score: list[float | None] | None = None,
    point_coords: list[list[list[float]]] | None = None,
    crop_box: list[list[float]] | None = None,
    annotator: str | None = None,
    clicks: list[int | None] | None = None,
    seconds: list[float | None] | None = None,
) -> pd.DataFrame:
    """Masks-table rows for the masks of one image, in the given order.

    masks: HxW bool arrays or COCO RLE dicts {"size": [H, W], "counts": str}. The optional per-mask lists must
    have one entry per mask. mask_id is ``stores.mask_id_for`` (image, round, stage, source, RLE): the same mask
    written again by a rerun gets the same id.
    """
    n = len(masks)
    now = datetime.now(UTC)
    rows = []
    for i, mask in enumerate(masks):
        if isinstance(mask, dict):
            height, width = (int(v) for v in mask["size"])
            code = mask["counts"].decode("ascii") if isinstance(mask["counts"], bytes) else mask["counts"]
            rle = {"size": [height, width], "counts": code.encode("ascii")}
            area, bbox = int(coco_mask.area(rle)), [float(v) for v in coco_mask.toBbox(rle)]
        else:
            height, width = (int(v) for v in mask.shape)
            code, area, bbox = encode_mask(mask)
        rows.append(
            {
                "mask_id": mask_id_for(image_id, round, stage, source, code),
                "image_id": image_id,
                "counts": code,
                "height": height,
                "width": width,
                "area": area,
                "bbox": bbox,
                "predicted_iou": _at(predicted_iou, i, n),
                "stability_score": _at(stability_score, i, n),
                "point_coords": _at(point_coords, i, n) or [],
                "crop_box": _at(crop_box, i, n) or [0.0, 0.0, float(width), float(height)],
                "source": source,
                "model_version": model_version,
                "annotator": annotator,
                "clicks": _at(clicks, i, n),
                "seconds": _at(seconds, i, n),
                "created_at": now,
                "supersedes": None,
                "deleted": False,
            }
        )
    return pd.DataFrame(rows, columns=MASK_COLUMNS)


MASK_COLUMNS = [
    "mask_id",
    "image_id",
    "counts",
    "height",
    "width",
    "area",
    "bbox",
    "predicted_iou",
    "stability_score",
    "point_coords",
    "crop_box",
    "source",
    "model_version",
    "annotator",
    "clicks",
    "seconds",
    "created_at",
    "supersedes",
    "deleted",
]


def _at(values, i: int, n: int):
    if values is None:
        return None
    if len(values) != n:
        raise ValueError(f"expected {n} per-mask values, got {len(values)}")
    return values[i]
