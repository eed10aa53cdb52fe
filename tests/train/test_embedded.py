import numpy as np
import torch

from sam_core.embedded import EMBEDDED_CHECKPOINT, load_embedded, read_checkpoint
from sam_core.evaluate import evaluate_interactive
from sam_core.synthetic import split_seeds
from sam_core.train_data import SyntheticDataset


def test_embedded_checkpoint_is_small_fp16_and_carries_its_config_and_metrics():
    assert EMBEDDED_CHECKPOINT.exists(), "the embedded checkpoint must be committed"
    assert EMBEDDED_CHECKPOINT.stat().st_size <= 25e6
    raw = torch.load(EMBEDDED_CHECKPOINT, map_location="cpu", weights_only=True)
    assert raw["model"]["mask_decoder.iou_token.weight"].dtype == torch.float16
    ckpt = read_checkpoint(EMBEDDED_CHECKPOINT)
    assert ckpt["model"]["mask_decoder.iou_token.weight"].dtype == torch.float32
    assert ckpt["config"]["model"] == "tiny" and "miou@1_oracle" in ckpt["metadata"]["metrics"]
    assert (EMBEDDED_CHECKPOINT.parent / "MODEL_CARD.md").exists()


def test_embedded_model_beats_an_untrained_model_on_held_out_scenes():
    model = load_embedded()
    assert not model.training
    assert split_seeds("test", 1)[0] not in range(0, 1_000_000)
    metrics = evaluate_interactive(model, SyntheticDataset("test", count=2), max_clicks=3)
    # Untrained models score 0.027-0.028 here and the shipped one 0.087: weak (MODEL_CARD.md says why), but
    # a broken checkpoint or a loader that drops weights falls back to the untrained figure.
    assert metrics["miou@1_oracle"] > 0.06 and np.isfinite(metrics["miou@3_confident"])
