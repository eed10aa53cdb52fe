"""Resize images so their longest side is `target_length`, and map point / box coordinates along."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


class ResizeLongestSide:
    """Scale so that max(H, W) == target_length, keeping the aspect ratio; new side = int(old * scale + 0.5)."""

    def __init__(self, target_length: int) -> None:
        self.target_length = target_length

    @staticmethod
    def get_preprocess_shape(oldh: int, oldw: int, long_side_length: int) -> tuple[int, int]:
        """(H, W) after scaling the longest side of (oldh, oldw) to long_side_length."""
        scale = long_side_length * 1.0 / max(oldh, oldw)
        return int(oldh * scale + 0.5), int(oldw * scale + 0.5)

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """H x W x 3 uint8 -> h x w x 3 uint8, resized with PIL's bilinear filter (what SAM was trained with)."""
        h, w = self.get_preprocess_shape(image.shape[0], image.shape[1], self.target_length)
        return np.array(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR))

    def apply_coords(self, coords: np.ndarray, original_size: tuple[int, ...]) -> np.ndarray:
        """coords ... x 2 as (x, y) pixels of an image of original_size (H, W) -> float64, resized frame."""
        old_h, old_w = original_size
        new_h, new_w = self.get_preprocess_shape(old_h, old_w, self.target_length)
        coords = np.array(coords, dtype=float)  # a copy: the caller's array stays untouched
        coords[..., 0] *= new_w / old_w
        coords[..., 1] *= new_h / old_h
        return coords

    def apply_boxes(self, boxes: np.ndarray, original_size: tuple[int, ...]) -> np.ndarray:
        """boxes B x 4 (x0, y0, x1, y1) -> B x 4 in the resized frame."""
        return self.apply_coords(np.asarray(boxes).reshape(-1, 2, 2), original_size).reshape(-1, 4)

    def apply_image_torch(self, image: torch.Tensor) -> torch.Tensor:
        """B x C x H x W float -> resized with antialiased bilinear interpolation (close to, not equal to,
        apply_image)."""
        size = self.get_preprocess_shape(image.shape[2], image.shape[3], self.target_length)
        return F.interpolate(image, size, mode="bilinear", align_corners=False, antialias=True)

    def apply_coords_torch(self, coords: torch.Tensor, original_size: tuple[int, ...]) -> torch.Tensor:
        """Torch version of apply_coords (float32 result)."""
        old_h, old_w = original_size
        new_h, new_w = self.get_preprocess_shape(old_h, old_w, self.target_length)
        scale = torch.tensor([new_w / old_w, new_h / old_h], dtype=torch.float32, device=coords.device)
        return coords.to(torch.float32) * scale

    def apply_boxes_torch(self, boxes: torch.Tensor, original_size: tuple[int, ...]) -> torch.Tensor:
        """Torch version of apply_boxes."""
        return self.apply_coords_torch(boxes.reshape(-1, 2, 2), original_size).reshape(-1, 4)
