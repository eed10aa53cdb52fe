"""The Sam module: image encoder + prompt encoder + mask decoder, with SAM's pre- and post-processing."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


class Sam(nn.Module):
    """Segment Anything. Pixel statistics are buffers that are not saved in checkpoints (as upstream)."""

    mask_threshold: float = 0.0
    image_format: str = "RGB"

    def __init__(
        self,
        image_encoder: ImageEncoderViT,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        pixel_mean: tuple[float, ...] = PIXEL_MEAN,
        pixel_std: tuple[float, ...] = PIXEL_STD,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """x ... x 3 x H x W in 0-255 (long side already resized to img_size) -> normalised, zero-padded
        bottom/right to img_size x img_size."""
        x = (x - self.pixel_mean) / self.pixel_std
        h, w = x.shape[-2:]
        size = self.image_encoder.img_size
        return F.pad(x, (0, size - w, 0, size - h))

    def postprocess_masks(
        self,
        masks: torch.Tensor,
        input_size: tuple[int, ...],
        original_size: tuple[int, ...],
    ) -> torch.Tensor:
        """Low-res logits B x M x 4h x 4w -> B x M x H x W at the original image size (bilinear to the padded
        encoder frame, crop the padding, bilinear to the original size)."""
        size = self.image_encoder.img_size
        masks = F.interpolate(masks, (size, size), mode="bilinear", align_corners=False)
        masks = masks[..., : input_size[0], : input_size[1]]
        return F.interpolate(masks, tuple(original_size), mode="bilinear", align_corners=False)

    def forward(
        self, batched_input: list[dict[str, Any]], multimask_output: bool
    ) -> list[dict[str, torch.Tensor]]:
        """End-to-end prediction for a list of images, each a dict with
        'image' 3 x H x W (resized, 0-255), 'original_size' (H, W), and optional prompts in the resized frame:
        'point_coords' B x N x 2 with 'point_labels' B x N, 'boxes' B x 4, 'mask_inputs' B x 1 x 4h x 4w, and for
        a model with a text path 'text_embeddings' B x text_dim (a text encoder's output, sam_core.text_encoder).

        Returns per image {'masks' B x M x H x W bool, 'iou_predictions' B x M, 'low_res_logits'
        B x M x 4h x 4w}, plus 'presence_logits' B where text was given. Unlike the reference, gradients flow
        (wrap in torch.no_grad() for inference).
        """
        images = torch.stack([self.preprocess(record["image"]) for record in batched_input], dim=0)
        embeddings = self.image_encoder(images)
        image_pe = self.prompt_encoder.get_dense_pe()
        outputs = []
        for record, embedding in zip(batched_input, embeddings, strict=True):
            points = None
            if "point_coords" in record:
                points = (record["point_coords"], record["point_labels"])
            text = record.get("text_embeddings")
            sparse, dense = self.prompt_encoder(
                points=points, boxes=record.get("boxes"), masks=record.get("mask_inputs"), text=text
            )
            decoded = self.mask_decoder(
                embedding.unsqueeze(0), image_pe, sparse, dense, multimask_output, presence=text is not None
            )
            low_res, iou = decoded[:2]
            masks = self.postprocess_masks(low_res, record["image"].shape[-2:], record["original_size"])
            output = {"masks": masks > self.mask_threshold, "iou_predictions": iou, "low_res_logits": low_res}
            if text is not None:
                output["presence_logits"] = decoded[2]
            outputs.append(output)
        return outputs
