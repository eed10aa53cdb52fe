"""The image encoder is a choice of the config: SAM's ViT or our small convolutional encoder, same embedding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sam_core import SamPredictor, build_sam
from sam_core.build import CONFIGS, SamConfig
from sam_core.checkpoint import check_state_dict, encoder_kind


@torch.no_grad()
def test_conv_encoder_gives_the_tiny_vits_embedding_shape_and_the_predictor_runs():
    torch.manual_seed(0)
    conv, vit = build_sam("tiny_conv"), build_sam("tiny")
    image = torch.randn(2, 3, 256, 256)
    assert conv.image_encoder(image).shape == vit.image_encoder(image).shape == (2, 256, 32, 32)
    predictor = SamPredictor(conv)
    predictor.set_image(np.random.default_rng(0).integers(0, 255, (200, 300, 3), dtype=np.uint8))
    masks, iou, low_res = predictor.predict(point_coords=np.array([[150, 100]]), point_labels=np.array([1]))
    assert masks.shape == (3, 200, 300) and iou.shape == (3,) and low_res.shape == (3, 128, 128)


def test_checkpoint_of_one_encoder_kind_is_refused_by_the_other_naming_both():
    vit_state, conv_state = build_sam("tiny").state_dict(), build_sam("tiny_conv").state_dict()
    assert encoder_kind(vit_state) == "vit" and encoder_kind(conv_state) == "conv"
    with pytest.raises(ValueError, match="holds a 'vit' image encoder but the model has a 'conv'"):
        check_state_dict(build_sam("tiny_conv"), vit_state, "vit.pt")
    with pytest.raises(ValueError, match="holds a 'conv' image encoder but the model has a 'vit'.*tiny_conv"):
        check_state_dict(build_sam("tiny"), conv_state, "conv.pt")
    check_state_dict(build_sam("tiny_conv"), conv_state)  # its own kind loads


def test_config_records_the_encoder_and_older_records_mean_the_vit():
    assert CONFIGS["tiny_conv"].image_encoder == "conv" and CONFIGS["vit_b"].image_encoder == "vit"
    restored = SamConfig.from_dict(CONFIGS["tiny_conv"].to_dict())
    assert restored == CONFIGS["tiny_conv"]
    older = {
        k: v for k, v in CONFIGS["tiny"].to_dict().items() if not k.startswith(("image_encoder", "conv_"))
    }
    assert SamConfig.from_dict(older).image_encoder == "vit"
    with pytest.raises(ValueError, match="unknown image_encoder 'resnet'"):
        from sam_core.build import build_sam_from_config

        build_sam_from_config(SamConfig(image_encoder="resnet"))


def test_the_slim_config_trains_and_its_checkpoint_loads_as_the_embedded_model(tmp_path):
    """tiny_conv_slim (the candidate cheaper embedded model): a 128-channel embedding, a training step, and a
    checkpoint that load_embedded builds in the config it records."""
    from sam_core.embedded import embedded_config_name, load_embedded
    from sam_core.train import TrainConfig, Trainer

    trainer = Trainer(
        TrainConfig(model="tiny_conv_slim", steps=1, images_per_step=1, masks_per_image=2, dataset_size=2)
    )
    stats = trainer.step()
    assert np.isfinite(stats["loss"]) and stats["masks"] >= 2
    trainer.save(tmp_path / "slim.pt", half=True)
    assert embedded_config_name(tmp_path / "slim.pt") == "tiny_conv_slim"
    model = load_embedded(tmp_path / "slim.pt")
    assert model.mask_decoder.transformer_dim == model.prompt_encoder.embed_dim == 128
    with torch.no_grad():
        assert model.image_encoder(torch.randn(1, 3, 256, 256)).shape == (1, 128, 32, 32)
    predictor = SamPredictor(model)
    predictor.set_image(np.random.default_rng(0).integers(0, 255, (200, 300, 3), dtype=np.uint8))
    masks, iou, low_res = predictor.predict(point_coords=np.array([[150, 100]]), point_labels=np.array([1]))
    assert masks.shape == (3, 200, 300) and iou.shape == (3,) and low_res.shape == (3, 128, 128)
