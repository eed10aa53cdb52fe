import numpy as np
import torch

from sam_core.checkpoint import read_checkpoint
from sam_core.embedded import EMBEDDED_CHECKPOINT, load_embedded
from sam_core.evaluate import evaluate_interactive
from sam_core.mask_utils import binary_iou
from sam_core.synthetic import split_seeds
from sam_core.train_data import SyntheticDataset


def test_embedded_checkpoint_is_small_fp16_and_carries_its_config_and_metrics():
    assert EMBEDDED_CHECKPOINT.exists(), "the embedded checkpoint must be committed"
    assert EMBEDDED_CHECKPOINT.stat().st_size <= 25e6
    raw = torch.load(EMBEDDED_CHECKPOINT, map_location="cpu", weights_only=True)
    assert raw["model"]["mask_decoder.iou_token.weight"].dtype == torch.float16
    ckpt = read_checkpoint(EMBEDDED_CHECKPOINT)
    assert ckpt["model"]["mask_decoder.iou_token.weight"].dtype == torch.float32
    assert ckpt["config"]["model"] == "tiny_conv_slim" and ckpt["sam_config"]["image_encoder"] == "conv"
    assert "miou@1_oracle" in ckpt["metadata"]["test"]["interactive"]
    assert (EMBEDDED_CHECKPOINT.parent / "MODEL_CARD.md").exists()


def test_embedded_model_beats_an_untrained_model_on_held_out_scenes():
    model = load_embedded()
    assert not model.training
    assert split_seeds("test", 1)[0] not in range(0, 1_000_000)
    metrics = evaluate_interactive(model, SyntheticDataset("test", count=2), max_clicks=3)
    # Untrained models score 0.027-0.028 here; a trained embedded model well above 0.45 (MODEL_CARD.md has its
    # held-out figures). A broken checkpoint or a loader that drops weights falls back to the untrained figure.
    assert metrics["miou@1_oracle"] > 0.45 and metrics["miou@3_confident"] > 0.45


def test_embedded_model_masks_follow_the_click():
    """Each object's first click gives a mask that overlaps that object more than the other objects clicked."""
    from sam_core.predictor import SamPredictor
    from sam_core.prompts import first_click
    from sam_core.synthetic import make_scene

    predictor = SamPredictor(load_embedded())
    own, other = [], []
    for seed in split_seeds("test", 3):
        s = make_scene(seed)
        wholes = [m for m, level in zip(s.masks, s.levels, strict=True) if level == 0]
        predictor.set_image(s.image)
        for i, gt in enumerate(wholes):
            x, y, _ = first_click(gt)
            masks, _, _ = predictor.predict(
                point_coords=np.array([[x, y]], dtype=np.float32), point_labels=np.array([1])
            )
            ious = [max(binary_iou(m, w) for m in masks) for w in wholes]
            own.append(ious[i])
            other += [v for j, v in enumerate(ious) if j != i]
    # The embedded model before the location-aware decoder gave the same masks whatever the click (own ~ other).
    assert np.mean(own) > 2 * np.mean(other) and np.mean(own) > 0.3, (np.mean(own), np.mean(other))
