"""Test doubles for automatic mask generation: synthetic images and a "colour blob" stand-in for SAM.

Random SAM weights give noise masks that all span the image, so box NMS, the crop-edge filter and
cross-crop NMS have nothing to decide. ``ColourBlobSam`` has SAM's interface (the reference's, and the
prepare/predict_masks split of sam_core's decoder) but answers a point with three nested, image-dependent
blobs: pixels of similar colour near the point, at three scales, with a predicted IoU that rewards sharp
edges. The same object drives both generators, so a parity test on it checks the pipelines, not a model.
"""

from __future__ import annotations

from functools import partial

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


def synthetic_image(seed: int, height: int, width: int) -> np.ndarray:
    """H x W x 3 uint8: a shaded, noisy background with filled shapes, parts inside some, small specks
    (islands) and pin holes, so cleanup has work to do."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    base = rng.integers(40, 200, 3)
    image = base + 30 * np.stack([np.sin(xx / 17 + i) * np.cos(yy / 23 - i) for i in range(3)], -1)
    image = image + rng.normal(0, 6, (height, width, 3))
    for _ in range(rng.integers(5, 9)):
        colour = rng.integers(0, 256, 3).tolist()
        cx, cy = int(rng.integers(0, width)), int(rng.integers(0, height))
        ax, ay = int(rng.integers(6, width // 4)), int(rng.integers(6, height // 4))
        if rng.random() < 0.5:
            cv2.ellipse(image, (cx, cy), (ax, ay), float(rng.integers(0, 180)), 0, 360, colour, -1)
        else:
            cv2.rectangle(image, (cx - ax, cy - ay), (cx + ax, cy + ay), colour, -1)
        if rng.random() < 0.6:  # a part inside the shape
            inner = rng.integers(0, 256, 3).tolist()
            cv2.circle(image, (cx, cy), max(2, min(ax, ay) // 2), inner, -1)
        for _ in range(rng.integers(0, 4)):  # pin holes and specks of the background colour
            px, py = cx + int(rng.integers(-ax, ax + 1)), cy + int(rng.integers(-ay, ay + 1))
            cv2.circle(image, (px, py), int(rng.integers(1, 3)), base.tolist(), -1)
    return np.clip(image, 0, 255).astype(np.uint8)


class _Encoder(nn.Module):
    """The "embedding" is the normalised image average-pooled to the low-res grid (3 x S/2 x S/2)."""

    def __init__(self, img_size: int) -> None:
        super().__init__()
        self.img_size = img_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 2)


class _PromptEncoder(nn.Module):
    def __init__(self, grid: int) -> None:
        super().__init__()
        self.embed_dim = 3
        self.image_embedding_size = (grid, grid)
        self.mask_input_size = (grid, grid)
        self.no_mask_embed = nn.Embedding(1, 3)
        nn.init.zeros_(self.no_mask_embed.weight)

    def forward(self, points, boxes, masks):
        coords, labels = points
        sparse = torch.cat([coords.float(), labels[..., None].float()], dim=-1)  # B x N x 3
        dense = torch.zeros(len(coords), 3, *self.image_embedding_size)
        return sparse, dense

    def get_dense_pe(self) -> torch.Tensor:
        return torch.zeros(1, 3, *self.image_embedding_size)


class _Decoder(nn.Module):
    """Three blobs per point: colour distance under tau_k and spatial distance under sigma_k (low-res px)."""

    def __init__(self, grid: int, amplitude: float = 6.0) -> None:
        super().__init__()
        self.grid = grid
        self.amplitude = amplitude
        self.tau = torch.tensor([0.35, 0.6, 1.0])
        self.sigma = torch.tensor([grid / 10, grid / 5, grid / 2])

    def forward(
        self, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, multimask_output
    ):
        return self._blobs(image_embeddings, sparse_prompt_embeddings)

    def prepare(self, image_embeddings, image_pe, no_mask_embed):
        return image_embeddings

    def predict_masks(
        self,
        context,
        sparse_prompt_embeddings,
        dense_prompt_embeddings=None,
        multimask_output=True,
        best_only=False,
    ):
        return self._blobs(context, sparse_prompt_embeddings)

    def _blobs(self, embedding: torch.Tensor, sparse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g = self.grid
        xy = sparse[:, 0, :2] / 2 - 0.5  # input-frame px -> low-res px centres
        ix = xy[:, 0].round().clamp(0, g - 1).long()
        iy = xy[:, 1].round().clamp(0, g - 1).long()
        colour = embedding[0][:, iy, ix].T  # B x 3
        d_col = ((embedding[0][None] - colour[:, :, None, None]) ** 2).sum(1)  # B x g x g
        ys, xs = torch.meshgrid(torch.arange(g), torch.arange(g), indexing="ij")
        d_sp = (xs[None] - xy[:, 0, None, None]) ** 2 + (ys[None] - xy[:, 1, None, None]) ** 2
        logits = self.amplitude * (
            1
            - d_col[:, None] / self.tau[None, :, None, None] ** 2
            - d_sp[:, None] / self.sigma[None, :, None, None] ** 2
        )  # B x 3 x g x g
        sharp = (logits.abs() > 2).float()
        inside = (logits > -2).float()
        iou = 0.7 + 0.3 * (sharp * inside).sum((-2, -1)) / inside.sum((-2, -1)).clamp(min=1)
        return logits, iou


class ColourBlobSam(nn.Module):
    """SAM's interface, colour-blob behaviour; img_size 256 gives a 128 x 128 low-res grid."""

    mask_threshold = 0.0
    image_format = "RGB"

    def __init__(self, img_size: int = 256) -> None:
        super().__init__()
        grid = img_size // 2
        self.image_encoder = _Encoder(img_size)
        self.prompt_encoder = _PromptEncoder(grid)
        self.mask_decoder = _Decoder(grid)
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(-1, 1, 1), False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.pixel_mean) / self.pixel_std
        size = self.image_encoder.img_size
        return F.pad(x, (0, size - x.shape[-1], 0, size - x.shape[-2]))

    def postprocess_masks(self, masks, input_size, original_size):
        size = self.image_encoder.img_size
        masks = F.interpolate(masks, (size, size), mode="bilinear", align_corners=False)
        masks = masks[..., : input_size[0], : input_size[1]]
        return F.interpolate(masks, original_size, mode="bilinear", align_corners=False)


def segmentation_mask(record: dict, output_mode: str) -> np.ndarray:
    """H x W bool from a record's segmentation; COCO RLE is decoded by pycocotools itself."""
    from pycocotools import mask as coco_mask

    seg = record["segmentation"]
    if output_mode == "binary_mask":
        return np.asarray(seg, dtype=bool)
    h, w = seg["size"]
    if output_mode == "uncompressed_rle":
        seg = coco_mask.frPyObjects(seg, h, w)
    return coco_mask.decode(seg).astype(bool)


def match_rates(ref_records: list, our_records: list, output_mode: str, min_iou: float = 0.95) -> tuple:
    """(fraction of the reference's masks matched by one of ours, fraction of ours matched by one of the
    reference's), a match being mask IoU >= min_iou. Both are 1.0 when both lists are empty."""
    if not ref_records and not our_records:
        return 1.0, 1.0
    if not ref_records or not our_records:
        return 0.0, 0.0
    iou = iou_matrix(ref_records, our_records, output_mode)
    return float((iou.max(1) >= min_iou).mean()), float((iou.max(0) >= min_iou).mean())


def iou_matrix(ref_records: list, our_records: list, output_mode: str) -> np.ndarray:
    """len(ref_records) x len(our_records) mask IoUs."""
    a = np.stack([segmentation_mask(r, output_mode).ravel() for r in ref_records]).astype(np.float32)
    b = np.stack([segmentation_mask(r, output_mode).ravel() for r in our_records]).astype(np.float32)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    return inter / np.maximum(union, 1)


def tiny_model_pair(seed: int = 0) -> tuple:
    """(reference Sam, our Sam) in the "tiny" config (256 px, 32 x 32 x 256 embedding), same random weights."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    from sam_core import build_sam

    torch.manual_seed(seed)

    ref = Sam(
        image_encoder=ImageEncoderViT(
            depth=6,
            embed_dim=192,
            img_size=256,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=6,
            patch_size=8,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=(2, 5),
            window_size=8,
            out_chans=256,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=256, image_embedding_size=(32, 32), input_image_size=(256, 256), mask_in_chans=16
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=1024, num_heads=8),
            transformer_dim=256,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    ).eval()
    ours = build_sam("tiny")
    ours.load_state_dict(ref.state_dict())
    return ref, ours.eval()
