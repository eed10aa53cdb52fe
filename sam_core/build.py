"""Build SAM from a named configuration (checkpoints are read and checked by sam_core.checkpoint).

Configurations (`SamConfig`): "vit_b", "vit_l", "vit_h" are Meta's official ones (1024 px input, patch 16,
64 x 64 x 256 image embedding, 256 x 256 low-res masks). Ours, sized for a CPU: "tiny_conv" swaps the ViT for a
small convolutional encoder (sam_core.conv_encoder: 256 px input, stride 8, the same 32 x 32 x 256 embedding and
decoder as "tiny"). "tiny_conv_slim" is "tiny_conv" at half the width from the embedding on (32 x 32 x 128; prompt
encoder and mask decoder at 128, decoder MLP 512: 0.76M decoder parameters against 3.01M), the embedded default
since the demo's retrains needed it cheaper. "tiny" keeps SAM's ViT at 256 px input,
patch 8 (32 x 32 x 256 embedding, 128 x 128 low-res masks), ViT width 192, depth 6, 6 heads, window 8,
global blocks (2, 5), decoder MLP 1024 (prompt encoder and the rest of the decoder as official).
Tiny's size and cost, measured on this project's machine (AMD EPYC with AVX2, torch 2.14.1, float32):
6.57M parameters (image encoder 3.55M, prompt encoder 6k, mask decoder 3.01M); the encoder costs 6.9 GFLOP
per image; set_image on a 256 x 256 image takes about 160 ms and one click (the best mask at image
resolution) about 14 ms of single-thread CPU time. (Single-thread CPU time because the shared 2-core
machine's wall clock swings with its neighbours' load; vit_b on the same machine: see
benchmarks/bench_predictor.py.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from .checkpoint import load_checkpoint
from .conv_encoder import ImageEncoderConv
from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .sam import PIXEL_MEAN, PIXEL_STD, Sam
from .transformer import TwoWayTransformer

IMAGE_ENCODERS = ("vit", "conv")


@dataclass
class SamConfig:
    """All the dimensions of a SAM model. Defaults are vit_b.

    image_encoder: "vit" (SAM's, the encoder_* and window fields apply) or "conv" (sam_core.conv_encoder, the
    conv_* fields apply; patch_size is then its stride, 8).
    text_dim: the size of the text embeddings the prompt encoder takes (0, every shipped config: no text path,
    Meta's parameters exactly); > 0 adds the text projection to text_tokens sparse tokens and the mask decoder's
    presence head (see sam_core.prompt_encoder, sam_core.mask_decoder and, for checkpoints without them,
    sam_core.checkpoint).
    text_recognizer: with a text path, the width of its mask recognizer (sam_core.text_recognition: which of the
    image's masks a phrase names, from what each looks like); 0: none, the text tokens alone (earlier text models).
    """

    img_size: int = 1024
    patch_size: int = 16
    image_encoder: str = "vit"
    encoder_embed_dim: int = 768
    encoder_depth: int = 12
    encoder_num_heads: int = 12
    encoder_global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    window_size: int = 14
    mlp_ratio: float = 4.0
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    conv_channels: tuple[int, ...] = (32, 64, 128, 256)
    conv_depths: tuple[int, ...] = (1, 2, 2)
    conv_attention_blocks: int = 2
    text_dim: int = 0
    text_tokens: int = 2
    text_recognizer: int = 0
    pixel_mean: tuple[float, ...] = field(default=PIXEL_MEAN)
    pixel_std: tuple[float, ...] = field(default=PIXEL_STD)

    @property
    def image_embedding_size(self) -> int:
        return self.img_size // self.patch_size

    def without_text(self) -> SamConfig:
        """This config with no text path (text fields at their defaults): what a text model was trained on."""
        return dataclasses.replace(self, text_dim=0, text_tokens=2, text_recognizer=0)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (for the models registry and checkpoint metadata)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SamConfig:
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown SamConfig fields: {unknown}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


CONFIGS: dict[str, SamConfig] = {
    "vit_b": SamConfig(),
    "vit_l": SamConfig(
        encoder_embed_dim=1024,
        encoder_depth=24,
        encoder_num_heads=16,
        encoder_global_attn_indexes=(5, 11, 17, 23),
    ),
    "vit_h": SamConfig(
        encoder_embed_dim=1280,
        encoder_depth=32,
        encoder_num_heads=16,
        encoder_global_attn_indexes=(7, 15, 23, 31),
    ),
    "tiny": SamConfig(
        img_size=256,
        patch_size=8,
        encoder_embed_dim=192,
        encoder_depth=6,
        encoder_num_heads=6,
        encoder_global_attn_indexes=(2, 5),
        window_size=8,
        decoder_mlp_dim=1024,
    ),
    "tiny_conv": SamConfig(
        img_size=256,
        patch_size=8,
        image_encoder="conv",
        decoder_mlp_dim=1024,
    ),
}


def at_decoder_width(base: SamConfig, width: int) -> SamConfig:
    """``base`` with its prompt encoder, mask decoder and image embedding at ``width`` channels, the decoder MLP
    and the IoU head's hidden layer scaled alongside (benchmarks/bench_decoder_width.py times these)."""
    return dataclasses.replace(
        base,
        prompt_embed_dim=width,
        decoder_mlp_dim=base.decoder_mlp_dim * width // base.prompt_embed_dim,
        iou_head_hidden_dim=width,
    )


# tiny_conv at half the decoder width: a demo retrain step, most of it the mask decoder's passes, takes 0.57-0.59
# of the time (benchmarks/bench_decoder_width.py).
CONFIGS["tiny_conv_slim"] = at_decoder_width(CONFIGS["tiny_conv"], 128)


def build_sam_from_config(cfg: SamConfig) -> Sam:
    """A freshly initialised Sam (eval mode) with the dimensions of cfg."""
    grid = cfg.image_embedding_size
    model = Sam(
        image_encoder=_image_encoder(cfg),
        prompt_encoder=PromptEncoder(
            embed_dim=cfg.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(cfg.img_size, cfg.img_size),
            mask_in_chans=cfg.mask_in_chans,
            text_dim=cfg.text_dim,
            text_tokens=cfg.text_tokens,
            text_recognizer=cfg.text_recognizer,
        ),
        mask_decoder=MaskDecoder(
            transformer_dim=cfg.prompt_embed_dim,
            transformer=TwoWayTransformer(
                depth=cfg.decoder_depth,
                embedding_dim=cfg.prompt_embed_dim,
                num_heads=cfg.decoder_num_heads,
                mlp_dim=cfg.decoder_mlp_dim,
            ),
            num_multimask_outputs=cfg.num_multimask_outputs,
            iou_head_depth=cfg.iou_head_depth,
            iou_head_hidden_dim=cfg.iou_head_hidden_dim,
            presence=cfg.text_dim > 0,
        ),
        pixel_mean=tuple(cfg.pixel_mean),
        pixel_std=tuple(cfg.pixel_std),
    )
    model.config = cfg
    return model.eval()


def _image_encoder(cfg: SamConfig) -> torch.nn.Module:
    if cfg.image_encoder == "conv":
        if cfg.patch_size != 8:
            raise ValueError(f"the conv image encoder has stride 8; set patch_size=8, not {cfg.patch_size}")
        return ImageEncoderConv(
            img_size=cfg.img_size,
            channels=tuple(cfg.conv_channels),
            depths=tuple(cfg.conv_depths),
            attention_blocks=cfg.conv_attention_blocks,
            out_chans=cfg.prompt_embed_dim,
        )
    if cfg.image_encoder != "vit":
        raise ValueError(f"unknown image_encoder {cfg.image_encoder!r}; choose one of {IMAGE_ENCODERS}")
    return ImageEncoderViT(
        img_size=cfg.img_size,
        patch_size=cfg.patch_size,
        embed_dim=cfg.encoder_embed_dim,
        depth=cfg.encoder_depth,
        num_heads=cfg.encoder_num_heads,
        mlp_ratio=cfg.mlp_ratio,
        out_chans=cfg.prompt_embed_dim,
        window_size=cfg.window_size,
        global_attn_indexes=tuple(cfg.encoder_global_attn_indexes),
    )


def build_sam(
    name: str, checkpoint: str | None = None, text_dim: int = 0, allow_untrained_text: bool = False
) -> Sam:
    """Sam for a named config ("vit_b", "vit_l", "vit_h", "tiny", "tiny_conv", "tiny_conv_slim"), optionally loading a checkpoint from a
    path or any fsspec URL (see the module docstring for the format).

    text_dim > 0 adds the text path for text embeddings of that size; ``allow_untrained_text`` lets a checkpoint
    without text weights (Meta's, the embedded model's) load into it, its text path left at initialisation
    (sam_core.checkpoint.check_state_dict states the rule)."""
    if name not in CONFIGS:
        raise ValueError(f"unknown SAM config {name!r}; choose one of {sorted(CONFIGS)}")
    cfg = dataclasses.replace(CONFIGS[name], text_dim=text_dim) if text_dim else CONFIGS[name]
    model = build_sam_from_config(cfg)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, name=name, allow_untrained_text=allow_untrained_text)
    return model
