"""Rows of the store's masks table from masks in memory, and masks back from rows.

A stage hands the store each mask as COCO compressed RLE (pycocotools' ``counts`` string, column-major, with its
height and width) and what only the stage knows of it: its scores, prompt points, crop, source, the phrase it
answers (text prompts), annotator, clicks and seconds, in the masks schema's own columns (``stores.schemas.MASKS``). What follows from the mask itself, its
area, its box and its id, the store derives when it writes the shard (``stores.masks.prepare_masks``): the id
from what the mask is (image, round, stage, source, RLE; ``stores.mask_id_for``), so a rerun of the same step
writes the same ids and the store's shard replacement leaves no duplicates.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from pycocotools import mask as coco_mask

from stores import CROP_BOX

MASK_COLUMNS = [
    "image_id",
    "counts",
    "height",
    "width",
    "predicted_iou",
    "stability_score",
    "point_coords_json",
    *CROP_BOX,
    "source",
    "phrase",
    "model_version",
    "annotator",
    "clicks",
    "seconds",
]
"""The columns a stage writes: the masks schema's, less what the store derives (mask_id, area, bbox_*) or
stamps (created_at) and what only a sync or an import sets (supersedes, deleted, external_id)."""


def encode_mask(mask: np.ndarray) -> str:
    """HxW bool mask -> its COCO compressed RLE counts string (column-major)."""
    rle = coco_mask.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return rle["counts"].decode("ascii") if isinstance(rle["counts"], bytes) else rle["counts"]


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
    source: str,
    model_version: str,
    predicted_iou: list[float | None] | None = None,
    stability_score: list[float | None] | None = None,
    point_coords: list[list[list[float]]] | None = None,
    crop_box: list[list[float]] | None = None,
    phrase: str | None = None,
    annotator: str | None = None,
    clicks: list[int | None] | None = None,
    seconds: list[float | None] | None = None,
) -> pd.DataFrame:
    """Masks-table rows (MASK_COLUMNS) for the masks of one image, in the given order.

    masks: HxW bool arrays or COCO RLE dicts {"size": [H, W], "counts": str}. The optional per-mask lists must
    have one entry per mask: point_coords [[x, y], ...] and crop_box [x, y, w, h] in pixels (default: no points,
    and the whole image as the crop). phrase: the text prompt every one of these masks answers (None: none did).
    """
    n = len(masks)
    rows = []
    for i, mask in enumerate(masks):
        if isinstance(mask, dict):
            height, width = (int(v) for v in mask["size"])
            code = mask["counts"].decode("ascii") if isinstance(mask["counts"], bytes) else mask["counts"]
        else:
            height, width = (int(v) for v in mask.shape)
            code = encode_mask(mask)
        points = _at(point_coords, i, n) or []
        crop = _at(crop_box, i, n) or [0.0, 0.0, float(width), float(height)]
        rows.append(
            {
                "image_id": image_id,
                "counts": code,
                "height": height,
                "width": width,
                "predicted_iou": _at(predicted_iou, i, n),
                "stability_score": _at(stability_score, i, n),
                "point_coords_json": json.dumps([[float(x), float(y)] for x, y in points]),
                **{name: float(v) for name, v in zip(CROP_BOX, crop, strict=True)},
                "source": source,
                "phrase": phrase,
                "model_version": model_version,
                "annotator": annotator,
                "clicks": _at(clicks, i, n),
                "seconds": _at(seconds, i, n),
            }
        )
    return pd.DataFrame(rows, columns=MASK_COLUMNS)


def _at(values, i: int, n: int):
    if values is None:
        return None
    if len(values) != n:
        raise ValueError(f"expected {n} per-mask values, got {len(values)}")
    return values[i]
