"""A model with a text path, loaded from Meta's reference weights, still answers every text-free prompt as the
reference does; and the reference's checkpoint goes into it only by the checkpoint rule's consent."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sam_core import SamPredictor, build_sam

from .test_parity import CASES, assert_predictions_agree


@pytest.fixture(scope="module")
def text_predictor_on_wide_embedding(reference_and_ours, wide_predictors, tmp_path_factory):
    """Our vit_b with a CLIP-sized text path (512), the reference's weights loaded from a file, on the wide
    image's embedding (no further ViT pass)."""
    reference, _ = reference_and_ours
    path = tmp_path_factory.mktemp("ckpt") / "sam_vit_b_random.pth"
    torch.save(reference.state_dict(), path)
    with pytest.raises(ValueError, match="holds no text path"):
        build_sam("vit_b", checkpoint=str(path), text_dim=512)
    model = build_sam("vit_b", checkpoint=str(path), text_dim=512, allow_untrained_text=True)
    predictor = SamPredictor(model)
    predictor.set_embedding(wide_predictors[1].get_image_embedding().clone(), (480, 640))
    return predictor


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("multimask_output", [True, False])
def test_text_model_without_text_matches_reference(
    wide_predictors, text_predictor_on_wide_embedding, case, multimask_output
):
    ref_pred = wide_predictors[0]
    prompt = {k: np.array(v) for k, v in CASES[case].items()}
    reference = ref_pred.predict(**prompt, multimask_output=multimask_output)
    ours = text_predictor_on_wide_embedding.predict(**prompt, multimask_output=multimask_output)
    assert len(ours) == 3
    assert_predictions_agree(ours, reference)
