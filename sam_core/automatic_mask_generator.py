"""Fully automatic mask generation (the data engine's stage 3): a grid of point prompts over the image,
filtered by predicted IoU, stability, box NMS, cross-crop NMS and small-region cleanup.

Arguments and record fields are those of Meta's ``SamAutomaticMaskGenerator``, so switching is an import.
What differs is the order of work: every candidate is filtered by predicted IoU at the decoder's low
resolution first; only survivors are upsampled (in chunks) for the stability score, boxes and edge test;
NMS runs before any run-length encoding; RLE is vectorised.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from sam_core import crops, defaults, mask_utils
from sam_core.predictor import SamPredictor

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")


@dataclass
class _PointCount:
    """Grid points decoded so far out of ``total``, told to ``on_progress(done, total)`` as they grow."""

    total: int
    on_progress: Callable[[int, int], None] | None
    done: int = 0

    def add(self, points: int) -> None:
        self.done += points
        if self.on_progress is not None:
            self.on_progress(self.done, self.total)


@dataclass
class _Candidates:
    """Masks that passed the filters, one entry per mask. Masks are bit-packed (1 bit per pixel) in the
    frame of their crop (crop_h x crop_w), boxes XYXY inclusive and points (x, y) in image pixels."""

    packed: list = field(default_factory=list)
    boxes: list = field(default_factory=list)
    predicted_iou: list = field(default_factory=list)
    stability_score: list = field(default_factory=list)
    points: list = field(default_factory=list)
    crop_box: list = field(default_factory=list)

    def extend(self, other: _Candidates, keep: Any = None) -> None:
        idx = range(len(other.packed)) if keep is None else [int(i) for i in keep]
        for name in ("packed", "boxes", "predicted_iou", "stability_score", "points", "crop_box"):
            src = getattr(other, name)
            getattr(self, name).extend(src[i] for i in idx)

    def __len__(self) -> int:
        return len(self.packed)


class AutomaticMaskGenerator:
    """Generate masks for a whole image from a grid of point prompts.

    Arguments (same meaning and defaults as the reference):
      model: a Sam model (sam_core.build_sam or anything with the same interface).
      points_per_side: grid points per side (points_per_side**2 prompts); None when point_grids is given.
      points_per_batch: prompts decoded together.
      pred_iou_thresh: keep masks whose predicted IoU is > this, in [0, 1] (0 disables the filter).
      stability_score_thresh: keep masks whose stability score is >= this, in [0, 1] (0 disables).
      stability_score_offset: logit offset (> 0) around model.mask_threshold for the stability score.
      box_nms_thresh: box IoU above which a lower-scored mask of the same crop is dropped, in [0, 1].
      crop_n_layers: extra crop layers; layer i has (2**i)**2 crops.
      crop_nms_thresh: box IoU for NMS across crops (masks of smaller crops win), in [0, 1].
      crop_overlap_ratio: overlap of neighbouring crops in layer 1 as a fraction of the short side, [0, 1).
      crop_n_points_downscale_factor: layer i uses points_per_side / factor**i points per side.
      point_grids: explicit grids, one N_i x 2 array in [0, 1] per layer (exclusive with points_per_side).
      min_mask_region_area: if > 0, fill holes and drop islands under this many pixels (needs OpenCV).
      output_mode: "binary_mask" (H x W bool), "uncompressed_rle" or "coco_rle" (pycocotools-readable).
      upsample_chunk: how many masks are upsampled to full resolution at once (ours; memory vs. speed).

    Memory bound (beyond the model and its image embedding):
    - the decoder's working set for one batch of points_per_batch prompts, dominated by its upscaled
      features (points_per_batch x (4h x 4w) x C/8 float32: 512 MiB at 64 prompts for the official models;
      lower points_per_batch to lower it) and the low-res logits (points_per_batch x 3 x 4h x 4w float32);
    - full-resolution float32 logits for at most ``upsample_chunk`` masks at a time, plus the model-input
      intermediate of the upsampling (upsample_chunk x img_size**2 float32: 64 MiB at 16 for 1024 px);
    - 1 bit per crop pixel for each mask that passes the IoU, stability and crop-edge filters, until NMS
      (crop_h x crop_w / 8 bytes each: 59 KiB for a 600 x 800 image).
    No tensor ever holds every candidate at full resolution; RLE encoding happens after NMS, one mask at a
    time. The returned records hold their segmentations (H x W bytes each in binary_mask mode).
    """

    def __init__(
        self,
        model: Any,
        points_per_side: int | None = defaults.POINTS_PER_SIDE,
        points_per_batch: int = defaults.POINTS_PER_BATCH,
        pred_iou_thresh: float = defaults.PRED_IOU_THRESH,
        stability_score_thresh: float = defaults.STABILITY_SCORE_THRESH,
        stability_score_offset: float = defaults.STABILITY_SCORE_OFFSET,
        box_nms_thresh: float = defaults.BOX_NMS_THRESH,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = defaults.CROP_NMS_THRESH,
        crop_overlap_ratio: float = defaults.CROP_OVERLAP_RATIO,
        crop_n_points_downscale_factor: int = 1,
        point_grids: list[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
        upsample_chunk: int = 16,
    ) -> None:
        _check_int("points_per_batch", points_per_batch, 1)
        _check_int("crop_n_layers", crop_n_layers, 0)
        _check_int("crop_n_points_downscale_factor", crop_n_points_downscale_factor, 1)
        _check_int("upsample_chunk", upsample_chunk, 1)
        for name, value in (
            ("pred_iou_thresh", pred_iou_thresh),
            ("stability_score_thresh", stability_score_thresh),
            ("box_nms_thresh", box_nms_thresh),
            ("crop_nms_thresh", crop_nms_thresh),
        ):
            _check_range(name, value, 0.0, 1.0)
        _check_range("crop_overlap_ratio", crop_overlap_ratio, 0.0, 1.0, high_inclusive=False)
        if not (np.isfinite(stability_score_offset) and stability_score_offset > 0):
            raise ValueError(
                f"stability_score_offset must be a positive number, got {stability_score_offset!r}"
            )
        if not (np.isfinite(min_mask_region_area) and min_mask_region_area >= 0):
            raise ValueError(f"min_mask_region_area must be >= 0, got {min_mask_region_area!r}")
        if output_mode not in OUTPUT_MODES:
            raise ValueError(f"output_mode must be one of {OUTPUT_MODES}, got {output_mode!r}")
        if (points_per_side is None) == (point_grids is None):
            raise ValueError("give exactly one of points_per_side and point_grids")
        if points_per_side is not None:
            _check_int("points_per_side", points_per_side, 1)
            self.point_grids = crops.layer_grid_points(
                points_per_side, crop_n_layers, crop_n_points_downscale_factor
            )
        else:
            self.point_grids = [_check_grid(i, g) for i, g in enumerate(point_grids)]
            if len(self.point_grids) < crop_n_layers + 1:
                raise ValueError(
                    f"point_grids has {len(self.point_grids)} grids, crop_n_layers={crop_n_layers} needs "
                    f"{crop_n_layers + 1} (one per layer, layer 0 = whole image)"
                )
        if min_mask_region_area > 0:
            import cv2  # noqa: F401  (fail at construction, not after minutes of decoding)

        self.model = model
        self.points_per_batch = points_per_batch
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.crop_n_points_downscale_factor = crop_n_points_downscale_factor
        self.min_mask_region_area = min_mask_region_area
        self.output_mode = output_mode
        self.upsample_chunk = upsample_chunk
        self.predictor = SamPredictor(model)
        self.funnel = Funnel()

    # -- public API -------------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self, image: np.ndarray, on_progress: Callable[[int, int], None] | None = None
    ) -> list[dict[str, Any]]:
        """Masks for an H x W x 3 uint8 RGB image, as a list of records (see :meth:`_records`).

        ``on_progress(points decoded, points)`` is called after each batch of ``points_per_batch`` prompts, the
        points of every crop's grid counted together (the decoding is most of the time of a large grid)."""
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image must be an H x W x 3 numpy array, got {_describe(image)}")
        if image.dtype != np.uint8:
            raise TypeError(f"image must be uint8, got dtype {image.dtype}")
        image_size = image.shape[:2]
        self.funnel = Funnel()
        boxes, layers = crops.crop_boxes(image_size, self.crop_n_layers, self.crop_overlap_ratio)
        found = _Candidates()
        decoded = _PointCount(sum(len(self.point_grids[layer]) for layer in layers), on_progress)
        for crop_box, layer in zip(boxes, layers, strict=True):
            x0, y0, x1, y1 = crop_box
            self.predictor.set_image(image[y0:y1, x0:x1, :])
            found.extend(self._process_crop(crop_box, layer, image_size, decoded))
            self.predictor.reset_image()
        return self._finish(found, image_size, n_crops=len(boxes))

    @torch.no_grad()
    def generate_from_embedding(self, embedding: Any, original_size: tuple[int, int]) -> list[dict[str, Any]]:
        """Masks from an image embedding computed earlier (1 x C x h x w or C x h x w, torch or numpy) of an
        image of original_size (H, W). Single crop only: crop layers need embeddings of the crops."""
        if self.crop_n_layers > 0:
            raise ValueError(
                f"generate_from_embedding runs the whole-image crop only; crop_n_layers={self.crop_n_layers} "
                "needs the image (use generate)"
            )
        h, w = (int(v) for v in original_size)
        if h < 1 or w < 1:
            raise ValueError(f"original_size must be positive (H, W), got {tuple(original_size)}")
        self.predictor.set_embedding(embedding, (h, w))
        self.funnel = Funnel()
        found = self._process_crop([0, 0, w, h], 0, (h, w))
        self.predictor.reset_image()
        return self._finish(found, (h, w), n_crops=1)

    # -- one crop -------------------------------------------------------------------------------------------

    def _process_crop(
        self, crop_box: list[int], layer: int, image_size: tuple[int, int], decoded: _PointCount | None = None
    ) -> _Candidates:
        """Decode the layer's grid over the crop the predictor holds, filter, and NMS within the crop; each
        batch's points are added to ``decoded``."""
        x0, y0, x1, y1 = crop_box
        crop_size = (y1 - y0, x1 - x0)
        points = self.point_grids[layer] * np.array([[crop_size[1], crop_size[0]]], dtype=np.float64)
        found = _Candidates()
        for start in range(0, len(points), self.points_per_batch):
            batch = points[start : start + self.points_per_batch]
            self._process_batch(batch, crop_box, image_size, found)
            if decoded is not None:
                decoded.add(len(batch))
        if len(found) == 0:
            return found
        keep = mask_utils.box_nms(np.stack(found.boxes), np.asarray(found.predicted_iou), self.box_nms_thresh)
        kept = _Candidates()
        kept.extend(found, keep)
        # Boxes and points into the image frame (masks stay packed in the crop frame until the end).
        offset = np.array([x0, y0, x0, y0])
        kept.boxes = [b + offset for b in kept.boxes]
        kept.points = [p + offset[:2] for p in kept.points]
        return kept

    def _process_batch(
        self, points: np.ndarray, crop_box: list[int], image_size: tuple[int, int], out: _Candidates
    ) -> None:
        """Decode one batch of points (crop pixels, N x 2), keep what passes the filters in ``out``."""
        x0, y0, x1, y1 = crop_box
        low_res, iou = self._decode(points)  # N x 3 x h x w, N x 3
        low_res = low_res.flatten(0, 1)
        iou = iou.flatten(0, 1)
        point_idx = torch.arange(len(points)).repeat_interleave(3)
        # Predicted IoU needs no pixels: filter before any full-resolution work.
        keep = (
            iou > self.pred_iou_thresh if self.pred_iou_thresh > 0 else torch.ones_like(iou, dtype=torch.bool)
        )
        keep_idx = keep.nonzero().flatten()
        self.funnel.candidates += len(iou)
        self.funnel.max_predicted_iou = max(
            self.funnel.max_predicted_iou, float(iou.max()) if len(iou) else 0.0
        )
        self.funnel.passed_iou += len(keep_idx)
        image_box = [0, 0, image_size[1], image_size[0]]
        threshold = self.model.mask_threshold
        for start in range(0, len(keep_idx), self.upsample_chunk):
            idx = keep_idx[start : start + self.upsample_chunk]
            logits = self._upsample(low_res[idx])  # n x H_crop x W_crop
            stability = mask_utils.stability_score(logits, threshold, self.stability_score_offset)
            if len(stability):
                self.funnel.max_stability_score = max(self.funnel.max_stability_score, float(stability.max()))
            if self.stability_score_thresh > 0:
                stable = stability >= self.stability_score_thresh
                idx, logits, stability = idx[stable], logits[stable], stability[stable]
            self.funnel.passed_stability += len(idx)
            masks = logits > threshold
            del logits
            boxes = mask_utils.masks_to_boxes(masks)
            offset = torch.tensor([x0, y0, x0, y0], device=boxes.device)
            inside = ~crops.near_crop_edge(boxes + offset, crop_box, image_box)
            masks = masks[inside].cpu().numpy()
            if len(masks) == 0:
                continue
            out.packed.extend(np.packbits(masks.reshape(len(masks), -1), axis=1))
            out.boxes.extend(boxes[inside].cpu().numpy())
            out.predicted_iou.extend(iou[idx[inside]].float().cpu().numpy())
            out.stability_score.extend(stability[inside].float().cpu().numpy())
            out.points.extend(points[point_idx[idx[inside].cpu()].numpy()])
            out.crop_box.extend([list(crop_box)] * len(masks))

    def _decode(self, points: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-res mask logits N x 3 x h x w and predicted IoU N x 3 for single positive points (crop px),
        in one decoder pass without upsampling."""
        labels = np.ones((len(points), 1), dtype=np.int64)
        _, iou, low_res = self.predictor.predict_batch(
            points[:, None, :], labels, multimask_output=True, upsample=False
        )
        return low_res, iou

    def _upsample(self, low_res: torch.Tensor) -> torch.Tensor:
        """n x h x w low-res logits -> n x H x W logits at crop resolution, by the model's own path
        (Sam.postprocess_masks, as the reference), so survivors' masks are the reference's."""
        return self.predictor.upscale_logits(low_res[:, None])[:, 0]

    # -- all crops ------------------------------------------------------------------------------------------

    def _finish(self, found: _Candidates, image_size: tuple[int, int], n_crops: int) -> list[dict[str, Any]]:
        if n_crops > 1 and len(found):
            # Prefer masks from smaller crops: they saw the object at a higher zoom.
            crop_area = crops.box_area(torch.tensor(found.crop_box, dtype=torch.float32))
            keep = mask_utils.box_nms(np.stack(found.boxes), (1 / crop_area).numpy(), self.crop_nms_thresh)
            kept = _Candidates()
            kept.extend(found, keep)
            found = kept
        masks = _full_frame_masks(found, image_size)
        if self.min_mask_region_area > 0 and len(found):
            found, masks = self._remove_small_regions(found, masks, image_size)
        return self._records(found, masks, image_size)

    def _remove_small_regions(
        self, found: _Candidates, masks: Any, image_size: tuple[int, int]
    ) -> tuple[_Candidates, list]:
        """Fill small holes, drop small islands, then NMS again preferring masks that needed no change.

        Changed masks are kept bit-packed in the image frame until NMS decides which survive."""
        packed, boxes, unchanged = [], [], []
        for mask in masks:
            cleaned, hole_changed = mask_utils.remove_small_regions(mask, self.min_mask_region_area, "holes")
            cleaned, island_changed = mask_utils.remove_small_regions(
                cleaned, self.min_mask_region_area, "islands"
            )
            changed = hole_changed or island_changed
            packed.append(np.packbits(cleaned.reshape(-1)) if changed else None)
            boxes.append(mask_utils.masks_to_boxes(torch.from_numpy(cleaned)).numpy())
            unchanged.append(0.0 if changed else 1.0)
        keep = mask_utils.box_nms(
            np.stack(boxes), np.asarray(unchanged), max(self.box_nms_thresh, self.crop_nms_thresh)
        )
        kept = _Candidates()
        kept.extend(found, keep)
        kept_masks = []
        for j, i in enumerate(keep):
            if packed[i] is not None:
                kept.boxes[j] = boxes[i]
                kept_masks.append(("image", packed[i]))
            else:
                kept_masks.append(("crop", found.packed[i], found.crop_box[i]))
        return kept, _MaskSource(kept_masks, image_size)

    def _records(self, found: _Candidates, masks: Any, image_size: tuple[int, int]) -> list[dict[str, Any]]:
        """Records with the reference's fields: segmentation, area, bbox (XYWH), predicted_iou,
        point_coords ([[x, y]]), stability_score, crop_box (XYWH)."""
        records = []
        self.funnel.kept = len(found)
        for i, mask in enumerate(masks):
            if self.output_mode == "binary_mask":
                segmentation = mask
            else:
                segmentation = mask_utils.masks_to_rle(mask[None])[0]
                if self.output_mode == "coco_rle":
                    segmentation = mask_utils.coco_encode_rle(segmentation)
            records.append(
                {
                    "segmentation": segmentation,
                    "area": int(np.count_nonzero(mask)),
                    "bbox": mask_utils.box_xyxy_to_xywh(found.boxes[i]),
                    "predicted_iou": float(found.predicted_iou[i]),
                    "point_coords": [[float(v) for v in found.points[i]]],
                    "stability_score": float(found.stability_score[i]),
                    "crop_box": mask_utils.box_xyxy_to_xywh(found.crop_box[i]),
                }
            )
        return records


@dataclass
class Funnel:
    """What the filters of the last ``generate`` call let through: candidate masks (3 per grid point), the
    highest predicted IoU among them, how many passed the predicted-IoU filter, the highest stability score
    among those, how many passed the stability filter, and how many masks were kept in the end (after the
    crop-edge filter and NMS)."""

    candidates: int = 0
    max_predicted_iou: float = 0.0
    passed_iou: int = 0
    max_stability_score: float = 0.0
    passed_stability: int = 0
    kept: int = 0

    def why_empty(self, pred_iou_thresh: float, stability_score_thresh: float) -> str:
        """One sentence that says which filter removed every mask, with the best value against its threshold."""
        if self.candidates == 0:
            return "no candidate masks: the point grid produced no prompt"
        if self.passed_iou == 0:
            return (
                f"no mask kept: the highest predicted IoU of {self.candidates} candidates was "
                f"{self.max_predicted_iou:.3f}, not above pred_iou_thresh {pred_iou_thresh}"
            )
        if self.passed_stability == 0:
            return (
                f"no mask kept: {self.passed_iou} of {self.candidates} candidates passed pred_iou_thresh "
                f"{pred_iou_thresh}, and their highest stability score was {self.max_stability_score:.3f}, "
                f"below stability_score_thresh {stability_score_thresh}"
            )
        return (
            f"no mask kept: {self.passed_stability} candidates passed predicted IoU and stability, and all touched "
            "a crop edge"
        )


class _MaskSource:
    """Lazily unpacks full-frame H x W bool masks, one at a time, from crop- or image-frame bit packs."""

    def __init__(self, entries: list, image_size: tuple[int, int]) -> None:
        self.entries = entries
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self):
        h, w = self.image_size
        for entry in self.entries:
            if entry[0] == "image":
                yield np.unpackbits(entry[1], count=h * w).reshape(h, w).view(bool)
                continue
            _, packed, (x0, y0, x1, y1) = entry
            crop = np.unpackbits(packed, count=(y1 - y0) * (x1 - x0)).reshape(y1 - y0, x1 - x0).view(bool)
            if (x0, y0, x1, y1) == (0, 0, w, h):
                yield crop
                continue
            mask = np.zeros((h, w), dtype=bool)
            mask[y0:y1, x0:x1] = crop
            yield mask


def _full_frame_masks(found: _Candidates, image_size: tuple[int, int]) -> _MaskSource:
    return _MaskSource(
        [("crop", p, c) for p, c in zip(found.packed, found.crop_box, strict=True)], image_size
    )


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _check_range(name: str, value: Any, low: float, high: float, high_inclusive: bool = True) -> None:
    ok = (
        isinstance(value, (int, float, np.number))
        and low <= value
        and (value <= high if high_inclusive else value < high)
    )
    if not ok:
        bracket = "]" if high_inclusive else ")"
        raise ValueError(f"{name} must be a number in [{low}, {high}{bracket}, got {value!r}")


def _check_grid(layer: int, grid: Any) -> np.ndarray:
    g = np.asarray(grid, dtype=np.float64)
    if g.ndim != 2 or g.shape[1] != 2 or len(g) == 0:
        raise ValueError(f"point_grids[{layer}] must be a non-empty N x 2 array, got shape {g.shape}")
    if not np.all((g >= 0) & (g <= 1)):
        raise ValueError(f"point_grids[{layer}] must hold points normalised to [0, 1]")
    return g


def _describe(x: Any) -> str:
    shape = getattr(x, "shape", None)
    return f"{type(x).__name__} of shape {shape}" if shape is not None else type(x).__name__


__all__ = ["AutomaticMaskGenerator", "OUTPUT_MODES"]
