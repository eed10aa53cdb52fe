"""COCO JSON interchange: export masks so pycocotools (COCO, COCOeval) reads them; import COCO instances back.

Export: one category ("object"), integer ids 1..N for images and annotations (our string ids travel along as
`sam_image_id` / `sam_mask_id`), segmentation as compressed RLE, `score` = predicted_iou (1.0 when unknown).
Import: RLE (compressed or not) or polygons; every record is checked before anything is written.
"""

import json
from pathlib import PurePosixPath

import fsspec
import numpy as np
import pandas as pd
from pycocotools import mask as mask_utils

from .errors import BadRecordError
from .fsio import check_key
from .masks import prepare_masks
from .schemas import BBOX

CATEGORY = {"id": 1, "name": "object", "supercategory": "object"}


def _number(value, default=None):
    return default if value is None or (isinstance(value, float) and np.isnan(value)) else value


def export_coco(store, path: str | None = None, round=None, stage=None, current_only: bool = True) -> dict:
    """COCO instances dict of the selected masks; also written as JSON to `path` (local path or URL) if given."""
    masks = store.masks(round=round, stage=stage, current_only=current_only)
    images = store.images().set_index("image_id")
    image_ids = sorted(set(masks["image_id"]))
    coco_images, coco_id = [], {}
    for n, image_id in enumerate(image_ids, start=1):
        coco_id[image_id] = n
        if image_id in images.index:
            row = images.loc[image_id]
            file_name, width, height = row["uri"], int(row["width"]), int(row["height"])
        else:  # masks of an image never ingested: its size is the masks'
            first = masks[masks["image_id"] == image_id].iloc[0]
            file_name, width, height = image_id, int(first["width"]), int(first["height"])
        coco_images.append(
            {"id": n, "file_name": file_name, "width": width, "height": height, "sam_image_id": image_id}
        )
    annotations = []
    bboxes = masks[BBOX].to_numpy(dtype=float).tolist()
    for n, row in enumerate(masks.itertuples(index=False), start=1):
        annotations.append(
            {
                "id": n,
                "image_id": coco_id[row.image_id],
                "category_id": CATEGORY["id"],
                "segmentation": {"size": [int(row.height), int(row.width)], "counts": row.counts},
                "area": int(row.area),
                "bbox": bboxes[n - 1],
                "iscrowd": 0,
                "score": float(_number(row.predicted_iou, 1.0)),
                "sam_mask_id": row.mask_id,
                "source": row.source,
            }
        )
    data = {"images": coco_images, "annotations": annotations, "categories": [CATEGORY]}
    if path is not None:
        with fsspec.open(path, "w") as f:
            json.dump(data, f)
    return data


def _rle_of(segmentation, height: int, width: int, where: str) -> str:
    """Compressed RLE string of a COCO segmentation (RLE dict or polygon list), checked against the image size."""
    if isinstance(segmentation, dict):
        if "counts" not in segmentation or "size" not in segmentation:
            raise BadRecordError(f"{where}: segmentation RLE needs 'size' and 'counts'")
        size = list(segmentation["size"])
        if size != [height, width]:
            raise BadRecordError(f"{where}: RLE size {size} differs from its image {height} x {width}")
        counts = segmentation["counts"]
        if isinstance(counts, list):  # uncompressed RLE
            if sum(counts) != height * width:
                raise BadRecordError(
                    f"{where}: uncompressed RLE covers {sum(counts)} pixels, not {height * width}"
                )
            counts = mask_utils.frPyObjects(segmentation, height, width)["counts"]
        return counts.decode() if isinstance(counts, bytes) else str(counts)
    if isinstance(segmentation, list) and segmentation:
        try:
            rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
        except (TypeError, ValueError, IndexError) as e:
            raise BadRecordError(f"{where}: bad polygon segmentation: {e}") from e
        return rle["counts"].decode()
    raise BadRecordError(f"{where}: segmentation must be an RLE dict or a non-empty polygon list")


def _load(source, name: str) -> dict:
    if isinstance(source, dict):
        return source
    try:
        with fsspec.open(source, "r") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise BadRecordError(f"{name}: not valid JSON: {e}") from e


def import_coco(
    store, source, round: int, stage: str, shard, mask_source: str = "human", image_ids: dict | None = None
) -> pd.DataFrame:
    """Import a COCO instances file (path, URL or dict) as one masks shard; returns the rows written.

    Store image_id of each COCO image: its `sam_image_id` if present, else image_ids[file_name] or
    image_ids[id], else the stem of file_name. New images are added to the images table (uri = file_name).
    """
    name = source if isinstance(source, str) else "<COCO dict>"
    data = _load(source, name)
    for key in ("images", "annotations"):
        if not isinstance(data.get(key), list):
            raise BadRecordError(f"{name}: missing list {key!r}")
    images = {}
    for i, img in enumerate(data["images"]):
        missing = [k for k in ("id", "width", "height", "file_name") if k not in img]
        if missing:
            raise BadRecordError(f"{name}: images[{i}] (id={img.get('id')}) misses fields {missing}")
        image_id = img.get("sam_image_id")
        if image_id is None and image_ids:
            image_id = image_ids.get(img["file_name"], image_ids.get(img["id"]))
        if image_id is None:
            image_id = PurePosixPath(img["file_name"]).stem
        images[img["id"]] = dict(img, image_id=check_key(f"{name}: images[{i}] image_id", image_id))
    rows = []
    for i, ann in enumerate(data["annotations"]):
        where = f"{name}: annotations[{i}] (id={ann.get('id')})"
        missing = [k for k in ("id", "image_id", "segmentation") if k not in ann]
        if missing:
            raise BadRecordError(f"{where} misses fields {missing}")
        img = images.get(ann["image_id"])
        if img is None:
            raise BadRecordError(f"{where}: image_id={ann['image_id']} is not in 'images'")
        height, width = int(img["height"]), int(img["width"])
        rows.append(
            {
                "mask_id": ann.get("sam_mask_id"),
                "image_id": img["image_id"],
                "counts": _rle_of(ann["segmentation"], height, width, where),
                "height": height,
                "width": width,
                "predicted_iou": ann.get("predicted_iou", ann.get("score")),
                "source": ann.get("source", mask_source),
                "external_id": int(ann["id"]),
            }
        )
    df = pd.DataFrame(
        rows,
        columns=[
            "mask_id",
            "image_id",
            "counts",
            "height",
            "width",
            "predicted_iou",
            "source",
            "external_id",
        ],
    )
    new_images = pd.DataFrame(
        [
            {
                "image_id": v["image_id"],
                "uri": v["file_name"],
                "width": v["width"],
                "height": v["height"],
                "external_id": k,
            }
            for k, v in images.items()
        ],
        columns=["image_id", "uri", "width", "height", "external_id"],
    )
    prepare_masks(df, int(round), stage, what=name)  # check every row before the images table is touched
    if len(new_images):
        store.write_images(new_images)
    store.write_masks(df, round, stage, shard)
    return df
