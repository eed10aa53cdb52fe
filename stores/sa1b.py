"""SA-1B per-image JSON interchange (one `<image>.json` per image, as Meta ships SA-1B), both ways, lossless.

File layout: {"image": {"image_id", "width", "height", "file_name"},
              "annotations": [{"bbox", "area", "segmentation": {"size", "counts"}, "predicted_iou",
                               "point_coords", "crop_box", "id", "stability_score"}, ...]}
The SA-1B integer ids are kept in `external_id` (images and masks) so an import followed by an export gives back
the same JSON objects.
"""

import json
import posixpath
from pathlib import PurePosixPath

import fsspec
import numpy as np
import pandas as pd

from .errors import BadRecordError
from .fsio import check_key
from .masks import prepare_masks
from .schemas import BBOX, CROP_BOX


def _value(v):
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return None
    if isinstance(v, np.ndarray):
        return [_value(x) for x in v]
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    return v


def _box(values) -> list | None:
    """[x, y, w, h] of a box stored as four columns, None where none was stored (all NaN)."""
    box = [_value(v) for v in values]
    return None if all(v is None for v in box) else box


def image_json(image: dict, masks: pd.DataFrame) -> dict:
    """The SA-1B JSON object of one image (`image`: a row of the images table) and its masks rows."""
    annotations = []
    bboxes, crop_boxes = masks[BBOX].to_numpy().tolist(), masks[CROP_BOX].to_numpy().tolist()
    for n, row in enumerate(masks.itertuples(index=False)):
        points = row.point_coords_json
        annotations.append(
            {
                "bbox": _box(bboxes[n]),
                "area": int(row.area),
                "segmentation": {"size": [int(row.height), int(row.width)], "counts": row.counts},
                "predicted_iou": _value(row.predicted_iou),
                "point_coords": json.loads(points) if isinstance(points, str) else None,
                "crop_box": _box(crop_boxes[n]),
                "id": _value(row.external_id) if _value(row.external_id) is not None else n,
                "stability_score": _value(row.stability_score),
            }
        )
    return {
        "image": {
            "image_id": _value(image.get("external_id")),
            "width": int(image["width"]),
            "height": int(image["height"]),
            "file_name": posixpath.basename(str(image["uri"])),
        },
        "annotations": annotations,
    }


def export_sa1b(store, directory: str, round=None, stage=None, current_only: bool = True) -> list[str]:
    """Write one SA-1B JSON per image that has selected masks into `directory` (path or URL); return the paths."""
    masks = store.masks(round=round, stage=stage, current_only=current_only)
    images = store.images().set_index("image_id")
    fs, root = fsspec.core.url_to_fs(directory)
    fs.makedirs(root, exist_ok=True)
    paths = []
    for image_id, group in masks.groupby("image_id", sort=True, observed=True):
        if image_id in images.index:
            image = dict(images.loc[image_id])
        else:
            image = {"uri": image_id, "width": group["width"].iat[0], "height": group["height"].iat[0]}
        stem = PurePosixPath(str(image["uri"])).stem or image_id
        path = posixpath.join(root, f"{stem}.json")
        with fs.open(path, "w") as f:
            json.dump(image_json(image, group), f)
        paths.append(path)
    return paths


def import_sa1b(
    store, files, round: int, stage: str, shard, source: str = "auto", model_version=None
) -> pd.DataFrame:
    """Import SA-1B per-image JSON files (paths or URLs) as one masks shard; returns the rows written.

    image_id is the file_name stem (e.g. "sa_1"); images are added to the images table with uri = file_name.
    """
    image_rows, rows = [], []
    for name in files:
        try:
            with fsspec.open(name, "r") as f:
                data = json.load(f)
        except json.JSONDecodeError as e:
            raise BadRecordError(f"{name}: not valid JSON: {e}") from e
        image = data.get("image") if isinstance(data, dict) else None
        if not isinstance(image, dict) or not isinstance(data.get("annotations"), list):
            raise BadRecordError(f"{name}: needs an 'image' object and an 'annotations' list")
        missing = [k for k in ("image_id", "width", "height", "file_name") if k not in image]
        if missing:
            raise BadRecordError(f"{name}: image misses fields {missing}")
        image_id = check_key(f"{name}: image file_name", PurePosixPath(image["file_name"]).stem)
        image_rows.append(
            {
                "image_id": image_id,
                "uri": image["file_name"],
                "width": image["width"],
                "height": image["height"],
                "external_id": image["image_id"],
            }
        )
        for i, ann in enumerate(data["annotations"]):
            seg = ann.get("segmentation")
            if not isinstance(seg, dict) or "counts" not in seg or "size" not in seg:
                raise BadRecordError(
                    f"{name}: annotations[{i}] (id={ann.get('id')}) needs segmentation size+counts"
                )
            if list(seg["size"]) != [image["height"], image["width"]]:
                raise BadRecordError(
                    f"{name}: annotations[{i}] (id={ann.get('id')}) RLE size {seg['size']} differs from its image "
                    f"{image['height']} x {image['width']}"
                )
            rows.append(
                {
                    "image_id": image_id,
                    "counts": seg["counts"],
                    "height": seg["size"][0],
                    "width": seg["size"][1],
                    "area": ann.get("area"),
                    "bbox": ann.get("bbox"),
                    "predicted_iou": ann.get("predicted_iou"),
                    "stability_score": ann.get("stability_score"),
                    "point_coords": ann.get("point_coords"),
                    "crop_box": ann.get("crop_box"),
                    "external_id": ann.get("id"),
                    "source": source,
                    "model_version": model_version,
                }
            )
    df = pd.DataFrame(rows)
    prepare_masks(df, int(round), stage, what="SA-1B import")  # every row checked before anything is written
    store.write_images(pd.DataFrame(image_rows))
    store.write_masks(df, round, stage, shard)
    return df
