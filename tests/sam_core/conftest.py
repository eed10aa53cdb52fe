"""Shared fixtures: one reference vit_b (Meta's segment_anything) with random weights and our model loaded from
its state dict, built once per session; two non-square test images with their embeddings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sam_core import SamPredictor, build_sam_from_config
from sam_core.build import CONFIGS


def synthetic_image(height: int, width: int, seed: int) -> np.ndarray:
    """A uint8 RGB image with smooth gradients and a few solid rectangles, so resizing has edges to keep."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    image = np.stack([xs * 255 // width, ys * 255 // height, (xs + ys) * 127 // (width + height)], -1)
    for _ in range(6):
        y0, x0 = rng.integers(0, height - 40), rng.integers(0, width - 40)
        h, w = rng.integers(20, height // 2), rng.integers(20, width // 2)
        image[y0 : y0 + h, x0 : x0 + w] = rng.integers(0, 256, 3)
    return (image + rng.integers(0, 12, image.shape)).clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def reference_and_ours():
    """(reference Sam, our Sam) with identical random weights (every parameter perturbed, so zero-initialised
    tensors such as relative positions also take part in the comparison)."""
    from segment_anything import sam_model_registry

    torch.manual_seed(0)
    reference = sam_model_registry["vit_b"]()
    with torch.no_grad():
        for param in reference.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    ours = build_sam_from_config(CONFIGS["vit_b"])
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference.eval(), ours.eval()


@pytest.fixture(scope="session")
def wide_image() -> np.ndarray:
    return synthetic_image(480, 640, seed=1)


@pytest.fixture(scope="session")
def tall_image() -> np.ndarray:
    return synthetic_image(600, 400, seed=2)


@pytest.fixture(scope="session")
def wide_predictors(reference_and_ours, wide_image):
    """(reference predictor, our predictor), each having embedded the 480 x 640 image with its own encoder."""
    from segment_anything import SamPredictor as ReferencePredictor

    reference, ours = reference_and_ours
    ref_pred, our_pred = ReferencePredictor(reference), SamPredictor(ours)
    ref_pred.set_image(wide_image)
    our_pred.set_image(wide_image)
    return ref_pred, our_pred


@pytest.fixture(scope="session")
def tall_predictors(reference_and_ours, wide_predictors):
    """Predictors for a 600 x 400 image. The encoder is compared on the wide image; here both predictors get
    that same embedding (ours through set_embedding) so the decoder and the post-processing to a tall,
    non-square original size are compared without paying for another ViT pass."""
    from segment_anything import SamPredictor as ReferencePredictor

    reference, ours = reference_and_ours
    embedding = wide_predictors[1].get_image_embedding().clone()
    our_pred = SamPredictor(ours)
    our_pred.set_embedding(embedding, (600, 400))
    ref_pred = ReferencePredictor(reference)
    ref_pred.features = embedding
    ref_pred.original_size = (600, 400)
    ref_pred.input_size = ref_pred.transform.get_preprocess_shape(600, 400, 1024)
    ref_pred.is_image_set = True
    return ref_pred, our_pred


@pytest.fixture(scope="session")
def tiny_model():
    torch.manual_seed(3)
    return build_sam_from_config(CONFIGS["tiny"])
