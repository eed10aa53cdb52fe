"""Short answers to the common questions, as pandas objects, so notebooks stay short."""

import numpy as np
import pandas as pd
from pycocotools import mask as mask_utils


def masks_of_round(store, round: int, stage: str | None = None, current_only: bool = True) -> pd.DataFrame:
    """All (current) masks of one round, optionally of one stage."""
    return store.masks(round=round, stage=stage, current_only=current_only)


def masks_per_image(store, round: int | None = None, stage: str | None = None) -> pd.DataFrame:
    """Columns image_id, masks (count of current masks), area_mean; images with no mask count 0."""
    masks = store.masks(round=round, stage=stage)
    counts = masks.groupby("image_id", observed=True).agg(
        masks=("mask_id", "size"), area_mean=("area", "mean")
    )
    image_ids = store.images()["image_id"]
    index = pd.Index(sorted(set(image_ids) | set(counts.index)), name="image_id")
    out = counts.reindex(index)
    out["masks"] = out["masks"].fillna(0).astype(np.int64)
    return out.reset_index()


def decode_image_masks(store, image_id: str, round: int | None = None, stage: str | None = None):
    """(masks N x H x W bool, rows DataFrame of the same N masks) of one image, decoded with pycocotools."""
    rows = store.masks(round=round, stage=stage, image_id=image_id).reset_index(drop=True)
    if rows.empty:
        return np.zeros((0, 0, 0), dtype=bool), rows
    rles = [
        {"size": [int(h), int(w)], "counts": c.encode()}
        for h, w, c in zip(rows["height"], rows["width"], rows["counts"], strict=True)
    ]
    decoded = mask_utils.decode(rles)  # H x W x N uint8 of 0/1, Fortran order
    # A view, not a copy: 100 SA-1B-sized masks are ~340 MB, and every copy costs seconds.
    return decoded.view(bool).transpose(2, 0, 1), rows
