"""Fixtures for the automatic mask generator tests: models (ours and the reference, same weights) and images."""

import sys
from functools import partial
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # amg_helpers (tests run with --import-mode=importlib)

from amg_helpers import ColourBlobSam, synthetic_image  # noqa: E402


@pytest.fixture(scope="session")
def blob_model():
    return ColourBlobSam()


@pytest.fixture(scope="session")
def images():
    """Three small non-square scenes (landscape, portrait, odd sizes)."""
    return [synthetic_image(0, 96, 128), synthetic_image(1, 120, 88), synthetic_image(2, 101, 131)]


@pytest.fixture(scope="session")
def tiny_models():
    """(reference Sam, our Sam) in the "tiny" config with the same random weights."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    from sam_core import build_sam

    torch.manual_seed(0)
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
