"""Known ground truth for the simulated annotator and for evaluation, read from a COCO instances JSON file.

Images are matched to COCO ``images`` entries by file name (the last path component of the image URI), which is
how a team's existing COCO annotations usually line up with a folder of images. Segmentations may be polygons,
uncompressed or compressed RLE (pycocotools decodes all three). ``evaluation_set`` loads the labelled images of
a split with their masks: what evaluation, calibration and replay training read.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field
from functools import lru_cache

import fsspec
import numpy as np
from pycocotools import mask as coco_mask

from tasks.ingest import load_image


@dataclass
class GroundTruth:
    """Per-file-name lists of COCO annotations; decode with :meth:`masks_for`."""

    uri: str
    images: dict[str, dict] = field(default_factory=dict)  # file name -> COCO image entry
    annotations: dict[int, list[dict]] = field(default_factory=dict)  # COCO image id -> annotations

    @classmethod
    def from_coco(cls, uri: str) -> GroundTruth:
        """Load a COCO instances JSON from any fsspec URI. Raises FileNotFoundError / ValueError naming it."""
        try:
            with fsspec.open(uri, "r") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"ground truth file not found: {uri}") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"ground truth file {uri} is not JSON: {exc}") from exc
        if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
            raise ValueError(f"ground truth file {uri} is not COCO: it needs 'images' and 'annotations'")
        gt = cls(uri=uri)
        for image in data["images"]:
            gt.images[posixpath.basename(image["file_name"])] = image
        for ann in data["annotations"]:
            gt.annotations.setdefault(int(ann["image_id"]), []).append(ann)
        return gt

    def has(self, image_uri: str) -> bool:
        return posixpath.basename(image_uri) in self.images

    def masks_for(self, image_uri: str) -> list[np.ndarray]:
        """The HxW bool ground-truth masks of the image at ``image_uri`` (KeyError if the file is unknown)."""
        name = posixpath.basename(image_uri)
        if name not in self.images:
            raise KeyError(f"no ground truth for {name} in {self.uri}")
        image = self.images[name]
        height, width = int(image["height"]), int(image["width"])
        out = []
        for ann in self.annotations.get(int(image["id"]), []):
            seg = ann["segmentation"]
            if isinstance(seg, list):
                rle = coco_mask.merge(coco_mask.frPyObjects(seg, height, width))
            elif isinstance(seg.get("counts"), list):
                rle = coco_mask.frPyObjects(seg, height, width)
            else:
                rle = {"size": seg["size"], "counts": seg["counts"].encode("ascii")}
            out.append(coco_mask.decode(rle).astype(bool))
        return out


@lru_cache(maxsize=4)
def load_ground_truth(uri: str) -> GroundTruth:
    """:meth:`GroundTruth.from_coco`, cached per process (flows ask for the same file once per image)."""
    return GroundTruth.from_coco(uri)


def write_coco(uri: str, entries: list[tuple[str, list[np.ndarray]]]) -> None:
    """Write a COCO instances JSON of ground truth: one (file name, HxW bool masks) pair per image."""
    images, annotations = [], []
    for image_id, (file_name, masks) in enumerate(entries, start=1):
        height, width = masks[0].shape if masks else (0, 0)
        images.append({"id": image_id, "file_name": file_name, "height": int(height), "width": int(width)})
        for mask in masks:
            rle = coco_mask.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "segmentation": {
                        "size": [int(height), int(width)],
                        "counts": rle["counts"].decode("ascii"),
                    },
                    "area": int(coco_mask.area(rle)),
                    "bbox": [float(v) for v in coco_mask.toBbox(rle)],
                    "iscrowd": 0,
                }
            )
    data = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "object"}]}
    with fsspec.open(uri, "w") as f:
        json.dump(data, f)


def evaluation_set(store, ground_truth_uri: str, split: str, max_images: int | None) -> list[tuple]:
    """[(image_id, image HxWx3 uint8, masks list of HxW bool)] of the split's images that have ground truth."""
    truth = load_ground_truth(ground_truth_uri)
    images = store.images()
    images = images[images["split"] == split].sort_values("image_id")
    out = []
    for row in images.itertuples(index=False):
        if max_images is not None and len(out) >= max_images:
            break
        if not truth.has(row.uri):
            continue
        masks = truth.masks_for(row.uri)
        if masks:
            out.append((row.image_id, load_image(row.uri), masks))
    if not out:
        raise ValueError(
            f"no {split!r} images with ground truth in {ground_truth_uri}: ingest some with split={split!r}"
        )
    return out
