"""The text path shipped with the embedded model (sam_core/weights/sam_tiny_synthetic_text.pt): an adapter of
its text tensors that reads back as a whole text model on exactly the embedded weights, is refused once those
weights change, and answers held-out phrases; its card holds the held-out table."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sam_core import SamPredictor
from sam_core import shipped as shipped_paths
from sam_core.checkpoint import atomic_save, read_checkpoint, text_adapter, text_keys
from sam_core.embedded import EMBEDDED_CHECKPOINT, EMBEDDED_TEXT_CHECKPOINT
from sam_core.phrases import scene_phrases
from sam_core.synthetic import make_scene, split_seeds
from sam_core.text_model import load_text_model


@pytest.fixture(scope="module")
def shipped():
    return read_checkpoint(EMBEDDED_TEXT_CHECKPOINT)


def test_the_adapter_holds_only_the_text_path_and_reads_back_on_the_embedded_weights(shipped):
    stored = torch.load(EMBEDDED_TEXT_CHECKPOINT, weights_only=True)
    assert (
        set(stored["model"]) == set(text_keys(stored["model"])) and stored["adapter_of"]["base"] == "embedded"
    )
    assert EMBEDDED_TEXT_CHECKPOINT.stat().st_size < 4_000_000  # the whole model would be 25 MB
    base = read_checkpoint(EMBEDDED_CHECKPOINT)["model"]
    assert set(shipped["model"]) == set(base) | set(stored["model"]) and "adapter_of" not in shipped
    assert all(torch.equal(shipped["model"][k], v) for k, v in base.items())
    assert all(torch.equal(shipped["model"][k], v) for k, v in stored["model"].items())
    assert text_adapter(shipped)["adapter_of"] == stored["adapter_of"]  # the round trip


def test_an_adapter_is_refused_once_its_base_changed_and_only_a_text_path_ships(
    shipped, tmp_path, monkeypatch
):
    retrained = read_checkpoint(EMBEDDED_CHECKPOINT)
    name = "mask_decoder.iou_token.weight"
    retrained["model"][name] = retrained["model"][name] + 1e-3
    atomic_save(retrained, tmp_path / "retrained.pt")
    monkeypatch.setattr(shipped_paths, "EMBEDDED_CHECKPOINT", tmp_path / "retrained.pt")
    with pytest.raises(
        ValueError, match=r"sam_tiny_synthetic_text.pt: a text adapter trained on another version"
    ):
        read_checkpoint(EMBEDDED_TEXT_CHECKPOINT)
    # A text model whose decoder trained too is not an adapter of the embedded model; a plain model is none.
    with pytest.raises(ValueError, match=f"not an adapter of the embedded model: .*{name}"):
        text_adapter(shipped)
    with pytest.raises(ValueError, match="not a text model: it holds no text path's tensors"):
        text_adapter(retrained)


def test_the_shipped_text_path_answers_held_out_phrases_and_its_card_holds_the_table():
    model, encoder = load_text_model(EMBEDDED_TEXT_CHECKPOINT)
    predictor = SamPredictor(model, text_encoder=encoder)
    ious = []
    for seed in split_seeds("test", 4):
        scene = make_scene(seed)
        predictor.set_image(scene.image)
        for phrase in scene_phrases(scene, seed, 6):
            if phrase.kind == "one":
                masks, _, _, _ = predictor.predict(text=phrase.text, multimask_output=False)
                truth = scene.masks[phrase.indices[0]]
                ious.append((masks[0] & truth).sum() / (masks[0] | truth).sum())
    # A floor for a working model, not its figure: the card holds that, on all 200 test scenes.
    assert len(ious) >= 8 and np.mean(ious) > 0.5, ious
    card = (EMBEDDED_TEXT_CHECKPOINT.parent / "TEXT_MODEL_CARD.md").read_text()
    assert "## Held-out figures (test scenes)" in card and "| mIoU, phrases naming one object |" in card
