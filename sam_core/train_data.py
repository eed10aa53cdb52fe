"""Training samples: turn (image, masks) into the tensors the interactive trainer needs, skipping and counting
bad masks instead of training on them, plus the synthetic dataset as a sequence."""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

from sam_core.prompts import noisy_box
from sam_core.synthetic import SPLITS, scene


class SyntheticDataset:
    """The synthetic scenes of one split as a sequence of (image HxWx3 uint8, masks list of HxW bool)."""

    def __init__(self, split: str = "train", size: int = 256, count: int | None = None):
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
        self.seeds = SPLITS[split] if count is None else SPLITS[split][:count]
        self.size = size

    def __len__(self) -> int:
        return len(self.seeds)

    def __getitem__(self, index: int) -> tuple[np.ndarray, list[np.ndarray]]:
        return scene(self.seeds[index], self.size)


@dataclass
class PreparedSample:
    """image: 3xSxS float32 pixel values (0..255, resized longest side to S, padded bottom/right).
    masks: NxSxS float32 0/1 targets. boxes: Nx4 noisy boxes in the same frame. skipped: counts by reason."""

    image: torch.Tensor
    masks: torch.Tensor
    boxes: torch.Tensor
    skipped: dict = field(default_factory=dict)


def resize_longest_side(array: np.ndarray, size: int, interpolation: int) -> np.ndarray:
    """Scale so the longest side is ``size`` (new side = int(old * scale + 0.5)), as SAM's preprocessing."""
    h, w = array.shape[:2]
    scale = size / max(h, w)
    new_w, new_h = int(w * scale + 0.5), int(h * scale + 0.5)
    if (new_h, new_w) == (h, w):
        return array
    return cv2.resize(array, (new_w, new_h), interpolation=interpolation)


def pad_to(array: np.ndarray, size: int) -> np.ndarray:
    h, w = array.shape[:2]
    pad = [(0, size - h), (0, size - w)] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, pad)


def prepare_sample(
    image: np.ndarray, masks, size: int, max_masks: int, rng: np.random.Generator, min_area: int = 16
) -> PreparedSample:
    """Validate and resize one sample; at most ``max_masks`` masks drawn at random.

    Raises ValueError for an image that is not HxWx3 uint8. Masks that are empty (or under ``min_area`` pixels
    after resizing) or whose shape differs from the image's are skipped and counted, never trained on.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be HxWx3 uint8, got shape {image.shape} dtype {image.dtype}")
    h, w = image.shape[:2]
    skipped = {"empty_masks": 0, "shape_mismatch": 0}
    usable = []
    for m in masks:
        m = np.asarray(m)
        if m.shape != (h, w):
            skipped["shape_mismatch"] += 1
            continue
        if not m.any():
            skipped["empty_masks"] += 1
            continue
        usable.append(m)
    if len(usable) > max_masks:
        usable = [usable[i] for i in rng.choice(len(usable), size=max_masks, replace=False)]
    resized = pad_to(resize_longest_side(image, size, cv2.INTER_LINEAR), size)
    out_masks, out_boxes = [], []
    for m in usable:
        r = pad_to(resize_longest_side(m.astype(np.uint8), size, cv2.INTER_NEAREST), size).astype(bool)
        if r.sum() < min_area:
            skipped["empty_masks"] += 1
            continue
        out_masks.append(r)
        out_boxes.append(noisy_box(r, rng))
    image_t = torch.from_numpy(resized).permute(2, 0, 1).float().contiguous()
    if out_masks:
        masks_t = torch.from_numpy(np.stack(out_masks)).float()
        boxes_t = torch.from_numpy(np.stack(out_boxes))
    else:
        masks_t = torch.zeros((0, size, size))
        boxes_t = torch.zeros((0, 4))
    return PreparedSample(image=image_t, masks=masks_t, boxes=boxes_t, skipped=skipped)
